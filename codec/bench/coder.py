"""`python -m codec bench-coder`: rANS throughput and overhead on the symbols real photos produce, and the
integer priors' speed on the 8-bit path against the float64 reference (identical integers required)."""
from __future__ import annotations

import time

import numpy as np

from .. import rans
from ..data import list_images, spread
from ..imageio import read_rgb
from ..integer_prior import IntegerPrior
from ..latent_coding import quantise
from ..lambdas import index_of_lambda, lambda_of_index
from ..runtime import CodecModel
from ..spatial_context import IntegerContext, anchors
from ..tiling import TileGeometry, analyse
from ..transforms import TorchTransforms


def photo_symbols(model: CodecModel, paths, lambdas=(64, 1024, 8192)):
    """(values, tables, (decoded latents, λ index) pairs, megapixels) of every photo at every λ, as the encoder
    codes them."""
    values, tables, latents, mp = [], [], [], 0.0
    for path in paths:
        pixels = read_rgb(path)
        g = TileGeometry(pixels.shape[1], pixels.shape[0], 4096, model.cfg.levels)
        for lam in lambdas:
            index = index_of_lambda(lam)
            t = TorchTransforms(model.torch_model, lambda_of_index(index))
            ys = analyse(t.image, t.latent, pixels, g)
            v, tb, zq = quantise(ys, model, index)
            values.append(v)
            tables.append(tb)
            latents.append((zq, index))
            mp += pixels.shape[0] * pixels.shape[1] / 1e6
    return np.concatenate(values), np.concatenate(tables), latents, mp


def prior_speed(model: CodecModel, latents, megapixels: float) -> dict:
    """Seconds per megapixel of all the integer priors of a photo (and the spatial context of models with
    one), per path; both must give the same integers."""
    reference = [IntegerPrior(p.layers, p.num_scales, p.act_max, int8=False) for p in model.priors]
    context = model.context and IntegerContext(model.context.layers, int8=False)
    times, outputs = {}, {}
    for name, nets in (("8-bit", (model.priors, model.context)), ("float64 reference", (reference, context))):
        _run_priors(*nets, latents[:1])   # compile (numba) before timing
        t0 = time.perf_counter()
        outputs[name] = _run_priors(*nets, latents)
        times[name] = (time.perf_counter() - t0) / megapixels
    same = all(np.array_equal(a, b) for a, b in zip(*outputs.values()))
    if not same:
        raise AssertionError("the 8-bit integer prior path disagrees with the float64 reference")
    return {"s_per_mp": times, "int8_layers": sum(p.int8_layers for p in model.priors)}


def _run_priors(priors, context, latents) -> list:
    out = []
    for zq, index in latents:
        for level, prior in enumerate(priors):
            out.extend(prior(zq[level + 1], zq[level].shape[-2:], index))
        if context is not None:
            out.extend(context(np.where(anchors(*zq[0].shape[-2:]), zq[0], 0)))
    return out


def throughput(values, tables, model: CodecModel, repeats: int = 3) -> dict:
    args = (model.tables["cdfs"], model.tables["lengths"], model.tables["offsets"])
    words = rans.encode(values[:100], tables[:100], *args)  # compile before timing
    enc, dec = [], []
    out = np.empty_like(values)
    for _ in range(repeats):
        t0 = time.perf_counter()
        words = rans.encode(values, tables, *args)
        t1 = time.perf_counter()
        x, pos, st = rans.start_decoder(words)
        x, pos, st = rans.decode(words, x, pos, tables, *args, out)
        t2 = time.perf_counter()
        assert st == rans.OK and rans.finish_decoder(words, x, pos) == rans.OK and np.array_equal(out, values)
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    ideal = rans.ideal_bits(values, tables, *args)
    return {"symbols": int(values.size), "encode_msym_s": values.size / min(enc) / 1e6,
            "decode_msym_s": values.size / min(dec) / 1e6, "ideal_bits": float(ideal),
            "actual_bits": int(words.size * 32), "overhead_percent": 100 * (words.size * 32 / ideal - 1)}


def main(args):
    model = CodecModel.load(args.model)
    paths = spread(list_images(args.data), args.max_images)
    values, tables, latents, mp = photo_symbols(model, paths)
    r = throughput(values, tables, model)
    print(f"| symbols | encode M sym/s | decode M sym/s | overhead vs ideal code length |\n|---|---|---|---|\n"
          f"| {r['symbols']:,} | {r['encode_msym_s']:.1f} | {r['decode_msym_s']:.1f} | {r['overhead_percent']:.4f} % |")
    r["priors"] = prior_speed(model, latents, mp)
    print(f"\ninteger priors ({r['priors']['int8_layers']} layers on the 8-bit path; identical integers), "
          f"{mp:.2f} MP:\n| path | s/MP |\n|---|---|")
    for name, t in r["priors"]["s_per_mp"].items():
        print(f"| {name} | {t:.4f} |")
    return r
