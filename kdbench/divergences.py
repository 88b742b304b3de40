"""Token-level divergences between teacher and student next-token distributions.

This module is the one place that defines the *direction* of every divergence. With
p = softmax(teacher_logits / τ) (teacher) and q = softmax(student_logits / τ) (student):

    forward_kl        KL(p ‖ q)                                  "KD"
    reverse_kl        KL(q ‖ p)
    skew_forward_kl   KL(p ‖ α p + (1−α) q)                      DistiLLM SKL
    skew_reverse_kl   KL(q ‖ α q + (1−α) p)                      DistiLLM SRKL
    forward_kl_to_mixture        KL(r ‖ q), r = α p + (1−α) sg(q)          target mixed in probabilities
    forward_kl_to_interpolation  KL(r ‖ q), r ∝ p^α · sg(q)^(1−α)          target mixed in logits (TAID)
    jensen_shannon    β KL(p ‖ m) + (1−β) KL(q ‖ m),  m = β p + (1−β) q   (GKD / TRL)
    total_variation   ½ Σ_v |p_v − q_v|

Conventions shared by every function
- Inputs: `student_logits`, `teacher_logits` of shape (..., V) (usually (B, T, V)), any float
  dtype; `mask` a bool tensor of the leading shape (B, T) marking the tokens that count
  (None: all). Output: a 0-d tensor, the mean over masked tokens of the per-token
  divergence × τ² (Hinton's convention, so τ does not change the gradient scale).
- Computation is in float32 (float64 if an input is float64, which the gradient tests use):
  bf16 in, float32 out. Values are true divergences (0 for identical inputs), never
  cross-entropies.
- The teacher is a constant: it is detached and never receives a gradient. In the two
  mixed targets the student's share is detached too (sg, stop-gradient): the target is a
  constant of the step, so the gradient is the forward-KL pull τ (q − r) towards it.
- −inf logits are zero-probability tokens (0·log 0 = 0, no NaN, no NaN gradient). A token
  whose row is undefined (all −inf, or a +inf entry) contributes 0. KL-type values are +inf
  when the first argument has mass where the second has none (the true value); the mixtures
  (skew KL, JS) and TVD are always finite.
- A mask with no true entry gives 0 (connected to the student logits), not NaN.

Memory: the masked rows are processed in chunks of about `CPU_CHUNK_ELEMENTS` logits
(`ACCELERATOR_CHUNK_ELEMENTS` on a GPU). Each chunk
computes its values and, if the student needs a gradient, its gradient right away; only that
per-row gradient (one (N, V) copy in the student's dtype) is kept for backward, never the
(chunk, V) intermediates. This is exact because every per-token divergence depends on its own
row only, so the Jacobian is block diagonal and backward is a per-row rescale.

Large vocabularies (the fused path, kdbench/fused.py, docs/engine.md): the student may also be
a `kdbench.fused.ProjectedLogits`, hidden states and output layer standing for logits that are
never formed. `token_mean` (and so every named divergence) then projects one chunk of rows at
a time and applies the same per-chunk step (`_chunk_value_grad`); the gradients for the hidden
states and the output layer are made in the forward pass, and nothing (N, V) is kept.
`per_token` needs formed logits.

Extension point: `per_token(kernel, ...)` / `token_mean(kernel, ...)` apply any row-wise
`kernel(log_q, log_p) -> (rows,)` of student and teacher log-probabilities with the same
chunking, masking, τ² and float32 rules (methods such as AKL and TAID use it). `kl_rows`,
`log_mixture` and `log_interpolation` are the safe building blocks for such kernels.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from kdbench.errors import UserError
from kdbench.method import check_temperature, check_unit

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CPU_CHUNK_ELEMENTS = 1 << 17
"""Logits per chunk on the CPU (rows = max(1, elements // V)): 512 KiB float32 per (rows, V)
temporary, so the kernel's half-dozen temporaries stay in a core's L2 cache between its passes.
Forward KL with its gradient on (281, 1024) rows is 2-3x faster than with 16 MiB chunks
(benchmarks/results/engine.md), and forward KL, JS and reverse KL at V = 4,096 and 50,257 are
as fast or faster (benchmarks/results/divergences.md, Notes); smaller chunks pay more per-call
overhead (and one thread synchronisation per operation and chunk) than they gain."""
CPU_PROJECTED_CHUNK_ELEMENTS = 1 << 22
"""Logits per chunk on the CPU on the fused path (kdbench/fused.py), 16 MiB float32: each chunk
multiplies its hidden states by the whole output layer, so a chunk of a few rows would re-read
the (V, H) weights for every few rows."""
ACCELERATOR_CHUNK_ELEMENTS = 1 << 24
"""Logits per chunk on a GPU: 64 MiB temporaries, large enough to hide kernel launches."""
CHUNK_ELEMENTS: int | None = None
"""If set, overrides both of the above (the tests force tiny chunks with it)."""

__all__ = [
    "forward_kl", "reverse_kl", "skew_forward_kl", "skew_reverse_kl", "forward_kl_to_mixture",
    "forward_kl_to_interpolation", "jensen_shannon", "total_variation", "per_token", "token_mean",
    "kl_rows", "log_mixture", "log_interpolation", "zero",
    "CHUNK_ELEMENTS", "CPU_CHUNK_ELEMENTS", "CPU_PROJECTED_CHUNK_ELEMENTS", "rows_per_chunk",
    "ACCELERATOR_CHUNK_ELEMENTS",
]


# --- row building blocks (inputs: (rows, V) log-probabilities) ---------------------------

def kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) per row, Σ_v a_v (log a_v − log b_v); (rows, V) -> (rows,).

    Entries with a_v = 0 contribute exactly 0 and get a zero gradient, even where
    log a_v = log b_v = −inf (where a naive a·(log a − log b) would give NaN).
    """
    a = log_a.exp()
    fast = (a * (log_a - log_b)).sum(-1)
    if bool(torch.isfinite(fast).all()):
        return fast  # every term finite, so its gradient is too: the common case, fewer passes
    return (a * torch.where(a > 0, log_a - log_b, 0.0)).sum(-1)


def log_mixture(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w·a + (1−w)·b) elementwise, formed in log space; w = 0 and w = 1 are exact.

    Entries where both a and b are 0 give −inf with a zero (not NaN) gradient.
    """
    if weight_a <= 0.0:
        return log_b
    if weight_a >= 1.0:
        return log_a
    x = log_a + math.log(weight_a)
    y = log_b + math.log1p(-weight_a)
    fast = torch.logaddexp(x, y)
    if bool(torch.isfinite(fast).all()):
        return fast  # no entry where both are 0: the common case
    both_zero = (x == -math.inf) & (y == -math.inf)
    safe = torch.logaddexp(torch.where(both_zero, 0.0, x), torch.where(both_zero, 0.0, y))
    return torch.where(both_zero, -math.inf, safe)


def log_interpolation(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log of the normalised geometric mixture a^w · b^(1−w) / Z, (rows, V) -> (rows, V).

    Log-probabilities differ from logits by a row constant, so this is softmax(w·z_a +
    (1−w)·z_b): the interpolation of logits. w = 0 and w = 1 are exact (b and a), which also
    avoids 0·(−inf) where the weightless side has a zero.
    """
    if weight_a <= 0.0:
        return log_b
    if weight_a >= 1.0:
        return log_a
    return torch.log_softmax(weight_a * log_a + (1.0 - weight_a) * log_b, -1)


def _forward_kl_rows(log_q, log_p):
    return kl_rows(log_p, log_q)


def _reverse_kl_rows(log_q, log_p):
    return kl_rows(log_q, log_p)


def _skew_forward_kl_rows(log_q, log_p, *, alpha):
    return kl_rows(log_p, log_mixture(log_p, log_q, alpha))


def _skew_reverse_kl_rows(log_q, log_p, *, alpha):
    return kl_rows(log_q, log_mixture(log_q, log_p, alpha))


# the mixed targets, log r (rows, V), the student's share detached: r is a constant of the step

def _mixture_target(log_q, log_p, *, alpha):
    return log_mixture(log_p, log_q.detach(), alpha)                # r = α p + (1−α) sg(q)


def _interpolation_target(log_q, log_p, *, alpha):
    return log_interpolation(log_p, log_q.detach(), alpha)          # r ∝ p^α sg(q)^(1−α)


def _mixture_target_rows(log_q, log_p, *, alpha):
    return kl_rows(_mixture_target(log_q, log_p, alpha=alpha), log_q)


def _interpolation_target_rows(log_q, log_p, *, alpha):
    return kl_rows(_interpolation_target(log_q, log_p, alpha=alpha), log_q)


def _jensen_shannon_rows(log_q, log_p, *, beta):
    log_m = log_mixture(log_p, log_q, beta)
    return beta * kl_rows(log_p, log_m) + (1.0 - beta) * kl_rows(log_q, log_m)


def _total_variation_rows(log_q, log_p):
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


# --- chunked evaluation ----------------------------------------------------------------

def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dt = torch.float32
    for t in tensors:
        dt = torch.promote_types(dt, t.dtype)
    return dt


def _rows_value(kernel: Kernel, s: torch.Tensor, t: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """Per-row divergence × τ² of student rows `s` and teacher rows `t` (rows, V)."""
    if temperature != 1.0:
        s, t = s / temperature, t / temperature
    value = kernel(torch.log_softmax(s, -1), torch.log_softmax(t, -1))
    if not bool(torch.isfinite(value).all()):  # rare: redo the chunk with undefined rows zeroed
        value = _guarded_rows_value(kernel, s, t)
    return value * (temperature ** 2) if temperature != 1.0 else value


def _guarded_rows_value(kernel: Kernel, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """As the kernel, but a row with a +inf entry or no finite entry gives 0 (zero gradient).

    NaN rows stay NaN (a NaN logit is a bug upstream, not something to hide); an infinite
    divergence of well-defined rows (support mismatch) stays +inf.
    """
    valid = ~(s.amax(-1).isinf() | t.amax(-1).isinf())
    s = torch.where(valid[:, None], s, 0.0)
    t = torch.where(valid[:, None], t, 0.0)
    value = kernel(torch.log_softmax(s, -1), torch.log_softmax(t, -1))
    return torch.where(valid, value, 0.0)


def rows_per_chunk(vocab: int, device: torch.device, override: int | None = None, *,
                   projected: bool = False) -> int:
    """Rows of V logits per chunk on `device` (`override`, if given, must be >= 1);
    `projected`: chunks of the fused path, which also project their rows (kdbench/fused.py)."""
    if override is not None:
        if int(override) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {override!r}.")
        return int(override)
    cpu = CPU_PROJECTED_CHUNK_ELEMENTS if projected else CPU_CHUNK_ELEMENTS
    elements = CHUNK_ELEMENTS or (cpu if device.type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS)
    return max(1, elements // max(1, vocab))


def _chunk_value_grad(kernel: Kernel, s: torch.Tensor, t: torch.Tensor, temperature: float,
                      need_grad: bool):
    """Per-row values × τ² of student rows `s` and teacher rows `t` (rows, V), both in the
    compute dtype, and (if `need_grad`, else None) their gradient with respect to `s`:
    closed form where the kernel has one, autograd through the kernel otherwise. The one
    per-chunk step of both the plain path (`_PerToken`) and the fused one (kdbench/fused.py)."""
    func, keywords = (kernel.func, kernel.keywords) if isinstance(kernel, functools.partial) else (kernel, {})
    target = _TARGETS.get(func) if need_grad else None
    vg = _target_value_grad(s, t, temperature, functools.partial(target, **keywords)) if target else None
    if vg is not None:
        return vg
    if not need_grad:
        return _rows_value(kernel, s, t, temperature), None
    s = s.detach().requires_grad_(True)
    with torch.enable_grad():
        v = _rows_value(kernel, s, t, temperature)
        (g,) = torch.autograd.grad(v.sum(), s)
    return v.detach(), g


class _PerToken(torch.autograd.Function):
    """Per-token values of a row-wise kernel over the rows `idx` of flat (M, V) logits.

    Forward computes, chunk by chunk, the values and (when needed) their per-row gradients;
    backward rescales those rows by the incoming per-token gradient and scatters them into a
    zero (M, V) gradient. Only the per-row gradients are kept between the two.
    """

    @staticmethod
    def forward(ctx, student, teacher, idx, kernel, temperature, rows):
        cd = _compute_dtype(student, teacher)
        need_grad = ctx.needs_input_grad[0]
        n = idx.numel()
        every_row = n == student.shape[0]  # indices are sorted and unique: idx is 0..M-1
        out = torch.empty(n, dtype=cd, device=student.device)
        jac = torch.empty((n, student.shape[-1]), dtype=student.dtype,
                          device=student.device) if need_grad else None
        for lo in range(0, n, rows):
            if every_row:  # a view, no copy
                s, t = student[lo:lo + rows].to(cd), teacher[lo:lo + rows].to(cd)
            else:
                # advanced indexing, not index_select: the latter is pathologically slow on the
                # CPU with several threads and long rows (torch 2.13: 2 s instead of 0.03 s per chunk)
                sel = idx[lo:lo + rows]
                s, t = student[sel].to(cd), teacher[sel].to(cd)
            v, g = _chunk_value_grad(kernel, s, t, temperature, need_grad)
            out[lo:lo + rows] = v
            if g is not None:
                jac[lo:lo + rows] = g
        if need_grad:
            ctx.save_for_backward(idx, jac)
            ctx.rows, ctx.flat_shape, ctx.cd = rows, student.shape, cd
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        idx, jac = ctx.saved_tensors
        if idx.numel() == ctx.flat_shape[0]:  # every row, in order: a rescale, no scatter
            return (jac.to(ctx.cd) * grad_out[:, None].to(ctx.cd)).to(jac.dtype), None, None, None, None, None
        grad = torch.zeros(ctx.flat_shape, dtype=jac.dtype, device=jac.device)
        rows = ctx.rows
        for lo in range(0, idx.numel(), rows):
            g = jac[lo:lo + rows].to(ctx.cd) * grad_out[lo:lo + rows, None].to(ctx.cd)
            grad.index_copy_(0, idx[lo:lo + rows], g.to(jac.dtype))
        return grad, None, None, None, None, None


def _target_value_grad(s: torch.Tensor, t: torch.Tensor, temperature: float, target):
    """KL(r ‖ q) × τ² per row of student rows `s` and teacher rows `t` (rows, V), and its
    gradient with respect to `s`, τ (q − r), in one pass, for a target r that is a constant of
    the step: log r = target(log_q, log_p), (rows, V). About 3x fewer passes over the rows than
    autograd. None when a value is not finite (the generic path handles those)."""
    if temperature != 1.0:
        s, t = s / temperature, t / temperature
    log_q = torch.log_softmax(s, -1)
    log_r = target(log_q, torch.log_softmax(t, -1))
    r = log_r.exp()
    value = (r * (log_r - log_q)).sum(-1)
    if not bool(torch.isfinite(value).all()):
        return None
    grad = log_q.exp_().sub_(r)  # log_r is not read again (it may be log_q itself)
    if temperature != 1.0:
        return value * temperature ** 2, grad.mul_(temperature)
    return value, grad


def _teacher_target(log_q, log_p):
    return log_p


# Row kernels that are a forward KL towards a target r held constant for the step (the teacher,
# or a mixture with the detached student), each with its log r: their gradient has the closed
# form τ (q − r). A kernel given as functools.partial passes its keywords to the target.
_TARGETS = {_forward_kl_rows: _teacher_target, _mixture_target_rows: _mixture_target,
            _interpolation_target_rows: _interpolation_target}


def _rows_index(student_logits, teacher_logits, mask) -> torch.Tensor:
    """The flat indices (n,) of the masked rows, after checking shapes and mask."""
    if student_logits.shape != teacher_logits.shape:
        if student_logits.shape[:-1] == teacher_logits.shape[:-1]:
            raise UserError(f"teacher and student vocabularies differ ({teacher_logits.shape[-1]} "
                            f"vs {student_logits.shape[-1]} logits); pick a teacher-student pair "
                            "that shares a tokenizer.")
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape.")
    if len(student_logits.shape) < 1 or not student_logits.dtype.is_floating_point:
        raise ValueError("logits must be a floating-point tensor of shape (..., V).")
    lead = student_logits.shape[:-1]
    if mask is None:
        return torch.arange(lead.numel(), device=student_logits.device)
    if tuple(mask.shape) != tuple(lead):
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the logits' leading "
                         f"shape {tuple(lead)}.")
    flat = mask.reshape(-1).to(device=student_logits.device, dtype=torch.bool)
    return flat.nonzero().squeeze(1)


def per_token(kernel: Kernel, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              mask: torch.Tensor | None, *, temperature: float = 1.0,
              chunk_rows: int | None = None) -> torch.Tensor:
    """Per-token values × τ² of a row-wise kernel at the masked positions, shape (N,).

    kernel(log_q, log_p) takes student and teacher log-probabilities at temperature τ, both
    (rows, V) in the compute dtype, and returns (rows,); each output must depend on its own
    row only (this is what makes the chunked gradient exact). The order of the N values is
    the row-major order of the true entries of `mask`. Gradients flow to `student_logits`
    only. `chunk_rows` overrides the rows per chunk (tests force small chunks with it).
    Not on the fused path (a `ProjectedLogits` student): use `token_mean` there.
    """
    temperature = check_temperature(temperature)
    if not isinstance(student_logits, torch.Tensor):  # per-token gradients need (N, V) rows
        raise UserError("per_token needs the student logits, which the fused large-vocabulary path does not "
                        "form; write the loss with token_mean, or set distill.fused: false in the profile.")
    idx = _rows_index(student_logits, teacher_logits, mask)
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    if not torch.is_grad_enabled():  # evaluation: skip the per-row gradients
        student = student.detach()
    teacher = teacher_logits.detach().reshape(-1, vocab)
    return _PerToken.apply(student, teacher, idx, kernel, temperature,
                           rows_per_chunk(vocab, student.device, chunk_rows))


def token_mean(kernel: Kernel, student_logits, teacher_logits, mask, *, temperature: float = 1.0,
               chunk_rows: int | None = None) -> torch.Tensor:
    """Mean over masked tokens of `per_token(...)`; 0 (with a grad_fn) when nothing is masked in.

    `student_logits` may also be a `kdbench.fused.ProjectedLogits` (the fused path): the same
    chunk computation (`_chunk_value_grad`) then runs on each chunk of projected rows.
    """
    if isinstance(student_logits, torch.Tensor):
        values = per_token(kernel, student_logits, teacher_logits, mask,
                           temperature=temperature, chunk_rows=chunk_rows)
        total, n = values.sum(), values.numel()
    else:
        temperature = check_temperature(temperature)
        idx = _rows_index(student_logits, teacher_logits, mask)
        vocab = student_logits.shape[-1]
        teacher = teacher_logits.detach().reshape(-1, vocab)
        cd = _compute_dtype(student_logits, teacher)
        need_grad = torch.is_grad_enabled() and student_logits.requires_grad

        def rows(s, sel):
            return _chunk_value_grad(kernel, s.to(cd), teacher[sel].to(cd), temperature, need_grad)
        chunk = rows_per_chunk(vocab, student_logits.device, chunk_rows, projected=True)
        total, _ = student_logits.rows_sum(idx, rows, chunk)
        n = idx.numel()
    return total / n if n else total


def zero(student_logits: torch.Tensor) -> torch.Tensor:
    """A float32 0 connected to `student_logits` (zero gradient, finite even with inf logits).

    For methods whose distillation term is empty (SFT, SeqKD): the engine can still call
    backward on it. On the fused path, connected to the student's hidden states.
    """
    if not isinstance(student_logits, torch.Tensor):
        return student_logits.hidden[..., :0].float().sum()
    return student_logits[..., :0].float().sum()


# --- the divergences -------------------------------------------------------------------

def forward_kl(student_logits, teacher_logits, mask, *, temperature=1.0):
    """KL(p ‖ q) × τ², token mean: the classic KD objective as a true divergence."""
    return token_mean(_forward_kl_rows, student_logits, teacher_logits, mask,
                      temperature=temperature)


def reverse_kl(student_logits, teacher_logits, mask, *, temperature=1.0):
    """KL(q ‖ p) × τ², token mean (mode seeking)."""
    return token_mean(_reverse_kl_rows, student_logits, teacher_logits, mask,
                      temperature=temperature)


def skew_forward_kl(student_logits, teacher_logits, mask, *, alpha=0.1, temperature=1.0):
    """KL(p ‖ α p + (1−α) q) × τ², token mean; α ∈ [0, 1] (α = 0: forward KL, α = 1: 0)."""
    alpha = check_unit("alpha", alpha)
    return token_mean(functools.partial(_skew_forward_kl_rows, alpha=alpha), student_logits,
                      teacher_logits, mask, temperature=temperature)


def skew_reverse_kl(student_logits, teacher_logits, mask, *, alpha=0.1, temperature=1.0):
    """KL(q ‖ α q + (1−α) p) × τ², token mean; α ∈ [0, 1] (α = 0: reverse KL, α = 1: 0)."""
    alpha = check_unit("alpha", alpha)
    return token_mean(functools.partial(_skew_reverse_kl_rows, alpha=alpha), student_logits,
                      teacher_logits, mask, temperature=temperature)


def forward_kl_to_mixture(student_logits, teacher_logits, mask, *, alpha, temperature=1.0):
    """KL(r ‖ q) × τ², r = α p + (1−α) sg(q), token mean; α ∈ [0, 1] is the teacher's weight
    in the target (α = 1: forward KL, α = 0: 0).

    r is a constant of the step, so the logit gradient is τ (q − r) = α τ (q − p): forward KL's
    direction at α times its strength (per token, |∂L/∂z_j| ≤ τ α and Σ_j |∂L/∂z_j| ≤ 2 τ α).
    """
    alpha = check_unit("alpha", alpha)
    return token_mean(functools.partial(_mixture_target_rows, alpha=alpha), student_logits,
                      teacher_logits, mask, temperature=temperature)


def forward_kl_to_interpolation(student_logits, teacher_logits, mask, *, alpha, temperature=1.0):
    """KL(r ‖ q) × τ², r = softmax((α z_T + (1−α) sg(z_S)) / τ), token mean; α ∈ [0, 1] is the
    teacher's weight in the target (α = 1: forward KL, α = 0: 0). TAID's target (whose t is α).

    r is a constant of the step, so the logit gradient is τ (q − r) (Σ_j |∂L/∂z_j| ≤ 2 τ); its
    direction, unlike the mixture's, moves with α: r is a compromise between teacher and student.
    """
    alpha = check_unit("alpha", alpha)
    return token_mean(functools.partial(_interpolation_target_rows, alpha=alpha), student_logits,
                      teacher_logits, mask, temperature=temperature)


def jensen_shannon(student_logits, teacher_logits, mask, *, beta=0.1, temperature=1.0):
    """β KL(p ‖ m) + (1−β) KL(q ‖ m) × τ², m = β p + (1−β) q, token mean; β ∈ (0, 1).

    Symmetric in (p, q) at β = 0.5 (the classic JS divergence); tends to 0 at both ends.
    """
    beta = check_unit("beta", beta, open_ends=True)
    return token_mean(functools.partial(_jensen_shannon_rows, beta=beta), student_logits,
                      teacher_logits, mask, temperature=temperature)


def total_variation(student_logits, teacher_logits, mask, *, temperature=1.0):
    """½ Σ_v |p_v − q_v| × τ², token mean."""
    return token_mean(_total_variation_rows, student_logits, teacher_logits, mask,
                      temperature=temperature)
