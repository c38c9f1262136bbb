"""Where the gap to the reference lies: rate ratios at fixed PSNRs and per-image BD-rate, on curves whose
answer is known."""
import numpy as np
import pytest

from codec.bench import gap

RATES = np.array([0.05, 0.1, 0.2, 0.4, 0.8])
PSNRS = 32 + 3 * np.log2(RATES / 0.05)   # 32 ... 44 dB


def points(rates, psnrs, **extra):
    return [{"bpp": float(b), "psnr": float(p), **extra} for b, p in zip(rates, psnrs)]


def test_a_curve_spending_a_fixed_factor_more_has_that_ratio_at_every_quality():
    ratios = gap.rate_ratios(points(RATES, PSNRS), points(1.4 * RATES, PSNRS), steps=5)
    assert [q for q, _ in ratios] == pytest.approx([32, 35, 38, 41, 44])
    assert [r for _, r in ratios] == pytest.approx([1.4] * 5)


def test_ratios_cover_only_the_common_range_and_show_where_a_curve_flattens():
    flat_top = PSNRS.copy()
    flat_top[-1] = PSNRS[-2] + 1.0          # the top point gains 1 dB for twice the rate, not 3
    ratios = gap.rate_ratios(points(RATES, PSNRS), points(RATES, flat_top), steps=4)
    assert ratios[0][0] == pytest.approx(32) and ratios[-1][0] == pytest.approx(42)
    assert ratios[0][1] == pytest.approx(1.0)
    assert ratios[-1][1] > 1.5


def test_curves_that_do_not_overlap_have_no_ratio():
    assert gap.rate_ratios(points(RATES, PSNRS), points(RATES, PSNRS + 20)) == []
    assert gap.rate_ratios(points(RATES[:1], PSNRS[:1]), points(RATES, PSNRS)) == []


def test_gap_by_quality_is_per_dataset():
    summary = (points(RATES, PSNRS, dataset="a", codec="HEIC") + points(2 * RATES, PSNRS, dataset="a", codec="ours")
               + points(RATES, PSNRS, dataset="b", codec="HEIC") + points(RATES, PSNRS, dataset="b", codec="ours"))
    rows = gap.gap_by_quality(summary, "ours", "HEIC")
    assert {r["dataset"] for r in rows} == {"a", "b"}
    assert all(r["rate_ratio"] == pytest.approx(2.0 if r["dataset"] == "a" else 1.0) for r in rows)


def image_rows(image, factor):
    return (points(RATES, PSNRS, dataset="d", image=image, codec="HEIC")
            + points(factor * RATES, PSNRS, dataset="d", image=image, codec="ours"))


def test_per_image_bd_rate_is_sorted_furthest_behind_first():
    rows = image_rows("near.png", 1.1) + image_rows("far.png", 2.0) + image_rows("ahead.png", 0.9)
    rows += points(RATES, PSNRS, dataset="d", image="heic_only.png", codec="HEIC")   # ours missing: skipped
    result = gap.per_image_bd(rows, "ours", "HEIC")
    assert [r["image"] for r in result] == ["far.png", "near.png", "ahead.png"]
    assert [r["bd_rate_psnr"] for r in result] == pytest.approx([100.0, 10.0, -10.0], abs=0.01)


def test_markdown_shows_the_ends_of_a_long_image_list():
    rows = sum((image_rows(f"{i:02d}.png", 1 + i / 10) for i in range(12)), [])
    images = gap.per_image_bd(rows, "ours", "HEIC")
    summary = points(RATES, PSNRS, dataset="d", codec="HEIC") + points(1.5 * RATES, PSNRS, dataset="d", codec="ours")
    text = gap.markdown(gap.gap_by_quality(summary, "ours", "HEIC"), images, "ours", "HEIC", worst=3)
    lines = text.splitlines()
    assert "| 11.png | +110.0 % |" in lines and "| 00.png | +0.0 % |" in lines
    assert "| … | |" in lines and not any(line.startswith("| 05.png") for line in lines)
    assert "| d | 32.0 | 1.50x |" in lines
