"""bench-blocks: block classes and errors on constructed pictures, and the whole table on a small real encode."""
import numpy as np
import pytest

from codec.bench.block_gap import (block_mse, block_spread, by_class, rows, table, whole_blocks,
                                   worst_share)
from codec.cli import main as cli_main
from codec.errors import CodecError
from codec.runtime import CodecModel


def two_blocks() -> np.ndarray:
    """A flat grey 16x16 block beside one split into black and white halves (luma std 127.5)."""
    x = np.full((16, 32, 3), 128, np.uint8)
    x[:, 16:24] = 0
    x[:, 24:] = 255
    return x


def test_spread_and_error_per_block():
    x = two_blocks()
    assert block_spread(x).tolist() == [[0.0, 127.5]]
    off = x.astype(np.int16)
    off[:, :16] += 2                            # the flat block off by 2 in every channel
    assert block_mse(x, off).tolist() == [[4.0, 0.0]]
    classes = by_class(block_spread(x), block_mse(x, off))
    assert classes[0] == 4.0 and classes[-1] == 0.0 and classes[1:-1] == [None] * 3


def test_worst_share_and_whole_blocks():
    mse = np.zeros((10, 10))
    mse[0, 0], mse[5, 5] = 30.0, 10.0            # 1 % of 100 blocks is the single worst one
    assert worst_share(mse) == pytest.approx(0.75)
    assert whole_blocks(np.zeros((40, 50, 3), np.uint8)).shape == (32, 48, 3)
    with pytest.raises(CodecError, match="smaller than one 16 px block"):
        whole_blocks(np.zeros((8, 50, 3), np.uint8))


def test_table_on_a_small_real_encode(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = np.full((48, 64, 3), 120, np.uint8)                      # flat grey
    x[16:32, 16:48] = rng.integers(0, 256, (16, 32, 3))          # and two blocks of noise
    result = rows(CodecModel.load(), x, [1024], [50])
    assert [r["name"] for r in result] == ["ours λ1024", "ours λ1024, unquantised", "HEIC q50"]
    assert result[0]["bpp"] > 0 and result[1]["bpp"] is None and result[2]["bpp"] > 0
    for r in result:   # the overall error is the mean of the per-block errors (equal-sized blocks)
        assert r["all"] == pytest.approx(float(r["block_mse"].mean())) and r["block_mse"].shape == (3, 4)
    assert result[0]["classes"][-1] > result[0]["classes"][0]   # noise costs more than flat grey
    text = table(x, result)
    assert "(10 blocks)" in text and "(2 blocks)" in text and text.count("\n") == 4

    from PIL import Image
    Image.fromarray(x).save(tmp_path / "x.png")
    assert cli_main(["bench-blocks", str(tmp_path / "x.png"), "--lambdas", "1024", "--heic", "50"]) == 0
    assert "| ours λ1024 |" in capsys.readouterr().out
