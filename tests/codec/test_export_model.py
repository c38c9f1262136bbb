"""The export's record of what exactness costs: in total and per λ (codec/export_model.py)."""
import torch

from codec.export_model import cost_line, exactness_cost
from tests.conftest import synthetic_image


def _images():
    return [torch.from_numpy(synthetic_image(64, 96, seed).transpose(2, 0, 1).copy()).float().div(255)[None]
            for seed in (3, 4)]


def test_the_cost_is_given_per_lambda_and_the_total_is_their_sum(context_model):
    images = _images()
    both = exactness_cost(context_model, images, (64.0, 4096.0))
    per = both["per_lambda"]
    assert [p["lambda"] for p in per] == [64.0, 4096.0]
    for key in ("float_bits", "integer_bits"):
        assert abs(sum(p[key] for p in per) - both[key]) <= 1, key   # each rounded on its own
    for p in per + [both]:
        assert p["integer_bits"] > 0 and abs(p["cost_percent"] - 100 * (p["integer_bits"] / p["float_bits"] - 1)) < 0.01
    alone = exactness_cost(context_model, images, (4096.0,))   # one λ's figures do not depend on the others
    assert alone["per_lambda"][0] == per[1]
    assert (alone["float_bits"], alone["integer_bits"]) == (per[1]["float_bits"], per[1]["integer_bits"])
    assert per[0]["float_bits"] != per[1]["float_bits"]   # the λ reaches the model


def test_the_cost_line_names_every_lambda_and_reads_older_files():
    record = {"cost_percent": 0.421, "per_lambda": [{"lambda": 64.0, "cost_percent": 1.004},
                                                    {"lambda": 8192.0, "cost_percent": 0.333}]}
    assert cost_line(record) == "+0.42 % (λ 64 +1.00 %, λ 8192 +0.33 %)"
    assert cost_line({"cost_percent": -0.05, "float_bits": 10, "integer_bits": 9}) == "-0.05 %"   # before session 51
    assert cost_line(None) == "not measured (no validation images)"
