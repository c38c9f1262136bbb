import numpy as np
import pytest

from codec.synthetic_defects import DEPTH_LEVELS, add_marks, blob, blur, mark_weights, marks_field, stroke

SHAPE = (128, 160)


def grey_batch(n=8, level=0.5):
    return np.full((n, 3) + SHAPE, level, np.float32)


def marked(batch, rng, mean):
    add_marks(batch, rng, mean)
    return batch


def test_the_mean_decides_how_many_pictures_get_marks():
    untouched = marked(grey_batch(), np.random.default_rng(0), 0.0)
    assert (untouched == 0.5).all()
    for mean in (0.5, 3.0):   # a Poisson count: exp(-mean) of the pictures get none
        pictures = marked(grey_batch(400), np.random.default_rng(0), mean)
        share = np.mean([(picture != 0.5).any() for picture in pictures])
        assert share == pytest.approx(1 - np.exp(-mean), abs=0.06)


def test_more_marks_change_more_pixels():
    few = marked(grey_batch(100), np.random.default_rng(6), 1.0)
    many = marked(grey_batch(100), np.random.default_rng(6), 5.0)
    assert 3 < (many != 0.5).sum() / (few != 0.5).sum() < 8


def test_marks_are_faint_thin_and_grey():
    rng = np.random.default_rng(1)
    batch = marked(grey_batch(50), rng, 2.0)
    change = (batch - 0.5) * 255
    field = marks_field(SHAPE, rng, 1)[0] * 255
    assert np.abs(field).max() <= DEPTH_LEVELS[1] + 1e-3 and np.abs(field).max() > 0
    assert (np.abs(change) > 0.5).mean() < 0.05               # a few hairlines, not a texture
    assert (change[:, 0] == change[:, 1]).all() and (change[:, 1] == change[:, 2]).all()


def test_most_marks_are_darker_than_their_surface():
    rng = np.random.default_rng(2)
    signs = [np.sign(marks_field(SHAPE, rng, 1)[0].sum()) for _ in range(300)]
    assert 0.6 < signs.count(-1.0) / len(signs) < 0.9


def test_a_stroke_is_a_hairline_and_a_blob_is_not():
    def full_3x3_blocks(coverage):
        full = coverage > 0.99
        return (full[:-2, :-2] & full[:-2, 1:-1] & full[:-2, 2:] & full[1:-1, :-2] & full[1:-1, 1:-1]
                & full[1:-1, 2:] & full[2:, :-2] & full[2:, 1:-1] & full[2:, 2:]).sum()
    rng = np.random.default_rng(3)
    strokes = [stroke(SHAPE, rng) for _ in range(100)]
    assert all(full_3x3_blocks(s) == 0 for s in strokes)       # at most 2 px wide anywhere
    assert all(s.max() <= 1.0 and s.min() >= 0.0 for s in strokes)
    assert np.mean([s.sum() > 10 for s in strokes]) > 0.5      # most lie at least partly inside the picture
    blobs = [blob(SHAPE, np.random.default_rng(seed)) for seed in range(100)]
    assert any(full_3x3_blocks(b) > 0 for b in blobs)           # the larger ones are solid


def test_marks_are_clipped_to_the_picture_range():
    for level in (0.0, 1.0):
        batch = marked(grey_batch(20, level), np.random.default_rng(4), 3.0)
        assert batch.min() >= 0.0 and batch.max() <= 1.0
    dark = marked(grey_batch(20, 0.0), np.random.default_rng(4), 3.0)
    assert (dark > 0).any()                                     # light marks show on black


def test_the_same_seed_draws_the_same_marks():
    a = marked(grey_batch(), np.random.default_rng(5), 2.0)
    b = marked(grey_batch(), np.random.default_rng(5), 2.0)
    assert (a == b).all()


def test_blur_keeps_a_constant_and_the_sum_and_spreads_a_point():
    flat = np.full((9, 9), 0.3, np.float32)
    assert blur(flat, 0.8) == pytest.approx(flat)
    point = np.zeros((9, 9), np.float32)
    point[4, 4] = 1.0
    spread = blur(point, 0.8)
    assert spread.sum() == pytest.approx(1.0, abs=1e-6)
    assert 0.2 < spread[4, 4] < 0.5 and spread[4, 5] > 0
    assert spread[4, 5] == pytest.approx(spread[5, 4])


def test_the_coverage_returned_is_where_the_marks_changed_the_picture():
    batch = grey_batch(40)
    coverage = add_marks(batch, np.random.default_rng(8), 3.0)
    assert coverage.shape == (40, 1) + SHAPE and 0.0 <= coverage.min() and coverage.max() == 1.0
    changed = np.abs(batch[:, :1] - 0.5) > 0.5 / 255
    assert (coverage[changed] > 0).all()                 # every visible change is a covered pixel
    # covered but unchanged: a blurred tail, or a dark and a light mark crossing
    assert ((coverage > 0.2) & ~changed).sum() < 0.01 * (coverage > 0.2).sum()
    untouched = grey_batch(4)
    assert (add_marks(untouched, np.random.default_rng(8), 0.0) == 0).all() and (untouched == 0.5).all()


def test_mark_weights_price_covered_pixels_only():
    coverage = np.array([[[[0.0, 0.5, 1.0]]]], np.float32)
    assert mark_weights(coverage, 10.0).ravel().tolist() == [1.0, 6.0, 11.0]
    assert (mark_weights(coverage, 0.0) == 1.0).all()
