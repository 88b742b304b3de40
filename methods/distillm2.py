"""DistiLLM-2: a contrastive loss over two responses per training prompt, both generated once
before training: the teacher's y_t (stage teacher_samples) and the student's own y_s, sampled
from the student this method starts from (stage student_samples).

    L = (2 − β) · token mean over y_t of KL(p ‖ α p + (1−α) q)            skew forward KL: pulls q up to p
      +      β  · token mean over y_s of KL(q ‖ α sg(q) + (1−α) p)        skew reverse KL: pushes q down where q > p

sg: stop-gradient, as in the reference (`distillm_trainer.py`, `get_batch_logps`: the mixture's
student share is detached in the reverse term only). α = 0.1 for both terms (`base_alpha_1`,
`base_alpha_2`), β = 1 (`kd_loss`, "distillm_v2"); `gradual_beta` raises β from 1 to 1.5 over
the first half of training, an option the reference has and leaves off (as it leaves off its
adaptive α, `update_alpha`, not implemented here). No temperature and no cross-entropy term in
the reference: τ = 1 and kd_ratio 1 (the schedule sets it). The student starts fine-tuned on the
training split (`starts_from = "sft"`; the reference's README recommends that SFT step).

`train_on = "pairs"`: every batch holds, for its prompts, the teacher's responses and the
student's, and the engine passes `from_student` to `loss`, True on the student's tokens. The
reference averages each term per sequence and then over the batch; the suite takes the token
mean of each term over the batch. Constants and sources: docs/protocol.md, "DistiLLM-2".

Reference: Ko et al., DistiLLM-2: A Contrastive Approach Boosts the Distillation of LLMs, ICML 2025
(jongwooko/distillm-2).
"""
import functools

import torch

from kdbench import divergences as D
from kdbench.method import Method as Base, check, check_temperature, check_unit


def skew_reverse_kl_rows(log_q, log_p, *, alpha):
    """KL(q ‖ α sg(q) + (1−α) p) per row: the value of skew reverse KL, with the student's share
    of the mixture held constant in the gradient."""
    return D.kl_rows(log_q, D.log_mixture(log_q.detach(), log_p, alpha))


def student_weight(beta: float, gradual: bool, fraction: float) -> float:
    """β at `fraction` of training: constant, or (gradual) 1 + 0.5 · min(1, 2 · fraction)."""
    return 1.0 + 0.5 * min(1.0, 2.0 * fraction) if gradual else beta


class Method(Base):
    train_on = "pairs"
    starts_from = "sft"  # its README fine-tunes the student before distilling (docs/protocol.md)
    references = ["Ko et al., DistiLLM-2: A Contrastive Approach Boosts the Distillation of LLMs, ICML 2025"]

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, gradual_beta: bool = False,
                 temperature: float = 1.0):
        self.alpha = check_unit("alpha", alpha)
        check(isinstance(beta, (int, float)) and 0.0 <= beta <= 2.0, "beta", beta, "in [0, 2]")
        check(isinstance(gradual_beta, bool), "gradual_beta", gradual_beta, "true or false")
        self.beta, self.gradual_beta = float(beta), gradual_beta
        self.temperature = check_temperature(temperature)

    def schedule(self, progress):
        return {"kd_ratio": 1.0, "student_weight": student_weight(self.beta, self.gradual_beta, progress.fraction)}

    def loss(self, student_logits, teacher_logits, mask, progress, from_student=None):
        """`from_student` (mask's shape, bool): True on the tokens of the student's responses;
        None: every token is the teacher's response."""
        own = torch.zeros_like(mask) if from_student is None else from_student.to(mask.device)
        beta = progress.values["student_weight"]
        pull = D.skew_forward_kl(student_logits, teacher_logits, mask & ~own, alpha=self.alpha,
                                 temperature=self.temperature)
        push = D.token_mean(functools.partial(skew_reverse_kl_rows, alpha=self.alpha), student_logits,
                            teacher_logits, mask & own, temperature=self.temperature)
        return (2.0 - beta) * pull + beta * push
