"""bench-curve: the power-law fit of BD-rate against training steps, on constructed and on the shipped history."""
import math

import pytest

from codec.bench.learning_curve import HISTORY, fit, read_history, report
from codec.cli import main as cli_main
from codec.errors import CodecError


def power_law_rows(a, b, steps):
    """Rows whose BD-rates lie exactly on ln(1 + BD) = a + b·ln(step), Kodak at half the exponent."""
    return [{"model": f"m{s}", "step": s, "blades": 100 * math.expm1(a + b * math.log(s)),
             "kodak": 100 * math.expm1(a + 0.5 * b * math.log(s))} for s in steps]


def test_fit_recovers_an_exact_power_law_and_inverts_it():
    rows = power_law_rows(3.0, -0.25, [10_000, 30_000, 90_000, 200_000])
    law = fit([r["step"] for r in rows], [r["blades"] for r in rows])
    assert law.b == pytest.approx(-0.25, abs=1e-9) and law.a == pytest.approx(3.0, abs=1e-8)
    assert law.rms < 1e-9 and law.points == 4
    # BD 0 % where a + b·ln(step) = 0, i.e. step = e^12; the inverse and the forward map agree.
    assert law.steps_for(0.0) == pytest.approx(math.exp(12.0), rel=1e-6)
    assert law.bd_rate(law.steps_for(-30.0)) == pytest.approx(-30.0, abs=1e-6)


def test_a_curve_that_does_not_fall_never_reaches_a_target():
    law = fit([1_000, 2_000, 4_000], [50.0, 50.0, 50.0])
    assert law.b == pytest.approx(0.0, abs=1e-12) and law.steps_for(-30.0) == math.inf


def test_too_few_or_impossible_points_are_refused():
    with pytest.raises(CodecError, match="at least 3"):
        fit([1_000, 2_000], [50.0, 40.0])
    with pytest.raises(CodecError, match="above -100"):
        fit([1_000, 2_000, 3_000], [50.0, 40.0, -100.0])


def test_a_bad_history_line_is_named(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("model,step,session,blades,kodak\na,1000,1,50,40\nb,oops,2,45,35\n")
    with pytest.raises(CodecError, match=r"line 3: needs an integer step"):
        read_history(path)
    with pytest.raises(CodecError, match="no such history file"):
        read_history(tmp_path / "missing.csv")


def test_report_through_the_command_line(tmp_path, capsys):
    rows = power_law_rows(3.0, -0.25, [5_000, 40_000, 80_000, 120_000])
    path = tmp_path / "h.csv"
    path.write_text("model,step,session,blades,kodak\n" + "".join(
        f"{r['model']},{r['step']},0,{r['blades']},{r['kodak']}\n" for r in rows))
    assert cli_main(["bench-curve", "--history", str(path), "--since", "40000", "--steps-per-s", "1"]) == 0
    out = capsys.readouterr().out
    assert "over the 3 models from step 40,000" in out
    # Blades reach 0 % at e^12 steps: (e^12 - 120,000) steps at 1 step/s, in days.
    to_go = math.exp(12.0) - 120_000
    assert f"| blades | -0.250 | 0.0000 |" in out and f"| {to_go:,.0f} | {to_go / 86400:.1f} |" in out
    assert report(rows, 0, 1.0).count("| kodak |") == 2


def test_the_shipped_history_falls_smoothly_since_the_last_architecture_change():
    rows = read_history(HISTORY)
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    used = [r for r in rows if r["step"] >= 36_000]
    for dataset in ("blades", "kodak"):
        law = fit([r["step"] for r in used], [r[dataset] for r in used])
        assert law.b < 0 and law.rms < 0.05, (dataset, law)
