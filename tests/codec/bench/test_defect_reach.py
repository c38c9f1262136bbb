import numpy as np
import pytest
from PIL import Image

from codec.bench import defect_reach
from codec.bench.defect_visibility import KINDS, shell
from codec.errors import CodecError
from codec.runtime import CodecModel


@pytest.fixture(scope="module")
def bundled():
    return CodecModel.load(None)


def test_the_bundled_model_keeps_more_from_unquantised_latents_and_more_of_wide_defects(bundled):
    rows = defect_reach.run({"bundled": bundled}, None, 0, [1024])
    by_kind = {r["kind"]: r for r in rows}
    assert [r["pictures"] for r in rows] == ["synthetic shell"] * 4 and set(by_kind) == set(KINDS)
    assert all(r["defects"] == 4 and -0.5 < r["rounded"] < r["unquantised"] < 1.2 for r in rows)
    assert by_kind["pit 6 px"]["unquantised"] > by_kind["crack 1 px"]["unquantised"] + 0.1


def test_photos_form_their_own_group_and_a_second_model_gets_its_own_rows(tmp_path, bundled):
    for i in range(2):   # a shaded surface with sensor noise, 300x320: big enough for the defect grid
        Image.fromarray(np.clip(np.round(shell(300, 320, seed=i + 5)), 0, 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    rows = defect_reach.run({"a": bundled, "b": bundled}, str(tmp_path), 0, [256])
    photos = [r for r in rows if r["pictures"] == "photos"]
    assert {r["model"] for r in photos} == {"a", "b"} and all(r["defects"] == 8 for r in photos)
    a = [(r["unquantised"], r["rounded"]) for r in photos if r["model"] == "a"]
    assert a == [(r["unquantised"], r["rounded"]) for r in photos if r["model"] == "b"]   # deterministic


def test_a_picture_too_small_for_the_defect_grid_is_one_line(tmp_path, bundled):
    Image.fromarray(np.full((128, 640, 3), 150, np.uint8)).save(tmp_path / "strip.png")
    with pytest.raises(CodecError, match="too small to draw the defects on"):
        defect_reach.run({"bundled": bundled}, str(tmp_path), 0, [1024])
