"""Cross-layer equalisation of the image analysis for INT8 graphs (issue #4).

TensorRT quantises each Conv input with one scale per tensor. In the folded inference graph
(`inference_analysis.py`) a quantised input is h = softsign(u)·gain + γ·shift per channel, and its
channels are far apart: on model 9df5ec27 the 99.99th percentiles of |h| per channel spread 33x, 497x
and 10x over the three quantised inputs. The per-tensor scale follows the widest channel, so the narrow
ones get a handful of the 255 levels; that, not the weights, was most of the 0.55 dB the Q/DQ graph lost.

The model can carry each channel at another scale without changing its function (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019): multiplying GDN i's β and γ of
channel c by e_c divides the GDN output by e_c, and multiplying FiLM i's gain by e_c undoes it, so the
training-domain activations and every output are unchanged. In the folded graph, though, h_c becomes
e_c·h_c (the fold multiplies by γ) and the next Conv's weights of input channel c are divided by e_c.
As in that paper, e_c = sqrt(w_c / r_c) (times a constant), with r_c the channel's activation range and w_c
the largest weight the next Conv applies to it, leaves every channel with the same ratio of activation to
weight range: the spread is split evenly between the two quantisers, and a second pass finds e = 1 (but
where the gain cap stopped the first), so equalising an equalised model changes next to nothing. Emulated
on 6 blade frames (quantisation_aware.py), BD-PSNR of the Q/DQ graph against float: -0.56 dB as trained,
-0.06 dB equalised (-0.06 dB too when e_c = (R / r_c)^0.5 balanced the activation ranges alone, and
-1.66 dB with (R / r_c)^1, which gives every activation channel the full range and pushes the whole
spread into the weights).

The ranges must hold on photos the calibration set does not show. Taken from the 32 Nordtank calibration
crops alone, the equalised Q/DQ graph lost 0.70 dB under ONNX Runtime (10 drone frames): one frame lost
4.3 dB, because a channel quiet on Nordtank was scaled up and then clipped on 1.6 % of its values. So each
channel's range is the widest over several photo sets (export_model.py adds 32 varied training photos) and
e_c stays within 1/MAX_GAIN..MAX_GAIN: then -0.07 dB, and that frame loses nothing.

The cap yields to the weights, though. A GDN channel whose γ trained to almost 0 (1.4e-7 in the session-11
decay; the GDN is then linear there) gets its next-Conv weights divided by γ in the fold: one input column
1.7e6x the median, which sets every output channel's weight scale and quantises the rest of each row to 0
(that graph decoded at 11.5 dB). So a column more than MAX_GAIN times the median one comes down towards the
median column (e_c up to w_c / median w), and the activation the fold had shrunk by γ comes back up by as much.
That scaling is certain to help, unlike lifting a quiet activation on trust: the channel's weight and
activation ranges only trade places. One limit: the lifted activation stays at most 1/LIFT_HEADROOM of the
widest other channel's range. A γ≈0 channel is linear, with no Softsign to bound it, and on smooth sky it
went past its calibrated range (1.27x on a drone frame's top-left corner); lifted to the top of the tensor it
set the scale and clipped there.
Measured on the session-14 decay (21 γ floored; `calibration rd`, 10 blade frames, BD-PSNR against FP32 of
the Q/DQ / CPU graph; then λ 8192 on the top-left 240x400 of three drone frames, two of them sky, dB lost):
- columns down to MAX_GAIN x the median only (until session 15): -0.47 / -0.10 dB (spreads after
  equalisation 11.6x, 52x, 31x; -1.26 dB at λ 8192); sky crops 0.8, 2.9, 3.0 dB on the Q/DQ graph;
- down to the median, no limit: -0.07 / -0.08 dB, but the sky crops lost 2.4-2.8 dB on both graphs;
- down to 2x or 4x the median: -0.08 / -0.09 and -0.17 / -0.09 dB; sky crops up to 0.51 and 0.41 dB;
- down to the median, limited to 1/4 of the widest (shipped): -0.09 / -0.09 dB (spreads 4.0x, 7.2x, 5.1x);
  sky crops 0.09-0.11 dB (Q/DQ), 0.02-0.14 dB (CPU); limited to 1/2: -0.07 / -0.09 dB, sky up to 0.12 dB.
Measured on the main line at step 120,000 (session 17; 54 γ floored, the third input's spread 89,124x before):
- MAX_GAIN 8 (until session 17): Q/DQ -0.16 dB / +4.2 % (spreads after 4.0x, 5.6x, 12.5x), sky crops 0.21,
  0.40, 0.53 dB; LIFT_HEADROOM 8 instead of 4: -0.16 dB, sky crops 0.26, 0.49, 0.52 dB;
- MAX_GAIN 16 (since session 17): Q/DQ -0.09 dB / +2.3 % (spreads 4.0x, 5.6x, 8.3x), sky crops 0.07, 0.12, 0.19 dB.

Before any of this, floor_gamma_recorded lifts each γ so that γ|x|/β reaches GAMMA_REACH on the widest sample
pixel. Below that the channel is linear on every sample pixel, so the lift changes its output by at most that
fraction there. Until session 30 the floor was 1e-3 of the GDN's median γ. Lineage C (z1 192 wide, session 29)
trained most of its third GDN's γ to where that GDN is linear (median γ 6e-12), so that floor lifted nothing
that mattered. Its γ = 0 channels came up to 6e-15 and their columns to 1,800x the median one; lifting them
scaled β and the FiLM gain by as much, which overflowed float16 (2.5e5), and the export failed.
A floored channel is linear, so the scale of its fold output is not the photos' doing: it is the floor's γ
times a FiLM gain that trades freely with β (lineage C: β 857, gain 793, output 8, the widest of its tensor;
the narrowest 2e-4). So its e_c may go to 1/FLOORED_MAX_GAIN..FLOORED_MAX_GAIN, though never so low
that β·e_c drops under SMALLEST_BETA. Measured in session 30 (`calibration rd`, 10 blade frames, Q/DQ
graph, BD-PSNR / BD-rate against FP32; sky: λ 8192 on the top-left 240x400 of the three smoothest drone
frames, dB lost):
- lineage C at step 15,000, floor at reach 1e-2, cap 16 for every channel: -2.27 dB / +70 % (spreads 7.9x,
  4.2x, 183x), sky 5.0 dB; with FLOORED_MAX_GAIN: -0.12 dB / +3.1 % (4.0x, 4.2x, 7.7x), sky 0.09 dB;
- main line at step 150,000 (107 γ floored): cap 16 -1.66 dB / +32 %, sky 2.5 dB; FLOORED_MAX_GAIN -0.06 dB /
  +1.9 % (3.5x, 3.3x, 3.9x), sky 0.08 dB. The rule before session 30 (20 γ floored) could not export these
  weights either: FiLM weight 9.3e4, past float16.

GAMMA_REACH was 1e-2 until session 34, and that floor cost the float codec itself: lineage C at step 65,000
has 151 channels under it (most of its third GDN), and its exported file coded the 13 blade validation frames
0.26 dB worse at λ 1024 and 0.47 dB worse at λ 8192 than its training weights (`codec bench`, against their
coded validation). On 3 of those frames, in float (dB lost at λ 64 / λ 8192): reach 1e-2 0.10 / 0.43,
1e-3 0.00 / 0.02, 1e-4 0.00 / 0.00. 1e-3 (128 floored) rather than lower: the fold multiplies the Conv rows
before a floored GDN by γ/β (about reach / x_max) and its outputs are about reach, so a lower floor sinks them
towards float16's subnormals in a half-precision engine. Emulated (the folded analysis with its weights and
every tensor between operators rounded to float16, arithmetic in float32; 3 drone frames, λ 64 and 8192), y's
relative error against float32 is 4.3-5.3e-4 at reach 1e-2, 4.6-5.2e-4 at 1e-3 and 1.1-1.2e-3 at 1e-4. No GPU
here: TensorRT itself is not measured.

`export_model.py` applies it to every exported model, so the float weights of a model file are already in
this form; the float codec is the same function up to the γ floor (its weights are stored as float16 either way).
"""
from __future__ import annotations

import torch

from .errors import CodecError
from .inference_analysis import foldable
from .quantisation_aware import QuantisationAwareImageAnalysis, percentile

MAX_GAIN = 16.0  # e_c within [1/16, 16]: a channel quiet on every sample photo is not blown up on trust
GAMMA_REACH = 1e-3   # the smallest γ the fold divides by makes γ|x|/β reach this on the widest sample pixel
                     # (1e-2 until session 34 cost lineage C 0.4 dB at λ 8192 in float: docstring)
# e_c of a floored channel within [1/FLOORED_MAX_GAIN, FLOORED_MAX_GAIN]: that channel is linear, so its fold output
# (γ|x|/β · FiLM gain) has the scale the floor's γ and the FiLM gain give it (β and that gain trade freely there:
# lineage C has β 857 with gain 793), not the photos'
FLOORED_MAX_GAIN = MAX_GAIN / GAMMA_REACH
SMALLEST_BETA = 1e-5   # no e_c takes β·e_c below this: rescale_channels stores β·e_c - 1e-6 (beta() adds the
                       # 1e-6 back), and at 1/FLOORED_MAX_GAIN a β under 1.6e-3 would drop that below 0
LIFT_HEADROOM = 4.0   # a channel lifted out of an inflated column stays this far under the widest other one


def gamma_params(gdn) -> torch.Tensor:
    """A diagonal GDN's γ parameters (γ = their squares), as a writable view of its matrix's diagonal."""
    return gdn.gamma_param.view(len(gdn.gamma_diagonal()), -1).diagonal()


def floor_gamma(image, sample_sets: list, reach: float = GAMMA_REACH) -> int:
    """floor_gamma_recorded, returning how many channels it lifted."""
    return len(floor_gamma_recorded(image, sample_sets, reach))


@torch.no_grad()
def floor_gamma_recorded(image, sample_sets: list, reach: float = GAMMA_REACH) -> list:
    """Lift each GDN channel's γ to at least reach · β / x_max, x_max its widest |input| over the sample sets
    (lists of (x, λ) pairs): below that the GDN is linear on every sample pixel (x / (β + γ|x|), γ|x| ≪ β)
    and changes by at most the fraction reach there, but the fold divides the next Conv's weights by γ, and a
    column 1e6x the others cannot be equalised within float16 (export stores β·e_c and the FiLM gain·e_c).
    Returns each lifted channel as [gdn, channel, its γ parameter before]: what undo_equalisation puts back."""
    lifted = []
    for k, (gdn, x_max) in enumerate(zip(image.gdns, gdn_input_ranges(image, sample_sets))):
        busy = x_max[x_max > 0]   # a channel silent on every sample is given a typical busy one's range
        x_max = torch.where(x_max > 0, x_max, busy.median() if len(busy) else 1.0)
        level = reach * gdn.beta() / x_max
        # (1 - 1e-5): a γ set to level comes back from its sqrt parameter a rounding below it
        low, params = gdn.gamma_diagonal() < level * (1 - 1e-5), gamma_params(gdn)
        lifted += [[k, int(c), float(params[c])] for c in torch.nonzero(low).flatten()]
        params[low] = level[low].sqrt()
    return lifted


def gdn_input_ranges(image, sample_sets: list) -> list:
    """Per GDN of image, each channel's largest |input| over the sample sets."""
    widest = [torch.zeros(len(g.beta_param)) for g in image.gdns]

    def tap(k):
        def hook(_module, args):
            widest[k] = torch.maximum(widest[k], args[0].detach().abs().amax(dim=(0, 2, 3)).float())
        return hook

    handles = [g.register_forward_pre_hook(tap(k)) for k, g in enumerate(image.gdns)]
    try:
        for x, lam in (pair for samples in sample_sets for pair in samples):
            image(x, lam)
    finally:
        for h in handles:
            h.remove()
    return widest


@torch.no_grad()
def equalise(image, cfg, sample_sets: list, q: float, floored: list = ()) -> dict:
    """Rescale the channels of image (an ImageAnalysis with diagonal GDNs) in place. Each channel's range is
    the widest of its q-th percentiles over the sample sets (lists of (x, λ) pairs): a channel quiet on
    the INT8 calibration photos but busy on other photos must not be scaled up into clipping. floored lists
    the channels floor_gamma_recorded lifted ([gdn, channel, ...]): their gain caps are FLOORED_MAX_GAIN.
    Returns each quantised input's spread of channel ranges (widest / narrowest) before and after."""
    if not foldable(image):
        raise CodecError("cross-layer equalisation needs diagonal GDNs with every γ > 0 (the INT8 graph's fold)")
    probe = QuantisationAwareImageAnalysis.from_analysis(image, cfg, quantise_weights=False,
                                                         quantise_activations=False).eval()
    ranges = [torch.stack(r).amax(dim=0) for r in zip(*(channel_ranges(probe, s, q) for s in sample_sets))]
    before, after, scales = [], [], []
    for k, (r, cap) in enumerate(zip(ranges, gain_caps(image, floored))):
        w = probe.folded(k + 1)[0].abs().amax(dim=(0, 2, 3))   # per input channel of the next Conv
        ratio = w / r.clamp_min(float(r.max()) * 1e-6)
        low = torch.maximum(1 / cap, SMALLEST_BETA / image.gdns[k].beta())   # β >= 1e-6: at most 10, under every cap
        e = torch.minimum((ratio / ratio.median()).sqrt(), cap).maximum(low)
        e = undo_inflated_columns(w, r, e)
        rescale_channels(image.gdns[k], image.films[k], e)
        scales.append(e.tolist())
        before.append(float(r.max() / r.min().clamp_min(1e-12)))
        after.append(float((r * e).max() / (r * e).min().clamp_min(1e-12)))
    return {"percentile": q, "max_gain": MAX_GAIN, "floored_max_gain": FLOORED_MAX_GAIN,
            "lift_headroom": LIFT_HEADROOM, "spread_before": before, "spread_after": after, "scales": scales}


def gain_caps(image, floored: list) -> list:
    """Per GDN, each channel's largest e (1 / it the smallest): MAX_GAIN, or FLOORED_MAX_GAIN where the γ floor
    lifted it."""
    caps = [torch.full((len(g.beta_param),), MAX_GAIN) for g in image.gdns]
    for k, channel, *_ in floored:
        caps[k][channel] = FLOORED_MAX_GAIN
    return caps


@torch.no_grad()
def undo_equalisation(image, record: dict) -> bool:
    """Return image to the weights training had, from an export's record ("scales", and the γ parameters
    "gamma_params_before_floor" as [gdn, channel, value]). Why: the equalised weights are the same function,
    but each channel's GDN and FiLM parameters sit at another scale, and Adam's steps (about lr, whatever a
    weight's size) then shake them: restarted from an equalised file, the main line lost 6.9 % BD-rate more
    in 1,000 steps than from the same weights unequalised (session 25). False when the record has no scales
    (files exported before session 25)."""
    if not record or "scales" not in record:
        return False
    for gdn, film, e in zip(image.gdns, image.films, record["scales"]):
        rescale_channels(gdn, film, 1.0 / torch.tensor(e, dtype=gdn.beta_param.dtype))
    for k, channel, value in record.get("gamma_params_before_floor", []):
        gamma_params(image.gdns[k])[channel] = value
    return True


def undo_inflated_columns(w: torch.Tensor, r: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """e with each weight column more than MAX_GAIN x the median (the fold divided it by a γ near 0) brought
    down towards the median column and its activation up by as much, but to no more than 1/LIFT_HEADROOM of
    the widest other channel's range, and never less than down to MAX_GAIN x the median."""
    to_median = w / w.median()   # the e that brings each column down to the median one
    inflated = to_median > MAX_GAIN
    if not inflated.any():
        return e
    top = float((r * e)[~inflated].max()) / LIFT_HEADROOM
    lift = torch.minimum(to_median, top / r).clamp_min(to_median / MAX_GAIN)
    return torch.where(inflated, torch.maximum(e, lift), e)


def channel_ranges(probe, samples, q: float) -> list:
    """Per quantised Conv input of probe, the q-th percentile of |h| of each channel over samples."""
    taps = [[] for _ in probe.gdns]
    for x, lam in samples:
        inputs = []
        probe(x, lam, inputs)
        for k, h in enumerate(inputs):
            taps[k].append(h.abs().transpose(0, 1).reshape(h.shape[1], -1))
    return [torch.tensor([percentile(channel, q) for channel in torch.cat(t, dim=1)]) for t in taps]


def rescale_channels(gdn, film, e: torch.Tensor):
    """GDN β, γ and FiLM gain of each channel times e: the same function, h_c times e_c once folded."""
    beta, gamma = gdn.beta(), gdn.gamma_diagonal()
    gdn.beta_param.copy_((beta * e - 1e-6).clamp_min(0).sqrt())   # beta() = beta_param² + 1e-6
    c = len(e)
    gamma_params(gdn).copy_((gamma * e).sqrt())
    out = film.net[-1]   # its first half is the gain minus one: (1 + s)·e = 1 + (e·s + e - 1)
    out.weight[:c].mul_(e.view(-1, 1))
    out.bias[:c].copy_(e * (1 + out.bias[:c]) - 1)
