"""Bound-guided distillation: affinity alignment behaves as a loss should, and a student trains with it."""
import torch

from codec.distillation import FeatureTap, affinity, affinity_loss, distillation_terms, tapped_modules
from codec.model import ModelConfig, NestedLatentCodec
from codec.train import TrainConfig, train
from tests.codec.test_train import TINY, config


def test_affinity_is_a_cosine_similarity_matrix():
    f = torch.randn(2, 5, 40, 24)
    a = affinity(f)
    assert a.shape == (2, 16 * 16, 16 * 16)
    assert torch.allclose(torch.diagonal(a, dim1=1, dim2=2), torch.ones(2, 256), atol=1e-5)
    assert torch.allclose(a, a.transpose(1, 2), atol=1e-6)


def test_alignment_loss_is_zero_for_same_structure_and_grows_with_difference():
    f = torch.randn(1, 8, 16, 16)
    assert affinity_loss(f, f * 3.0) < 1e-5          # same spatial structure, other scale
    assert affinity_loss(f, torch.randn(1, 12, 16, 16)) > 0.1  # channel counts may differ
    g = f.clone().requires_grad_(True)
    affinity_loss(g, torch.randn(1, 8, 16, 16)).backward()
    assert g.grad.abs().sum() > 0


def test_taps_see_one_map_per_stage():
    net = NestedLatentCodec(ModelConfig(**TINY))
    tap = FeatureTap(tapped_modules(net))
    out = net(torch.rand(1, 3, 64, 64), torch.tensor([500.0]), bound=True)
    feats = tap.take()
    assert len(feats) == 6 and tap.take() == []
    align, recon = distillation_terms(feats, feats, out["x_hat"], out["x_hat"])
    assert float(align) < 1e-5 and float(recon) == 0.0


def test_bound_teacher_then_distilled_student(tmp_path, folders):
    train(TrainConfig(**config(tmp_path, folders, run_dir=str(tmp_path / "teacher"), bound=True)))
    teacher = tmp_path / "teacher" / "last.pt"
    train(TrainConfig(**config(tmp_path, folders, run_dir=str(tmp_path / "student"), steps=50, val_every=50,
                               checkpoint_every=50, teacher=str(teacher))))
    log = (tmp_path / "student" / "train.log").read_text()
    assert "align" in log and "recon-mse" in log
