"""PyTorch -> ONNX -> TensorRT for the edge encoder, and the checks each stage must pass
(run `python export/build_engine.py --help`)."""
