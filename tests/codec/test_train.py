"""Training: config validation, a few real steps, resuming from a checkpoint or from a model file."""
import copy
import subprocess
import sys

import pytest
import torch
import yaml

from codec.activation_equalisation import gamma_params
from codec.errors import CodecError
from codec.model import ModelConfig, NestedLatentCodec
from codec.train import TrainConfig, counted_from, cpu_has_bf16, learning_rate, precision_for_this_cpu, train
from tests.conftest import PROJECT_ROOT, synthetic_image

TINY = {"levels": 2, "channels": 8, "latent_channels": 8, "prior_channels": 8}


def config(tmp_path, folders, **extra):
    train_dir, val_dir = folders
    cfg = {"run_dir": str(tmp_path / "run"), "sources": [{"path": str(train_dir), "weight": 1.0}], "crop": 64,
           "batch": 2, "steps": 6, "warmup": 2, "checkpoint_every": 3, "val_every": 3, "val_dir": str(val_dir),
           "val_images": 2, "val_lambdas": [64, 4096], "threads": 1, "model": TINY}
    cfg.update(extra)
    return cfg


def test_unknown_key_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"crop": 64, "lerning_rate": 1}))
    with pytest.raises(CodecError, match="unknown key 'lerning_rate'"):
        TrainConfig.from_yaml(path)
    path.write_text(yaml.safe_dump({"model": {"chanels": 3}}))
    with pytest.raises(CodecError, match="model.chanels"):
        TrainConfig.from_yaml(path)

    # values that would only fail at the first validation, hours in
    path.write_text(yaml.safe_dump({"model": {"levels": 7}}))
    with pytest.raises(CodecError, match="model.levels must be 2, 3 or 4, got 7"):
        TrainConfig.from_yaml(path)
    path.write_text(yaml.safe_dump({"val_lambdas": [64, "a"]}))
    with pytest.raises(CodecError, match="val_lambdas must be numbers in \\[64, 8192\\], got 'a'"):
        TrainConfig.from_yaml(path)


def test_trains_checkpoints_and_resumes(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders)))
    run = tmp_path / "run"
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["step"] == 6
    assert (run / "best.npz").exists() and "val step 6" in (run / "train.log").read_text()
    train(TrainConfig(**config(tmp_path, folders, steps=9)))
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 9
    assert "resumed from" in (run / "train.log").read_text()


def test_compiled_training_runs_and_checkpoints(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders, steps=2, compile=True, channels_last=True, val_coded=False)))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["step"] == 2 and not any(k.startswith("_orig_mod") for k in state["model"])


def test_compile_without_a_cxx_compiler_trains_eagerly_and_says_so(monkeypatch, caplog):
    import shutil
    from codec.train import compiled
    monkeypatch.setattr(shutil, "which", lambda name: None)
    model = torch.nn.Linear(2, 2)
    assert compiled(model) is model
    assert "needs a C++ compiler" in caplog.text


def test_validation_codes_real_bytes_and_a_time_budget_stops_the_run(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders, steps=100_000, val_every=1000, time_budget_s=3.0)))
    run = tmp_path / "run"
    step = torch.load(run / "last.pt", weights_only=False)["step"]
    assert 0 < step < 100_000
    log = (run / "train.log").read_text()
    assert f"val step {step} coded: λ64: " in log
    from codec import weights
    coded = weights.load_arrays(run / "last.npz")[1]["train"]["val_coded"]
    estimated = weights.load_arrays(run / "last.npz")[1]["train"]["val"]
    # Real files cost more than the estimate (container, tile side info) but the same order of magnitude.
    for lam in ("64", "4096"):
        assert estimated[lam][0] < coded[lam][0] < 3 * estimated[lam][0] + 0.5
        assert 5 < coded[lam][1] < 60


def test_restarts_from_a_model_file_when_checkpoints_are_gone(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders)))
    model_file = tmp_path / "run" / "best.npz"
    fresh = config(tmp_path, folders, run_dir=str(tmp_path / "run2"), steps=8, init_from=str(model_file))
    train(TrainConfig(**fresh))
    log = (tmp_path / "run2" / "train.log").read_text()
    assert "started from model file" in log
    assert torch.load(tmp_path / "run2" / "last.pt", weights_only=False)["step"] == 8


def last_lr(run):
    """The lr the run's last step trained at, as its checkpoint's optimiser recorded it."""
    return torch.load(run / "last.pt", weights_only=False)["opt"]["param_groups"][0]["lr"]


def test_run_steps_count_from_the_model_files_step_and_not_from_each_resume(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders)))   # best.npz: a model file at step 6
    counted = config(tmp_path, folders, run_dir=str(tmp_path / "run2"), steps=1000, run_steps=3,
                     init_from=str(tmp_path / "run" / "best.npz"))
    train(TrainConfig(**counted))
    run = tmp_path / "run2"
    state = torch.load(run / "last.pt", weights_only=False)
    assert (state["step"], state["start_step"]) == (9, 6)
    assert "3 steps from step 6: ends at step 9" in (run / "train.log").read_text()
    # the cosine runs over the run's own steps, not the 1,000 the config names
    assert last_lr(run) == pytest.approx(learning_rate(counted_from(TrainConfig(**counted), 6), 8))
    assert last_lr(run) < 0.5 * TrainConfig(**counted).lr
    train(TrainConfig(**{**counted, "run_steps": 4}))   # a resume still counts from step 6
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 10


def test_a_branch_with_run_steps_counts_from_the_copied_step_at_the_lr_held_there(tmp_path, folders):
    main_line = config(tmp_path, folders)
    train(TrainConfig(**main_line))
    held = config(tmp_path, folders, run_dir=str(tmp_path / "held"), run_steps=2, hold_lr=True,
                  branch_from=str(tmp_path / "run"))
    train(TrainConfig(**held))
    state = torch.load(tmp_path / "held" / "last.pt", weights_only=False)
    assert (state["step"], state["start_step"]) == (8, 6)
    assert last_lr(tmp_path / "held") == pytest.approx(learning_rate(TrainConfig(**main_line), 6))


def test_run_steps_on_a_checkpoint_without_a_start_step_is_one_line(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders)))
    ckpt = tmp_path / "run" / "last.pt"
    old = torch.load(ckpt, weights_only=False)
    del old["start_step"]   # as every checkpoint before session 45 was saved
    torch.save(old, ckpt)
    with pytest.raises(CodecError, match="its checkpoint predates run_steps .*name steps and decay_start"):
        train(TrainConfig(**config(tmp_path, folders, run_steps=3)))


def test_counted_from_sets_the_end_and_the_schedule_from_the_start_step():
    cfg = TrainConfig(lr=1e-4, lr_end=1e-5, warmup=10, steps=1010, run_steps=100)
    decay = counted_from(cfg, 510)
    assert (decay.steps, decay.decay_start) == (610, 510)
    assert learning_rate(decay, 510) == pytest.approx(1e-4) and learning_rate(decay, 560) == pytest.approx(5.5e-5)
    hold = counted_from(TrainConfig(**{**vars(cfg), "hold_lr": True}), 510)
    assert hold.steps == 610 and hold.lr == hold.lr_end == pytest.approx(5.5e-5)   # the base cosine at 510
    assert counted_from(TrainConfig(steps=1010), 510).steps == 1010   # no run_steps: as written


@pytest.mark.parametrize("settings, message", [
    ("hold_lr: true", "hold_lr holds the lr at the run's start step: set run_steps > 0"),
    ("run_steps: -5", "run_steps must be >= 0, got -5"),
])
def test_hold_lr_without_run_steps_or_negative_run_steps_is_one_line(tmp_path, settings, message):
    (tmp_path / "c.yaml").write_text(settings + "\n")
    with pytest.raises(CodecError, match=message):
        TrainConfig.from_yaml(tmp_path / "c.yaml")


def test_cli_steps_overrides_run_steps_where_the_config_counts_them(tmp_path, folders):
    from codec.cli import main as cli_main
    train(TrainConfig(**config(tmp_path, folders)))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, folders, run_dir=str(tmp_path / "run2"), run_steps=50,
                                          init_from=str(tmp_path / "run" / "best.npz"))))
    assert cli_main(["train", "--config", str(path), "--steps", "2"]) == 0
    assert torch.load(tmp_path / "run2" / "last.pt", weights_only=False)["step"] == 8


def equalised_model_files(tmp_path):
    """A trained model; its export, equalised for INT8, as a file without the record (old.npz) and with it."""
    from codec import weights
    from codec.activation_equalisation import rescale_channels
    from tests.codec.test_quantisation_aware import diagonal_model
    trained = diagonal_model()
    with torch.no_grad():
        gamma_params(trained.analysis.image.gdns[1])[3] = 1e-3   # trained to ~0
        net = copy.deepcopy(trained)
        gamma_params(net.analysis.image.gdns[1])[3] = 0.1        # the export's floor
        scales = [torch.linspace(0.1, 10.0, 8), torch.linspace(4.0, 0.25, 8), torch.full((8,), 2.0)]
        for gdn, film, e in zip(net.analysis.image.gdns, net.analysis.image.films, scales):
            rescale_channels(gdn, film, e)
    record = {"scales": [e.tolist() for e in scales], "gamma_params_before_floor": [[1, 3, 1e-3]]}
    for name, meta in (("old.npz", {}), ("new.npz", {"int8_equalisation": record})):
        weights.save_arrays(tmp_path / name, weights.float_arrays(net.state_dict()),
                            {"config": net.cfg.to_dict(), "train": {"step": 5}, **meta})
    return trained


def test_a_start_from_an_equalised_model_file_returns_to_the_weights_training_had(tmp_path):
    """Session 25: restarted from the INT8-equalised file, the main line lost 6.9 % more in 1,000 steps."""
    from codec.train import _load_state
    from tests.codec.test_quantisation_aware import TINY as DIAGONAL
    trained = equalised_model_files(tmp_path)
    started = {}
    for name in ("old.npz", "new.npz"):
        model = NestedLatentCodec(ModelConfig(**DIAGONAL))
        cfg = TrainConfig(run_dir=str(tmp_path / name), init_from=str(tmp_path / name), model=DIAGONAL)
        assert _load_state(cfg, tmp_path / name, model, None, None)[0] == 5
        started[name] = dict(model.analysis.image.named_parameters())
    for key, value in trained.analysis.image.named_parameters():
        assert torch.allclose(started["new.npz"][key], value, rtol=2e-3, atol=2e-3), key   # float16 file
    gamma = started["old.npz"]["gdns.1.gamma_param"]
    assert not torch.allclose(gamma, trained.analysis.image.gdns[1].gamma_param, rtol=2e-3, atol=2e-3)


def test_init_keep_takes_the_named_layers_and_starts_the_rest_random_at_step_0(tmp_path):
    """Lineage C: the outer layers of a narrow, INT8-equalised model file (equalisation undone, as training
    had them); everything touching a wider z1 from scratch."""
    from codec.train import _load_state
    from tests.codec.test_quantisation_aware import TINY as DIAGONAL
    trained = equalised_model_files(tmp_path).state_dict()
    wide_cfg = {**DIAGONAL, "z1_channels": 12}
    keep = ["analysis.image.convs.1.", "analysis.image.gdns.", "synthesis.convs.1."]
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), init_from=str(tmp_path / "new.npz"), init_keep=keep,
                      model=wide_cfg)
    model = NestedLatentCodec(ModelConfig(**wide_cfg))
    fresh = copy.deepcopy(model.state_dict())
    assert _load_state(cfg, tmp_path / "run", model, None, None)[0] == 0
    for name, value in model.state_dict().items():
        if any(name.startswith(p) for p in keep):
            assert torch.allclose(value, trained[name], rtol=2e-3, atol=2e-3), name   # float16 file
        else:
            assert torch.equal(value, fresh[name]), name
    assert model.state_dict()["analysis.image.convs.3.weight"].shape[0] == 12


def test_init_keep_that_matches_nothing_or_another_shape_is_one_line(tmp_path):
    from codec.train import _load_state, export_float_model
    export_float_model(NestedLatentCodec(ModelConfig(**TINY)), tmp_path / "narrow.npz", {"step": 5})
    wide_cfg = {**TINY, "z1_channels": 12}
    misfit = "analysis.image.convs.3.weight does not fit the configured model"
    for keep, message in ((["analysis.imagee."], "no parameter of"), (["analysis.image.convs.3."], misfit)):
        cfg = TrainConfig(run_dir=str(tmp_path / "run"), init_from=str(tmp_path / "narrow.npz"), init_keep=keep,
                          model=wide_cfg)
        with pytest.raises(CodecError, match=message):
            _load_state(cfg, tmp_path / "run", NestedLatentCodec(ModelConfig(**wide_cfg)), None, None)


def test_a_branch_starts_as_a_copy_of_another_runs_checkpoint_and_leaves_it_alone(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders)))
    main_line = tmp_path / "run"
    before = (main_line / "last.pt").read_bytes()
    train(TrainConfig(**config(tmp_path, folders, run_dir=str(tmp_path / "decay"), steps=9, decay_start=6,
                               branch_from=str(main_line))))
    decay = tmp_path / "decay"
    assert torch.load(decay / "last.pt", weights_only=False)["step"] == 9
    assert f"resumed from {decay / 'last.pt'} at step 6" in (decay / "train.log").read_text()
    assert float((decay / "wall_seconds").read_text()) >= float((main_line / "wall_seconds").read_text())
    assert (main_line / "last.pt").read_bytes() == before
    # resuming the branch resumes its own checkpoint, not a new copy of the main line's
    train(TrainConfig(**config(tmp_path, folders, run_dir=str(decay), steps=10, branch_from=str(main_line))))
    assert torch.load(decay / "last.pt", weights_only=False)["step"] == 10


def test_a_branch_that_trains_fewer_parameters_starts_fresh_optimiser_moments(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders)))
    train(TrainConfig(**config(tmp_path, folders, run_dir=str(tmp_path / "tuned"), steps=8,
                               branch_from=str(tmp_path / "run"), train_only=["analysis."])))
    log = (tmp_path / "tuned" / "train.log").read_text()
    assert "optimiser state is for other parameters" in log
    state = torch.load(tmp_path / "tuned" / "last.pt", weights_only=False)
    assert state["step"] == 8
    start = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    moved = {k for k in start if not torch.equal(start[k], state["model"][k])}
    assert moved and all(k.startswith("analysis.") for k in moved), moved


def test_gdn_lr_gain_trains_gamma_in_its_own_group_at_a_larger_lr(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders)))
    train(TrainConfig(**config(tmp_path, folders, run_dir=str(tmp_path / "gain"), steps=8,
                               branch_from=str(tmp_path / "run"), gdn_lr_gain=10.0)))
    assert "optimiser state is for other parameters" not in (tmp_path / "gain" / "train.log").read_text()
    state = torch.load(tmp_path / "gain" / "last.pt", weights_only=False)
    groups = state["opt"]["param_groups"]
    assert len(groups) == 2 and len(groups[1]["params"]) == 6   # the γ of 3 GDNs and 3 inverse GDNs
    first_gamma = groups[1]["params"][0]   # kept its moments from the 6 steps before the new group layout
    assert state["opt_names"][first_gamma].endswith("gamma_param") and state["opt"]["state"][first_gamma]["step"] == 8
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"]) and groups[0]["lr"] > 0
    gammas = {k for k in state["model"] if k.endswith("gamma_param")}
    start = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    assert all(not torch.equal(start[k], state["model"][k]) for k in gammas)
    with pytest.raises(CodecError, match="no GDN γ parameter trains"):
        train(TrainConfig(**config(tmp_path, folders, run_dir=str(tmp_path / "prior_only"),
                                   train_only=["priors."], gdn_lr_gain=10.0)))


def test_a_branch_from_a_run_without_checkpoint_is_one_line(tmp_path, folders):
    with pytest.raises(CodecError, match=r"branch_from .*nowhere: no checkpoint"):
        train(TrainConfig(**config(tmp_path, folders, branch_from=str(tmp_path / "nowhere"))))
    assert not (tmp_path / "run").exists()


def test_gdn_weights_stuck_at_zero_are_lifted_and_then_learn(tmp_path, folders):
    from codec.layers import SimplifiedGDN
    from codec.model import ModelConfig, NestedLatentCodec
    from codec.train import export_float_model

    old = NestedLatentCodec(ModelConfig(**TINY))
    off_diagonal = ~torch.eye(8, dtype=torch.bool).view(8, 8, 1, 1)
    for m in old.modules():
        if isinstance(m, SimplifiedGDN):   # as models made before the pedestal: off-diagonal exactly 0
            m.gamma_param.data[off_diagonal] = 0.0
    export_float_model(old, tmp_path / "old.npz", {"step": 0})
    train(TrainConfig(**config(tmp_path, folders, steps=3, init_from=str(tmp_path / "old.npz"))))
    assert "lifted 336 GDN weights stuck at exactly 0" in (tmp_path / "run" / "train.log").read_text()
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    gamma = state["synthesis.gdns.0.gamma_param"]
    assert torch.all(gamma[off_diagonal] != 0)
    assert torch.any((gamma[off_diagonal] - SimplifiedGDN.PEDESTAL).abs() > 1e-5)   # and they moved


def test_diagonal_gdns_train_per_element_and_stay_diagonal(tmp_path, folders):
    from codec.layers import SimplifiedGDN
    from codec.model import ModelConfig, NestedLatentCodec
    from codec.train import export_float_model

    old = NestedLatentCodec(ModelConfig(**TINY))
    off_diagonal = ~torch.eye(8, dtype=torch.bool).view(8, 8, 1, 1)
    for m in old.modules():
        if isinstance(m, SimplifiedGDN):
            m.gamma_param.data[off_diagonal] = 0.0
    export_float_model(old, tmp_path / "old.npz", {"step": 0})
    train(TrainConfig(**config(tmp_path, folders, steps=3, lift_stuck_gdn=False, init_from=str(tmp_path / "old.npz"))))
    assert "6 GDN layers with a diagonal Γ run per element" in (tmp_path / "run" / "train.log").read_text()
    gamma = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]["synthesis.gdns.0.gamma_param"]
    assert torch.all(gamma[off_diagonal] == 0)
    assert not torch.equal(gamma[~off_diagonal], old.synthesis.gdns[0].gamma_param.data[~off_diagonal])   # learnt


def test_cli_train_reports_a_bad_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("crop: [unclosed")
    r = subprocess.run([sys.executable, "-m", "codec", "train", "--config", str(path)], cwd=PROJECT_ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: cannot read training config")
    assert len(r.stderr.strip().splitlines()) == 1


def test_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("crop: large\n")
    with pytest.raises(CodecError, match="key 'crop' must be int, got str"):
        TrainConfig.from_yaml(path)
    path.write_text("lr: 1\nmodel: {levels: two}\n")
    with pytest.raises(CodecError, match="key 'model.levels' must be int"):
        TrainConfig.from_yaml(path)


def test_a_base_config_gives_the_settings_a_branch_does_not_name(tmp_path):
    (tmp_path / "base.yaml").write_text("crop: 96\nlr: 0.001\nmodel: {channels: 16, levels: 3}\n")
    (tmp_path / "branch.yaml").write_text("base: base.yaml\nlr: 0.0005\nmodel: {levels: 2}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "leaf.yaml").write_text("base: ../branch.yaml\nsteps: 7\n")
    cfg = TrainConfig.from_yaml(tmp_path / "sub" / "leaf.yaml")
    assert (cfg.crop, cfg.lr, cfg.steps) == (96, 0.0005, 7)
    assert cfg.model == {"channels": 16, "levels": 2}   # merged key by key
    assert TrainConfig.from_yaml(tmp_path / "base.yaml").lr == 0.001   # a base alone is a config as before


def test_a_bad_base_is_one_line_that_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: missing.yaml\n")
    with pytest.raises(CodecError, match="cannot read training config .*missing.yaml: No such file"):
        TrainConfig.from_yaml(path)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(CodecError, match="a.yaml: its base chain comes back to itself"):
        TrainConfig.from_yaml(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("lerning_rate: 1\n")
    with pytest.raises(CodecError, match="b.yaml: unknown key 'lerning_rate'"):
        TrainConfig.from_yaml(tmp_path / "a.yaml")
    path.write_text("base: [a.yaml]\n")
    with pytest.raises(CodecError, match="key 'base' must be a path to another training config, got list"):
        TrainConfig.from_yaml(path)
    (tmp_path / "b.yaml").write_text("model: {levels: 7}\n")   # values are checked once merged
    with pytest.raises(CodecError, match="model.levels must be 2, 3 or 4, got 7"):
        TrainConfig.from_yaml(tmp_path / "a.yaml")


def test_shipped_configs_are_valid():
    configs = sorted((PROJECT_ROOT / "codec" / "configs").rglob("*.yaml"))   # ablations too: they are rerun
    assert len(configs) >= 30
    for path in configs:
        cfg = TrainConfig.from_yaml(path)
        assert cfg.steps > 0 and cfg.sources


@pytest.mark.parametrize("config_name, weights_file", [
    ("default.yaml", "default_model/model.npz"),
    ("lineage_z1_192_warm.yaml", "configs/lineage_z1_192_warm.npz"),   # lineage C, committed each session
    ("ablation/marks_weight_10.yaml", "configs/ablation/marks_weight_10.npz"),   # its encoder-only branch
    ("blade_finetune.yaml", "default_model/model.npz"),
    ("quantisation_aware.yaml", "default_model/model.npz"),
    ("large_batch.yaml", "default_model/model.npz"),
    ("ablation/regrow_n128.yaml", "configs/lineage_n160_start.npz"),   # lineage D's start, b7f73249
])
def test_a_run_starts_from_its_committed_weights_on_a_new_machine(config_name, weights_file):
    """No checkpoint in run_dir: the config's init_from is a model file in the repository, whose every weight
    fits the configured model (none missing, none left over), and steps are left to train after its step."""
    from codec import weights
    from codec.train import build_model, load_weights, resolve

    cfg = TrainConfig.from_yaml(PROJECT_ROOT / "codec" / "configs" / config_name)
    path = resolve(cfg.init_from)
    assert path == PROJECT_ROOT / "codec" / weights_file and path.exists() and not cfg.init_keep
    arrays, meta = weights.load_arrays(path)
    assert load_weights(build_model(cfg), weights.float_state_dict(arrays)) == []
    assert 0 < meta["train"]["step"] < counted_from(cfg, meta["train"]["step"]).steps


def test_a_checkpoint_from_before_the_top_prior_resumes_and_learns_it(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders, steps=3, model={**TINY, "top_prior": "logistic"})))
    old = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert "top_prior.index_param" not in old["model"]
    train(TrainConfig(**config(tmp_path, folders, steps=6)))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "the weights predate top_prior.index_param" in log
    new = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert new["step"] == 6
    from codec.model import ModelConfig, NestedLatentCodec
    start = NestedLatentCodec(ModelConfig(**TINY)).top_prior.index_param
    assert not torch.equal(new["model"]["top_prior.index_param"], start.detach())   # it trained
    moments = new["opt"]["state"]
    top = len(moments) - 1   # registered last
    assert float(moments[0]["step"]) == 6   # the old parameters kept their Adam moments
    assert float(moments[top]["step"]) == 3 and moments[top]["exp_avg"].shape == start.shape


def test_a_negative_number_of_synthesis_blocks_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"synthesis_blocks": -1}}))
    with pytest.raises(CodecError, match="model.synthesis_blocks must be >= 0, got -1"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize("named", [True, False])   # False: a checkpoint from before opt_names
def test_a_checkpoint_resumes_with_synthesis_blocks_every_adam_moment_on_its_own_parameter(tmp_path, folders,
                                                                                         named):
    """The blocks sit inside the synthesis, before the priors in the optimiser's order, and train in a group of
    their own (lr_gains): every older parameter must still find its own moments, and the blocks train from the
    identity, decoded by the runtime the ground uses."""
    from codec import api, weights
    from codec.export_model import build_model_arrays
    from codec.imageio import Photo
    from codec.runtime import CodecModel
    from codec.train import load_float

    train(TrainConfig(**config(tmp_path, folders, steps=3, ema=0.5, val_coded=False)))
    old = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    if not named:
        torch.save({k: v for k, v in old.items() if k != "opt_names"}, tmp_path / "run" / "last.pt")
    train(TrainConfig(**config(tmp_path, folders, steps=6, ema=0.5, val_coded=False,
                               model={**TINY, "synthesis_blocks": 1}, lr_gains={"synthesis.blocks.": 10.0})))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "the weights predate synthesis.blocks.0.conv1.weight" in log and "fresh Adam moments" not in log
    new = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert new["opt_names"][:len(old["opt_names"])] == old["opt_names"]   # the new group comes last
    assert all(n.startswith("synthesis.blocks.") for n in new["opt_names"][len(old["opt_names"]):])
    for i, name in enumerate(new["opt_names"]):
        moments = new["opt"]["state"][i]
        assert moments["exp_avg"].shape == new["model"][name].shape
        assert float(moments["step"]) == (3 if name.startswith("synthesis.blocks.") else 6)
    groups = new["opt"]["param_groups"]
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"]) and groups[0]["lr"] > 0
    assert new["model"]["synthesis.blocks.0.conv2.weight"].abs().max() > 0   # off the identity
    net, _ = load_float(tmp_path / "run" / "last.pt")
    images = [torch.from_numpy(synthetic_image(64, 64, s).transpose(2, 0, 1).copy()).float().div(255)[None]
              for s in range(2)]
    weights.save_arrays(tmp_path / "m.npz", build_model_arrays(net.eval(), images), {"config": net.cfg.to_dict()})
    model = CodecModel.load(tmp_path / "m.npz")   # the ground decodes through the blocks it was given
    decoder_block = model.torch_model.synthesis.blocks[0].conv2.weight
    trained_block = new["ema"]["synthesis.blocks.0.conv2.weight"]
    assert decoder_block.abs().max() > 0 and torch.equal(decoder_block, trained_block.half().float())   # float16 file
    photo = Photo(synthetic_image(64, 64, 5))
    assert api.decompress(model, api.compress(model, photo, 100).data).pixels.shape == (64, 64, 3)


def test_lr_gains_that_match_nothing_or_are_not_positive_are_one_line(tmp_path, folders):
    with pytest.raises(CodecError, match=r"lr_gains\['synthesis.blocks.'\] matches no parameter that trains"):
        train(TrainConfig(**config(tmp_path, folders, lr_gains={"synthesis.blocks.": 10.0})))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"lr_gains": {"synthesis.": 0}}))
    with pytest.raises(CodecError, match=r"lr_gains\['synthesis.'\] must be a number > 0, got 0"):
        TrainConfig.from_yaml(path)


def test_weights_that_do_not_fit_the_configured_model_are_named(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders, steps=3)))
    with pytest.raises(CodecError, match="the weights do not fit the configured model: top_prior.index_param"):
        train(TrainConfig(**config(tmp_path, folders, steps=6, model={**TINY, "top_prior": "logistic"})))
    with pytest.raises(CodecError, match=r"do not fit the configured model: analysis\.image\.convs\.3\.weight "
                                         r"\(8, 8, 5, 5\) where the model has \(12, 8, 5, 5\)"):
        train(TrainConfig(**config(tmp_path, folders, steps=6, model={**TINY, "z1_channels": 12})))


def test_the_weight_average_is_what_validation_measures_and_exports(tmp_path, folders):
    from codec import weights
    from codec.train import load_float

    train(TrainConfig(**config(tmp_path, folders, steps=3, ema=0.5)))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    key = "analysis.image.convs.0.weight"
    assert not torch.equal(state["ema"][key], state["model"][key])   # an average, not the raw weights
    exported = weights.float_state_dict(weights.load_arrays(tmp_path / "run" / "last.npz")[0])
    torch.testing.assert_close(exported[key], state["ema"][key].half().float())   # stored as float16
    torch.testing.assert_close(load_float(tmp_path / "run" / "last.pt")[0].state_dict()[key], state["ema"][key])
    train(TrainConfig(**config(tmp_path, folders, steps=6, ema=0.5)))   # resumes the average
    assert (tmp_path / "run" / "train.log").read_text().count("starts at the current weights") == 1   # first run
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["ema"][key]
    assert not torch.equal(after, state["ema"][key])


def test_bf16_training_runs_and_checkpoints_float32_weights(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders, steps=2, bf16=True, val_coded=False)))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["step"] == 2 and all(v.dtype == torch.float32 for v in state["model"].values())
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert "val step 2" in log_text
    assert ("training in float32" in log_text) == (not cpu_has_bf16())   # emulated bf16 is never used


def test_bf16_is_dropped_only_on_a_cpu_without_bfloat16_instructions():
    assert precision_for_this_cpu(TrainConfig(bf16=True)).bf16 == cpu_has_bf16()
    assert precision_for_this_cpu(TrainConfig(bf16=False)).bf16 is False


def test_learning_rate_warms_up_holds_and_decays_from_decay_start():
    from codec.train import learning_rate
    cfg = TrainConfig(lr=1e-4, lr_end=1e-5, warmup=10, steps=1000, decay_start=600)
    assert learning_rate(cfg, 0) == pytest.approx(1e-5)
    assert learning_rate(cfg, 10) == learning_rate(cfg, 600) == pytest.approx(1e-4)
    assert learning_rate(cfg, 800) == pytest.approx(5.5e-5)
    assert learning_rate(cfg, 1000) == learning_rate(cfg, 5000) == pytest.approx(1e-5)
    plain = TrainConfig(lr=1e-4, lr_end=1e-5, warmup=10, steps=1010)
    assert learning_rate(plain, 510) == pytest.approx(5.5e-5)   # without decay_start: a cosine after warm-up


def test_lambda_weighting_favours_low_lambdas_and_off_is_a_plain_mean(tmp_path, folders):
    from codec.train import lambda_weights, rd_loss
    lam = torch.tensor([64.0, 724.0, 8192.0])
    assert torch.equal(lambda_weights(lam, TrainConfig()), torch.ones(3))
    w = lambda_weights(lam, TrainConfig(lambda_weight_power=0.5))
    mid = (64.0 * 8192.0) ** 0.5
    assert w.tolist() == pytest.approx([(mid / 64) ** 0.5, (mid / 724) ** 0.5, (mid / 8192) ** 0.5])
    x = torch.rand(3, 3, 8, 8)
    out = {"x_hat": x + 0.1 * torch.rand_like(x), "bpp": torch.tensor([0.2, 0.5, 1.5])}
    per_sample = out["bpp"] + lam * (out["x_hat"] - x).square().mean(dim=(1, 2, 3))
    assert rd_loss(out, x, lam)[0] == pytest.approx(per_sample.mean().item())
    assert rd_loss(out, x, lam, w)[0] == pytest.approx((per_sample * w).mean().item())
    train(TrainConfig(**config(tmp_path, folders, steps=2, lambda_weight_power=0.5, val_coded=False)))
    assert "step 2" in (tmp_path / "run" / "train.log").read_text()


def test_flat_weighting_weighs_the_distortion_per_pixel_and_trains(tmp_path, folders):
    from codec.train import rd_loss
    lam = torch.tensor([100.0, 1000.0])
    x = torch.rand(2, 3, 8, 8)
    out = {"x_hat": x + 0.1 * torch.rand_like(x), "bpp": torch.tensor([0.2, 0.5])}
    pixel = torch.rand(2, 1, 8, 8)
    squared = (out["x_hat"] - x).square()
    loss, _, mse = rd_loss(out, x, lam, pixel_weights=pixel)
    assert loss.item() == pytest.approx((out["bpp"] + lam * (squared * pixel).mean(dim=(1, 2, 3))).mean().item())
    assert mse.item() == pytest.approx(squared.mean().item())   # the log's PSNR stays plain
    train(TrainConfig(**config(tmp_path, folders, steps=2, flat_weight=0.5, val_coded=False)))
    assert "step 2" in (tmp_path / "run" / "train.log").read_text()


def test_flat_weight_outside_0_1_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"flat_weight": 2.0}))
    with pytest.raises(CodecError, match="flat_weight must be in \\[0, 1\\], got 2.0"):
        TrainConfig.from_yaml(path)


def test_gradient_weight_adds_the_gradient_term_to_the_distortion_and_trains(tmp_path, folders):
    from codec.gradient_distortion import gradient_squared_error
    from codec.train import rd_loss
    lam = torch.tensor([100.0, 1000.0])
    x = torch.rand(2, 3, 8, 8)
    out = {"x_hat": x + 0.1 * torch.rand_like(x), "bpp": torch.tensor([0.2, 0.5])}
    squared = (out["x_hat"] - x).square().mean(dim=(1, 2, 3))
    term = gradient_squared_error(out["x_hat"], x)
    assert term.min() > 0
    loss, _, mse = rd_loss(out, x, lam, gradient_weight=2.0)
    assert loss.item() == pytest.approx((out["bpp"] + lam * (squared + 2.0 * term)).mean().item())
    assert mse.item() == pytest.approx(squared.mean().item())   # the log's PSNR stays plain
    train(TrainConfig(**config(tmp_path, folders, steps=2, gradient_weight=1.0, val_coded=False)))
    assert "step 2" in (tmp_path / "run" / "train.log").read_text()


def test_a_negative_gradient_weight_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"gradient_weight": -1.0}))
    with pytest.raises(CodecError, match="gradient_weight must be >= 0, got -1.0"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize("control, branch", [
    ({"synthetic_defects": 0.0}, {"synthetic_defects": 3.0}),                           # marks drawn
    ({"synthetic_defects": 3.0}, {"synthetic_defects": 3.0, "marks_weight": 10.0}),     # marks weighed
])
def test_synthetic_marks_change_what_trains_but_not_which_crops(tmp_path, folders, control, branch):
    """A run with marks drawn on its crops, or weighed in its distortion, trains on the same crops as the
    run without (a clean control), and trains different weights."""
    runs = []
    for name, extra in (("control", control), ("branch", branch)):
        train(TrainConfig(**config(tmp_path / name, folders, steps=2, val_coded=False, **extra)))
        state = torch.load(tmp_path / name / "run" / "last.pt", weights_only=False)
        runs.append((state["sampler_rng"], state["model"]))
    (crops, weights), (branch_crops, branch_weights) = runs
    assert crops == branch_crops
    assert any(not torch.equal(weights[k], branch_weights[k]) for k in weights)


def test_a_synthetic_defects_mean_out_of_range_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    for bad in (-1.0, 500):
        path.write_text(yaml.safe_dump({"synthetic_defects": bad}))
        with pytest.raises(CodecError, match=rf"synthetic_defects \(marks per crop\) must be in \[0, 50\], got {bad}"):
            TrainConfig.from_yaml(path)


def test_a_bad_marks_weight_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"marks_weight": 10.0}))
    with pytest.raises(CodecError, match="marks_weight weighs synthetic marks: set synthetic_defects > 0 as well"):
        TrainConfig.from_yaml(path)
    path.write_text(yaml.safe_dump({"marks_weight": -1.0, "synthetic_defects": 2.0}))
    with pytest.raises(CodecError, match="marks_weight must be >= 0, got -1.0"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize("switch, learned", [("prior_lambda", "2.weight"), ("context", "out.weight")])
def test_a_run_switched_to_a_new_part_resumes_learns_and_exports_it(tmp_path, folders, switch, learned):
    """λ-conditioned priors and the spatial context: parts a checkpoint can predate, starting at zero."""
    from codec import weights
    from codec.export_model import build_model_arrays
    from codec.runtime import CodecModel
    from codec.train import load_float

    train(TrainConfig(**config(tmp_path, folders, steps=3, ema=0.5, val_coded=False)))
    train(TrainConfig(**config(tmp_path, folders, steps=6, ema=0.5, val_coded=False,
                               model={**TINY, switch: True})))
    assert f"the weights predate {switch}." in (tmp_path / "run" / "train.log").read_text()
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    new = [k for k in state["model"] if k.startswith(f"{switch}.") and k.endswith(learned)]
    assert state["step"] == 6 and new
    assert all(state["model"][k].abs().max() > 0 and state["ema"][k].abs().max() > 0 for k in new)  # from 0
    net, _ = load_float(tmp_path / "run" / "last.pt")
    images = [torch.from_numpy(synthetic_image(64, 64, s).transpose(2, 0, 1).copy()).float().div(255)[None]
              for s in range(2)]
    weights.save_arrays(tmp_path / "m.npz", build_model_arrays(net.eval(), images), {"config": net.cfg.to_dict()})
    model = CodecModel.load(tmp_path / "m.npz")
    assert model.context is not None if switch == "context" else all(p.lambda_conditioned for p in model.priors)
