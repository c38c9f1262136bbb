"""bench-defects: drawn defects, their measured contrast, the half-contrast crossing, and a real run."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image

from codec.bench import defect_visibility as dv
from codec.cli import main as cli_main
from codec.errors import CodecError


def test_layout_draws_every_kind_and_depth_apart():
    defects = dv.layout(371, 586)
    assert {(d.kind, d.depth) for d in defects} == {(k, n) for k in dv.KINDS for n in dv.DEPTHS}
    total = np.sum([d.mask for d in defects], axis=0)
    assert total.max() == 1, "two defects overlap"
    with pytest.raises(CodecError, match="too small"):
        dv.layout(200, 586)


def test_drawn_defects_measure_their_depth():
    defects = dv.layout(512, 640)
    img = dv.draw(dv.shell(512, 640), defects)
    for d in defects:
        assert abs(dv.contrast(img, d.mask) - d.depth) < 0.5, (d.kind, d.depth)


def test_half_contrast_crossing():
    mid = math.sqrt(0.1 * 0.4)     # halfway between the two rates on a log scale
    assert dv.half_contrast_bpp([(0.4, 0.8), (0.1, 0.2)]) == ("=", pytest.approx(mid))
    assert dv.half_contrast_bpp([(0.1, 0.6), (0.4, 0.9)]) == ("<", 0.1)
    assert dv.half_contrast_bpp([(0.1, 0.1), (0.4, 0.3)]) == (">", 0.4)
    # a dip after the first crossing does not move it
    assert dv.half_contrast_bpp([(0.1, 0.0), (0.2, 0.5), (0.3, 0.1), (0.4, 1.0)]) == ("=", pytest.approx(0.2))


def test_ratio_uses_only_defects_both_place_inside_their_ladders():
    cross = {("a", "HEIC", "pit", 5): ("=", 0.1), ("a", "x", "pit", 5): ("=", 0.4),
             ("a", "HEIC", "pit", 8): ("=", 0.1), ("a", "x", "pit", 8): (">", 0.9)}
    assert dv.ratio_to_reference(cross, "x", {"a"}) == (pytest.approx(4.0), 1)
    assert dv.ratio_to_reference(cross, "x", {"b"}) == (None, 0)


def test_real_run_on_the_shell_and_a_photo(tmp_path, default_model):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(90, 110, (300, 320, 3), dtype=np.uint8)).save(photos / "p.png")
    cross, table = dv.run(tmp_path / "out", photos, lambdas=(256, 8192), codecs=["ours", "JPEG"])
    for name in ("defect_points.csv", "half_contrast.csv", "defects.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    shell_cells = {k: v for k, v in cross.items() if k[0] == dv.SHELL}
    assert len(shell_cells) == 2 * len(dv.KINDS) * len(dv.DEPTHS)
    # JPEG at quality 92 keeps every defect on the shell: its crossing lies at or below the ladder's top
    assert all(v[0] in "=<" for k, v in shell_cells.items() if k[1] == "JPEG")
    assert "p.png" in {k[0] for k in cross}
    assert "| photos | bpp over HEIC's" in table and f"| {dv.SHELL} | never at half contrast" in table


def test_cli_and_its_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["bench-defects", "--out", str(tmp_path / "o"), "--data", str(empty)]) != 0
    assert "no images" in capsys.readouterr().err
    assert cli_main(["bench-defects", "--out", str(tmp_path / "o"), "--codecs", "JPGE"]) != 0
    assert "unknown codec JPGE" in capsys.readouterr().err
    assert cli_main(["bench-defects", "--out", str(tmp_path / "o"), "--codecs", "JPEG", "WebP"]) == 0
    out = capsys.readouterr().out
    assert "crack 1 px, 5 levels" in out and "WebP" in out


def test_against_codes_with_another_model_and_compares_it_with_ours(tmp_path):
    """The bundled weights under a second name: every defect crosses at the same bpp, so each ratio is 1."""
    from codec.weights import DEFAULT_MODEL
    cross, table = dv.run(tmp_path / "out", lambdas=(256, 1024, 8192), codecs=["ours", "HEIC"],
                          against=[DEFAULT_MODEL])
    other = [k for k in cross if k[1].startswith("ours:")]
    assert len(other) == len(dv.KINDS) * len(dv.DEPTHS)
    assert all(cross[k] == cross[(k[0], "ours", k[2], k[3])] for k in other)
    cells = next(line for line in table.splitlines() if "bpp over ours's" in line).split(" | ")[2:]
    assert cells[0].startswith("**1.00x**") and cells[2].startswith("**1.00x**")   # ours, ours:<id>


def test_archive_path_runs_beside_ours_and_is_compared_with_it(tmp_path, default_model):
    # naming only ours must not drop the archive path that archive_steps asks for
    cross, table = dv.run(tmp_path / "out", None, lambdas=(256, 8192), codecs=["ours"], archive_steps=2)
    archived = {k: v for k, v in cross.items() if k[1] == dv.ARCHIVE}
    assert len(archived) == len(dv.KINDS) * len(dv.DEPTHS)
    assert f"| {dv.SHELL} | bpp over ours's" in table
    rows = list(csv.DictReader((tmp_path / "out" / "defect_points.csv").read_text().splitlines()))
    bpp = {(r["codec"], r["setting"]): float(r["bpp"]) for r in rows}
    assert set(bpp) == {(c, s) for c in ("ours", dv.ARCHIVE) for s in ("256", "8192")}
