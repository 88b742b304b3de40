"""AKL: adaptive KL, forward and reverse KL weighted by where the teacher-student gap lies.

Per token, with p the teacher's and q the student's distribution at temperature τ:
    sort the teacher's probabilities descending and take cumulative sums (each token's own
    mass included): tail = the tokens whose cumulative mass exceeds μ, except the top token,
    which is always in the head; head = the rest. The token that crosses μ is in the tail.
    g      = |p − q| with the student detached
    h      = Σ_head g / Σ g,   l = Σ_tail g / Σ g          (constants: no gradient)
    L      = τ² · token mean of [h · KL(p ‖ q) + l · KL(q ‖ p)]
Forward KL fits the head first, reverse KL the tail, so the weights follow the gap. The head
mask is built in sorted order and scattered back to vocabulary order before it meets g.
Where p = q (Σ g = 0) both KLs are 0 and h = l = ½.
This is the authors' split (their `get_ratio`), boundary token included; docs/protocol.md
lists it with the other method constants.
Reference: Wu et al., Rethinking Kullback-Leibler Divergence in Knowledge Distillation for
Large Language Models, COLING 2025 (arXiv:2404.02657).
"""
import functools

import torch

from kdbench import divergences as D
from kdbench.method import Method as Base, check_temperature, check_unit


def head_mask(p: torch.Tensor, mu: float) -> torch.Tensor:
    """Bool (rows, V), in vocabulary order: the teacher's tokens whose cumulative mass (sorted
    descending, own mass included) is at most mu, plus the top token."""
    sorted_p, order = p.sort(-1, descending=True)
    head_sorted = sorted_p.cumsum(-1) <= mu
    head_sorted[:, 0] = True  # the top token is always in the head
    return torch.zeros_like(p, dtype=torch.bool).scatter_(-1, order, head_sorted)


def akl_rows(log_q, log_p, *, mu):
    p, q = log_p.exp(), log_q.detach().exp()
    gap = (p - q).abs()
    head = head_mask(p, mu)
    total = gap.sum(-1)
    head_gap = torch.where(head, gap, 0.0).sum(-1)
    h = torch.where(total > 0, head_gap / total.clamp_min(torch.finfo(total.dtype).tiny), 0.5)
    return h * D.kl_rows(log_p, log_q) + (1.0 - h) * D.kl_rows(log_q, log_p)


class Method(Base):
    references = ["Wu et al., Rethinking Kullback-Leibler Divergence in Knowledge Distillation "
                  "for Large Language Models, COLING 2025"]

    def __init__(self, mu: float = 0.5, temperature: float = 1.0):
        self.mu = check_unit("mu", mu)
        self.temperature = check_temperature(temperature)

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.token_mean(functools.partial(akl_rows, mu=self.mu), student_logits,
                            teacher_logits, mask, temperature=self.temperature)
