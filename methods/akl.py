"""AKL: adaptive KL, forward and reverse KL weighted by where the teacher-student gap lies.

Per token, with p the teacher's and q the student's distribution at temperature τ:
    head   = the smallest set of the teacher's most probable tokens (sorted descending) whose
             cumulative mass exceeds μ; the top token is always in it. tail = the rest.
    g      = |p − q| with the student detached
    h      = Σ_head g / Σ g,   l = Σ_tail g / Σ g          (constants: no gradient)
    L      = τ² · token mean of [h · KL(p ‖ q) + l · KL(q ‖ p)]
Forward KL fits the head first, reverse KL the tail, so the weights follow the gap. The head
mask is built in sorted order and scattered back to vocabulary order before it meets g.
Where p = q (Σ g = 0) both KLs are 0 and h = l = ½.
Where the public code differs: it puts the token whose cumulative mass first exceeds μ in the
tail (head = tokens with cumulative mass ≤ μ, plus the top token); the suite follows the
"smallest prefix with mass > μ" definition of REFERENCES.md, which puts it in the head.
Reference: Wu et al., Rethinking Kullback-Leibler Divergence in Knowledge Distillation for
Large Language Models, COLING 2025 (arXiv:2404.02657).
"""
import functools

import torch

from kdbench import divergences as D
from kdbench.method import Method as Base, check_temperature, check_unit


def head_mask(p: torch.Tensor, mu: float) -> torch.Tensor:
    """Bool (rows, V), in vocabulary order: the smallest top-probability prefix of mass > mu."""
    sorted_p, order = p.sort(-1, descending=True)
    cum = sorted_p.cumsum(-1)
    before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], -1)  # mass ranked above
    return torch.zeros_like(p, dtype=torch.bool).scatter_(-1, order, before <= mu)


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
