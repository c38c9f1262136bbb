"""`python -m codec bench-runs RUN [RUN ...]`: rate-distortion of training runs against the first one.

Reads what each run's final validation wrote into its model file (`last.npz`, or a given .npz): the
entropy-coded bpp (whole files) and PSNR at each validation λ. Runs compared must have been validated on the
same frames at the same λs, by the same encoder; the table says BD-rate (PSNR) and BD-PSNR of every run
against the first. `--recode` codes every run's weights again with today's encoder instead of reading the
records: needed when a record predates an encoder change (the rate-aware rounding of session 20 alone is
worth about -1.1 % on these frames, as much as a session of training).
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import weights
from ..errors import CodecError
from .metrics import bd_psnr, bd_rate

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def model_file(path) -> Path:
    path = Path(path).expanduser()
    file = path / "last.npz" if path.is_dir() else path
    if not file.is_file():
        raise CodecError(f"{file}: no such model file (a run writes last.npz at its validations)")
    return file


def read_run(path) -> dict:
    """{'name', 'step', 'wall', 'points': {λ: (bpp, psnr)}, 'coder'} of a run directory or a model file."""
    file = model_file(path)
    info = weights.load_arrays(file)[1].get("train", {})
    coded = info.get("val_coded")
    if not coded:
        raise CodecError(f"{file}: no entropy-coded validation recorded (train with val_coded: true)")
    return _record(path, info, coded, info.get("val_coder"))


def recode_run(path, validator) -> dict:
    """The same record, measured now by today's encoder on the validator's frames. An exported model file codes
    as it ships: with its own priors, and its INT8 equalisation and γ floor, which change its function a little
    (until session 34 the floor cost lineage C 0.4 dB at λ 8192). A run's float weights code as validation does."""
    from ..runtime import CodecModel
    from ..train import Validator, load_float

    file = model_file(path)
    arrays, meta = weights.load_arrays(file)
    if any(k.startswith("tables/") for k in arrays):   # the entropy coder's tables: an exported file
        return _record(path, meta.get("train", {}), validator.coded_file(CodecModel(arrays, meta, file)),
                       Validator.coder())
    net, info = load_float(file)
    return _record(path, info, validator.coded(net), Validator.coder())


def _record(path, info: dict, coded: dict, coder) -> dict:
    return {"name": Path(path).expanduser().name, "step": info.get("step"), "wall": info.get("wall_seconds"),
            "points": {float(lam): tuple(v) for lam, v in coded.items()}, "coder": coder}


def _coder_text(coder) -> str:
    return "not recorded (validated before session 22)" if coder is None else json.dumps(coder, sort_keys=True)


def table(runs: list[dict]) -> str:
    base = runs[0]
    lambdas = sorted(base["points"])
    for run in runs[1:]:
        if sorted(run["points"]) != lambdas:
            raise CodecError(f"{run['name']} was validated at other λs than {base['name']}")
    if len({_coder_text(r.get("coder")) for r in runs}) > 1:
        raise CodecError("the runs were entropy-coded by different encoders (" + "; ".join(
            f"{r['name']}: {_coder_text(r.get('coder'))}" for r in runs) + "): compare them with --recode")
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
    if not args.recode:
        print(table([read_run(p) for p in args.runs]))
        return
    from ..train import TrainConfig, Validator

    validator = Validator(TrainConfig.from_yaml(args.config or DEFAULT_CONFIG))
    if not validator.images:
        raise CodecError("--recode: no validation frames (the config's val_dir is missing or empty)")
    print(table([recode_run(p, validator) for p in args.runs]))
