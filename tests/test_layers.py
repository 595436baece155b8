"""Layer-specific guarantees: MADE's autoregressive masks, MAF/IAF pass counts, Glow on images,
masks, the invertibility constraints of planar/radial/Sylvester, builders."""

from __future__ import annotations

import pytest
import torch
from conftest import brute_force_logabsdet, perturb
from torch import nn

from ctflow.flows import (
    FLOW_NAMES,
    MADE,
    ActNorm,
    AffineCoupling,
    Compose,
    Flow,
    GlowStep,
    InverseAffineAutoregressive,
    InvertibleLinear,
    MaskedAffineAutoregressive,
    Permutation,
    Planar,
    Radial,
    Sylvester,
    alternating_mask,
    build,
    channel_mask,
    checkerboard_mask,
    half_mask,
    make_order,
    random_mask,
)

# ---------------------------------------------------------------- MADE, MAF, IAF


@pytest.mark.parametrize("order", ["sequential", "reverse", "random", [2, 0, 3, 1, 4]])
@pytest.mark.parametrize("hidden", [(8,), (20, 7), (5, 5, 5)])
@pytest.mark.parametrize("context_dim", [0, 3])
def test_made_is_autoregressive(order, hidden, context_dim):
    dim, n_params = 5, 3
    made = MADE(dim, n_params, hidden, context_dim, order=order, activation="tanh", zero_init=False, seed=0)
    made = made.double()
    degrees = made.degrees
    x = torch.randn(1, dim, dtype=torch.float64)
    ctx = torch.randn(1, context_dim, dtype=torch.float64) if context_dim else None
    jac = torch.autograd.functional.jacobian(lambda v: made(v, ctx), x)[0, :, 0, :]  # (n_params*dim, dim)
    allowed = (degrees.repeat(n_params)[:, None] > degrees[None, :]).double()
    assert torch.all(jac[allowed == 0] == 0), "an output depends on a later or same input"
    # With hidden layers at least dim - 1 wide, every permitted connection exists.
    assert torch.all(jac[allowed == 1] != 0)
    if context_dim:
        jc = torch.autograd.functional.jacobian(lambda c: made(x, c), ctx)[0, :, 0, :]
        assert (jc != 0).any(dim=1).all(), "every output should see the context"


def test_make_order_validation():
    assert torch.equal(make_order(3, "reverse"), torch.tensor([3, 2, 1]))
    assert torch.equal(make_order(3, [0, 2, 1]), torch.tensor([1, 3, 2]))
    with pytest.raises(ValueError, match="permutation"):
        make_order(3, [1, 1, 2])
    with pytest.raises(ValueError, match="unknown order"):
        make_order(3, "diagonal")
    with pytest.raises(ValueError, match="3 entries"):
        make_order(3, [1, 2])


def _count_made_calls(transform: nn.Module, fn) -> int:
    calls = []
    handles = [
        m.register_forward_hook(lambda *a: calls.append(1))
        for m in transform.modules()
        if isinstance(m, MADE)
    ]
    fn()
    for h in handles:
        h.remove()
    return len(calls)


def test_maf_density_parallel_sampling_sequential():
    dim = 6
    maf = MaskedAffineAutoregressive(dim)
    z = torch.randn(4, dim)
    assert _count_made_calls(maf, lambda: maf(z)) == 1
    assert _count_made_calls(maf, lambda: maf.inverse(z)) == dim


@pytest.mark.parametrize("context", ["none", "per_row", "shared"])
@pytest.mark.parametrize(
    ("dim", "hidden", "order", "activation"),
    [
        (1, (8,), "sequential", "relu"),
        (2, (16, 16), "reverse", "relu"),
        (5, (20, 7), "random", "tanh"),
        (6, (5, 5, 5), [2, 0, 3, 1, 5, 4], "elu"),
    ],
)
def test_maf_fast_inverse_matches_the_loop_inverse(dim, hidden, order, activation, context):
    """Without autograd the inverse evaluates each MADE unit once; it must equal the reference
    loop of ``dim`` full passes (run with autograd on), with or without a context."""
    context_dim = 0 if context == "none" else 3
    maf = MaskedAffineAutoregressive(dim, context_dim, hidden, order=order, activation=activation, seed=1)
    maf = perturb(maf.double(), 0.5, seed=2)
    g = torch.Generator().manual_seed(3)
    z = 2 * torch.randn(64, dim, generator=g, dtype=torch.float64)
    rows = {"none": 0, "per_row": 64, "shared": 1}[context]
    ctx = torch.randn(rows, context_dim, generator=g, dtype=torch.float64) if context_dim else None

    assert torch.is_grad_enabled()
    assert _count_made_calls(maf, lambda: maf.inverse(z, ctx)) == dim  # the reference loop
    x_loop, ladj_loop = maf.inverse(z, ctx)
    with torch.no_grad():
        assert _count_made_calls(maf, lambda: maf.inverse(z, ctx)) == 0  # the degree-by-degree path
        x_fast, ladj_fast = maf.inverse(z, ctx)
    torch.testing.assert_close(x_fast, x_loop.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ladj_fast, ladj_loop.detach(), rtol=1e-12, atol=1e-12)
    # Both are the inverse of the one-pass forward map.
    z_back, ladj = maf(x_fast, ctx)
    torch.testing.assert_close(z_back.detach(), z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ladj.detach(), -ladj_fast, rtol=1e-10, atol=1e-10)
    if context_dim:  # the agreement is not that of two maps ignoring the context
        with torch.no_grad():
            x_moved, _ = maf.inverse(z, ctx + 1.0)
        assert (x_moved - x_fast).abs().max() > 1e-3


def test_iaf_sampling_parallel():
    dim = 6
    iaf = InverseAffineAutoregressive(dim)
    z = torch.randn(4, dim)
    assert _count_made_calls(iaf, lambda: iaf.inverse(z)) == 1  # sampling: one pass
    assert _count_made_calls(iaf, lambda: iaf(z)) == dim  # density of an external point
    flow = build("iaf", dim, n_layers=3)
    assert _count_made_calls(flow, lambda: flow.sample(10)) == 3


# ---------------------------------------------------------------- masks and permutations


def test_masks():
    assert half_mask(4).tolist() == [0, 0, 1, 1]
    assert half_mask(4, flip=True).tolist() == [1, 1, 0, 0]
    assert half_mask(1).tolist() == [1] and half_mask(1, flip=True).tolist() == [1]
    assert alternating_mask(5, 0).tolist() == [1, 0, 1, 0, 1]
    assert alternating_mask(5, 1).tolist() == [0, 1, 0, 1, 0]
    m = random_mask(7, torch.Generator().manual_seed(0))
    assert m.sum() == 4 and set(m.tolist()) <= {0.0, 1.0}
    cb = checkerboard_mask(3, 4)
    assert cb.shape == (1, 3, 4) and cb.sum() == 6 and cb[0, 0, 0] == 1 and cb[0, 0, 1] == 0
    assert torch.equal(checkerboard_mask(3, 4, 1), 1 - cb)
    cm = channel_mask(4)
    assert cm.shape == (4, 1, 1) and cm.flatten().tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="positive int"):
        half_mask(0)
    with pytest.raises(ValueError, match="at least one 1"):
        AffineCoupling(torch.zeros(3))


def test_permutation_validation():
    with pytest.raises(ValueError, match="rearrangement"):
        Permutation([0, 0, 1])


# ---------------------------------------------------------------- Glow and couplings on images


class _TinyConvNet(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2 * channels, 3, padding=1)
        )

    def forward(self, x, context=None):
        return self.net(x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ActNorm(3),
        lambda: InvertibleLinear(3, seed=0),
        lambda: AffineCoupling(checkerboard_mask(4, 4), conditioner=_TinyConvNet(3)),
        lambda: AffineCoupling(channel_mask(3, 1), conditioner=_TinyConvNet(3)),
        lambda: GlowStep(3, coupling=AffineCoupling(channel_mask(3), conditioner=_TinyConvNet(3)), seed=1),
    ],
)
def test_image_transforms(make):
    t = perturb(make().double(), 0.3)
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    t.train()
    t(x)
    t.eval()
    perturb(t, 0.1, seed=5)
    z, ladj = t(x)
    assert z.shape == x.shape and ladj.shape == (3,)
    x_back, ladj_inv = t.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj)
    torch.testing.assert_close(ladj, brute_force_logabsdet(lambda v: t(v)[0], x), rtol=1e-6, atol=1e-9)


def test_actnorm_data_dependent_init():
    for shape, dims in (((512, 4), (0,)), ((64, 4, 5, 5), (0, 2, 3))):
        x = torch.randn(*shape) * 3 + 2
        layer = ActNorm(4)
        z, _ = layer(x)
        torch.testing.assert_close(z.mean(dims), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.std(dims, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
        # Initialisation happens once; later batches do not reset it, and it survives a state_dict round trip.
        z2, _ = layer(x * 10)
        assert z2.std() > 5
        clone = ActNorm(4)
        clone.load_state_dict(layer.state_dict())
        torch.testing.assert_close(clone(x)[0], layer(x)[0])


def test_invertible_linear_lu_matches_dense_weight():
    layer = perturb(InvertibleLinear(5, seed=3).double(), 0.3)
    w = layer.weight()
    torch.testing.assert_close(layer.log_s.sum(), torch.linalg.slogdet(w).logabsdet)
    torch.testing.assert_close(layer.inverse_weight() @ w, torch.eye(5, dtype=torch.float64))


def test_invertible_linear_wrong_channels():
    with pytest.raises(ValueError, match=r"\(batch, 3"):
        InvertibleLinear(3)(torch.randn(2, 4))


# ---------------------------------------------------------------- residual flows: constraints


def test_planar_stays_invertible_for_adversarial_u():
    planar = Planar(2).double()
    with torch.no_grad():
        planar.params.value.copy_(torch.tensor([-5.0, -5.0, 1.0, 1.0, 0.0], dtype=torch.float64))  # u, w, b
    u_hat, w, _ = planar._unpack(None)
    assert (u_hat * w).sum() > -1  # raw w.u = -10 would break invertibility
    x = torch.randn(50, 2, dtype=torch.float64)
    z, ladj = planar(x)
    assert torch.isfinite(ladj).all()
    torch.testing.assert_close(planar.inverse(z)[0], x, atol=1e-8, rtol=0)


def test_radial_beta_is_at_least_minus_alpha():
    radial = Radial(3).double()
    with torch.no_grad():
        radial.params.value[3:] = torch.tensor([2.0, -30.0], dtype=torch.float64)
    _, alpha, beta = radial._unpack(None)
    assert (beta >= -alpha).all()
    x = torch.randn(20, 3, dtype=torch.float64)
    z, ladj = radial(x)
    assert torch.isfinite(ladj).all()
    torch.testing.assert_close(radial.inverse(z)[0], x, atol=1e-7, rtol=0)


@pytest.mark.parametrize("variant", ["orthogonal", "householder", "triangular"])
def test_sylvester_q_is_orthogonal(variant):
    syl = perturb(Sylvester(4, 2, variant=variant, n_vectors=3).double(), 0.5)
    q, r1, r2, _ = syl._unpack(torch.randn(6, 2, dtype=torch.float64))
    m = q.shape[-1]
    qtq = q.transpose(1, 2) @ q
    torch.testing.assert_close(qtq, torch.eye(m, dtype=torch.float64).expand_as(qtq))
    diag = torch.diagonal(r1, dim1=1, dim2=2) * torch.diagonal(r2, dim1=1, dim2=2)
    assert (diag > -1).all()
    assert torch.equal(torch.tril(r1, -1), torch.zeros_like(r1))


def test_sylvester_invalid_arguments():
    with pytest.raises(ValueError, match="variant"):
        Sylvester(3, variant="diagonal")
    with pytest.raises(ValueError, match="n_vectors"):
        Sylvester(3, n_vectors=4)


# ---------------------------------------------------------------- builders


@pytest.mark.parametrize("name", FLOW_NAMES)
@pytest.mark.parametrize("context_dim", [0, 4])
def test_builders_make_working_flows(name, context_dim):
    flow = build(name, 3, context_dim=context_dim, n_layers=2, hidden=(8, 8))
    assert isinstance(flow, Flow) and isinstance(flow.transform, Compose)
    ctx = torch.randn(16, context_dim) if context_dim else None
    x = torch.randn(16, 3)
    loss = -flow.log_prob(x, ctx).mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in flow.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # One step of gradient descent lowers the NLL of this batch.
    with torch.no_grad():
        for p in flow.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad
    assert -flow.log_prob(x, ctx).mean() < loss
    assert flow.sample(5, context=ctx[:5] if context_dim else None).shape == (5, 3)


def test_build_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build("flowpp-typo", 2)
    for name in FLOW_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 2, "n_layers": 0}, "n_layers"),
        ({"dim": 2, "context_dim": -1}, "context_dim"),
        ({"dim": 2, "hidden": (8, 0)}, "hidden"),
    ],
)
def test_build_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build("maf", **kwargs)


def test_build_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="maf"):
        build("maf", 2, flavour="vanilla")


def test_build_options_and_seed():
    a = build("realnvp", 4, mask="random", permute=True, seed=3)
    b = build("realnvp", 4, mask="random", permute=True, seed=3)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    syl = build("sylvester", 4, variant="householder", n_layers=2)
    assert syl.sample(3).shape == (3, 4)
    with pytest.raises(ValueError, match="mask kind"):
        build("nice", 4, mask="diagonal")


@pytest.mark.parametrize("name", ["glow", "realnvp", "maf"])
def test_global_seed_makes_construction_repeatable_without_reseeding(name):
    options = {"mask": "random", "permute": True} if name == "realnvp" else {}
    options |= {"order": "random"} if name == "maf" else {}
    torch.manual_seed(0)
    a = build(name, 3, **options)
    after_a = torch.rand(1)
    torch.manual_seed(0)
    b = build(name, 3, **options)
    after_b = torch.rand(1)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert torch.equal(after_a, after_b)  # the global generator was not reseeded
