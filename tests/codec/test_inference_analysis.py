"""The inference form of the image analysis: the same latents, with GDNs as Softsign and a SpaceToDepth first conv."""
import numpy as np
import onnx
import pytest
import torch

from codec.inference_analysis import (InferenceImageAnalysis, _SpaceToDepth, foldable, inference_image_analysis,
                                      space_to_depth_conv)
from codec.layers import use_elementwise_gdns
from codec.model import ModelConfig, NestedLatentCodec
from codec.onnx_export import OrtTransforms, export_analysis
from tests.conftest import synthetic_image

SMALL = {"levels": 2, "channels": 8, "latent_channels": 8, "prior_channels": 8}


def trained_like(seed=0):
    """A small model whose GDNs are diagonal, as every shipped model's are, with trained-looking FiLMs."""
    torch.manual_seed(seed)
    net = NestedLatentCodec(ModelConfig(**SMALL)).eval()
    with torch.no_grad():
        for gdn in net.analysis.image.gdns:
            gdn.gamma_param.copy_(torch.diag_embed(torch.rand(8) * 0.3 + 0.05).view(8, 8, 1, 1))
            gdn.beta_param.copy_(torch.rand(8) + 0.5)
        for film in net.analysis.image.films:
            film.net[2].weight.normal_(0, 0.3)
            film.net[2].bias.normal_(0, 0.3)
    use_elementwise_gdns(net)
    return net


def image():
    x = synthetic_image(72, 104, seed=3).astype(np.float32) / 255
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


@pytest.mark.parametrize("lam", [64.0, 1000.0, 8192.0])
def test_inference_form_gives_the_same_latents(lam):
    net = trained_like()
    folded = InferenceImageAnalysis(net.analysis.image)
    x, lam_t = image(), torch.tensor([lam])
    with torch.no_grad():
        y, y_folded = net.analysis.image(x, lam_t), folded(x, lam_t)
    torch.testing.assert_close(y_folded, y, rtol=1e-4, atol=1e-5)
    assert (torch.round(y_folded) != torch.round(y)).float().mean() < 1e-3   # the codec's latents


def test_exported_graph_has_one_softsign_per_gdn_and_matches_torch(tmp_path):
    net = trained_like(seed=1)
    image_path, latent_path = export_analysis(net, tmp_path)
    ops = [n.op_type for n in onnx.load(str(image_path)).graph.node]
    assert ops.count("Softsign") == 3 and "Abs" not in ops   # GDN's |x| is gone
    assert ops.count("SpaceToDepth") == 1
    x = image()
    ort = OrtTransforms.from_files(image_path, latent_path, 500.0, threads=1)
    with torch.no_grad():
        y = net.analysis.image(x, torch.tensor([500.0])).numpy()
    np.testing.assert_allclose(ort.image(x.numpy()), y, rtol=1e-4, atol=1e-4)


def test_models_the_fold_cannot_take_keep_their_own_analysis():
    fresh = NestedLatentCodec(ModelConfig(**SMALL))   # pedestal off-diagonals: not diagonal
    assert not foldable(fresh.analysis.image)
    assert inference_image_analysis(fresh.analysis.image) is fresh.analysis.image
    net = trained_like()
    with torch.no_grad():
        net.analysis.image.gdns[1].gamma_param[3, 3] = 0.0   # γ = 0: the fold would divide by it
    assert not foldable(net.analysis.image)
    with pytest.raises(ValueError, match="the inference analysis needs diagonal GDNs with every γ > 0"):
        InferenceImageAnalysis(net.analysis.image)


@pytest.mark.parametrize("size", [(8, 8), (10, 14), (2, 6)])
def test_space_to_depth_conv_equals_the_strided_5x5(size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 5, stride=2, padding=2)
    blocked = space_to_depth_conv(conv)
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(blocked(_SpaceToDepth.apply(x)), conv(x), rtol=1e-5, atol=1e-5)


def test_odd_sizes_are_refused_in_one_line():
    net = trained_like()
    with pytest.raises(ValueError, match="needs even height and width, got 33x48"):
        InferenceImageAnalysis(net.analysis.image)(torch.rand(1, 3, 33, 48), torch.tensor([64.0]))
