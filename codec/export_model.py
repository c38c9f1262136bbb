"""Turn trained float weights into a complete codec model: integer priors + CDF tables.

`python -m codec export-model --weights RUN/best.npz -o codec/default_model/model.npz [--int8-analysis QAT/last.npz]`
Calibration uses training images only (never Kodak). The rate cost of exactness is measured on the
validation images and written into the model's metadata. --int8-analysis adds the image analysis of a
quantisation-aware run tuned against these weights (quantisation_aware.py), which INT8 graphs are made from.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from . import spatial_context, weights
from .cdf_tables import build_tables
from .data import list_images, spread
from .errors import CodecError
from .imageio import read_rgb
from .integer_prior import convert
from .lambdas import index_of_lambda, lambda_of_index
from .model import NestedLatentCodec, anchor_mask, scale_table
from .runtime import CONTEXT_PREFIX, IMAGE_ANALYSIS, TOP_INDEX_KEY, CodecModel, prior_prefix
from .train import PROJECT_ROOT, load_float

log = logging.getLogger("codec.export")
CALIBRATION_LAMBDAS = (64.0, 256.0, 1024.0, 4096.0, 8192.0)
CALIBRATION_DIRS = ("../shared/data/train", "../shared/data/blades/dtu_nordtank")


def image_tensor(rgb: np.ndarray, max_side: int = 512) -> torch.Tensor:
    h, w = min(rgb.shape[0], max_side) // 16 * 16, min(rgb.shape[1], max_side) // 16 * 16
    y0, x0 = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
    crop = rgb[y0:y0 + h, x0:x0 + w]
    return torch.from_numpy(crop.transpose(2, 0, 1).copy()).float().div(255).unsqueeze(0)


def calibration_images(per_dir: int = 8, dirs=CALIBRATION_DIRS) -> list:
    images = []
    for d in dirs:
        paths = list_images(PROJECT_ROOT / d)
        images += [image_tensor(read_rgb(p)) for p in spread(paths, per_dir)]
    if not images:
        raise CodecError(f"no calibration images found under {', '.join(map(str, dirs))}")
    return images


@torch.no_grad()
def decoded_latents(net: NestedLatentCodec, images) -> list:
    """(decoded latents of every level, λ) over the calibration images and λ values: what the priors and the
    spatial context see."""
    out = []
    for x in images:
        for lam in CALIBRATION_LAMBDAS:
            lam_t = torch.tensor([lam])
            out.append((net.top_down(net.analysis(x, lam_t), noisy=False, lam=lam_t)[0], lam))
    return out


def prior_inputs(decoded: list, level: int) -> list:
    """(z_{level+1}, λ) pairs: the input of the prior of `level`."""
    return [(z_hat[level + 1], lam) for z_hat, lam in decoded]


def context_inputs(decoded: list) -> list:
    """Decoded z1 at the anchors (the rest zeroed), as the spatial context sees it."""
    return [z_hat[0] * anchor_mask(*z_hat[0].shape[-2:]) for z_hat, _ in decoded]


def build_model_arrays(net: NestedLatentCodec, images) -> dict:
    cfg = net.cfg
    if net.top_prior is not None:   # the coder sees the rounded index: so does the float model
        index = net.top_prior.index().detach().round().clamp(0, cfg.num_scales - 1)
        net.top_prior.set_index(index)
    arrays = weights.float_arrays(net.state_dict())
    # The float weights are stored as float16: calibrate what the decoder will actually load.
    net.load_state_dict(weights.float_state_dict(arrays))
    decoded = decoded_latents(net, images)   # one analysis per image and λ for every calibration below
    for level in range(len(net.priors)):
        prior_lambda = net.prior_lambda[level] if net.prior_lambda is not None else None
        prior = convert(net.priors[level], prior_inputs(decoded, level), cfg.mean_grid, cfg.num_scales,
                        prior_lambda)
        prior.check_bounds()
        arrays.update(prior.arrays(prior_prefix(level)))
    if net.context is not None:
        arrays.update(spatial_context.convert(net.context, context_inputs(decoded), cfg.mean_grid)
                      .arrays(CONTEXT_PREFIX))
    if net.top_prior is not None:
        arrays[TOP_INDEX_KEY] = index.numpy().astype(np.int32)
    for key, value in build_tables(scale_table(cfg)).items():
        arrays["tables/" + key] = value
    return arrays


@torch.no_grad()
def exactness_cost(model: CodecModel, images, lambdas=(64.0, 1024.0, 8192.0)) -> dict:
    """Bits of the integer path (ideal code length of its tables) vs the float model's estimate: over all
    λ, and per λ ("per_lambda"), since the total is mostly the highest rate's while a BD-rate weighs every λ
    alike (the low rates pay the most: model card, "Rate cost of exactness")."""
    per_lambda = [_exactness_at(model, images, index_of_lambda(lam)) for lam in lambdas]
    float_bits, int_bits = (sum(p[k] for p in per_lambda) for k in ("float_bits", "integer_bits"))
    return {**_cost(float_bits, int_bits),
            "per_lambda": [{"lambda": float(lam), **_cost(p["float_bits"], p["integer_bits"])}
                           for lam, p in zip(lambdas, per_lambda)]}


def _exactness_at(model: CodecModel, images, index: int) -> dict:
    """Float and integer bits over the images at one grid λ (both paths at the λ the coder uses)."""
    from .latent_coding import quantise
    from . import rans

    float_bits = int_bits = 0.0
    for x in images:
        out = model.torch_model(x, torch.tensor([lambda_of_index(index)]), noisy=False)
        float_bits += float(sum(b.sum() for b in out["bits"]))
        values, tables, _ = quantise([y[0].numpy() for y in out["ys"]], model, index)
        int_bits += rans.ideal_bits(values, tables, model.tables["cdfs"], model.tables["lengths"],
                                    model.tables["offsets"])
    return {"float_bits": float_bits, "integer_bits": int_bits}


def _cost(float_bits: float, int_bits: float) -> dict:
    return {"float_bits": round(float_bits), "integer_bits": round(int_bits),
            "cost_percent": round(100 * (int_bits / float_bits - 1), 3)}


def int8_analysis_arrays(arrays: dict, tuned_path) -> tuple[dict, dict]:
    """(arrays, training info) of the image analysis of a quantisation-aware run (quantisation_aware.py),
    checked to have been tuned against the float weights in `arrays`: everything else must be equal."""
    tuned, info = load_float(tuned_path)
    theirs = weights.float_arrays(tuned.state_dict())
    if theirs.keys() != {k for k in arrays if k.startswith(weights.FLOAT_PREFIX)}:
        raise CodecError(f"{tuned_path}: the INT8 analysis is of another model configuration")
    image = weights.FLOAT_PREFIX + IMAGE_ANALYSIS
    differ = [k for k, v in theirs.items() if not k.startswith(image) and not np.array_equal(v, arrays[k])]
    if differ:
        raise CodecError(f"{tuned_path}: not tuned against these weights ({differ[0][len(weights.FLOAT_PREFIX):]} "
                         "differs); an INT8 analysis must leave the synthesis and priors as they are")
    return {weights.INT8_PREFIX + k[len(weights.FLOAT_PREFIX):]: v for k, v in theirs.items()
            if k.startswith(image)}, info


EQUALISATION_PHOTOS = "../shared/data/train"   # beside the INT8 calibration set: varied photos, 256 px crops


def equalise_for_int8(net) -> dict | None:
    """Cross-layer equalisation of the image analysis (activation_equalisation.py) on the INT8 calibration
    set and on varied training photos: the same function, balanced channel ranges in the INT8 graph. None
    when its GDNs do not fold."""
    from calibration.calibration_set import CalibrationSet   # calibration builds on codec: imported late
    from .activation_equalisation import GAMMA_REACH, equalise, floor_gamma_recorded
    from .inference_analysis import diagonal_gdns, foldable
    from .quantisation_aware import Calibration

    image = net.analysis.image
    if not diagonal_gdns(image):
        return None
    calibration = Calibration(CalibrationSet())
    varied = Calibration(CalibrationSet(PROJECT_ROOT / EQUALISATION_PHOTOS, count=32, crop=(256, 256)))
    sample_sets = [calibration.samples, varied.samples]
    floored = floor_gamma_recorded(image, sample_sets)   # before the fold check: a γ at exactly 0 (step 75,900) too
    if not foldable(image):
        return None
    result = equalise(image, net.cfg, sample_sets, calibration.percentile, floored)
    # the record lets training start again from the weights it had (activation_equalisation.undo_equalisation)
    return {**result, "gamma_reach": GAMMA_REACH, "gammas_lifted": len(floored),
            "gamma_params_before_floor": floored}


def export(weights_path, out_path, val_dir="../shared/data/blades/drone_frames", val_images=6,
           int8_analysis=None) -> dict:
    net, train_info = load_float(weights_path)
    net.eval()
    equalisation = equalise_for_int8(net)
    arrays = build_model_arrays(net, calibration_images())
    meta = {"config": net.cfg.to_dict(), "train": train_info, "source": str(weights_path),
            "int8_equalisation": equalisation}
    if int8_analysis:
        int8_arrays, int8_info = int8_analysis_arrays(arrays, int8_analysis)
        arrays.update(int8_arrays)
        meta["int8_analysis"] = {"source": str(int8_analysis), "train": int8_info}
    weights.save_arrays(out_path, arrays, meta)
    model = CodecModel.load(out_path)
    val = [image_tensor(read_rgb(p), 768) for p in list_images(PROJECT_ROOT / val_dir)[:val_images]]
    if val:
        meta["exactness"] = exactness_cost(model, val)
        weights.save_arrays(out_path, arrays, meta)
    return meta


def main(args):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    meta = export(args.weights, args.output, int8_analysis=args.int8_analysis)
    print(f"wrote {args.output}; rate cost of the integer prior: {cost_line(meta.get('exactness'))}")


def cost_line(exactness: dict | None) -> str:
    """The cost in one line, e.g. "+0.42 % (λ 64 +1.00 %, λ 1024 +0.54 %, λ 8192 +0.33 %)"; files exported
    before session 51 have no per-λ figures."""
    if not exactness:
        return "not measured (no validation images)"
    per = ", ".join(f"λ {p['lambda']:g} {p['cost_percent']:+.2f} %" for p in exactness.get("per_lambda", []))
    return f"{exactness['cost_percent']:+.2f} %" + (f" ({per})" if per else "")
