"""Image flow layers and whole models: exact inverses and log-determinants against autograd."""

from __future__ import annotations

import pytest
import torch
from conftest import brute_force_logabsdet, perturb

from ctflow.flows.base import Compose
from ctflow.flows.coupling import AffineCoupling
from ctflow.flows.glow import ActNorm, InvConv1x1
from ctflow.flows.mixture_cdf import MixtureCDFCoupling
from ctflow.image import (
    LogitTransform,
    MintLayer,
    SigmoidAffineCoupling,
    Split,
    Squeeze,
    Unsqueeze,
    build_image_flow,
    channel_mask,
    checkerboard_mask,
    squeeze,
    unsqueeze,
)
from ctflow.image.nets import GatedAttentionConditioner, GlowConditioner, ResNetConditioner

D64 = torch.float64


def _check_layer(layer, x, tol=1e-9):
    layer = perturb(layer.double(), 0.1).eval()
    z, ladj = layer(x)
    x_back, ladj_inv = layer.inverse(z)
    assert torch.allclose(x_back, x, atol=tol, rtol=0), (x_back - x).abs().max()
    assert torch.allclose(ladj_inv, -ladj, atol=1e-9)
    brute = brute_force_logabsdet(lambda v: layer(v)[0], x)
    assert torch.allclose(ladj, brute, atol=1e-8), (ladj - brute).abs().max()


def test_squeeze_round_trip_and_layout():
    x = torch.arange(2 * 3 * 4 * 6, dtype=D64).view(2, 3, 4, 6)
    s = squeeze(x)
    assert s.shape == (2, 12, 2, 3)
    # Channel c * 4 + 2 * a + b holds pixel (2i + a, 2j + b) of channel c.
    assert torch.equal(s[:, 1 * 4 + 2 * 1 + 0], x[:, 1, 1::2, 0::2])
    assert torch.equal(unsqueeze(s), x)
    z, ladj = Squeeze()(x)
    assert torch.equal(Unsqueeze()(z)[0], x) and torch.equal(ladj, torch.zeros(2, dtype=D64))
    with pytest.raises(ValueError, match="must divide"):
        squeeze(torch.zeros(1, 1, 3, 4))


@pytest.mark.parametrize("kind", ["checkerboard", "channel"])
def test_affine_coupling_with_resnet_conditioner(kind):
    mask = checkerboard_mask(4, 4) if kind == "checkerboard" else channel_mask(2)
    layer = AffineCoupling(mask, conditioner=ResNetConditioner(2, 4, hidden=8, n_blocks=1))
    _check_layer(layer, torch.randn(3, 2, 4, 4, dtype=D64))


def test_sigmoid_affine_coupling():
    layer = SigmoidAffineCoupling(channel_mask(4), conditioner=GlowConditioner(4, 8, hidden=8))
    _check_layer(layer, torch.randn(3, 4, 2, 2, dtype=D64))


def test_mixture_cdf_coupling_with_attention_conditioner():
    net = GatedAttentionConditioner(2, 14 * 2, hidden=8, n_blocks=1, heads=2)
    layer = MixtureCDFCoupling(checkerboard_mask(4, 4, parity=1), conditioner=net, inverse_tol=1e-13)
    _check_layer(layer, torch.randn(3, 2, 4, 4, dtype=D64))


def test_glow_layers_on_images():
    x = torch.randn(3, 4, 2, 2, dtype=D64)
    _check_layer(ActNorm(4), x)
    _check_layer(InvConv1x1(4, seed=0), x)


def test_split_with_conditional_prior():
    layer = Split(4, inner=Compose([ActNorm(2)]))
    _check_layer(layer, torch.randn(3, 4, 2, 2, dtype=D64))


def test_logit_transform():
    _check_layer(LogitTransform(0.05), torch.rand(3, 1, 2, 2, dtype=D64))


@pytest.mark.parametrize("reverse", [False, True])
def test_mint_layer_triangular_jacobian_and_inverse(reverse):
    layer = perturb(MintLayer(2, multiplier=2, reverse=reverse, inverse_tol=1e-12).double(), 0.3)
    x = torch.randn(2, 2, 3, 3, dtype=D64)
    _check_layer(layer, x, tol=1e-10)
    # In the (pixel, channel) order the Jacobian is triangular.
    jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x[:1])
    jac = jac.reshape(2, 9, 2, 9).permute(1, 0, 3, 2).reshape(18, 18)  # rows/cols: pixel-major
    tri = torch.triu(jac, 1) if not reverse else torch.tril(jac, -1)
    assert tri.abs().max() == 0
    assert (torch.diagonal(jac) > 0).all()


def test_mint_layer_warns_when_inverse_does_not_converge():
    layer = perturb(MintLayer(1, multiplier=2, inverse_tol=1e-30, max_iter=2).double(), 0.3)
    z = torch.randn(1, 1, 3, 3, dtype=D64)
    with pytest.warns(RuntimeWarning, match="stopped after 2 iterations"):
        layer.inverse(z)


MODEL_OPTIONS = {
    "realnvp": dict(hidden=8, n_blocks=1, steps=2),
    "glow": dict(hidden=8, steps=2),
    "flowpp": dict(hidden=8, steps=1, heads=2, inverse_tol=1e-13),
    "mintnet": dict(hidden=2, steps=1, inverse_tol=1e-12),
}


@pytest.mark.parametrize("name", list(MODEL_OPTIONS))
def test_whole_models_invert_and_have_exact_logdet(name):
    model = build_image_flow(name, (1, 4, 4), levels=256, **MODEL_OPTIONS[name]).double()
    model = perturb(model, 0.05).eval()
    y = 0.05 + 0.9 * torch.rand(2, 1, 4, 4, dtype=D64)
    z, ladj = model.transform(y)
    assert z.shape == (2, *model.latent_shape)
    x0, _ = model.flow.inverse(z)
    y_back, _ = model.preprocess.inverse(x0)
    assert torch.allclose(y_back, y, atol=1e-10, rtol=0)
    brute = brute_force_logabsdet(lambda v: model.transform(v)[0].flatten(1), y)
    assert torch.allclose(ladj, brute, atol=1e-8), (ladj - brute).abs().max()


def test_two_channel_models_and_three_levels():
    model = build_image_flow("glow", (2, 8, 8), levels=4, n_levels=3, steps=1, hidden=4).double()
    model = perturb(model, 0.05).eval()
    y = torch.rand(2, 2, 8, 8, dtype=D64)
    z, _ = model.transform(y)
    assert model.preprocess.inverse(model.flow.inverse(z)[0])[0].sub(y).abs().max() < 1e-10
    with pytest.raises(ValueError, match="must divide"):
        build_image_flow("glow", (1, 4, 4), n_levels=3)
    with pytest.raises(ValueError, match="unknown image model"):
        build_image_flow("pixelcnn", (1, 4, 4))
