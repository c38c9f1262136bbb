"""`python -m codec bench-train`: training steps/s and pixels/s for CPU training variants, measured one
after another in this process on the same random crops. Run it on an otherwise idle machine."""
from __future__ import annotations

import time

import numpy as np
import torch

from ..layers import SimplifiedGDN, use_elementwise_gdns
from ..model import ModelConfig, NestedLatentCodec
from ..train import rd_loss, sample_lambdas

VARIANTS = {
    "baseline": {},
    "channels_last": {"channels_last": True},
    "one_thread": {"threads": 1},
    "crop128_batch16": {"crop": 128, "batch": 16},
    "crop384_batch2": {"crop": 384, "batch": 2},
    "compile": {"compile": True},
    "bf16": {"bf16": True},
    "compile_bf16": {"compile": True, "bf16": True},
    # the default run's GDNs: Γ exactly diagonal (lift_stuck_gdn: false), computed per element
    "compile_bf16_diagonal": {"compile": True, "bf16": True, "diagonal_gdn": True},
    # the same in float32, for CPUs without bfloat16 instructions (AVX2 only), where bf16 is emulated
    "diagonal": {"diagonal_gdn": True},
    "compile_diagonal": {"compile": True, "diagonal_gdn": True},
    "compile_channels_last_diagonal": {"compile": True, "channels_last": True, "diagonal_gdn": True},
    "bf16_diagonal": {"bf16": True, "diagonal_gdn": True},
}


def diagonal_gdns(net):
    """Zero Γ's off-diagonal, as in every model trained without the pedestal, and compute it per element."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, SimplifiedGDN):
                m.gamma_param.mul_(torch.eye(m.gamma_param.shape[0]).view_as(m.gamma_param))
    use_elementwise_gdns(net)


def measure(variant: dict, steps: int, warmup: int, model_cfg: dict) -> dict:
    crop, batch = variant.get("crop", 256), variant.get("batch", 4)
    torch.set_num_threads(variant.get("threads", 2))
    torch.manual_seed(0)
    net = NestedLatentCodec(ModelConfig(**model_cfg))
    fmt = torch.channels_last if variant.get("channels_last") else torch.contiguous_format
    net = net.to(memory_format=fmt)
    if variant.get("diagonal_gdn"):
        diagonal_gdns(net)
    step_fn = torch.compile(net) if variant.get("compile") else net
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    x = torch.rand(batch, 3, crop, crop).contiguous(memory_format=fmt)
    times = []
    for i in range(warmup + steps):
        lam = sample_lambdas(rng, batch, 64, 8192)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.get("bf16", False)):
            out = step_fn(x, lam, bound=True)
        loss, _, _ = rd_loss(out, x, lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    return {"steps_per_s": 1 / sec, "pixels_per_s": batch * crop * crop / sec}


def main(args):
    print("| variant | steps/s | Mpixels/s | vs baseline |\n|---|---|---|---|")
    base = None
    for name in args.variants:
        r = measure(VARIANTS[name], args.steps, args.warmup, {})
        base = base or r["pixels_per_s"]
        print(f"| {name} | {r['steps_per_s']:.3f} | {r['pixels_per_s'] / 1e6:.3f} | "
              f"{r['pixels_per_s'] / base:.2f}x |", flush=True)
