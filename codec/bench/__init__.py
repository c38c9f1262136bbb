"""Benchmarks: rate-distortion and speed against the standard anchors, the entropy coder, memory."""
