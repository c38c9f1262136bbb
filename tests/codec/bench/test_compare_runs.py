"""bench-runs: coded validation figures of real (tiny) training runs, BD-rate against the first run."""
import copy
import re

import pytest
import torch
import yaml

from codec import weights
from codec.bench.compare_runs import read_run, recode_run, table
from codec.cli import main as cli_main
from codec.errors import CodecError
from codec.export_model import build_model_arrays, calibration_images
from codec.rate_aware_rounding import DEFAULT_BETA
from codec.runtime import CodecModel
from codec.train import TrainConfig, Validator, load_float, train
from tests.codec.test_train import config


def test_two_runs_compare_and_mismatches_are_refused(tmp_path, folders):
    short = config(tmp_path, folders, run_dir=str(tmp_path / "short"), steps=2)
    longer = config(tmp_path, folders, run_dir=str(tmp_path / "longer"), steps=8)
    train(TrainConfig(**short))
    train(TrainConfig(**longer))
    runs = [read_run(tmp_path / "short"), read_run(tmp_path / "longer")]
    assert runs[0]["step"] == 2 and runs[1]["step"] == 8 and sorted(runs[1]["points"]) == [64.0, 4096.0]
    text = table(runs)
    lines = text.splitlines()
    assert lines[0].startswith("| run | step | λ64 bpp/dB | λ4096 bpp/dB | BD-rate vs short")
    # A run against itself is 0 %; the other run's figure is a number or an explicit no-overlap.
    assert "| short | 2 |" in lines[2] and "+0.00%" in lines[2]
    assert re.search(r"\| longer \| 8 \| .* \| ([+-]\d+\.\d\d%|n/a \(no overlap\)) \|", lines[3]), lines[3]

    other = config(tmp_path, folders, run_dir=str(tmp_path / "other"), steps=2, val_lambdas=[64, 256])
    train(TrainConfig(**other))
    with pytest.raises(CodecError, match="validated at other λs"):
        table([runs[0], read_run(tmp_path / "other")])
    uncoded = config(tmp_path, folders, run_dir=str(tmp_path / "uncoded"), steps=2, val_coded=False)
    train(TrainConfig(**uncoded))
    with pytest.raises(CodecError, match="no entropy-coded validation"):
        read_run(tmp_path / "uncoded")
    with pytest.raises(CodecError, match="no such model file"):
        read_run(tmp_path / "absent")


def test_recode_reproduces_the_record_and_mixed_encoders_are_refused(tmp_path, folders, capsys):
    cfg = config(tmp_path, folders, run_dir=str(tmp_path / "short"), steps=2)
    train(TrainConfig(**cfg))
    recorded = read_run(tmp_path / "short")
    assert recorded["coder"] == Validator.coder() and recorded["coder"]["rate_aware_beta"] == DEFAULT_BETA
    again = recode_run(tmp_path / "short", Validator(TrainConfig(**cfg)))
    assert again["points"] == recorded["points"] and again["step"] == 2   # the same encoder: the same bytes

    older = dict(recorded, name="older", coder=None)   # a record from before encoders were recorded
    with pytest.raises(CodecError, match=r"different encoders \(older: not recorded .*short: .*--recode"):
        table([older, recorded])

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["bench-runs", "--recode", "--config", str(path), str(tmp_path / "short"),
                     str(tmp_path / "short" / "last.npz")]) == 0
    out = capsys.readouterr().out
    assert "| short | 2 |" in out and "| last.npz | 2 |" in out and out.count("+0.00%") == 2, out


def test_recode_codes_an_exported_file_as_it_ships(tmp_path, folders):
    """Not the weights load_float gives back, with the export's equalisation and γ floor undone: until session
    34 the floor coded lineage C's file 0.4 dB worse at λ 8192 than those weights, and --recode could not see it."""
    cfg = config(tmp_path, folders, run_dir=str(tmp_path / "short"), steps=2)
    train(TrainConfig(**cfg))
    validator = Validator(TrainConfig(**cfg))
    net, info = load_float(tmp_path / "short" / "last.npz")
    with torch.no_grad():   # two steps leave the latents at 0: louder ones, so that the analysis shows
        net.analysis.image.convs[-1].weight.mul_(50.0)   # then priors calibrated as validation calibrates them
        arrays = build_model_arrays(copy.deepcopy(net).eval(), calibration_images(2, validator.calibration_dirs))
    gdns = net.analysis.image.gdns
    # an export's record: GDN 0's channel 0 was floored from a γ parameter of 3, which load_float puts back
    record = {"scales": [[1.0] * len(g.beta_param) for g in gdns], "gamma_params_before_floor": [[0, 0, 3.0]]}
    for name, equalisation in (("plain.npz", None), ("floored.npz", record)):
        weights.save_arrays(tmp_path / name, arrays, {"config": net.cfg.to_dict(), "train": info,
                                                      "int8_equalisation": equalisation})
    assert recode_run(tmp_path / "plain.npz", validator)["points"] == validator.coded(net)
    as_file = validator.coded_file(CodecModel.load(tmp_path / "floored.npz"))
    recoded = recode_run(tmp_path / "floored.npz", validator)
    assert recoded["points"] == {float(lam): v for lam, v in as_file.items()} and recoded["step"] == 2
    assert validator.coded(load_float(tmp_path / "floored.npz")[0]) != as_file   # the floor undone codes otherwise


def test_recode_without_validation_frames_is_one_clear_error(tmp_path, folders, capsys):
    cfg = config(tmp_path, folders, run_dir=str(tmp_path / "short"), steps=2, val_coded=False)
    train(TrainConfig(**cfg))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(dict(cfg, val_dir=str(tmp_path / "nowhere"))))
    assert cli_main(["bench-runs", "--recode", "--config", str(path), str(tmp_path / "short")]) == 1
    assert "no validation frames" in capsys.readouterr().err
