"""Model file arrays: float16 storage refuses what it cannot hold."""
import numpy as np
import pytest
import torch

from codec import weights
from codec.errors import CodecError


def test_float_arrays_store_float16_and_round_trip():
    state = {"a.weight": torch.tensor([1.0, -2.5, 1000.0]), "b.bias": torch.zeros(2)}
    arrays = weights.float_arrays(state)
    assert all(v.dtype == np.float16 for v in arrays.values())
    back = weights.float_state_dict(arrays)
    assert torch.equal(back["a.weight"], state["a.weight"]) and set(back) == set(state)


def test_a_weight_beyond_float16_is_refused_with_its_name():
    # float16 stores 1e5 as inf: the model would decode to NaN, so the export must stop and say where
    with pytest.raises(CodecError, match=r"films\.1\.net\.2\.bias does not fit float16 .*1e\+05"):
        weights.float_arrays({"films.1.net.2.bias": torch.tensor([1.0, 1e5])})


def test_a_model_file_missing_a_float_array_is_one_line_naming_it(tiny_model, tmp_path):
    from codec.runtime import CodecModel
    arrays, meta = weights.load_arrays(tiny_model.path)
    name = next(k for k in sorted(arrays) if k.startswith("float/") and k.endswith(".bias"))
    del arrays[name]
    weights.save_arrays(tmp_path / "holed.npz", arrays, meta)
    model = CodecModel.load(tmp_path / "holed.npz")   # the integer parts are whole: it loads
    with pytest.raises(CodecError, match=f"do not fit .*Missing key.*{name[len('float/'):]}"):
        model.torch_model
