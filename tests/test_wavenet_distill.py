"""WaveNet-conditioned MAF/IAF steps over sequences and probability density distillation.

Numerical checks run in float64 on perturbed parameters (so no map is the identity): round trips,
log-determinants against the autograd Jacobian, causality and the receptive field of the
conditioner, network passes per direction, and the distillation objective and training loop.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import perturb

from ctflow.flows import (
    Compose,
    Flow,
    Inverse,
    MaskedAffineAutoregressive,
    ReversePermutation,
    Scaling,
    build,
)
from ctflow.flows.distill import distill, reverse_kl_estimate
from ctflow.flows.wavenet import (
    CausalConv1d,
    WaveNet,
    WaveNetAffineAutoregressive,
    WaveNetIAF,
    layers_to_cover,
    wavenet_receptive_field,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are tiny: one thread is faster than two and immune to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# Transforms: round trips and log-determinants
# ----------------------------------------------------------------------------------------------

FACTORIES = {
    # Default depth: the receptive field covers the whole sequence.
    "wavenet_maf": lambda n, c: WaveNetAffineAutoregressive(n, c, residual_channels=8),
    # Receptive field 5 (< 16): the inverse runs on windows shorter than the prefix.
    "wavenet_maf_short_rf": lambda n, c: WaveNetAffineAutoregressive(
        n, c, residual_channels=6, skip_channels=5, n_layers=2
    ),
    # Kernel 3, dilations 1, 2, 1 (cycle 2): receptive field 11.
    "wavenet_maf_k3": lambda n, c: WaveNetAffineAutoregressive(
        n, c, residual_channels=6, n_layers=3, kernel_size=3, dilation_cycle=2, scale_bound=2.0
    ),
    "wavenet_iaf": lambda n, c: WaveNetIAF(n, c, residual_channels=8),
    "wavenet_iaf_short_rf": lambda n, c: WaveNetIAF(n, c, residual_channels=6, n_layers=2),
}
LENGTHS = (1, 2, 5, 16)
CONTEXTS = (0, 3)
BATCH = 4


def make(name: str, length: int, context_dim: int, seed: int = 0):
    torch.manual_seed(seed)
    t = FACTORIES[name](length, context_dim).double()
    perturb(t, 0.3, seed)
    t.eval()
    x = 1.5 * torch.randn(BATCH, length, dtype=torch.float64)
    ctx = torch.randn(BATCH, context_dim, dtype=torch.float64) if context_dim else None
    return t, x, ctx


CASES = [(n, L, c) for n in FACTORIES for L in LENGTHS for c in CONTEXTS]


def jacobian_logabsdet(fn, x: torch.Tensor) -> torch.Tensor:
    """``log|det d fn(x)_b / d x_b|`` per sample from the autograd Jacobian.

    Samples do not interact (checked in :func:`test_samples_do_not_interact`), so the Jacobian of
    the batch sum holds every sample's block: ``L`` backward passes instead of ``B * L``.
    """
    jac = torch.autograd.functional.jacobian(lambda v: fn(v).sum(0), x)  # (L, B, L)
    return torch.linalg.slogdet(jac.permute(1, 0, 2)).logabsdet


@pytest.mark.parametrize(("name", "length", "context_dim"), CASES)
def test_round_trips(name, length, context_dim):
    t, x, ctx = make(name, length, context_dim)
    z, ladj = t(x, ctx)
    assert z.shape == x.shape and ladj.shape == (BATCH,)
    assert (z - x).abs().max() > 1e-3  # the perturbed map is not the identity
    x_back, ladj_inv = t.inverse(z, ctx)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-8, rtol=1e-6)
    # And the other way round.
    x2, ladj2 = t.inverse(x, ctx)
    z2, ladj2_fwd = t(x2, ctx)
    torch.testing.assert_close(z2, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ladj2_fwd, -ladj2, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize(("name", "length", "context_dim"), CASES)
def test_logabsdet_matches_autograd_jacobian(name, length, context_dim):
    t, x, ctx = make(name, length, context_dim)
    _, ladj = t(x, ctx)
    expected = jacobian_logabsdet(lambda v: t(v, ctx)[0], x)
    torch.testing.assert_close(ladj, expected, rtol=1e-6, atol=1e-9)
    _, ladj_inv = t.inverse(x, ctx)
    expected_inv = jacobian_logabsdet(lambda v: t.inverse(v, ctx)[0], x)
    torch.testing.assert_close(ladj_inv, expected_inv, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["wavenet_maf", "wavenet_iaf"])
def test_samples_do_not_interact(name):
    t, x, ctx = make(name, 9, 3)
    x2 = x.clone()
    x2[0] += 1.0
    for direction in (t.forward, t.inverse):
        out, ladj = direction(x, ctx)
        out2, ladj2 = direction(x2, ctx)
        assert (out2[0] - out[0]).abs().max() > 1e-3
        torch.testing.assert_close(out2[1:], out[1:], atol=1e-12, rtol=0)
        torch.testing.assert_close(ladj2[1:], ladj[1:], atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["wavenet_maf", "wavenet_maf_short_rf", "wavenet_maf_k3"])
def test_jacobian_is_lower_triangular(name):
    """z_t depends on x_t and the past only; the diagonal is exp(log-scale), nonzero."""
    t, x, ctx = make(name, 16, 3)
    jac = torch.autograd.functional.jacobian(lambda v: t(v, ctx)[0], x)  # (B, L, B, L)
    for b in range(BATCH):
        block = jac[b, :, b, :]
        assert torch.equal(torch.triu(block, diagonal=1), torch.zeros_like(block))
        assert (block.diagonal() > 0).all()
        assert torch.tril(block, diagonal=-1).abs().max() > 1e-4  # the past does matter


def test_identity_at_initialisation():
    x = torch.randn(5, 12)
    ctx = torch.randn(5, 2)
    for t in (
        WaveNetAffineAutoregressive(12, 2, residual_channels=8),
        WaveNetIAF(12, 2, residual_channels=8),
    ):
        for direction in (t.forward, t.inverse):
            z, ladj = direction(x, ctx)
            torch.testing.assert_close(z, x)
            torch.testing.assert_close(ladj, torch.zeros(5))


@pytest.mark.parametrize("name", ["wavenet_maf", "wavenet_iaf"])
def test_context_changes_the_map(name):
    t, x, ctx = make(name, 6, 3)
    z1, _ = t(x, ctx)
    z2, _ = t(x, ctx + 1.0)
    assert (z1 - z2).abs().max() > 1e-3
    # The first step has no past: only the context moves its shift and scale.
    assert (z1[:, 0] - z2[:, 0]).abs().max() > 1e-3


def test_shared_context_row_is_broadcast():
    t, x, ctx = make("wavenet_maf", 7, 3)
    row = ctx[:1]
    z_row, ladj_row = t(x, row)
    z_full, ladj_full = t(x, row.expand(BATCH, -1))
    torch.testing.assert_close(z_row, z_full)
    torch.testing.assert_close(ladj_row, ladj_full)
    x_row, _ = t.inverse(z_row, row)
    torch.testing.assert_close(x_row, x, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# The conditioner: causality and receptive field
# ----------------------------------------------------------------------------------------------


def perturbed_net(seed: int = 0, **kwargs) -> WaveNet:
    torch.manual_seed(seed)
    net = WaveNet(**kwargs).double()
    perturb(net, 0.3, seed)
    return net


def test_causal_conv_sees_only_its_window():
    torch.manual_seed(0)
    inclusive = CausalConv1d(1, 1, kernel_size=3, dilation=2).double()
    strict = CausalConv1d(1, 1, kernel_size=3, dilation=2, strict=True).double()
    x = torch.randn(1, 1, 12, dtype=torch.float64)
    for conv, offsets in ((inclusive, {0, 2, 4}), (strict, {1, 3, 5})):
        assert conv(x).shape == x.shape
        jac = torch.autograd.functional.jacobian(conv, x).reshape(12, 12)
        for t in range(12):
            seen = {t - s for s in range(12) if jac[t, s] != 0}
            assert seen == {o for o in offsets if t - o >= 0}


@pytest.mark.parametrize("context_dim", [0, 2])
def test_wavenet_is_strictly_causal(context_dim):
    """Output at t is unchanged when inputs at steps >= t change, and changes with x_{t-1}."""
    net = perturbed_net(n_params=2, residual_channels=8, n_layers=3, context_dim=context_dim)
    L = 12
    x = torch.randn(3, L, dtype=torch.float64)
    ctx = torch.randn(3, context_dim, dtype=torch.float64) if context_dim else None
    out = net(x, ctx)
    assert out.shape == (3, 2, L)
    g = torch.Generator().manual_seed(1)
    for t in range(L):
        x2 = x.clone()
        x2[:, t:] += torch.randn(3, L - t, generator=g, dtype=torch.float64)
        out2 = net(x2, ctx)
        torch.testing.assert_close(out2[..., : t + 1], out[..., : t + 1], atol=1e-12, rtol=0)
        if t + 1 < L:
            assert (out2[..., t + 1] - out[..., t + 1]).abs().max() > 1e-6
    # The same from the Jacobian: d out_t / d x_s is exactly zero for s >= t, nonzero for s = t - 1.
    jac = torch.autograd.functional.jacobian(lambda v: net(v, ctx), x)  # (B, P, L, B, L)
    for b in range(3):
        block = jac[b, :, :, b, :]  # (P, L, L)
        upper = torch.triu(torch.ones(L, L, dtype=torch.bool))
        assert torch.equal(block[:, upper], torch.zeros_like(block[:, upper]))
        assert (block.diagonal(offset=-1, dim1=1, dim2=2).abs().amax(0) > 0).all()


RF_CONFIGS = [
    dict(kernel_size=2, n_layers=3, dilation_cycle=10),  # dilations 1 2 4: R = 2 + 7 = 9
    dict(kernel_size=2, n_layers=5, dilation_cycle=2),  # dilations 1 2 1 2 1: R = 2 + 7 = 9
    dict(kernel_size=3, n_layers=3, dilation_cycle=2),  # dilations 1 2 1: R = 3 + 2 * 4 = 11
    dict(kernel_size=4, n_layers=2, dilation_cycle=10),  # dilations 1 2: R = 4 + 3 * 3 = 13
    dict(kernel_size=1, n_layers=2, dilation_cycle=10),  # pointwise blocks: R = 1
]


@pytest.mark.parametrize(
    "config", RF_CONFIGS, ids=lambda c: "k{kernel_size}_n{n_layers}_c{dilation_cycle}".format(**c)
)
def test_receptive_field_is_the_measured_one(config):
    net = perturbed_net(n_params=2, residual_channels=6, context_dim=2, **config)
    rf = net.receptive_field
    k, n, c = config["kernel_size"], config["n_layers"], config["dilation_cycle"]
    assert rf == k + (k - 1) * sum(2 ** (i % c) for i in range(n))
    assert rf == wavenet_receptive_field(n, k, c)
    L = rf + 6
    T = L - 1
    x = torch.randn(4, L, dtype=torch.float64)
    ctx = torch.randn(4, 2, dtype=torch.float64)
    # Jacobian of the last output step: it reads exactly x_{T-R}, ..., x_{T-1}.
    jac = torch.autograd.functional.jacobian(lambda v: net(v, ctx)[:, :, T], x)  # (B, P, B, L)
    influence = torch.stack([jac[b, :, b, :] for b in range(4)]).abs().amax((0, 1))  # (L,)
    seen = (influence > 0).nonzero().flatten().tolist()
    assert seen == list(range(T - rf, T))
    # By perturbation: everything before T - R is invisible, x_{T-R} is not.
    base = net(x, ctx)[:, :, T]
    far = x.clone()
    far[:, : T - rf] += 5.0
    torch.testing.assert_close(net(far, ctx)[:, :, T], base, atol=1e-12, rtol=0)
    edge = x.clone()
    edge[:, T - rf] += 1.0
    assert (net(edge, ctx)[:, :, T] - base).abs().max() > 1e-8


def test_default_depth_covers_the_sequence():
    for k in (2, 3):
        for L in range(1, 70):
            n = layers_to_cover(L, k, dilation_cycle=4)
            assert wavenet_receptive_field(n, k, 4) >= L - 1
            assert n == 1 or wavenet_receptive_field(n - 1, k, 4) < L - 1
    assert wavenet_receptive_field(6, 2) == 2**6 + 1
    t = WaveNetAffineAutoregressive(16)
    assert t.net.n_layers == 4 and t.receptive_field == 17


# ----------------------------------------------------------------------------------------------
# Network passes: MAF density and IAF sampling are parallel
# ----------------------------------------------------------------------------------------------


class PassCounter:
    def __init__(self, modules):
        self.count = 0
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, *args):
        self.count += 1

    def take(self) -> int:
        n, self.count = self.count, 0
        return n

    def remove(self):
        for h in self.handles:
            h.remove()


def wavenets(module):
    return [m for m in module.modules() if isinstance(m, WaveNet)]


def test_one_pass_for_maf_density_and_iaf_sampling():
    L = 10
    maf = WaveNetAffineAutoregressive(L, 2, residual_channels=6)
    iaf = WaveNetIAF(L, 2, residual_channels=6)
    x, ctx = torch.randn(3, L), torch.randn(3, 2)
    counter = PassCounter(wavenets(maf) + wavenets(iaf))
    maf(x, ctx)
    assert counter.take() == 1  # MAF density: parallel
    iaf.inverse(x, ctx)
    assert counter.take() == 1  # IAF sampling: parallel
    maf.inverse(x, ctx)
    assert counter.take() == L  # MAF sampling: sequential
    iaf(x, ctx)
    assert counter.take() == L  # IAF density of an external point: sequential
    counter.remove()


def test_flows_pass_once_per_step():
    L, steps = 8, 3
    iaf = build("wavenet_iaf", L, context_dim=2, n_layers=steps, hidden=(6,), seed=0)
    maf = build("wavenet_maf", L, context_dim=2, n_layers=steps, hidden=(6,), seed=0)
    ctx = torch.randn(5, 2)
    counter = PassCounter(wavenets(iaf) + wavenets(maf))
    assert iaf.sample(context=ctx).shape == (5, L)
    assert counter.take() == steps
    x, log_q = iaf.rsample_and_log_prob(context=ctx)
    assert x.shape == (5, L) and log_q.shape == (5,)
    assert counter.take() == steps
    assert maf.log_prob(x, ctx).shape == (5,)
    assert counter.take() == steps
    counter.remove()


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def test_builders_are_registered_and_invertible():
    import ctflow.flows.builders as builders

    assert {"wavenet_maf", "wavenet_iaf"} <= set(builders.FLOW_NAMES)
    for name, step in (("wavenet_maf", WaveNetAffineAutoregressive), ("wavenet_iaf", WaveNetIAF)):
        flow = build(name, 9, context_dim=2, n_layers=3, hidden=(6, 5), seed=3, kernel_size=3)
        layers = list(flow.transform)
        assert [type(m) for m in layers] == [step, ReversePermutation] * 2 + [step]
        inner = layers[0] if step is WaveNetAffineAutoregressive else layers[0].base_transform
        assert inner.net.residual_channels == 6 and inner.net.skip_channels == 5
        assert inner.net.kernel_size == 3
        flow = flow.double()
        perturb(flow, 0.2, 1)
        x = torch.randn(4, 9, dtype=torch.float64)
        ctx = torch.randn(4, 2, dtype=torch.float64)
        z, _ = flow.transform(x, ctx)
        torch.testing.assert_close(flow.transform.inverse(z, ctx)[0], x, atol=1e-6, rtol=0)
        assert torch.isfinite(flow.log_prob(x, ctx)).all()
    flat = build("wavenet_maf", 6, n_layers=2, hidden=(4,), reverse_between=False, conv_layers=1)
    assert [type(m) for m in flat.transform] == [WaveNetAffineAutoregressive] * 2
    assert flat.transform[0].net.n_layers == 1
    # A seed makes the construction repeatable.
    a = build("wavenet_iaf", 6, n_layers=2, hidden=(4,), seed=11)
    b = build("wavenet_iaf", 6, n_layers=2, hidden=(4,), seed=11)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_argument_validation():
    with pytest.raises(ValueError, match="length"):
        WaveNetAffineAutoregressive(0)
    with pytest.raises(ValueError, match="kernel_size"):
        WaveNetAffineAutoregressive(5, kernel_size=0)
    with pytest.raises(ValueError, match="n_layers"):
        WaveNet(2, 8, n_layers=0)
    with pytest.raises(ValueError, match="residual_channels"):
        WaveNet(2, 0)
    with pytest.raises(ValueError, match="scale_bound"):
        WaveNetAffineAutoregressive(5, scale_bound=0.0)
    t = WaveNetAffineAutoregressive(5, 2, residual_channels=4)
    with pytest.raises(ValueError, match=r"\(batch, 5\)"):
        t(torch.randn(3, 6), torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"\(batch, 5\)"):
        t.inverse(torch.randn(3, 5, 1), torch.randn(3, 2))
    with pytest.raises(ValueError, match="context"):
        t(torch.randn(3, 5))
    with pytest.raises(ValueError, match="context"):
        t(torch.randn(3, 5), torch.randn(3, 4))
    with pytest.raises(ValueError, match="rows"):
        t(torch.randn(3, 5), torch.randn(2, 2))
    with pytest.raises(ValueError, match="hidden"):
        build("wavenet_maf", 5, hidden=())


# ----------------------------------------------------------------------------------------------
# Distillation
# ----------------------------------------------------------------------------------------------


def mean(values) -> float:
    return sum(values) / len(values)


def madens(module):
    from ctflow.flows import MADE

    return [m for m in module.modules() if isinstance(m, MADE)]


def snapshot(flow):
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def assert_unchanged(flow, before):
    after = flow.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k


def test_reverse_kl_estimate_matches_gaussian_closed_form():
    """Teacher N(0, diag(sp^2)), student N(0, diag(sq^2)): the estimate is the reverse KL (which is
    not the forward one here)."""
    d = 3
    teacher = Flow(Compose([Scaling(d)]), d).double()
    student = Flow(Compose([Scaling(d)]), d).double()
    with torch.no_grad():
        teacher.transform[0].log_scale.copy_(torch.tensor([0.5, -0.3, 0.0]))  # z = x * exp(s)
        student.transform[0].log_scale.copy_(torch.tensor([-0.4, 0.2, 0.7]))
    sp = (-teacher.transform[0].log_scale.detach()).exp()
    sq = (-student.transform[0].log_scale.detach()).exp()
    reverse = float((torch.log(sp / sq) + sq**2 / (2 * sp**2) - 0.5).sum())
    forward = float((torch.log(sq / sp) + sp**2 / (2 * sq**2) - 0.5).sum())
    assert abs(reverse - forward) > 0.2
    torch.manual_seed(0)
    kl, per_sample = reverse_kl_estimate(teacher, student, 40000)
    stderr = float(per_sample.detach().std()) / math.sqrt(40000)
    assert abs(float(kl.detach()) - reverse) < 4 * stderr + 1e-9


def test_distill_gaussian_student_reaches_the_teacher():
    d = 3
    teacher = Flow(Compose([Scaling(d)]), d).double()
    student = Flow(Compose([Scaling(d)]), d).double()
    target = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    with torch.no_grad():
        teacher.transform[0].log_scale.copy_(target)
    hist = distill(teacher, student, n_steps=200, batch_size=512, lr=0.03, seed=0)
    torch.testing.assert_close(student.transform[0].log_scale.detach(), target, atol=0.05, rtol=0)
    assert mean(hist["kl"][-20:]) < 0.02 < mean(hist["kl"][:5])


def test_kl_of_a_copy_is_zero():
    """log q(x) - log p(x) vanishes sample by sample when the student is the teacher's copy."""
    torch.manual_seed(0)
    teacher = build("maf", 3, n_layers=2, hidden=(8,), seed=0).double()
    perturb(teacher, 0.3, 0)
    student = copy.deepcopy(teacher)
    hist = distill(teacher, student, n_steps=1, batch_size=32, lr=1e-12, seed=0)
    assert abs(hist["kl"][0]) < 1e-8


def test_distill_maf_teacher_to_iaf_student():
    teacher = build("maf", 2, n_layers=3, hidden=(16, 16), seed=0)
    perturb(teacher, 0.4, 0)
    student = build("iaf", 2, n_layers=3, hidden=(32, 32), seed=1)
    teacher.train()
    first_param = next(teacher.parameters())
    first_param.requires_grad_(False)  # a mixed pattern of flags must come back as it was
    flags = [p.requires_grad for p in teacher.parameters()]
    before = snapshot(teacher)
    state = torch.random.get_rng_state()
    hist = distill(teacher, student, n_steps=200, batch_size=128, lr=3e-3, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # a seeded run leaves the global RNG alone
    assert len(hist["kl"]) == 200 and len(hist["grad_norm"]) == 200
    start, end = mean(hist["kl"][:20]), mean(hist["kl"][-20:])
    assert end < 0.25 * start and start - end > 2.0, (start, end)
    # The teacher: unchanged, no gradients, flags and mode restored.
    assert_unchanged(teacher, before)
    assert all(p.grad is None for p in teacher.parameters())
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert teacher.training
    # The trained student samples in one MADE pass per layer.
    counter = PassCounter(madens(student))
    student.sample(64)
    assert counter.take() == 3
    counter.remove()
    # A seeded run is repeatable.
    student2 = build("iaf", 2, n_layers=3, hidden=(32, 32), seed=1)
    hist2 = distill(teacher, student2, n_steps=5, batch_size=128, lr=3e-3, seed=0)
    assert hist2["kl"] == hist["kl"][:5]


def test_distill_wavenet_teacher_to_wavenet_student():
    """The Parallel WaveNet setting: a WaveNet MAF teacher, a WaveNet IAF student."""
    L = 8
    teacher = build("wavenet_maf", L, n_layers=2, hidden=(8,), seed=0)
    perturb(teacher, 0.4, 0)
    student = build("wavenet_iaf", L, n_layers=2, hidden=(12,), seed=1)
    before = snapshot(teacher)
    counter = PassCounter(wavenets(teacher) + wavenets(student))
    hist = distill(teacher, student, n_steps=100, batch_size=64, lr=5e-3, seed=0)
    # Each step: one pass per student step to sample, one per teacher step for the density.
    assert counter.take() == 100 * (2 + 2)
    start, end = mean(hist["kl"][:10]), mean(hist["kl"][-10:])
    assert end < 0.5 * start and start - end > 1.5, (start, end)
    assert_unchanged(teacher, before)
    student.sample(16)
    assert counter.take() == 2
    counter.remove()


def test_distill_conditional():
    teacher = build("maf", 2, context_dim=2, n_layers=2, hidden=(16, 16), seed=0)
    perturb(teacher, 0.5, 0)
    student = build("iaf", 2, context_dim=2, n_layers=2, hidden=(24, 24), seed=1)
    calls = []

    def contexts(n):
        calls.append(n)
        return torch.randn(n, 2)

    hist = distill(teacher, student, n_steps=150, batch_size=64, lr=3e-3, context_sampler=contexts, seed=0)
    assert calls == [64] * 150
    start, end = mean(hist["kl"][:15]), mean(hist["kl"][-15:])
    assert end < 0.5 * start and start - end > 1.0, (start, end)


def test_teacher_is_restored_when_training_fails():
    teacher = build("maf", 2, context_dim=1, n_layers=1, hidden=(4,), seed=0)
    student = build("iaf", 2, context_dim=1, n_layers=1, hidden=(4,), seed=1)
    teacher.train()

    def contexts(n):
        if len(seen) == 2:
            raise RuntimeError("sampler broke")
        seen.append(n)
        return torch.randn(n, 1)

    seen: list[int] = []
    with pytest.raises(RuntimeError, match="sampler broke"):
        distill(teacher, student, n_steps=5, batch_size=4, context_sampler=contexts)
    assert all(p.requires_grad for p in teacher.parameters())
    assert teacher.training


def test_distill_argument_validation():
    t2 = build("maf", 2, n_layers=1, hidden=(4,), seed=0)
    s2 = build("iaf", 2, n_layers=1, hidden=(4,), seed=1)
    s3 = build("iaf", 3, n_layers=1, hidden=(4,), seed=1)
    c2 = build("iaf", 2, context_dim=2, n_layers=1, hidden=(4,), seed=1)
    tc2 = build("maf", 2, context_dim=2, n_layers=1, hidden=(4,), seed=0)
    with pytest.raises(TypeError, match="teacher"):
        distill(MaskedAffineAutoregressive(2), s2)
    with pytest.raises(TypeError, match="student"):
        distill(t2, Inverse(MaskedAffineAutoregressive(2)))
    with pytest.raises(ValueError, match="event shape"):
        distill(t2, s3)
    with pytest.raises(ValueError, match="context_dim"):
        distill(t2, c2)
    with pytest.raises(ValueError, match="different"):
        distill(t2, t2)
    for kwargs, match in [
        ({"n_steps": 0}, "n_steps"),
        ({"n_steps": 2.5}, "n_steps"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"grad_clip": -1.0}, "grad_clip"),
    ]:
        with pytest.raises(ValueError, match=match):
            distill(t2, s2, **kwargs)
    with pytest.raises(TypeError, match="lr"):
        distill(t2, s2, lr="fast")
    with pytest.raises(TypeError, match="seed"):
        distill(t2, s2, seed=1.5)
    with pytest.raises(ValueError, match="context_sampler"):
        distill(tc2, c2)
    with pytest.raises(ValueError, match="context_sampler"):
        distill(t2, s2, context_sampler=lambda n: torch.randn(n, 2))
    with pytest.raises(TypeError, match="context_sampler"):
        distill(tc2, c2, context_sampler=3)
    with pytest.raises(ValueError, match=r"context_sampler\(8\)"):
        distill(tc2, c2, n_steps=1, batch_size=8, context_sampler=lambda n: torch.randn(n, 3))
    with pytest.raises(ValueError, match="dtype"):
        distill(t2, copy.deepcopy(s2).double())
    with pytest.raises(ValueError, match="shares parameters"):
        distill(t2, Flow(Compose([t2.transform[0]]), 2))
    frozen = copy.deepcopy(s2).requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        distill(t2, frozen)
