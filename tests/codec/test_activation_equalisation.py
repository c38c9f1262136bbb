"""Cross-layer equalisation: the same function, balanced channels, and an INT8 graph closer to the float one
under ONNX Runtime."""
import copy

import numpy as np
import pytest
import torch

from calibration.calibration_set import CalibrationSet
from calibration.quantize import PERCENTILE, quantize_encoder
from codec import weights
from codec.activation_equalisation import (GAMMA_REACH, LIFT_HEADROOM, MAX_GAIN, SMALLEST_BETA, equalise, floor_gamma,
                                          floor_gamma_recorded, gamma_params, gdn_input_ranges, rescale_channels,
                                          undo_equalisation, undo_inflated_columns)
from codec.export_model import build_model_arrays, equalise_for_int8
from codec.inference_analysis import foldable
from codec.onnx_export import OrtTransforms, export_stamped
from codec.runtime import CodecModel
from codec.train import export_float_model, load_float, psnr
from codec.quantisation_aware import Calibration, QuantisationAwareImageAnalysis
from tests.codec.test_quantisation_aware import diagonal_model
from tests.deploy.harness import make_photos
from tests.conftest import DATA, PROJECT_ROOT, need_data, synthetic_image

LINEAGE_C_WEIGHTS = PROJECT_ROOT / "codec" / "configs" / "lineage_z1_192_warm.npz"   # trained, committed


def unbalanced_model():
    """A tiny model whose quantised inputs have channels some 50x apart (as a trained one's are), by a
    function-preserving rescale: what the equalisation has to undo."""
    net = diagonal_model(seed=1).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for gdn, film in zip(net.analysis.image.gdns, net.analysis.image.films):
            rescale_channels(gdn, film, torch.exp(torch.empty(8).uniform_(-2.0, 2.0, generator=gen)))
    return net


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("equalisation_photos")
    make_photos(d, 6, 96, 128)
    return CalibrationSet(d, count=6, crop=(96, 128), varied=None)


def test_rescaling_channels_keeps_the_function():
    net = diagonal_model().eval()
    before = copy.deepcopy(net)
    with torch.no_grad():
        rescale_channels(net.analysis.image.gdns[1], net.analysis.image.films[1], torch.linspace(0.05, 20.0, 8))
    x = torch.rand(1, 3, 64, 96)
    for lam in (64.0, 8192.0):
        lam_t = torch.tensor([lam])
        assert torch.allclose(net.analysis.image(x, lam_t), before.analysis.image(x, lam_t), rtol=1e-4, atol=1e-6)
    assert not torch.equal(net.analysis.image.gdns[1].beta_param, before.analysis.image.gdns[1].beta_param)


def test_equalisation_balances_the_channels_keeps_the_function_and_a_second_pass_does_little(photos):
    net = unbalanced_model()
    before = copy.deepcopy(net)
    samples = Calibration(photos).samples
    result = equalise(net.analysis.image, net.cfg, [samples], PERCENTILE)
    assert all(a < b / 10 for a, b in zip(result["spread_after"], result["spread_before"])), result
    x, lam = samples[0]
    assert torch.allclose(net.analysis.image(x, lam), before.analysis.image(x, lam), rtol=1e-4, atol=1e-6)
    # a second pass has little left to do (it would find e = 1 but for the gain cap and the histogram bins;
    # on the bundled model it gave every e within 0.97..1.03)
    again = equalise(net.analysis.image, net.cfg, [samples], PERCENTILE)
    assert all(b / 2 < a < b * 2 for a, b in zip(again["spread_after"], again["spread_before"])), again


def int8_error(net, photos, out) -> float:
    """RMS difference between the Q/DQ graph's y1 and the float graph's, both under ONNX Runtime."""
    images = [torch.from_numpy(x) for x, _ in photos.samples()]
    weights.save_arrays(out / "model.npz", build_model_arrays(copy.deepcopy(net), images[:2]),
                        {"config": net.cfg.to_dict()})
    image, latent = export_stamped(CodecModel.load(out / "model.npz"), out)
    quantize_encoder(image, out / "encoder.int8.onnx", photos)
    x = synthetic_image(96, 128, seed=77).transpose(2, 0, 1)[None].astype(np.float32) / 255
    errors = []
    for lam in (64.0, 1024.0, 8192.0):
        y_float = OrtTransforms.from_files(image, latent, lam).image(x)
        y_int8 = OrtTransforms.from_files(out / "encoder.int8.onnx", latent, lam).image(x)
        errors.append(np.sqrt(np.mean((y_int8 - y_float) ** 2) / np.mean(y_float ** 2)))
    return float(np.mean(errors))


def test_the_equalised_int8_graph_is_closer_to_the_float_one(photos, tmp_path):
    net = unbalanced_model()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    unequalised = int8_error(net, photos, tmp_path / "a")
    equalise(net.analysis.image, net.cfg, [Calibration(photos).samples], PERCENTILE)
    equalised = int8_error(net, photos, tmp_path / "b")
    assert equalised < 0.5 * unequalised, (equalised, unequalised)


def test_export_equalises_on_the_int8_calibration_set_and_varied_photos():
    need_data(DATA / "blades" / "dtu_nordtank")
    need_data(DATA / "train")
    net = unbalanced_model()
    result = equalise_for_int8(net)
    assert result["percentile"] == PERCENTILE and len(result["spread_after"]) == 3
    assert all(a < b for a, b in zip(result["spread_after"], result["spread_before"]))
    plain = diagonal_model()   # a fresh model's GDNs have a pedestal off the diagonal: they do not fold
    with torch.no_grad():
        plain.analysis.image.gdns[0].gamma_param.add_(0.01)
    assert equalise_for_int8(plain) is None


def test_a_gdn_channel_with_gamma_near_zero_gets_its_weight_column_back_in_range(photos, tmp_path):
    # a γ trained to ~0 makes the fold divide the next Conv's column by γ and multiply the activation by γ:
    # one column ~1e4x the rest would set every row's INT8 weight scale, and one activation channel ~1e4x
    # narrower would get no levels; the gain cap must not stop the rescale that undoes both
    net = diagonal_model(seed=1).eval()
    with torch.no_grad():
        gamma_params(net.analysis.image.gdns[1])[3] = 1e-4 ** 0.5   # γ = gamma_param²
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    unequalised = int8_error(net, photos, tmp_path / "a")
    result = equalise(net.analysis.image, net.cfg, [Calibration(photos).samples], PERCENTILE)
    w = QuantisationAwareImageAnalysis.from_analysis(net.analysis.image, net.cfg).folded(2)[0]
    columns = w.abs().amax(dim=(0, 2, 3))
    # brought down to an ordinary column (1.03x the median; 8.2x when it stopped at MAX_GAIN x the median)
    assert float(columns[3] / columns.median()) <= 2, columns
    # and its activation back up among the others (spread 6.1x; 48.5x when the column stopped at 8x)
    # 16: the bound this test had with the cap at 8 (2 x MAX_GAIN then); raising the cap must not loosen it
    assert result["spread_before"][1] > 1000 and result["spread_after"][1] <= 16, result
    equalised = int8_error(net, photos, tmp_path / "b")
    assert equalised < 0.5 * unequalised, (equalised, unequalised)


def test_an_inflated_column_comes_down_to_the_median_unless_its_activation_would_near_the_widest():
    w = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.5, 1.0, 0.8, 1000.0])   # the last: a column the fold divided by γ≈0
    e = torch.ones(8)
    quiet = undo_inflated_columns(w, torch.tensor([1.0] * 7 + [1e-5]), e)
    assert torch.equal(quiet[:7], e[:7]) and float(w[7] / quiet[7]) == pytest.approx(float(w.median()))
    # a busier channel would end at 1000 x 1e-3 = 1, the widest range: it stops at 1/LIFT_HEADROOM of it
    busy = undo_inflated_columns(w, torch.tensor([1.0] * 7 + [1e-3]), e)
    assert float(1e-3 * busy[7]) == pytest.approx(1 / LIFT_HEADROOM)
    assert float(w[7] / busy[7]) <= 8 * float(w.median())   # 4x here; 8x was MAX_GAIN until session 17
    assert torch.equal(undo_inflated_columns(w[:7], torch.ones(7), e[:7]), e[:7])   # nothing inflated


def reach(image, samples) -> list:
    """Per GDN, each channel's largest γ|x|/β over samples: how far from linear the GDN gets there."""
    return [g.gamma_diagonal() * x / g.beta() for g, x in zip(image.gdns, gdn_input_ranges(image, [samples]))]


def test_gamma_floor_lifts_only_the_near_linear_channels_and_keeps_the_function(photos):
    net = diagonal_model(seed=1).eval()
    samples = Calibration(photos).samples
    with torch.no_grad():
        gamma_params(net.analysis.image.gdns[1])[3] = 1e-9 ** 0.5   # γ = gamma_param²
    before = copy.deepcopy(net)
    assert all(float(r.min()) > GAMMA_REACH for r in reach(net.analysis.image, samples)[::2])
    assert floor_gamma(net.analysis.image, [samples]) == 1
    gammas = [g.gamma_diagonal() for g in net.analysis.image.gdns]
    old = [g.gamma_diagonal() for g in before.analysis.image.gdns]
    assert torch.equal(gammas[0], old[0]) and torch.equal(gammas[2], old[2])
    assert float(reach(net.analysis.image, samples)[1][3]) == pytest.approx(GAMMA_REACH, rel=1e-4)
    x, lam = samples[0]   # the channel's output moves by at most GAMMA_REACH of itself on the samples
    y, y_before = net.analysis.image(x, lam), before.analysis.image(x, lam)
    assert float((y - y_before).norm() / y_before.norm()) < GAMMA_REACH
    assert floor_gamma(net.analysis.image, [samples]) == 0


def test_the_gamma_floor_keeps_a_trained_model_that_went_linear_within_hundredths_of_a_db(photos):
    """Lineage C trained most of its third GDN linear. Floored at reach 1e-2 (until session 34), its exported
    file coded blade frames 0.47 dB worse at λ 8192 than its training weights. On this test's own image, with
    the weights of step 90,000, that floor costs 0.18 / 0.23 dB at λ 1024 / 8192, the floor at GAMMA_REACH 0.008 /
    0.000 dB (step 85,000: 0.25 / 0.29 and 0.008 / 0.006 dB)."""
    net, _ = load_float(LINEAGE_C_WEIGHTS)
    net.eval()
    floored = copy.deepcopy(net)
    assert len(floor_gamma_recorded(floored.analysis.image, [Calibration(photos).samples])) > 64
    x = torch.from_numpy(synthetic_image(256, 384, seed=11).transpose(2, 0, 1).copy()).float().div(255)[None]
    for lam in (1024.0, 8192.0):
        with torch.no_grad():
            before, after = (psnr((n(x, torch.tensor([lam]), noisy=False)["x_hat"].clamp(0, 1) - x).square().mean()
                                  .item()) for n in (net, floored))
        assert before - after < 0.05, (lam, before, after)


def test_a_gdn_channel_trained_linear_quantises_like_the_others(photos, tmp_path):
    """Lineage C (session 29) trained most γ of its third GDN to ~0 (median 6e-12): a floor at 1e-3 of the
    median γ lifted nothing there, the fold divided the next Conv's columns by γ, and the export overflowed
    float16. Floored to reach GAMMA_REACH on the samples, such a channel keeps its function to about that
    fraction; its fold output is then GAMMA_REACH of a saturating channel's, and only a gain cap grown by as
    much (FLOORED_MAX_GAIN) brings it among the others: with MAX_GAIN, twice the INT8 error here."""
    ordinary = unbalanced_model()
    with torch.no_grad():   # as in a trained GDN, γ|x|/β reaches about 1 on the samples
        gamma_params(ordinary.analysis.image.gdns[1]).mul_(8.0)
    linear = copy.deepcopy(ordinary)
    with torch.no_grad():
        gamma_params(linear.analysis.image.gdns[1])[[0, 5]] = torch.tensor([0.0, 1e-7])
    samples = Calibration(photos).samples
    unfloored = copy.deepcopy(linear)
    lifted = floor_gamma_recorded(linear.analysis.image, [samples])
    assert [(k, c) for k, c, _ in lifted] == [(1, 0), (1, 5)]
    assert float(reach(linear.analysis.image, samples)[1].min()) == pytest.approx(GAMMA_REACH, rel=1e-4)
    x, lam = samples[0]
    y, y_unfloored = linear.analysis.image(x, lam), unfloored.analysis.image(x, lam)
    assert float((y - y_unfloored).norm() / y_unfloored.norm()) < GAMMA_REACH
    errors, records = [], []
    for name, net, floored in (("ordinary", ordinary, []), ("linear", linear, lifted)):
        records.append(equalise(net.analysis.image, net.cfg, [samples], PERCENTILE, floored))
        (tmp_path / name).mkdir()
        errors.append(int8_error(net, photos, tmp_path / name))
    assert errors[1] < 1.3 * errors[0], errors   # 0.029 and 0.030; 0.051 with the floored channels capped at 16
    assert max(records[1]["scales"][1]) > MAX_GAIN   # the floored channels went past the ordinary cap
    # and the record still returns training to the weights it had, γ = 0 included
    assert undo_equalisation(linear.analysis.image, {**records[1], "gamma_params_before_floor": lifted})
    for a, b in zip(linear.analysis.image.parameters(), unfloored.analysis.image.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_equalisation_keeps_every_beta_representable(photos):
    """rescale_channels stores β·e - 1e-6: a floored channel with a tiny β may be scaled down as far as
    1/FLOORED_MAX_GAIN, and below β·e = 1e-6 that would come back as β = 1e-6, another function.
    SMALLEST_BETA keeps β·e at 1e-5 or more (here e 0.5 instead of 0.059)."""
    net = unbalanced_model()
    gdn, film = net.analysis.image.gdns[1], net.analysis.image.films[1]
    with torch.no_grad():   # β 2e-5 saturates the channel's softsign: its range is wide, its e far below 1
        gdn.beta_param[0] = (2e-5 - 1e-6) ** 0.5
        film.net[-1].weight[0].zero_()
        film.net[-1].bias[0] = 30.0
    before = copy.deepcopy(net)
    samples = Calibration(photos).samples
    result = equalise(net.analysis.image, net.cfg, [samples], PERCENTILE, floored=[[1, 0, 0.0]])
    assert result["scales"][1][0] == pytest.approx(SMALLEST_BETA / 2e-5, rel=1e-4)
    assert float(gdn.beta()[0]) == pytest.approx(SMALLEST_BETA, rel=1e-4)
    x, lam = samples[0]
    y, y_before = net.analysis.image(x, lam), before.analysis.image(x, lam)
    assert float((y - y_before).norm() / y_before.norm()) < 1e-4


def test_a_gamma_at_exactly_zero_is_floored_so_the_export_folds_and_equalises():
    need_data(DATA / "blades" / "dtu_nordtank")
    need_data(DATA / "train")
    net = diagonal_model(seed=1).eval()
    with torch.no_grad():   # a γ trained to 0 (or flushed by float16): the fold would divide by 0
        gamma_params(net.analysis.image.gdns[1])[5] = 0.0
    assert not foldable(net.analysis.image)
    result = equalise_for_int8(net)
    assert result is not None and result["gammas_lifted"] == 1
    assert result["lift_headroom"] == LIFT_HEADROOM   # the model file records the rule it was equalised by
    assert foldable(net.analysis.image)


def test_equalisation_records_the_scales_that_undo_it(photos):
    """Training restarted from a model file returns to the weights it had (session 25: from the equalised
    ones, 6.9 % BD-rate more lost in 1,000 steps)."""
    net = unbalanced_model()
    trained = copy.deepcopy(net)
    record = equalise(net.analysis.image, net.cfg, [Calibration(photos).samples], PERCENTILE)
    assert len(record["scales"]) == 3 and all(len(e) == 8 for e in record["scales"])
    assert undo_equalisation(net.analysis.image, record)
    for a, b in zip(net.analysis.image.parameters(), trained.analysis.image.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not undo_equalisation(net.analysis.image, {"spread_after": [1.0]})   # a file from before session 25


def test_export_records_the_gamma_params_it_floored():
    need_data(DATA / "blades" / "dtu_nordtank")
    need_data(DATA / "train")
    net = unbalanced_model()
    with torch.no_grad():
        gamma_params(net.analysis.image.gdns[1])[3] = 1e-6   # trained to ~0
    record = equalise_for_int8(net)
    assert record["gamma_params_before_floor"] == [[1, 3, pytest.approx(1e-6)]]
    assert len(record["scales"]) == 3


def test_a_model_file_loads_with_its_equalisation_and_gamma_floor_undone(photos, tmp_path):
    """Exporting a shipped model again must start from the weights training had: on top of the earlier export's
    scales and floored γ, the current rule would floor and equalise another function's channels."""
    net = unbalanced_model()
    with torch.no_grad():
        gamma_params(net.analysis.image.gdns[1])[3] = 1e-6   # trained to ~0: the floor lifts it
    trained = copy.deepcopy(net)
    samples = [Calibration(photos).samples]
    floored = floor_gamma_recorded(net.analysis.image, samples)
    record = {**equalise(net.analysis.image, net.cfg, samples, PERCENTILE, floored),
              "gamma_params_before_floor": floored}
    assert len(floored) == 1
    export_float_model(net, tmp_path / "model.npz", {"step": 7})
    arrays, meta = weights.load_arrays(tmp_path / "model.npz")
    weights.save_arrays(tmp_path / "model.npz", arrays, {**meta, "int8_equalisation": record})
    loaded, info = load_float(tmp_path / "model.npz")
    assert info == {"step": 7}
    for (name, a), b in zip(loaded.analysis.image.named_parameters(), trained.analysis.image.parameters()):
        assert torch.allclose(a, b, rtol=2e-3, atol=1e-6), name   # the file holds float16
    assert float(gamma_params(loaded.analysis.image.gdns[1])[3].detach()) == pytest.approx(1e-6, rel=2e-3)
