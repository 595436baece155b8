"""Probability density distillation: train a fast-sampling student flow to match a teacher flow.

van den Oord et al. (2018), "Parallel WaveNet: Fast High-Fidelity Speech Synthesis". A teacher
whose density is cheap to evaluate (a MAF-type flow: one pass for ``log p``) but slow to sample from
teaches a student that samples cheaply (an IAF-type flow: one pass gives a sample and its own
log-density). The student minimises the reverse Kullback-Leibler divergence

    ``KL(q_student || p_teacher) = E_{x ~ q} [log q(x) - log p(x)]``,

estimated on the student's own reparametrised samples, so each step costs one student sampling pass
and one teacher density pass, both parallel over the event. The teacher is frozen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import rng_scope
from ..checks import integer, positive_int, real_number
from ..trainer import Minibatch, Trainer, constant
from .base import Flow

__all__ = ["distill", "reverse_kl_estimate"]


def _reference(flow: Flow) -> Tensor | None:
    """A tensor that tells the flow's dtype and device (its first floating parameter or buffer)."""
    for t in (*flow.parameters(), *flow.buffers()):
        if t.is_floating_point():
            return t
    return None


def _draw_context(context_sampler, n: int, context_dim: int) -> Tensor | None:
    if context_sampler is None:
        return None
    context = context_sampler(n)
    if not isinstance(context, Tensor):
        raise TypeError(f"context_sampler must return a torch.Tensor, got {type(context).__name__}")
    if tuple(context.shape) != (n, context_dim):
        raise ValueError(
            f"context_sampler({n}) must return shape ({n}, {context_dim}), got {tuple(context.shape)}"
        )
    return context


def reverse_kl_estimate(
    teacher: Flow, student: Flow, n: int, context: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Monte Carlo estimate of ``KL(student || teacher)`` from ``n`` student samples.

    Returns ``(kl, per_sample)`` where ``per_sample = log q(x) - log p(x)`` for ``x ~ q`` (the
    student) and ``kl`` is its mean. Differentiable in the student's parameters (the samples are
    reparametrised) and, unless they are frozen, in the teacher's.
    """
    x, log_q = student.rsample_and_log_prob(n, context)
    log_p = teacher.log_prob(x, context)
    per_sample = log_q - log_p
    return per_sample.mean(), per_sample


def _check_pair(teacher: Any, student: Any, context_sampler: Any) -> tuple[list[Tensor], Tensor | None]:
    """Check that teacher and student can be distilled; returns the teacher's parameters and a
    tensor of the student's dtype and device."""
    for name, flow in (("teacher", teacher), ("student", student)):
        if not isinstance(flow, Flow):
            raise TypeError(f"{name} must be a ctflow Flow, got {type(flow).__name__}")
    if teacher is student:
        raise ValueError("teacher and student must be different flows")
    if tuple(teacher.event_shape) != tuple(student.event_shape):
        raise ValueError(
            f"teacher and student must have the same event shape: teacher {tuple(teacher.event_shape)}, "
            f"student {tuple(student.event_shape)}"
        )
    if teacher.context_dim != student.context_dim:
        raise ValueError(
            f"teacher and student must have the same context_dim: teacher {teacher.context_dim}, "
            f"student {student.context_dim}"
        )
    if context_sampler is not None and not callable(context_sampler):
        raise TypeError(f"context_sampler must be callable or None, got {type(context_sampler).__name__}")
    if student.context_dim and context_sampler is None:
        raise ValueError(
            f"the flows are conditional (context_dim={student.context_dim}): pass a context_sampler "
            "returning (n, context_dim) contexts"
        )
    if not student.context_dim and context_sampler is not None:
        raise ValueError("the flows are unconditional (context_dim=0): context_sampler must be None")

    teacher_params = list(teacher.parameters())
    teacher_ids = {id(p) for p in teacher_params}
    student_params = [p for p in student.parameters() if p.requires_grad]
    if any(id(p) in teacher_ids for p in student.parameters()):
        raise ValueError("student shares parameters with teacher; distil into an independent copy")
    if not student_params:
        raise ValueError("student has no trainable parameters (none requires grad)")
    ref_t, ref_s = _reference(teacher), _reference(student)
    if ref_t is not None and ref_s is not None:
        if ref_t.dtype != ref_s.dtype:
            raise ValueError(
                f"teacher and student dtypes differ: teacher {ref_t.dtype}, student {ref_s.dtype}"
            )
        if ref_t.device != ref_s.device:
            raise ValueError(
                f"teacher and student devices differ: teacher {ref_t.device}, student {ref_s.device}"
            )
    return teacher_params, ref_s


def _student_trainer(
    teacher: Flow,
    student: Flow,
    history: dict,
    context_sampler: Callable[[int], Tensor] | None,
    grad_clip: float | None,
    verbose: bool,
) -> Trainer:
    """The :class:`~ctflow.trainer.Trainer` of a distillation, recording into ``history``."""
    n_steps, batch_size = history["n_steps"], history["batch_size"]
    report_every = max(1, n_steps // 10)

    def objective(batch: Minibatch) -> Tensor:
        context = _draw_context(context_sampler, batch_size, student.context_dim)
        kl, _ = reverse_kl_estimate(teacher, student, batch_size, context)
        if not torch.isfinite(kl):
            step = len(history["kl"])
            raise FloatingPointError(
                f"the KL estimate is not finite at step {step}; lower lr or set grad_clip"
            )
        return kl

    def on_update(kl: float, grad_norm: float) -> None:
        history["kl"].append(kl)
        history["grad_norm"].append(grad_norm)  # before clipping
        step = len(history["kl"])
        if verbose and (step % report_every == 0 or step == n_steps):
            recent = history["kl"][-report_every:]
            print(f"distill step {step}/{n_steps}: KL(student || teacher) ~ {sum(recent) / len(recent):.4f}")

    # One item drawn n_steps times: the batch is the student's own samples, not data.
    return Trainer(
        student,
        objective,
        n_items=1,
        batch_size=1,
        steps_per_epoch=n_steps,
        lr=history["lr"],
        grad_clip=grad_clip,
        schedule=constant,
        seed=0,
        on_update=on_update,
        desc="distill",
    )


def distill(
    teacher: Flow,
    student: Flow,
    n_steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-3,
    context_sampler: Callable[[int], Tensor] | None = None,
    grad_clip: float | None = 10.0,
    verbose: bool = False,
    seed: int | None = None,
) -> dict:
    """Train ``student`` to minimise the reverse KL ``KL(student || teacher)`` (probability density
    distillation, van den Oord et al. (2018), "Parallel WaveNet: Fast High-Fidelity Speech
    Synthesis").

    Each step draws ``batch_size`` reparametrised samples ``x`` and their log-densities ``log q(x)``
    from the student (:meth:`Flow.rsample_and_log_prob`), evaluates the frozen teacher's
    ``log p(x)`` and takes an Adam step on ``mean(log q(x) - log p(x))``. Gradients reach the
    student through ``log q`` and through the samples ``x`` (via the teacher's density); the
    teacher's parameters are never updated. The student should sample in one pass (an IAF-type
    flow, e.g. ``build("iaf", ...)`` or ``build("wavenet_iaf", ...)``) and the teacher should
    evaluate densities in one pass (MAF-type); other flows work, only more slowly.

    Args:
        teacher: the target density; frozen during training (its ``requires_grad`` flags and
            train/eval mode are restored afterwards; it runs in eval mode meanwhile).
        student: the flow to train (in train mode meanwhile; its mode is restored afterwards).
        n_steps, batch_size, lr: optimisation steps, student samples per step, Adam's rate.
        context_sampler: for conditional flows, ``context_sampler(n)`` returns an ``(n,
            context_dim)`` context for one step's samples; must be ``None`` for unconditional ones.
        grad_clip: maximum gradient norm of the student's parameters (``None`` for no clipping).
        verbose: print the running KL estimate ten times during training.
        seed: seed for the student's samples and the contexts (the global random state is left
            as it was); ``None`` uses and advances the global generator.

    Returns:
        ``{"kl": [...], "grad_norm": [...], "n_steps", "batch_size", "lr", "seconds"}`` where
        ``kl[i]`` is step ``i``'s estimate of ``KL(student || teacher)`` in nats, computed before
        that step's update, and ``grad_norm[i]`` the gradient norm before clipping.

    Raises:
        TypeError: ``teacher``/``student`` is not a :class:`Flow`, ``context_sampler`` is not
            callable, or a numeric argument has the wrong type.
        ValueError: mismatched event shapes, context sizes, dtypes or devices; shared parameters;
            a student with nothing to train; non-positive ``n_steps``/``batch_size``/``lr``/
            ``grad_clip``; a missing or superfluous ``context_sampler``.
        FloatingPointError: the KL estimate stops being finite (lower ``lr`` or use ``grad_clip``).
    """
    n_steps = positive_int(n_steps, "n_steps")
    batch_size = positive_int(batch_size, "batch_size")
    lr = real_number(lr, "lr", positive=True)
    grad_clip = real_number(grad_clip, "grad_clip", positive=True, allow_none=True)
    seed = integer(seed, "seed", allow_none=True)
    teacher_params, ref_s = _check_pair(teacher, student, context_sampler)
    device = ref_s.device if ref_s is not None else torch.device("cpu")
    history: dict = {"kl": [], "grad_norm": [], "n_steps": n_steps, "batch_size": batch_size, "lr": lr}
    trainer = _student_trainer(teacher, student, history, context_sampler, grad_clip, verbose)
    flags = [p.requires_grad for p in teacher_params]
    teacher_mode = teacher.training
    start = time.perf_counter()
    try:
        for p in teacher_params:
            p.requires_grad_(False)
        teacher.eval()
        with rng_scope(seed, device):
            trainer.fit()
    finally:
        for p, flag in zip(teacher_params, flags, strict=True):
            p.requires_grad_(flag)
        teacher.train(teacher_mode)
    history["seconds"] = time.perf_counter() - start
    return history
