"""WaveNet conditioners for affine autoregressive flows over regularly sampled sequences.

van den Oord, Dieleman, Zen, Simonyan, Vinyals, Graves, Kalchbrenner, Senior & Kavukcuoglu (2016),
"WaveNet: A Generative Model for Raw Audio".
van den Oord, Li, Babuschkin, Simonyan, Vinyals, Kavukcuoglu, van den Driessche, Lockhart, Cobo,
Stimberg, Casagrande, Grewe, Noury, Dieleman, Elsen, Kalchbrenner, Zen, Graves, King, Walters,
Belov & Hassabis (2018), "Parallel WaveNet: Fast High-Fidelity Speech Synthesis".

The event is a univariate sequence of fixed length ``L`` (shape ``(batch, L)``). A stack of causal
dilated 1-D convolutions plays the role MADE plays in MAF/IAF: it maps the sequence to per-step
shift and log-scale such that the parameters at step ``t`` depend only on the steps before ``t``.

* :class:`WaveNetAffineAutoregressive` (a MAF step) computes
  ``z_t = x_t * exp(s_t(x_<t)) + m_t(x_<t)`` for every ``t`` in one network pass (the density
  direction is parallel); its inverse solves for ``x`` one step at a time.
* :class:`WaveNetIAF` is its :class:`~ctflow.flows.base.Inverse`: ``x_t = z_t * exp(s_t(z_<t)) +
  m_t(z_<t)``, so drawing a sample (and its log-density) is one pass per step. This is the
  student of Parallel WaveNet, trained with :func:`ctflow.flows.distill.distill`.

The builder names ``"wavenet_maf"`` and ``"wavenet_iaf"`` are registered with
:func:`ctflow.flows.builders.build` when this module is imported (``dim`` is the sequence length).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..checks import non_negative_int, positive_int, real_number
from .base import Inverse, Transform
from .builders import register
from .coupling import ReversePermutation
from .nets import soft_clamp

__all__ = [
    "CausalConv1d",
    "WaveNet",
    "WaveNetAffineAutoregressive",
    "WaveNetIAF",
    "wavenet_receptive_field",
    "layers_to_cover",
]


def _dilations(n_layers: int, dilation_cycle: int) -> list[int]:
    return [2 ** (i % dilation_cycle) for i in range(n_layers)]


def wavenet_receptive_field(n_layers: int, kernel_size: int = 2, dilation_cycle: int = 10) -> int:
    """Number of past steps a :class:`WaveNet` output sees (see :attr:`WaveNet.receptive_field`).

    ``R = k + (k - 1) * sum_{i<n} 2 ** (i mod c)`` for kernel size ``k``, ``n`` dilated layers and
    dilation cycle ``c``: the output at ``t`` depends on ``x_{t-R}, ..., x_{t-1}``.
    """
    n_layers = positive_int(n_layers, "n_layers")
    kernel_size = positive_int(kernel_size, "kernel_size")
    dilation_cycle = positive_int(dilation_cycle, "dilation_cycle")
    return kernel_size + (kernel_size - 1) * sum(_dilations(n_layers, dilation_cycle))


def layers_to_cover(length: int, kernel_size: int = 2, dilation_cycle: int = 10) -> int:
    """Fewest dilated layers whose receptive field spans a whole sequence of ``length`` steps.

    The last step then depends on every earlier one (``R >= length - 1``).
    """
    length = positive_int(length, "length")
    kernel_size = positive_int(kernel_size, "kernel_size")
    dilation_cycle = positive_int(dilation_cycle, "dilation_cycle")
    if kernel_size == 1:
        return 1  # a width-1 stack never widens its view; one layer is as good as many
    n = 1
    while wavenet_receptive_field(n, kernel_size, dilation_cycle) < length - 1:
        n += 1
    return n


class CausalConv1d(nn.Conv1d):
    """1-D convolution whose output at ``t`` sees inputs at ``t - (k-1) * d, ..., t`` only.

    The input is padded on the left by ``(k - 1) * dilation`` zeros, so the output has the input's
    length. With ``strict=True`` the view is shifted back by one more step (``t - 1 - (k-1) * d,
    ..., t - 1``): the output at ``t`` does not see the input at ``t``. Input and output are
    ``(batch, channels, length)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 2,
        dilation: int = 1,
        strict: bool = False,
        bias: bool = True,
    ):
        kernel_size = positive_int(kernel_size, "kernel_size")
        dilation = positive_int(dilation, "dilation")
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.strict = bool(strict)
        self.left_pad = (kernel_size - 1) * dilation + int(self.strict)

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(F.pad(x, (self.left_pad, 0)))
        # The strict version computes one output too many (the one that sees the last input).
        return out[..., : x.shape[-1]] if self.strict else out


class WaveNet(nn.Module):
    """Causal dilated convolution network: output ``(batch, n_params, L)`` from a ``(batch, L)`` input.

    van den Oord et al. (2016), "WaveNet: A Generative Model for Raw Audio". The input goes through
    a strictly causal convolution (kernel ``k``, dilation 1; step ``t`` sees ``x_{t-k}..x_{t-1}``),
    then ``n_layers`` residual blocks, block ``i`` holding a causal convolution of kernel ``k`` and
    dilation ``2 ** (i mod dilation_cycle)`` (which sees its own step), a gated activation
    ``tanh(f) * sigmoid(g)``, a 1x1 convolution back onto the residual stream and a 1x1 convolution
    into the skip sum. A context vector ``(batch, context_dim)`` is projected into every block and
    added to its gate pre-activations (global conditioning). The head is
    ``ReLU -> 1x1 conv -> ReLU -> 1x1 conv``; the last convolution starts at zero, so the network's
    output is zero at initialisation (a flow built on it starts as the identity).

    Receptive field (:attr:`receptive_field`): the output at step ``t`` depends on
    ``x_{t-R}, ..., x_{t-1}`` with

        ``R = k + (k - 1) * sum_{i=0}^{n_layers-1} 2 ** (i mod dilation_cycle)``

    e.g. ``R = 2 ** n_layers + 1`` for ``k = 2`` and no repetition of the dilation cycle. Steps
    before the start of the sequence are read as zeros.

    Args:
        n_params: output channels (parameters per time step).
        residual_channels: width of the residual stream and of the gates.
        skip_channels: width of the skip sum and of the head (default ``residual_channels``).
        n_layers: number of dilated residual blocks.
        kernel_size: convolution width ``k``.
        dilation_cycle: dilations double up to ``2 ** (dilation_cycle - 1)`` and then start again.
        context_dim: size of the global conditioning vector (0 for none).
        zero_init: start the output layer at zero.
    """

    def __init__(
        self,
        n_params: int,
        residual_channels: int = 32,
        skip_channels: int | None = None,
        n_layers: int = 4,
        kernel_size: int = 2,
        dilation_cycle: int = 10,
        context_dim: int = 0,
        zero_init: bool = True,
    ):
        super().__init__()
        n_params = positive_int(n_params, "n_params")
        residual_channels = positive_int(residual_channels, "residual_channels")
        skip_channels = residual_channels if skip_channels is None else skip_channels
        skip_channels = positive_int(skip_channels, "skip_channels")
        n_layers = positive_int(n_layers, "n_layers")
        kernel_size = positive_int(kernel_size, "kernel_size")
        dilation_cycle = positive_int(dilation_cycle, "dilation_cycle")
        context_dim = non_negative_int(context_dim, "context_dim")
        self.n_params, self.n_layers, self.kernel_size = n_params, n_layers, kernel_size
        self.residual_channels, self.skip_channels = residual_channels, skip_channels
        self.dilation_cycle, self.context_dim = dilation_cycle, context_dim
        self.dilations = tuple(_dilations(n_layers, dilation_cycle))

        c = residual_channels
        self.input_conv = CausalConv1d(1, c, kernel_size, dilation=1, strict=True)
        self.gate_convs = nn.ModuleList(CausalConv1d(c, 2 * c, kernel_size, d) for d in self.dilations)
        # The last block's residual output would feed nothing, so it has none.
        self.residual_convs = nn.ModuleList(nn.Conv1d(c, c, 1) for _ in range(n_layers - 1))
        self.skip_convs = nn.ModuleList(nn.Conv1d(c, skip_channels, 1) for _ in range(n_layers))
        # One projection for all blocks: (batch, n_layers * 2c), split per block.
        self.context_proj = nn.Linear(context_dim, n_layers * 2 * c) if context_dim else None
        self.head = nn.Conv1d(skip_channels, skip_channels, 1)
        self.output = nn.Conv1d(skip_channels, n_params, 1)
        if zero_init:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    @property
    def receptive_field(self) -> int:
        """``R``: the output at step ``t`` depends on inputs ``t - R, ..., t - 1`` (see class doc)."""
        return self.kernel_size + (self.kernel_size - 1) * sum(self.dilations)

    def condition(self, context: Tensor | None) -> Tensor | None:
        """The context's share of every block's gates, ``(batch, n_layers, 2 * residual_channels)``.

        Pass it as ``cond`` to run the network several times on one context without projecting the
        context again. ``None`` for an unconditional network.
        """
        if self.context_proj is None:
            return None
        if context is None:
            raise ValueError(
                f"this WaveNet is conditional: pass context of shape (batch, {self.context_dim})"
            )
        if context.dim() == 1:
            context = context.unsqueeze(0)
        if context.dim() != 2 or context.shape[1] != self.context_dim:
            raise ValueError(
                f"context must have shape (batch, {self.context_dim}), got {tuple(context.shape)}"
            )
        return self.context_proj(context).view(context.shape[0], self.n_layers, 2 * self.residual_channels)

    def forward(self, x: Tensor, context: Tensor | None = None, *, cond: Tensor | None = None) -> Tensor:
        """Parameters ``(batch, n_params, L)`` for a ``(batch, L)`` (or ``(batch, 1, L)``) input.

        ``cond`` (from :meth:`condition`) replaces ``context`` when given.
        """
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(
                f"WaveNet input must have shape (batch, L) or (batch, 1, L), got {tuple(x.shape)}"
            )
        if cond is None:
            cond = self.condition(context)
        h = self.input_conv(x)
        skip = None
        for i, gate_conv in enumerate(self.gate_convs):
            a = gate_conv(h)
            if cond is not None:
                a = a + cond[:, i, :, None]
            f, g = a.chunk(2, dim=1)
            u = torch.tanh(f) * torch.sigmoid(g)
            s = self.skip_convs[i](u)
            skip = s if skip is None else skip + s
            if i < self.n_layers - 1:
                h = h + self.residual_convs[i](u)
        return self.output(torch.relu(self.head(torch.relu(skip))))


class WaveNetAffineAutoregressive(Transform):
    """MAF step over a ``(batch, length)`` sequence with a :class:`WaveNet` conditioner.

    ``z_t = x_t * exp(s_t(x_<t)) + m_t(x_<t)``, with the log-scale soft-clamped to
    ``(-scale_bound, scale_bound)``: :meth:`forward` (the density direction) is one network pass.
    :meth:`inverse` recovers ``x_0, x_1, ...`` in turn, one pass per step; since the parameters at
    step ``t`` depend only on the last ``R`` steps (``R`` the receptive field), each pass runs on
    a window of at most ``R + 1`` steps, and the result is exact. Wrapped in :class:`WaveNetIAF`
    it becomes the parallel-sampling student of van den Oord et al. (2018), "Parallel WaveNet:
    Fast High-Fidelity Speech Synthesis"; the conditioner follows van den Oord et al. (2016),
    "WaveNet: A Generative Model for Raw Audio".

    Args:
        length: sequence length ``L`` (the event shape is ``(L,)``).
        context_dim: size of a global conditioning vector (0 for none).
        residual_channels, skip_channels, kernel_size, dilation_cycle: see :class:`WaveNet`.
        n_layers: dilated layers of the conditioner; default: the fewest that let the last step see
            the whole sequence (:func:`layers_to_cover`).
        scale_bound: bound on the log-scale.
    """

    def __init__(
        self,
        length: int,
        context_dim: int = 0,
        residual_channels: int = 32,
        n_layers: int | None = None,
        kernel_size: int = 2,
        scale_bound: float = 3.0,
        skip_channels: int | None = None,
        dilation_cycle: int = 10,
    ):
        super().__init__()
        self.length = positive_int(length, "length")
        if n_layers is None:
            n_layers = layers_to_cover(length, kernel_size, dilation_cycle)
        self.scale_bound = real_number(scale_bound, "scale_bound", positive=True)
        self.context_dim = non_negative_int(context_dim, "context_dim")
        self.net = WaveNet(
            2,
            residual_channels,
            skip_channels,
            n_layers,
            kernel_size,
            dilation_cycle,
            context_dim,
        )

    @property
    def receptive_field(self) -> int:
        return self.net.receptive_field

    def _check(self, x: Tensor, name: str) -> None:
        if x.dim() != 2 or x.shape[1] != self.length:
            raise ValueError(f"{name} must have shape (batch, {self.length}), got {tuple(x.shape)}")

    def _cond(self, context: Tensor | None, batch: int) -> Tensor | None:
        if not self.context_dim:
            return None  # an unconditional transform ignores a context
        if context is not None and context.dim() == 2 and context.shape[0] not in (1, batch):
            raise ValueError(f"context has {context.shape[0]} rows but the batch has {batch}")
        return self.net.condition(context)

    def _shift_logscale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.unbind(1)
        return shift, soft_clamp(raw, self.scale_bound)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, "x")
        shift, log_s = self._shift_logscale(self.net(x, cond=self._cond(context, x.shape[0])))
        return torch.addcmul(shift, x, log_s.exp()), log_s.sum(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z, "z")
        cond = self._cond(context, z.shape[0])
        rf = self.receptive_field
        # The input at the step being solved is never read (strict causality): a zero stands in.
        pad = z.new_zeros(z.shape[0])
        xs: list[Tensor] = []
        log_ss: list[Tensor] = []
        for t in range(self.length):
            window = torch.stack([*xs[max(0, t - rf) : t], pad], dim=1)
            shift, log_s = self._shift_logscale(self.net(window, cond=cond)[:, :, -1])
            xs.append((z[:, t] - shift) * torch.exp(-log_s))
            log_ss.append(log_s)
        return torch.stack(xs, dim=1), -torch.stack(log_ss, dim=1).sum(1)


class WaveNetIAF(Inverse):
    """IAF step with a WaveNet conditioner: the inverse of a :class:`WaveNetAffineAutoregressive`.

    van den Oord et al. (2018), "Parallel WaveNet: Fast High-Fidelity Speech Synthesis":
    ``inverse(z)`` (latent to data, i.e. sampling) is ``x_t = z_t * exp(s_t(z_<t)) + m_t(z_<t)``
    in a single network pass, and returns the log-determinant needed for the sample's own
    log-density; ``forward`` (the density of an external point) takes one pass per step.
    Arguments as for :class:`WaveNetAffineAutoregressive`.
    """

    def __init__(self, length: int, context_dim: int = 0, **options):
        super().__init__(WaveNetAffineAutoregressive(length, context_dim, **options))

    @property
    def net(self) -> WaveNet:
        return self.base_transform.net

    @property
    def receptive_field(self) -> int:
        return self.base_transform.receptive_field


def _wavenet_steps(
    step,
    dim,
    context_dim,
    n_layers,
    hidden,
    conv_layers=None,
    kernel_size=2,
    dilation_cycle=10,
    scale_bound=3.0,
    reverse_between=True,
    seed=None,
):
    """``n_layers`` WaveNet steps over a sequence of length ``dim``; ``hidden[0]`` residual channels,
    ``hidden[-1]`` skip channels, ``conv_layers`` dilated layers per step (default: enough to cover
    the sequence). With ``reverse_between`` the time axis is reversed between steps, so that
    successive steps condition on the past and on the future in turn."""
    hidden = tuple(hidden)
    if not hidden:
        raise ValueError("hidden must give at least one width (residual channels)")
    layers: list[Transform] = []
    for i in range(n_layers):
        layers.append(
            step(
                dim,
                context_dim,
                residual_channels=hidden[0],
                skip_channels=hidden[-1],
                n_layers=conv_layers,
                kernel_size=kernel_size,
                dilation_cycle=dilation_cycle,
                scale_bound=scale_bound,
            )
        )
        if reverse_between and i < n_layers - 1:
            layers.append(ReversePermutation(dim))
    return layers


def _wavenet_maf(dim, context_dim, n_layers, hidden, **options):
    return _wavenet_steps(WaveNetAffineAutoregressive, dim, context_dim, n_layers, hidden, **options)


def _wavenet_iaf(dim, context_dim, n_layers, hidden, **options):
    return _wavenet_steps(WaveNetIAF, dim, context_dim, n_layers, hidden, **options)


register("wavenet_maf", _wavenet_maf)
register("wavenet_iaf", _wavenet_iaf)
