"""The GDN's per-element form (used when Γ is exactly diagonal, the same function as the 1x1 convolution);
the residual block that starts as the identity."""
import pytest
import torch

from codec.layers import ResidualBlock, SimplifiedGDN, use_elementwise_gdns


def diagonal_gdn(channels=6, inverse=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    gdn = SimplifiedGDN(channels, inverse=inverse)
    with torch.no_grad():
        gdn.gamma_param.copy_(torch.diag_embed(torch.rand(channels, generator=g) + 0.1).view(channels, channels, 1, 1))
        gdn.beta_param.copy_(torch.rand(channels, generator=g) + 0.5)
    return gdn


@pytest.mark.parametrize("inverse", [False, True])
def test_per_element_form_equals_the_convolution_with_its_gradients(inverse):
    gdn = diagonal_gdn(inverse=inverse)
    x = torch.randn(2, 6, 5, 7)
    conv_out = gdn(x)
    conv_grad = torch.autograd.grad(conv_out.square().sum(), gdn.gamma_param)[0]
    assert gdn.use_elementwise_if_diagonal()
    out = gdn(x)
    grad = torch.autograd.grad(out.square().sum(), gdn.gamma_param)[0]
    torch.testing.assert_close(out, conv_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, conv_grad, rtol=1e-5, atol=1e-6)   # off-diagonal: 0 in both


def test_a_gdn_with_any_off_diagonal_weight_keeps_the_convolution():
    fresh = SimplifiedGDN(6)   # the pedestal: off-diagonal PEDESTAL², tiny but not zero
    assert not fresh.use_elementwise_if_diagonal()
    gdn = diagonal_gdn()
    with torch.no_grad():
        gdn.gamma_param[2, 4] = 1e-4
    assert not gdn.use_elementwise_if_diagonal() and not gdn.elementwise


def test_use_elementwise_gdns_counts_the_switched_layers():
    net = torch.nn.Sequential(diagonal_gdn(seed=1), SimplifiedGDN(6), diagonal_gdn(inverse=True, seed=2))
    assert use_elementwise_gdns(net) == 2
    assert [m.elementwise for m in net] == [True, False, True]


def test_lifting_stuck_zeros_switches_back_to_the_convolution():
    gdn = diagonal_gdn()
    assert gdn.use_elementwise_if_diagonal()
    assert gdn.lift_stuck_zeros() == 30 and not gdn.elementwise   # the lifted off-diagonal now counts
    x = torch.randn(1, 6, 4, 4)
    expected = x / torch.nn.functional.conv2d(x.abs(), gdn.gamma_param.square(), gdn.beta())
    torch.testing.assert_close(gdn(x), expected)


def test_a_residual_block_starts_as_the_identity_and_then_learns():
    torch.manual_seed(0)
    block = ResidualBlock(6)
    h = torch.randn(2, 6, 5, 7)
    assert torch.equal(block(h), h)
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    for _ in range(2):   # the first step moves the second convolution off zero, the second the first one
        opt.zero_grad()
        block(h).sub(h.flip(-1)).square().mean().backward()
        opt.step()
    assert block.conv2.weight.abs().max() > 0 and block.conv1.weight.grad.abs().max() > 0
    assert not torch.equal(block(h), h)
