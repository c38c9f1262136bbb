"""Exactness the way it fails in the field: a perturbed analysis, other thread counts, another backend.
In every case the decoder must rebuild exactly the integer latents the encoder coded."""
import hashlib
import subprocess
import sys

import numpy as np

from codec import api
from codec.imageio import Photo, read_photo
from codec.lambdas import index_of_lambda, lambda_of_index
from codec.transforms import TorchTransforms
from tests.conftest import PROJECT_ROOT, blade_photos, synthetic_image


class NoisyTransforms(TorchTransforms):
    """The analysis with ±amplitude uniform noise on every output, as an inexact FP16/INT8 engine gives."""

    def __init__(self, net, lam, amplitude, seed):
        super().__init__(net, lam)
        self.rng = np.random.default_rng(seed)
        self.amplitude = amplitude

    def _noise(self, y):
        return (y + self.rng.uniform(-self.amplitude, self.amplitude, y.shape)).astype(np.float32)

    def image(self, x):
        return self._noise(super().image(x))

    def latent(self, y1):
        return [self._noise(y) for y in super().latent(y1)]


def _photo():
    paths = blade_photos(1)
    return read_photo(paths[0])


def _decoded(model, data, threads=1):
    zq, _ = api.decode_latents(model, api.read_container(model, data), threads)
    return zq


def test_perturbed_analysis_still_decodes_exactly(default_model):
    photo = _photo()
    lam_index = index_of_lambda(512)
    reference = api.compress(default_model, photo, lam_index, keep_latents=True)
    changed = []
    for seed in range(3):
        noisy = NoisyTransforms(default_model.torch_model, lambda_of_index(lam_index), 1e-3, seed)
        enc = api.compress(default_model, photo, lam_index, transforms=noisy, keep_latents=True)
        for a, b in zip(enc.latents, _decoded(default_model, enc.data)):
            np.testing.assert_array_equal(a, b)
        api.decompress(default_model, enc.data)
        changed.append(np.mean([np.mean(a != b) for a, b in zip(enc.latents, reference.latents)]))
    # the noise moves a few latents across rounding boundaries, and the z1 priors' means with each moved z2
    # (mean fraction over the levels, seeds 0-2: model 48fcf67e 0.006, 0.006, 0.0006; 597d4424 0.0006, 0.012,
    # 0.007, of z1 alone up to 4 %); an analysis that is not the model's changes far more
    assert max(changed) < 0.05


HASH_SCRIPT = """
import hashlib, sys
from codec import api
from codec.runtime import CodecModel
m = CodecModel.load()
data = open(sys.argv[1], 'rb').read()
zq, _ = api.decode_latents(m, api.read_container(m, data), threads=int(sys.argv[2]))
h = hashlib.sha256()
for z in zq:
    h.update(z.tobytes())
api.decompress(m, data, threads=int(sys.argv[2]))
print(h.hexdigest())
"""


def test_decoder_with_other_thread_counts(default_model, tmp_path):
    photo = Photo(synthetic_image(700, 1100, seed=4))
    enc = api.compress(default_model, photo, index_of_lambda(300), threads=1, tile_px=512, keep_latents=True)
    path = tmp_path / "x.nlic"
    path.write_bytes(enc.data)
    h = hashlib.sha256()
    for z in enc.latents:
        h.update(z.tobytes())
    for threads in ("1", "2"):
        env = {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-c", HASH_SCRIPT, str(path), threads], cwd=PROJECT_ROOT,
                             env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == h.hexdigest()


def test_encoder_with_other_thread_counts_decodes(default_model):
    photo = Photo(synthetic_image(300, 500, seed=5))
    for threads in (1, 2):
        enc = api.compress(default_model, photo, 120, threads=threads, tile_px=256, keep_latents=True)
        for a, b in zip(enc.latents, _decoded(default_model, enc.data, threads=3 - threads)):
            np.testing.assert_array_equal(a, b)


def test_onnx_runtime_encoder_pytorch_decoder(default_model, tmp_path):
    from codec.onnx_export import OrtTransforms, export_analysis

    image_onnx, latent_onnx = export_analysis(default_model.torch_model, tmp_path)
    photo = _photo()
    lam_index = index_of_lambda(2048)
    ort = OrtTransforms.from_files(image_onnx, latent_onnx, lambda_of_index(lam_index))
    enc = api.compress(default_model, photo, lam_index, transforms=ort, keep_latents=True)
    for a, b in zip(enc.latents, _decoded(default_model, enc.data)):
        np.testing.assert_array_equal(a, b)
    reference = api.compress(default_model, photo, lam_index, keep_latents=True)
    same = sum((a == b).sum() for a, b in zip(enc.latents, reference.latents))
    total = sum(a.size for a in enc.latents)
    assert same / total >= 0.999
    out = api.decompress(default_model, enc.data)
    assert out.pixels.shape == photo.pixels.shape
