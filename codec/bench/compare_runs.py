"""`python -m codec bench-runs RUN [RUN ...]`: rate-distortion of training runs against the first one.

Reads what each run's final validation wrote into its model file (`last.npz`, or a given .npz): the
entropy-coded bpp (whole files) and PSNR at each validation λ. Runs compared must have been validated on the
same frames at the same λs; the table says BD-rate (PSNR) and BD-PSNR of every run against the first.
"""
from __future__ import annotations

from pathlib import Path

from .. import weights
from ..errors import CodecError
from .metrics import bd_psnr, bd_rate


def read_run(path) -> dict:
    """{'name', 'step', 'wall', 'points': {λ: (bpp, psnr)}} of a run directory or a model file."""
    path = Path(path).expanduser()
    file = path / "last.npz" if path.is_dir() else path
    if not file.is_file():
        raise CodecError(f"{file}: no such model file (a run writes last.npz at its validations)")
    info = weights.load_arrays(file)[1].get("train", {})
    coded = info.get("val_coded")
    if not coded:
        raise CodecError(f"{file}: no entropy-coded validation recorded (train with val_coded: true)")
    points = {float(lam): tuple(v) for lam, v in coded.items()}
    return {"name": path.name, "step": info.get("step"), "wall": info.get("wall_seconds"), "points": points}


def table(runs: list[dict]) -> str:
    base = runs[0]
    lambdas = sorted(base["points"])
    for run in runs[1:]:
        if sorted(run["points"]) != lambdas:
            raise CodecError(f"{run['name']} was validated at other λs than {base['name']}")
    head = "| run | step | " + " | ".join(f"λ{lam:g} bpp/dB" for lam in lambdas) + \
        f" | BD-rate vs {base['name']} | BD-PSNR |"
    rows = [head, "|" + "---|" * (len(lambdas) + 4)]
    for run in runs:
        rates = [run["points"][lam][0] for lam in lambdas]
        psnrs = [run["points"][lam][1] for lam in lambdas]
        base_rates = [base["points"][lam][0] for lam in lambdas]
        base_psnrs = [base["points"][lam][1] for lam in lambdas]
        bdr, bdp = bd_rate(base_rates, base_psnrs, rates, psnrs), bd_psnr(base_rates, base_psnrs, rates, psnrs)
        cells = " | ".join(f"{r:.3f}/{p:.2f}" for r, p in zip(rates, psnrs))
        rows.append(f"| {run['name']} | {run['step']} | {cells} | {_fmt(bdr, '%')} | {_fmt(bdp, ' dB')} |")
    return "\n".join(rows)


def _fmt(value, unit: str) -> str:
    return "n/a (no overlap)" if value is None else f"{value:+.2f}{unit}"


def main(args):
    print(table([read_run(p) for p in args.runs]))
