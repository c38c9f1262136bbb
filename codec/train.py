"""Variable-λ training on the CPU: `python -m codec train --config codec/configs/default.yaml`.

Resumable: the run directory holds last.pt (model, optimiser, step, RNG states); a run can also start
from a model file (the shipped default weights) when its checkpoints are gone.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from .activation_equalisation import undo_equalisation
from .data import CropSampler, list_images, spread
from .errors import CodecError, first_line
from .imageio import read_rgb
from .lambdas import LAMBDA_MAX, LAMBDA_MIN
from .layers import SimplifiedGDN, use_elementwise_gdns
from .model import ModelConfig, NestedLatentCodec
from . import data_parallel, weights
from .flat_area_weighting import flat_area_weights
from .gradient_distortion import gradient_squared_error
from .synthetic_defects import MAX_MARKS, add_marks, mark_weights
from .transform_widening import widen_transforms
from .z1_widening import widen_z1

PROJECT_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("codec.train")


@dataclass
class TrainConfig:
    run_dir: str = "~/.cache/bladecodec/runs/default"
    sources: list = field(default_factory=lambda: [
        {"path": "../shared/data/train", "weight": 0.6},
        {"path": "../shared/data/blades/dtu_nordtank", "weight": 0.4},
    ])
    crop: int = 128
    batch: int = 8
    steps: int = 200_000
    lr: float = 3e-4
    lr_end: float = 3e-5
    warmup: int = 500
    decay_start: int = 0           # the cosine from lr to lr_end runs from here (or the warm-up's end) to `steps`:
                                   # a run continued at lr can end with a short decay (a copy of its checkpoint)
    run_steps: int = 0             # > 0: the run ends this many steps after the step it started at (its
                                   # init_from model's or branch_from checkpoint's) and its cosine runs over
                                   # them, replacing steps and decay_start: a recipe that starts from the
                                   # bundled model need not name that model's step (0: as written)
    hold_lr: bool = False          # with run_steps: train at the lr this schedule gives at the start step, held
    grad_clip: float = 1.0
    lambda_min: float = LAMBDA_MIN
    lambda_max: float = LAMBDA_MAX
    threads: int = 2
    processes: int = 1             # data-parallel training processes (data_parallel.py), `threads` each: the
                                   # batch is per process, gradients are averaged over all
    seed: int = 0
    checkpoint_every: int = 200
    val_every: int = 1000
    val_dir: str = "../shared/data/blades/drone_frames"
    val_images: int = 6
    val_lambdas: list = field(default_factory=lambda: [64, 256, 1024, 4096])
    init_from: str = ""            # a model .npz to start from when the run has no checkpoint
    branch_from: str = ""          # a run directory whose checkpoint this run starts as a copy of, when it has
                                   # none (a decay branching off the main line); before init_from
    init_keep: list = field(default_factory=list)   # parameter-name prefixes taken from init_from; the rest
                                   # start from random weights and the run counts from step 0 (a new lineage
                                   # that reuses a trained model's outer layers; empty: take every weight)
    widen_analysis_gain: float = 0.0   # when init_from has a narrower z1: the new channels' start
    widen_prior_index: float = 0.0     # (z1_widening.widen_z1; both 0: switched off)
    widen_noise: float = 0.01      # when init_from has narrower transforms (model.channels): noise on the copied
                                   # channels' incoming weights, this fraction of each layer's weight spread
                                   # (transform_widening.py; 0: the same function, copies that never part)
    widen_fresh: bool = False      # ... or new channels with random incoming weights that the next layer reads
                                   # with weight 0 (the same function; copies stayed copies, session 50)
    model: dict = field(default_factory=dict)
    channels_last: bool = False
    compile: bool = False          # torch.compile the training forward pass (bench-train: ~1.4x steps/s)
    bf16: bool = False             # run the convolutions in bfloat16 (CPU autocast); rates and the distortion
                                   # stay float32. Fast only where the CPU has bf16 instructions (AVX512-BF16, AMX)
    time_budget_s: float = 0.0     # stop after this many CPU seconds of this invocation (0: no limit);
                                   # CPU time, so runs compared "at equal CPU budget" are, whatever else ran;
                                   # counted per process (all stop when the first reaches it)
    val_coded: bool = True         # validation also entropy-codes with integer priors (real bytes)
    lift_stuck_gdn: bool = True    # lift GDN weights stuck at exactly 0 (models before the pedestal)
    bound: bool = False            # train the relaxed "bound" model (a BG-VAE teacher)
    teacher: str = ""              # a bound model (.npz or .pt) to distil from
    distill_align: float = 0.5     # weight of affinity-matrix feature alignment
    distill_recon: float = 0.5     # weight (times λ) of MSE between student and teacher reconstructions
    ema: float = 0.0               # decay of a moving average of the weights that validation measures and
                                   # every export takes (0: off, the raw weights)
    lambda_weight_power: float = 0.0   # each sample's loss times (λ_mid/λ)^p, λ_mid the range's geometric mean:
                                       # p > 0 gives low-λ samples, whose losses are an order of magnitude smaller,
                                       # a larger share of the gradient (0: plain mean)
    flat_weight: float = 0.0       # in [0, 1]: the distortion weighs each pixel's error by the inverse local
                                   # variance of the original, mixed this much with plain MSE
                                   # (flat_area_weighting.py; measured in session 25: no help to faint
                                   # defects, +1 % BD-rate; 0: plain MSE)
    gradient_weight: float = 0.0   # >= 0: the distortion adds this times the squared error of the error's
                                   # finite differences (gradient_distortion.py), which prices fine detail
                                   # above smooth error (measured in session 38 at 1.0: +3.3 % BD-rate,
                                   # no help to faint defects; 0: plain MSE)
    synthetic_defects: float = 0.0   # in [0, 50]: the mean number of faint hairlines and small blobs drawn on each
                                     # training crop (Poisson; synthetic_defects.py; measured in session 39 at
                                     # 5 for 2,200 steps: no change to faint defects; 0: the photos as they are)
    marks_weight: float = 0.0      # >= 0, with synthetic_defects: the distortion weighs the pixels marks cover
                                   # 1 + this times (synthetic_defects.mark_weights; session 40 at 10 on
                                   # lineage C's analysis: faint defects 0.92x -> 1.00x of the bundled
                                   # model's, +1.8 points BD-rate; 0: plain MSE on them)
    train_only: list = field(default_factory=list)   # parameter-name prefixes that train ("analysis."); the
                                                     # rest stay frozen (empty: everything trains)
    gdn_lr_gain: float = 0.0       # > 0: the GDNs' γ parameters get their own Adam group at lr times this
    lr_gains: dict = field(default_factory=dict)   # parameter-name prefix -> gain > 0: those parameters get their
                                                   # own Adam group at lr times the gain (new synthesis blocks,
                                                   # which start at zero, at a lr that moves them; session 46)
    quantisation_aware: bool = False   # the image analysis runs as the INT8 Q/DQ graph computes it
                                       # (quantisation_aware.py); its activation ranges are re-measured
    recalibrate_every: int = 100       # every this many steps, and before each validation
    calibration_dir: str = ""          # the INT8 calibration photos ("": calibration/calibration_set.py's)

    @classmethod
    def from_yaml(cls, path):
        """A YAML file of settings; `base: other.yaml` (relative to this file) takes that file's settings
        first, which this one's override (its `model` key by key), so a branch names only what it changes."""
        raw = _read_with_bases(Path(path), ())
        _check_values(path, raw)
        return cls(**raw)


def _read_with_bases(path: Path, children: tuple) -> dict:
    """path's settings over its base's; children are the files whose chain led here (a loop is an error)."""
    if path.resolve() in children:
        raise CodecError(f"{path}: its base chain comes back to itself")
    raw = _read_settings(path)
    base = raw.pop("base", None)
    _check_keys(path, raw, TrainConfig, "")
    _check_keys(path, raw.get("model", {}), ModelConfig, "model.")
    if base is None:
        return raw
    if not isinstance(base, str):
        raise CodecError(f"{path}: key 'base' must be a path to another training config, got {type(base).__name__}")
    inherited = _read_with_bases(path.parent / base, children + (path.resolve(),))
    merged = {**inherited, **raw}
    if "model" in inherited and "model" in raw:   # the model's settings merge key by key, not as one value
        merged["model"] = {**inherited["model"], **raw["model"]}
    return merged


def _read_settings(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise CodecError(f"cannot read training config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise CodecError(f"cannot read training config {path}: invalid YAML{where}") from None
    if not isinstance(raw, dict):
        raise CodecError(f"{path}: expected a mapping of settings at the top level")
    return raw


def _check_values(path, raw: dict):
    """What would otherwise fail hours in, or train something other than was meant."""
    if not 0.0 <= raw.get("flat_weight", 0.0) <= 1.0:
        raise CodecError(f"{path}: flat_weight must be in [0, 1], got {raw['flat_weight']}")
    if not 0.0 <= raw.get("synthetic_defects", 0.0) <= MAX_MARKS:
        raise CodecError(f"{path}: synthetic_defects (marks per crop) must be in [0, {MAX_MARKS}], "
                         f"got {raw['synthetic_defects']}")
    if raw.get("marks_weight", 0.0) < 0:
        raise CodecError(f"{path}: marks_weight must be >= 0, got {raw['marks_weight']}")
    if raw.get("marks_weight", 0.0) and not raw.get("synthetic_defects", 0.0):
        raise CodecError(f"{path}: marks_weight weighs synthetic marks: set synthetic_defects > 0 as well")
    if raw.get("run_steps", 0) < 0:
        raise CodecError(f"{path}: run_steps must be >= 0, got {raw['run_steps']}")
    if raw.get("hold_lr") and not raw.get("run_steps"):
        raise CodecError(f"{path}: hold_lr holds the lr at the run's start step: set run_steps > 0 as well")
    if raw.get("gradient_weight", 0.0) < 0:
        raise CodecError(f"{path}: gradient_weight must be >= 0, got {raw['gradient_weight']}")
    for prefix, gain in raw.get("lr_gains", {}).items():
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or gain <= 0:
            raise CodecError(f"{path}: lr_gains[{prefix!r}] must be a number > 0, got {gain!r}")
    try:   # the model's own checks (levels, synthesis_blocks, top_prior), now rather than when training builds it
        ModelConfig(**raw.get("model", {}))
    except ValueError as e:
        raise CodecError(f"{path}: model.{e}") from None
    for lam in raw.get("val_lambdas", []):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not LAMBDA_MIN <= lam <= LAMBDA_MAX:
            raise CodecError(f"{path}: val_lambdas must be numbers in [{LAMBDA_MIN:g}, {LAMBDA_MAX:g}], got {lam!r}")


def _check_keys(path, raw: dict, cls, prefix: str):
    """Unknown keys and wrong types are errors that name the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in fields:
            raise CodecError(f"{path}: unknown key '{prefix}{key}' (known: {', '.join(sorted(fields))})")
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        expected = float if isinstance(default, float) else type(default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float \
            else isinstance(value, expected)
        if not ok:
            raise CodecError(f"{path}: key '{prefix}{key}' must be {expected.__name__}, got {type(value).__name__}")


def resolve(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def sample_lambdas(rng: np.random.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """Log-uniform per sample, so every rate gets the same share of the training signal."""
    return torch.from_numpy(np.exp(rng.uniform(math.log(lo), math.log(hi), n))).float()


def lambda_weights(lam: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """(λ_mid/λ)^p per sample; all ones when p is 0."""
    mid = math.sqrt(cfg.lambda_min * cfg.lambda_max)
    return (mid / lam).pow(cfg.lambda_weight_power)


def rd_loss(out, x, lam, weights=None, pixel_weights=None, gradient_weight=0.0):
    """(weighted mean of bpp + λ·D, mean bpp, mean MSE); weights per sample (default: a plain mean); D is
    the MSE, or with pixel_weights (N, 1, H, W) the pixel-weighted mean squared error, plus gradient_weight
    times the squared error of the error's finite differences."""
    squared = (out["x_hat"] - x).square()
    mse = squared.mean(dim=(1, 2, 3))
    distortion = mse if pixel_weights is None else (squared * pixel_weights).mean(dim=(1, 2, 3))
    if gradient_weight:
        distortion = distortion + gradient_weight * gradient_squared_error(out["x_hat"], x)
    per_sample = out["bpp"] + lam * distortion
    loss = (per_sample * weights).mean() if weights is not None else per_sample.mean()
    return loss, out["bpp"].mean(), mse.mean()


class Distiller:
    """The teacher side of bound-guided distillation: adds alignment and reconstruction terms."""

    def __init__(self, cfg: TrainConfig, student):
        from .distillation import FeatureTap, tapped_modules

        self.teacher, _ = load_float(resolve(cfg.teacher))
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.cfg = cfg
        self.student_tap = FeatureTap(tapped_modules(student))
        self.teacher_tap = FeatureTap(tapped_modules(self.teacher))
        # the teacher's forward pass runs like the student's (compiled, bf16), so that an equal-CPU
        # ablation charges distillation what it costs in a real run, not an eager float32 pass
        self.teacher_forward = compiled(self.teacher) if cfg.compile else self.teacher

    def begin(self):
        """Forget features from forward passes outside training (validation)."""
        self.student_tap.take()

    def __call__(self, x, lam, student_out):
        from .distillation import distillation_terms

        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16):
            t_out = self.teacher_forward(x, lam, bound=True)
        align, _ = distillation_terms(self.student_tap.take(), self.teacher_tap.take(), student_out["x_hat"],
                                      t_out["x_hat"])
        recon = (student_out["x_hat"] - t_out["x_hat"]).square().mean(dim=(1, 2, 3))
        extra = self.cfg.distill_align * align + (self.cfg.distill_recon * lam * recon).mean()
        return extra, float(align), float(recon.mean())


def _load_checkpoint(path: Path) -> dict:
    # weights_only=False: the checkpoint keeps Python RNG states. Only this project's own run folders are
    # meant here; unpickling runs code, so never point it at a .pt from elsewhere.
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:   # pickle's and zipfile's errors on a file that is not a checkpoint
        raise CodecError(f"{path}: not a training checkpoint ({type(e).__name__}: {first_line(e)})") from None


def load_float(path) -> tuple[NestedLatentCodec, dict]:
    """A float model from a training checkpoint (.pt: its weight average when it keeps one) or a model file,
    with a model file's INT8 equalisation undone: the weights training had, so that exporting it again
    equalises and floors γ as the current rule does, not on top of an earlier export's scales."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"{path}: no such file")
    if path.suffix == ".pt":
        state = _load_checkpoint(path)
        net = NestedLatentCodec(ModelConfig.from_dict(state["model_config"]))
        net.load_state_dict(state.get("ema") or state["model"])
        info = {"step": state["step"]}
    else:
        arrays, meta = weights.load_arrays(path)
        net = NestedLatentCodec(ModelConfig.from_dict(meta["config"]))
        net.load_state_dict(weights.float_state_dict(arrays))
        undo_equalisation(net.analysis.image, meta.get("int8_equalisation"))
        info = meta.get("train", {})
    use_elementwise_gdns(net)   # the same function; faster when Γ is diagonal
    return net, info


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, lr until decay_start, then a cosine down to lr_end at `steps`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    start = max(cfg.warmup, cfg.decay_start)
    t = min(1.0, max(0.0, step - start) / max(1, cfg.steps - start))
    return cfg.lr_end + 0.5 * (cfg.lr - cfg.lr_end) * (1 + math.cos(math.pi * t))


def counted_from(cfg: TrainConfig, start: int | None) -> TrainConfig:
    """cfg with run_steps turned into the step the run ends at and its lr schedule, for a run that started at
    step `start` (None: its checkpoint is older than start steps)."""
    if not cfg.run_steps:
        return cfg
    if start is None:
        raise CodecError(f"{cfg.run_dir}: its checkpoint predates run_steps (it records no start step): "
                         "name steps and decay_start in the config instead")
    counted = dataclasses.replace(cfg, steps=start + cfg.run_steps, decay_start=start)
    if cfg.hold_lr:
        held = learning_rate(cfg, start)
        counted = dataclasses.replace(counted, lr=held, lr_end=held)
    return counted


def psnr(mse: float) -> float:
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class Validator:
    """Fixed drone frames (evenly spaced) at fixed λ: estimated bpp (rounded latents) and PSNR, and with
    coded() the same from real bitstreams."""

    def __init__(self, cfg: TrainConfig):
        self.calibration_dirs = [resolve(s["path"]) for s in cfg.sources]
        paths = spread(list_images(resolve(cfg.val_dir)), cfg.val_images) if resolve(cfg.val_dir).is_dir() else []
        self.images = [self._prep(read_rgb(p)) for p in paths]
        self.lambdas = cfg.val_lambdas

    @staticmethod
    def _prep(rgb):
        h, w = (rgb.shape[0] // 16) * 16, (rgb.shape[1] // 16) * 16
        return torch.from_numpy(rgb[:h, :w].transpose(2, 0, 1).copy()).float().div(255).unsqueeze(0)

    @torch.no_grad()
    def __call__(self, model) -> dict:
        model.eval()
        result = {}
        for lam in self.lambdas:
            bpps, mses = [], []
            for x in self.images:
                out = model(x, torch.tensor([float(lam)]), noisy=False)
                bpps.append(out["bpp"].item())
                mses.append((out["x_hat"].clamp(0, 1) - x).square().mean().item())
            result[lam] = (float(np.mean(bpps)), float(np.mean([psnr(m) for m in mses])))
        model.train()
        return result

    def coded(self, model) -> dict:
        """Real bytes: the model with integer priors (calibrated on a few training crops) compresses and
        decompresses each validation image; bpp counts the whole container."""
        import copy
        from .export_model import build_model_arrays, calibration_images
        from .runtime import CodecModel

        net = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
        with torch.no_grad():
            arrays = build_model_arrays(net, calibration_images(2, self.calibration_dirs))
        return self.coded_file(CodecModel(arrays, {"config": net.cfg.to_dict()}, Path("<validation model>")))

    def coded_file(self, codec) -> dict:
        """coded() for a complete codec model (CodecModel) as it stands: an exported file codes with its own
        priors and its INT8 equalisation and γ floor, which is what ships."""
        from . import api
        from .imageio import Photo
        from .lambdas import index_of_lambda
        from .photo_refinement import measure

        result, threads = {}, torch.get_num_threads()
        for lam in self.lambdas:
            bpps, psnrs = [], []
            for x in self.images:
                rgb = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                point = measure(codec, api.compress(codec, Photo(rgb), index_of_lambda(lam)).data, rgb, lam)
                bpps.append(point.bpp)
                psnrs.append(point.psnr)
            result[lam] = (float(np.mean(bpps)), float(np.mean(psnrs)))
        torch.set_num_threads(threads)   # api calls set their own thread count
        return result

    @staticmethod
    def coder() -> dict:
        """The encoder settings behind coded(): figures from other settings do not compare (bench-runs)."""
        from .rate_aware_rounding import DEFAULT_BETA
        return {"rate_aware_beta": DEFAULT_BETA}

    @staticmethod
    def score(result: dict) -> float:
        """One number to pick the best checkpoint: mean RD loss over the validation λs."""
        return float(np.mean([b + lam * 10 ** (-p / 10) for lam, (b, p) in result.items()]))


def build_model(cfg: TrainConfig) -> NestedLatentCodec:
    return NestedLatentCodec(ModelConfig(**cfg.model))


class WeightAverage:
    """Exponential moving average of the weights. At batch 4 the raw weights are noisy: λ 8192 PSNR on the
    validation frames moved by 1 dB between validations 500 steps apart (session 3)."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - self.decay)


def random_states(sampler) -> dict:
    return {"torch_rng": torch.get_rng_state(), "sampler_rng": sampler.rng.bit_generator.state}


def save_checkpoint(path: Path, model, opt, step, sampler, best, average=None, process_states=None, start=None):
    """process_states: random_states() of every data-parallel process but the first (data_parallel.py);
    start: the step the run started at (run_steps counts from it)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "opt_names": optimiser_names(opt, model),
                "step": step, "start_step": start,
                **random_states(sampler),
                "process_states": process_states or [], "best": best, "model_config": model.cfg.to_dict(),
                "ema": average.model.state_dict() if average else None}, tmp)
    tmp.replace(path)


def export_float_model(model, path: Path, info: dict):
    weights.save_arrays(path, weights.float_arrays(model.state_dict()),
                        {"config": model.cfg.to_dict(), "train": info})


def restore(cfg: TrainConfig, run_dir: Path, model, opt, sampler):
    """Returns (step, best score, the checkpoint's weight average or None, the step the run started at).
    Prefers the run's checkpoint, then cfg.init_from, else fresh."""
    restored = _load_state(cfg, run_dir, model, opt, sampler)
    if not cfg.lift_stuck_gdn:   # the zeros stay zero: skip the C x C convolutions that multiply them
        log.info("%d GDN layers with a diagonal Γ run per element", use_elementwise_gdns(model))
        return restored
    lifted = sum(m.lift_stuck_zeros() for m in model.modules() if isinstance(m, SimplifiedGDN))
    if lifted:
        log.info("lifted %d GDN weights stuck at exactly 0 (zero gradient) to a small pedestal", lifted)
    return restored


ADDED_PARAMETERS = ("top_prior.index_param", "prior_lambda.", "context.", "synthesis.blocks.")
# newer than some checkpoints (names, or prefixes ending in "."): they start at their init


def added(name: str) -> bool:
    return any(name == a or a.endswith(".") and name.startswith(a) for a in ADDED_PARAMETERS)


def load_weights(model, state: dict) -> list:
    """Weights saved by this model or by an older version of it; returns the parameters the file lacked."""
    ours = model.state_dict()
    resized = [f"{k} {tuple(v.shape)} where the model has {tuple(ours[k].shape)}"
               for k, v in state.items() if k in ours and v.shape != ours[k].shape]
    if resized:   # another width (z1_channels?): torch would raise a page of size mismatches
        raise CodecError(f"the weights do not fit the configured model: {'; '.join(resized[:2])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    misfits = [k for k in missing if not added(k)] + list(unexpected)
    if misfits:
        raise CodecError(f"the weights do not fit the configured model: {', '.join(misfits[:4])}")
    if missing:
        log.info("the weights predate %s: starting it from its initial value", ", ".join(missing))
    return missing


def optimiser_names(opt, model) -> list:
    """The names of the optimiser's parameters in its own numbering (group by group), which its state uses."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def load_optimiser(opt, state: dict, model, missing: list, saved_names: list | None = None):
    """The checkpoint's Adam moments, each put back on the parameter it belongs to by name, whatever the group
    layout; parameters the checkpoint lacked (`missing`) start with fresh moments. A checkpoint of a run that
    trained other parameters (a train_only branch off the main line) cannot line up: every moment starts
    fresh."""
    ours = optimiser_names(opt, model)
    theirs = saved_names or legacy_names(state, opt, model, set(missing))
    if theirs is None or not set(theirs) <= set(ours):
        log.info("the checkpoint's optimiser state is for other parameters (train_only?): fresh Adam moments")
        return
    index = {n: i for i, n in enumerate(ours)}
    opt.load_state_dict({"state": {index[theirs[k]]: v for k, v in state["state"].items()},
                         "param_groups": opt.state_dict()["param_groups"]})


def legacy_names(state: dict, opt, model, missing: set) -> list | None:
    """The names behind a checkpoint saved before checkpoints named them: its groups laid out as ours, less
    the parameters it lacked, or one group over the model's parameters in order; None if neither fits."""
    sizes = [len(g["params"]) for g in state["param_groups"]]
    if not missing and sizes == [len(g["params"]) for g in opt.param_groups]:
        return optimiser_names(opt, model)
    in_order = [n for n, _ in model.named_parameters() if n not in missing]
    return in_order if sizes == [len(in_order)] else None


def restore_average(cfg: TrainConfig, model, saved):
    """The checkpoint's weight average, or one starting at the current weights (new, or switched on)."""
    if not cfg.ema:
        return None
    average = WeightAverage(model, cfg.ema)
    if saved:
        load_weights(average.model, saved)   # added parameters keep the model's (initial) values
    else:
        log.info("weight average (decay %g) starts at the current weights", cfg.ema)
    return average


def restore_random_states(state: dict, sampler):
    """This process's random streams. A process the checkpoint has none for (a run switched to more
    processes) starts streams of its own from the seed, the step and its rank."""
    r = data_parallel.rank()
    saved = [state] + state.get("process_states", [])
    if r < len(saved):
        torch.set_rng_state(saved[r]["torch_rng"])
        sampler.rng.bit_generator.state = saved[r]["sampler_rng"]
    else:
        torch.manual_seed(1000 * state["step"] + r)
        sampler.rng = np.random.default_rng([state["step"], r])


def _load_state(cfg: TrainConfig, run_dir: Path, model, opt, sampler):
    ckpt = run_dir / "last.pt"
    if ckpt.exists():
        state = _load_checkpoint(ckpt)
        load_optimiser(opt, state["opt"], model, load_weights(model, state["model"]), state.get("opt_names"))
        restore_random_states(state, sampler)
        log.info("resumed from %s at step %d", ckpt, state["step"])
        return state["step"], state["best"], state.get("ema"), state.get("start_step")
    if cfg.init_from:
        arrays, meta = weights.load_arrays(resolve(cfg.init_from))
        if cfg.init_keep:
            _load_kept_layers(cfg, model, arrays, meta)
            return 0, float("inf"), None, 0
        load_weights(model, widened(file_weights(arrays, meta, model.cfg), meta, model.cfg, cfg))
        step = int(meta.get("train", {}).get("step", 0))
        log.info("started from model file %s (trained %d steps)", cfg.init_from, step)
        return step, float("inf"), None, step
    return 0, float("inf"), None, 0


def _load_kept_layers(cfg: TrainConfig, model, arrays: dict, meta: dict):
    """The parameters named by cfg.init_keep, from cfg.init_from's arrays (its INT8 equalisation undone first,
    in a model of the file's own shape); every other parameter keeps its random start."""
    ours = model.state_dict()
    kept = {k: v for k, v in file_weights(arrays, meta, model.cfg).items()
            if any(k.startswith(p) for p in cfg.init_keep)}
    misfits = [k for k, v in kept.items() if k not in ours or ours[k].shape != v.shape]
    if misfits or not kept:
        raise CodecError(f"init_keep {cfg.init_keep}: "
                         + (f"{cfg.init_from}'s {misfits[0]} does not fit the configured model" if misfits
                            else f"no parameter of {cfg.init_from} matches"))
    model.load_state_dict(kept, strict=False)
    log.info("started %d of %d tensors from model file %s (%s); the rest random, step 0", len(kept), len(ours),
             cfg.init_from, ", ".join(cfg.init_keep))


def file_config(meta: dict, model_cfg: ModelConfig) -> ModelConfig:
    """A model file's own model shape (model_cfg's when the file predates recording it)."""
    return ModelConfig.from_dict(meta["config"]) if "config" in meta else model_cfg


def file_weights(arrays: dict, meta: dict, model_cfg: ModelConfig) -> dict:
    """A model file's weights as training had them, in a model of the file's own shape: its INT8 equalisation,
    which rescales the analysis' channels, undone."""
    with torch.random.fork_rng():   # the model's random start is overwritten: leave the run's random stream as it was
        source = NestedLatentCodec(file_config(meta, model_cfg))
    load_weights(source, weights.float_state_dict(arrays))
    if undo_equalisation(source.analysis.image, meta.get("int8_equalisation")):   # under no_grad itself
        log.info("its INT8 equalisation undone: the analysis is back at the scales training had")
    return source.state_dict()


def widened(state: dict, meta: dict, model_cfg: ModelConfig, cfg: TrainConfig) -> dict:
    """The weights of a model file, given the configured numbers of transform and z1 channels if it had fewer."""
    file_cfg = file_config(meta, model_cfg)
    if file_cfg.channels < model_cfg.channels:
        how = "fresh channels" if cfg.widen_fresh else f"copies, noise {cfg.widen_noise:g}"
        log.info("transforms widened from %d to %d channels (transform_widening.py, %s)", file_cfg.channels,
                 model_cfg.channels, how)
        state = widen_transforms(state, file_cfg.channels, model_cfg.channels, cfg.seed, cfg.widen_noise,
                                 cfg.widen_fresh)
    c1, old_c1 = model_cfg.c1, file_cfg.c1
    if old_c1 == c1:
        return state
    if old_c1 > c1:
        raise CodecError(f"the model file has {old_c1} z1 channels, the configured model {c1}: z1 cannot shrink")
    log.info("z1 widened from %d to %d channels (z1_widening.py)", old_c1, c1)
    return widen_z1(state, old_c1, c1, cfg.seed, cfg.widen_analysis_gain, cfg.widen_prior_index)


def train(cfg: TrainConfig):
    """One process, or cfg.processes of them joined for data-parallel training."""
    branch(cfg, resolve(cfg.run_dir))   # before the processes start: every one resumes the copy
    data_parallel.launch(_train, cfg.processes, cfg)


def branch(cfg: TrainConfig, run_dir: Path):
    """Copy cfg.branch_from's checkpoint and wall time into a run directory that has no checkpoint, marked as
    starting at its step. The source run may go on training: it replaces last.pt atomically, so the copy is
    one whole checkpoint."""
    if not cfg.branch_from or (run_dir / "last.pt").exists():
        return
    source = resolve(cfg.branch_from)
    if not (source / "last.pt").is_file():
        raise CodecError(f"branch_from {cfg.branch_from}: no checkpoint {source / 'last.pt'} to branch from")
    run_dir.mkdir(parents=True, exist_ok=True)
    if (source / "wall_seconds").exists():
        shutil.copyfile(source / "wall_seconds", run_dir / "wall_seconds")
    state = _load_checkpoint(source / "last.pt")
    torch.save({**state, "start_step": state["step"]}, run_dir / "last.pt.tmp")
    (run_dir / "last.pt.tmp").replace(run_dir / "last.pt")


def _train(cfg: TrainConfig):
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)   # the same initial weights in every process
    main_process = data_parallel.rank() == 0
    run_dir = resolve(cfg.run_dir)
    if main_process:
        _log_to(run_dir, cfg)
        if cfg.branch_from:
            log.info("a branch of %s (its checkpoint, copied when this run had none)", cfg.branch_from)
    sampler = CropSampler([(str(resolve(s["path"])), s["weight"]) for s in cfg.sources], cfg.crop,
                          [cfg.seed, data_parallel.rank()] if data_parallel.rank() else cfg.seed)
    model = build_model(cfg)
    if data_parallel.rank():
        torch.manual_seed(cfg.seed + 1_000_003 * data_parallel.rank())   # its own quantisation noise
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    calibration = quantisation_aware(cfg, model)   # before the optimiser: it makes new parameters
    opt = torch.optim.Adam(param_groups(model, cfg), lr=cfg.lr)
    step, best, saved_average, start = restore(cfg, run_dir, model, opt, sampler)
    cfg = counted_from(cfg, start)
    if cfg.run_steps:
        log.info("%d steps from step %d: ends at step %d, lr %.3g to %.3g", cfg.run_steps, start, cfg.steps,
                 cfg.lr, cfg.lr_end)
    if calibration:
        calibration(model.analysis.image)
    average = restore_average(cfg, model, saved_average)
    measured = average.model if average else model
    forward = compiled(model) if cfg.compile else model   # validation stays eager: other shapes
    cfg = precision_for_this_cpu(cfg)
    validator = Validator(cfg) if main_process else None
    distiller = Distiller(cfg, model) if cfg.teacher else None
    rng = np.random.default_rng(cfg.seed + step if main_process else [cfg.seed + step, data_parallel.rank()])
    marks_rng = np.random.default_rng([cfg.seed + step, data_parallel.rank(), 1])   # apart from the crops':
    # a run with marks draws the same crops as one without
    log.info("training %s for %d steps, batch %d x %d px%s", run_dir, cfg.steps, cfg.batch, cfg.crop,
             f" in each of {cfg.processes} processes" if cfg.processes > 1 else "")
    t_start, wall_before = time.time(), _wall_so_far(run_dir)
    window = []
    cpu_start = time.process_time()
    last = step >= cfg.steps
    while not last:
        t0 = time.time()
        crops = sampler.batch(cfg.batch)
        marks = add_marks(crops, marks_rng, cfg.synthetic_defects) if cfg.synthetic_defects else None
        x = torch.from_numpy(crops)
        if cfg.channels_last:
            x = x.to(memory_format=torch.channels_last)
        lam = sample_lambdas(rng, cfg.batch, cfg.lambda_min, cfg.lambda_max)
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg, step) * g.get("lr_gain", 1.0)
        figures = _step(cfg, model, forward, opt, distiller, x, lam, marks)
        if average:
            average.update(model)
        step += 1
        if calibration and step % cfg.recalibrate_every == 0:
            calibration(model.analysis.image)
        window.append((*figures[:3], time.time() - t0, *figures[3:]))
        if step % 50 == 0:
            _log_progress(step, window, distiller is not None)
            window.clear()
        wall = wall_before + time.time() - t_start
        # decided once, by all processes together: a last step always validates
        last = step >= cfg.steps or data_parallel.any_process(_out_of_time(cfg, cpu_start))
        validating = step % cfg.val_every == 0 or last
        if validating and main_process:   # first, so the one checkpoint below records the new best score
            if calibration:
                calibration(measured.analysis.image)
            best = validate(cfg, validator, measured, run_dir, step, wall, best)
        if step % cfg.checkpoint_every == 0 or validating:
            states = data_parallel.gather(random_states(sampler))
            if main_process:
                save_checkpoint(run_dir / "last.pt", model, opt, step, sampler, best, average, states[1:], start)
                _write_wall(run_dir, wall)
            data_parallel.barrier()   # the others wait while the first validates and writes
    log.info("finished at step %d", step)


def trainable(model, prefixes: list) -> list:
    """(name, parameter) of the parameters whose names start with one of prefixes (all when there are none);
    freezes the rest."""
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not prefixes or any(name.startswith(x) for x in prefixes))
        if p.requires_grad:
            params.append((name, p))
    if not params:
        raise CodecError(f"train_only {prefixes} matches no parameter of the model")
    return params


def param_groups(model, cfg: TrainConfig) -> list:
    """The optimiser's parameter groups: one, or with gdn_lr_gain the GDN γ parameters apart, and with lr_gains
    the parameters under each prefix apart.

    Why a gain: Adam moves each parameter by about lr per step when its gradient keeps its sign, and much
    less when the gradient is noisy. Most trained GDNs work nearly linearly (`python -m codec bench-gdn`: median
    γ·|x|/β at the 99th percentile of |x| 0.02-0.08 in the analysis, ~0 in two of the three synthesis layers
    at step 75,900), and only one layer's grew over 70,000 steps; a larger step for γ alone tests whether
    more nonlinearity is wanted but slow to reach."""
    params = trainable(model, cfg.train_only)
    gains = [(lambda n: n.endswith("gamma_param"), cfg.gdn_lr_gain, "gdn_lr_gain is set, but no GDN γ parameter")] \
        if cfg.gdn_lr_gain > 0 else []
    gains += [(lambda n, x=prefix: n.startswith(x), gain, f"lr_gains[{prefix!r}] matches no parameter that")
              for prefix, gain in cfg.lr_gains.items()]
    groups = [{"params": []}] + [{"params": [], "lr_gain": gain} for _, gain, _ in gains]
    for name, p in params:   # each parameter in the first group whose rule it matches
        hit = next((i + 1 for i, (rule, _, _) in enumerate(gains) if rule(name)), 0)
        groups[hit]["params"].append(p)
    for (_, _, what), group in zip(gains, groups[1:]):
        if not group["params"]:
            raise CodecError(f"{what} trains")
    return [g for g in groups if g["params"]]


def quantisation_aware(cfg: TrainConfig, model):
    """With quantisation_aware set: switch the model's image analysis to its INT8 form and return the
    calibration that sets its activation ranges; else None."""
    if not cfg.quantisation_aware:
        return None
    from calibration.calibration_set import CalibrationSet   # calibration builds on codec: imported late
    from .quantisation_aware import Calibration, make_quantisation_aware

    make_quantisation_aware(model)
    return Calibration(CalibrationSet(resolve(cfg.calibration_dir)) if cfg.calibration_dir else CalibrationSet())


def _step(cfg: TrainConfig, model, forward, opt, distiller, x, lam, marks=None) -> tuple:
    """One optimiser step on a batch (marks: where synthetic marks lie, or None); returns (loss, bpp, mse,
    alignment, reconstruction) as floats."""
    if distiller:
        distiller.begin()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        out = forward(x, lam, bound=cfg.bound)
    pixel_weights = _pixel_weights(cfg, x, marks)
    loss, bpp, mse = rd_loss(out, x, lam, lambda_weights(lam, cfg), pixel_weights, cfg.gradient_weight)
    align = recon = 0.0
    if distiller:
        extra, align, recon = distiller(x, lam, out)
        loss = loss + extra
    opt.zero_grad(set_to_none=True)
    loss.backward()
    data_parallel.average_gradients(model.parameters())   # before clipping: every process clips the same
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss.item(), bpp.item(), mse.item(), align, recon


def _pixel_weights(cfg: TrainConfig, x, marks):
    """The distortion's per-pixel weights (N, 1, H, W), or None for plain MSE."""
    weights = flat_area_weights(x, cfg.flat_weight) if cfg.flat_weight else None
    if cfg.marks_weight and marks is not None:
        on_marks = torch.from_numpy(mark_weights(marks, cfg.marks_weight))
        weights = on_marks if weights is None else weights * on_marks
    return weights


def _log_progress(step: int, window: list, distilling: bool):
    """Means over the steps since the last line: (loss, bpp, mse, seconds, alignment, reconstruction)."""
    a = np.mean(window, axis=0)
    extra = f" align {a[4]:.4f} recon-mse {a[5]:.5f}" if distilling else ""
    log.info("step %d loss %.4f bpp %.4f psnr %.2f  %.2f steps/s%s", step, a[0], a[1], psnr(a[2]), 1 / a[3], extra)


def _log_to(run_dir: Path, cfg: TrainConfig):
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger("codec").addHandler(handler)
    logging.getLogger("codec").setLevel(logging.INFO)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))


def cpu_has_bf16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def precision_for_this_cpu(cfg: TrainConfig) -> TrainConfig:
    """bf16: true where the CPU has bfloat16 instructions, else float32. On an AVX2-only CPU (session 19,
    `bench-train`, 2 threads) float32 made 0.24-0.37 steps/s and emulated bf16 not 8 steps in 20 minutes, so
    asking for it there is never meant; the two train alike (session 16's float32 twin of a decay: -2.32 %
    against -2.25 %)."""
    if cfg.bf16 and not cpu_has_bf16():
        log.warning("bf16: true, but this CPU has no bfloat16 instructions (emulated, it is far slower): "
                    "training in float32")
        return dataclasses.replace(cfg, bf16=False)
    return cfg


def compiled(model):
    """torch.compile's CPU backend builds C++ kernels: without a compiler, say so and train eagerly."""
    import shutil
    if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        log.warning("compile: true needs a C++ compiler (g++) for torch.compile; training without it")
        return model
    return torch.compile(model)


def validate(cfg: TrainConfig, validator, model, run_dir: Path, step: int, wall: float, best: float) -> float:
    """Logs estimated and (val_coded) entropy-coded figures, exports last.npz and best.npz; returns best."""
    result = validator(model)
    score = Validator.score(result)
    log.info("val step %d: %s score %.4f", step,
             "  ".join(f"λ{lam}: {b:.3f} bpp {p:.2f} dB" for lam, (b, p) in result.items()), score)
    info = {"step": step, "wall_seconds": round(wall), "val": {str(k): v for k, v in result.items()}}
    if cfg.val_coded and validator.images:
        coded = validator.coded(model)
        log.info("val step %d coded: %s", step,
                 "  ".join(f"λ{lam}: {b:.3f} bpp {p:.2f} dB" for lam, (b, p) in coded.items()))
        info["val_coded"] = {str(k): v for k, v in coded.items()}
        info["val_coder"] = Validator.coder()
    export_float_model(model, run_dir / "last.npz", info)
    if score < best:
        export_float_model(model, run_dir / "best.npz", info)
        return score
    return best


def _out_of_time(cfg: TrainConfig, cpu_start: float) -> bool:
    return cfg.time_budget_s > 0 and time.process_time() - cpu_start >= cfg.time_budget_s


def _wall_so_far(run_dir: Path) -> float:
    f = run_dir / "wall_seconds"
    return float(f.read_text()) if f.exists() else 0.0


def _write_wall(run_dir: Path, wall: float):
    (run_dir / "wall_seconds").write_text(f"{wall:.0f}")


def main(args):
    cfg = TrainConfig.from_yaml(args.config)
    if args.steps is not None:   # the count the config gives: run_steps where it counts from its start step
        setattr(cfg, "run_steps" if cfg.run_steps else "steps", args.steps)
    if args.run_dir:
        cfg.run_dir = args.run_dir
    if args.time_budget is not None:
        cfg.time_budget_s = args.time_budget
    if args.threads is not None:
        cfg.threads = args.threads
    if args.processes is not None:
        cfg.processes = args.processes
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    train(cfg)
