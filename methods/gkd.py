"""GKD: on-policy distillation with the generalised Jensen-Shannon divergence.

With probability λ per optimizer step the batch is replaced by the student's own samples for
the same prompts (kdbench/onpolicy.py); the loss on either kind of batch is

    m = β p + (1−β) q,   L = τ² · token mean of [β KL(p ‖ m) + (1−β) KL(q ‖ m)]

with TRL's endpoints β = 0: forward KL(p ‖ q), β = 1: reverse KL(q ‖ p). The defaults are
the GKD baseline of the instruction-KD tables (DistiLLM's `scripts/gpt2/gkd/gkd_base.sh`:
`--type mixed-jsd --mixed-alpha 0.5`, i.e. `js_distance` with the student weighted 0.9 in the
mixture, β = 0.1, on a λ = 0.5 share of student samples), started, as there, from the
student fine-tuned on the training split (`starts_from = "sft"`). TRL's GKDConfig default
β = 0.5 is the variant `beta-0.5`. λ = 0 is purely off-policy (the references), λ = 1 purely
on-policy. The suite samples with the protocol's settings (temperature 1, at most
evaluation.max_new_tokens unless `max_new_tokens` is set; TRL: 0.9 and 128). Constants and
sources: docs/protocol.md.

Reference: Agarwal et al., On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes, ICLR 2024; TRL's GKDTrainer; DistiLLM's GKD baseline.
"""
from kdbench import divergences as D
from kdbench.method import Method as Base, check, check_temperature, check_unit


class Method(Base):
    train_on = "mixed"
    starts_from = "sft"  # its scripts start from the init checkpoint (docs/protocol.md)
    references = ["Agarwal et al., On-Policy Distillation of Language Models: Learning from "
                  "Self-Generated Mistakes, ICLR 2024", "TRL GKDTrainer / GKDConfig"]

    def __init__(self, lmbda: float = 0.5, beta: float = 0.1, temperature: float = 1.0,
                 max_new_tokens: int | None = None):
        self.lmbda = check_unit("lmbda", lmbda)
        self.beta = check_unit("beta", beta)
        self.temperature = check_temperature(temperature)
        check(max_new_tokens is None or (isinstance(max_new_tokens, int) and max_new_tokens >= 1),
              "max_new_tokens", max_new_tokens, "a positive integer or null")
        self.max_new_tokens = max_new_tokens

    def schedule(self, progress):
        return {"on_policy": self.lmbda}

    def loss(self, student_logits, teacher_logits, mask, progress):
        if self.beta == 0.0:
            return D.forward_kl(student_logits, teacher_logits, mask, temperature=self.temperature)
        if self.beta == 1.0:
            return D.reverse_kl(student_logits, teacher_logits, mask, temperature=self.temperature)
        return D.jensen_shannon(student_logits, teacher_logits, mask, beta=self.beta,
                                temperature=self.temperature)
