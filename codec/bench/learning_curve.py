"""`python -m codec bench-curve`: how many training steps the company's targets would take at this pace.

Reads the shipped models' history (docs/results/learning_curve.csv: the training step of each shipped model
and its BD-rate against HEIC in PSNR, plain rounding, from the full benchmark of its session) and fits a
power law to the rate ratio,
    ln(1 + BD) = a + b · ln(step),
the shape the main line has followed since its architecture last changed (session 8, step 36,000). The fit
says at which step each BD-rate target would be reached if the line kept its pace, and how long that is at a
given training speed. An extrapolation, not a measurement: it assumes nothing caps the curve, while z1's
width does cap its top ("What limits the model" in the model card), so the far targets are optimistic.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CodecError

HISTORY = Path(__file__).resolve().parents[2] / "docs" / "results" / "learning_curve.csv"
TARGETS = {"blades": [0.0, -30.0], "kodak": [0.0, -25.0]}   # BD-rate vs HEIC, %: parity, the company's goal


@dataclass
class PowerLaw:
    a: float
    b: float          # the exponent: d ln(1 + BD) / d ln(step)
    rms: float        # residual of the fit in ln(1 + BD)
    points: int

    def bd_rate(self, step: float) -> float:
        return 100 * math.expm1(self.a + self.b * math.log(step))

    def steps_for(self, bd_rate: float) -> float:
        """The step where the fitted curve reaches bd_rate (%); inf when it never gets there."""
        if self.b >= 0:
            return math.inf
        log_step = (math.log1p(bd_rate / 100) - self.a) / self.b
        return math.exp(log_step) if log_step < 700 else math.inf   # a flat fit: beyond any horizon


def read_history(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"{path}: no such history file")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for line, r in enumerate(rows, start=2):
        try:
            r["step"] = int(r["step"])
            for dataset in TARGETS:
                r[dataset] = float(r[dataset])
        except (KeyError, TypeError, ValueError):
            raise CodecError(f"{path} line {line}: needs an integer step and numeric "
                             f"{' and '.join(TARGETS)} BD-rates") from None
    return rows


def fit(steps, bd_rates) -> PowerLaw:
    """Least squares in (ln step, ln(1 + BD)); BD-rates in %."""
    steps, bd = np.asarray(steps, float), np.asarray(bd_rates, float)
    if len(steps) < 3:
        raise CodecError(f"a learning curve needs at least 3 measured models, got {len(steps)}")
    if (steps <= 0).any() or (bd <= -100).any():
        raise CodecError("steps must be positive and BD-rates above -100 %")
    x, y = np.log(steps), np.log1p(bd / 100)
    b, a = np.polyfit(x, y, 1)
    rms = float(np.sqrt(np.mean((y - (a + b * x)) ** 2)))
    return PowerLaw(float(a), float(b), rms, len(steps))


def report(rows: list[dict], since: int, steps_per_s: float) -> str:
    used = [r for r in rows if r["step"] >= since]
    lines = [f"Power law ln(1 + BD) = a + b·ln(step) over the {len(used)} models from step {since:,}; "
             f"days of training at {steps_per_s:g} steps/s:", "",
             "| dataset | exponent b | rms | BD-rate now (fit) | target | step | steps to go | days |",
             "|---|---|---|---|---|---|---|---|"]
    last = max(r["step"] for r in used)
    for dataset, targets in TARGETS.items():
        law = fit([r["step"] for r in used], [r[dataset] for r in used])
        for target in targets:
            at = law.steps_for(target)
            days = (at - last) / steps_per_s / 86400
            lines.append(f"| {dataset} | {law.b:.3f} | {law.rms:.4f} | {law.bd_rate(last):+.1f} % | "
                         f"{target:+.0f} % | {at:,.0f} | {at - last:,.0f} | {days:.1f} |")
    return "\n".join(lines)


def main(args):
    print(report(read_history(args.history or HISTORY), args.since, args.steps_per_s))
