"""TAID: temporally adaptive interpolated distillation.

The target interpolates the logits of the (detached) student and of the teacher:
    r_t = softmax(((1−t)·stopgrad(z_S) + t·z_T) / τ),   L = τ² · token mean of KL(r_t ‖ q)
t starts at t_start (0.4) and rises to t_end (1.0, plain forward KL). After each loss call,
with L the detached cross-entropy τ² · token mean of −Σ r_t log q = KL(r_t ‖ q) + H(r_t) (the
value the reference code's loss returns and feeds its schedule; the suite reports the true KL
as the loss but feeds the schedule the same cross-entropy) and L_prev the previous one:
    m      ← β m + (1−β) (L_prev − L) / L_prev              (β = momentum_decay = 0.99)
    t_lin  = t_start + (t_end − t_start) · progress.fraction
    t      ← min(t_end, max(t_lin, t + step_size · sigmoid(m) · (1 − t)))   (step_size 5e-4)
The first call only records L_prev; `adaptive=False` sets t = t_lin (the linear schedule). The
state (t, m, L_prev) lives on the instance; updates happen only when a gradient is being
computed (training), not in evaluation passes. `schedule` reports t and m for the trace.
Reference: Shing et al., TAID: Temporally Adaptive Interpolated Distillation for Efficient
Knowledge Transfer in Language Models, ICLR 2025 (public code: SakanaAI/TAID).
"""
import functools
import math

import torch

from kdbench import divergences as D
from kdbench.method import Method as Base, check, check_temperature, check_unit


def target_log_probs(log_q, log_p, t):
    """log r_t per row, (rows, V); log-probabilities differ from logits by a row constant, so
    interpolating them gives the same r_t as interpolating the logits."""
    if t >= 1.0:
        return log_p
    if t <= 0.0:
        return log_q.detach()
    return torch.log_softmax((1.0 - t) * log_q.detach() + t * log_p, -1)


def taid_rows(log_q, log_p, *, t):
    """KL(r_t ‖ q) per row."""
    return D.kl_rows(target_log_probs(log_q, log_p, t), log_q)


def target_entropy_rows(log_q, log_p, *, t):
    """H(r_t) per row (0·log 0 = 0)."""
    log_r = target_log_probs(log_q, log_p, t)
    r = log_r.exp()
    return -(r * torch.where(r > 0, log_r, 0.0)).sum(-1)


class Method(Base):
    references = ["Shing et al., TAID: Temporally Adaptive Interpolated Distillation for "
                  "Efficient Knowledge Transfer in Language Models, ICLR 2025"]

    def __init__(self, t_start: float = 0.4, t_end: float = 1.0, step_size: float = 5e-4,
                 momentum_decay: float = 0.99, adaptive: bool = True, temperature: float = 1.0):
        self.t_start = check_unit("t_start", t_start)
        self.t_end = check_unit("t_end", t_end)
        check(self.t_end >= self.t_start, "t_end", t_end, f">= t_start ({t_start!r})")
        self.step_size = float(step_size)
        check(self.step_size >= 0 and math.isfinite(self.step_size), "step_size", step_size, "a finite number >= 0")
        self.momentum_decay = float(momentum_decay)
        check(0.0 <= self.momentum_decay < 1.0, "momentum_decay", momentum_decay, "in [0, 1)")
        self.adaptive = bool(adaptive)
        self.temperature = check_temperature(temperature)
        self.t = self.t_start
        self.momentum = 0.0
        self.prev_loss: float | None = None

    def schedule(self, progress):
        return {"t": self.t, "taid_momentum": self.momentum}

    def loss(self, student_logits, teacher_logits, mask, progress):
        value = D.token_mean(functools.partial(taid_rows, t=self.t), student_logits,
                             teacher_logits, mask, temperature=self.temperature)
        if torch.is_grad_enabled() and student_logits.requires_grad:
            with torch.no_grad():  # H(r_t) has no gradient: r_t holds the detached student
                entropy = D.token_mean(functools.partial(target_entropy_rows, t=self.t), student_logits,
                                       teacher_logits, mask, temperature=self.temperature)
            self.update(float(value.detach() + entropy), progress.fraction)
        return value

    def state_dict(self):
        return {"t": self.t, "momentum": self.momentum, "prev_loss": self.prev_loss}

    def load_state_dict(self, state):
        self.t, self.momentum, self.prev_loss = state["t"], state["momentum"], state["prev_loss"]

    def update(self, loss_value: float, fraction: float) -> None:
        """One step of the TAID rule from the detached cross-entropy; non-finite values skip it."""
        if not math.isfinite(loss_value):
            return
        if self.prev_loss is None:
            self.prev_loss = loss_value
            return
        relative = (self.prev_loss - loss_value) / (self.prev_loss + 1e-15)
        self.momentum = self.momentum_decay * self.momentum + (1 - self.momentum_decay) * relative
        t_lin = self.t_start + (self.t_end - self.t_start) * fraction
        if self.adaptive:
            delta = self.step_size * _sigmoid(self.momentum) * (1 - self.t)
            self.t = min(self.t_end, max(t_lin, self.t + delta))
        else:
            self.t = t_lin
        self.prev_loss = loss_value


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
