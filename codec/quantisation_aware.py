"""Quantisation-aware fine-tuning of the image analysis for the INT8 Q/DQ graph (issue #4).

Post-training quantisation of the analysis cost 0.18 dB (session 5) and then more with every model as
training went on (0.55 dB on model 9df5ec27, session 10): nothing in training asks the analysis to
survive 8 bits. Here the analysis is fine-tuned through the same arithmetic the INT8 graph runs
(Jacob et al., CVPR 2018; straight-through rounding as in Bengio et al. 2013), while the synthesis and
the priors stay frozen, so every bitstream still decodes on the same ground decoder.

What is emulated is the graph `calibration/quantize.py` builds for TensorRT from the inference rewrite
(`inference_analysis.py`): the GDNs folded into Softsigns, so each quantised Conv reads
  h = softsign(u)·gain + γ·shift       (the folded FiLM output)
through a per-tensor symmetric int8 quantiser (scale = 99.99th percentile of |h| on the calibration set
/ 127), with its weights folded (divided by the previous γ per input channel, times γ/β per output
channel) and quantised per output channel (scale = max|w| / 127). The first Conv stays in float as it
does in that graph, and so do biases, Softsign, FiLM and the rate gain.

The activation scales are not learned: after fine-tuning, `quantize_static` calibrates the exported graph
again on the same photos with the same percentile, so the ranges trained against must be the ranges it
will pick. They are re-measured every `recalibrate_every` steps as the weights move.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .errors import CodecError
from .inference_analysis import foldable, folded_conv
from .layers import rate_gain
from .model import ImageAnalysis

log = logging.getLogger("codec.train")

LEVELS = 127          # symmetric int8, zero point 0 (what TensorRT requires): scale = range / 127; weights
                      # span [-127, 127], activations clamp to [-128, 127] (ONNX QuantizeLinear, TensorRT's
                      # IQuantizeLayer); until session 49 the emulation clamped activations at -127
HISTOGRAM_BINS = 2048   # as ONNX Runtime's percentile calibrator


def fake_quantise(x, scale, lowest: int = -LEVELS - 1):
    """Round to the int8 grid of `scale` (a tensor broadcastable to x), clamped to [lowest, 127]; gradient
    passes straight through inside the range and stops outside it. Computed in float32: bfloat16 cannot hold
    x / scale to the nearest integer."""
    q = x.float() / scale
    clamped = q.clamp(lowest, LEVELS)
    return ((clamped + (torch.round(clamped) - clamped).detach()) * scale).to(x.dtype)


def weight_scale(w):
    """Per output channel: max|w| / 127, as ONNX Runtime's symmetric per-channel weight quantisation."""
    return (w.detach().abs().amax(dim=(1, 2, 3), keepdim=True) / LEVELS).clamp_min(1e-12)


class QuantisationAwareImageAnalysis(ImageAnalysis):
    """The image analysis as the Q/DQ graph computes it. Same parameters and state_dict as ImageAnalysis
    (the scales are not saved: they are measured, see calibrate)."""

    def __init__(self, cfg, quantise_weights: bool = True, quantise_activations: bool = True):
        super().__init__(cfg)
        self.quantise_weights = quantise_weights
        self.quantise_activations = quantise_activations
        self.register_buffer("activation_scales", torch.ones(len(self.convs) - 1), persistent=False)

    @classmethod
    def from_analysis(cls, image: ImageAnalysis, cfg, **kwargs):
        qat = cls(cfg, **kwargs)
        qat.load_state_dict(image.state_dict())
        for a, b in zip(qat.gdns, image.gdns):
            a.elementwise = b.elementwise
        return qat

    def folded(self, i: int):
        """(weight, bias) of Conv i in the inference graph, as a differentiable function of the parameters."""
        return folded_conv(self, i)

    def forward(self, x, lam, taps: list | None = None):
        """y1 as the INT8 graph computes it; taps, when given, receives each quantised Conv input (before
        its quantiser)."""
        h = x - 0.5
        for i, film in enumerate(self.films):
            if i > 0:
                h = self._quantised_input(i, h, taps)
            u = F.conv2d(h, *self._weights(i), stride=2, padding=2)
            gain, shift = film.affine(lam, u.dtype)
            h = u / (1.0 + u.abs()) * gain + shift * self.gdns[i].gamma_diagonal().view(1, -1, 1, 1)
        last = len(self.convs) - 1
        h = self._quantised_input(last, h, taps)
        return F.conv2d(h, *self._weights(last), stride=2, padding=2) * rate_gain(lam, h.dtype)

    def _weights(self, i: int):
        w, b = self.folded(i)
        if i > 0 and self.quantise_weights:   # the first Conv stays in float
            w = fake_quantise(w, weight_scale(w), -LEVELS)
        return w, b

    def _quantised_input(self, i: int, h, taps):
        if taps is not None:
            taps.append(h.detach())
        return fake_quantise(h, self.activation_scales[i - 1]) if self.quantise_activations else h

    @torch.no_grad()
    def calibrate(self, samples, q: float) -> list:
        """Set each quantised input's scale from the q-th percentile of |h| over samples ((x, λ) pairs),
        measured without quantisation, as ONNX Runtime's calibrator does on the float graph; returns them."""
        inputs = [[] for _ in self.activation_scales]
        quantising, self.quantise_activations = self.quantise_activations, False
        try:
            for x, lam in samples:
                taps = []
                self(x, lam, taps)
                for k, h in enumerate(taps):
                    inputs[k].append(h.float().abs().flatten())
        finally:
            self.quantise_activations = quantising
        for k, values in enumerate(inputs):
            self.activation_scales[k] = percentile(torch.cat(values), q) / LEVELS
        return self.activation_scales.tolist()


def percentile(values: torch.Tensor, q: float) -> float:
    """The q-th percentile of non-negative values as ONNX Runtime's calibrator takes it from a histogram of
    HISTOGRAM_BINS bins over [0, max]: the lower edge of the bin where the cumulative share reaches q."""
    top = float(values.max())
    if top <= 0:
        return 1e-12 * LEVELS
    counts = torch.histc(values, HISTOGRAM_BINS, 0.0, top).double()
    cdf = counts.cumsum(0) / counts.sum()
    k = int(torch.searchsorted(cdf, torch.tensor(q / 100, dtype=torch.float64)))
    return float(top * min(k, HISTOGRAM_BINS) / HISTOGRAM_BINS)


class Calibration:
    """What `calibration/quantize.py` calibrates the Q/DQ graph on: its photo set, λ values and percentile.
    Not modelled: its rescaling of the channels flat fields at the frame edge overdrive (since session 27,
    calibration/flat_field_ranges.py), which narrows the ranges of the tensors it touches."""

    def __init__(self, calibration_set):
        from calibration.quantize import PERCENTILE   # calibration builds on codec: imported late

        self.samples = [(torch.from_numpy(x), torch.from_numpy(lam)) for x, lam in calibration_set.samples()]
        self.percentile = PERCENTILE

    def __call__(self, image: QuantisationAwareImageAnalysis) -> list:
        if not foldable(image):   # then the exported graph is not the one emulated here
            raise CodecError("quantisation-aware training needs diagonal GDNs with every γ > 0, as the INT8 graph "
                             "folds them (set lift_stuck_gdn: false)")
        scales = image.calibrate(self.samples, self.percentile)
        log.info("INT8 activation scales %s", " ".join(f"{s:.4g}" for s in scales))
        return scales


def make_quantisation_aware(net) -> QuantisationAwareImageAnalysis:
    """Replace net's image analysis by its quantisation-aware form (same parameters; call calibrate before
    use). Before building an optimiser: the parameters are new objects."""
    qat = QuantisationAwareImageAnalysis.from_analysis(net.analysis.image, net.cfg)
    net.analysis.image = qat
    return qat
