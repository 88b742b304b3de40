"""JSD: generalized Jensen-Shannon divergence (GKD; TRL's `generalized_jsd_loss`).

    m = β p + (1−β) q,   L = τ² · token mean of [β KL(p ‖ m) + (1−β) KL(q ‖ m)],  β ∈ (0, 1)

Default β = 0.1, the "JS" baseline of DistiLLM and TAID. The value tends to 0 at both ends of
β (TRL special-cases the endpoints as forward / reverse KL; here they are rejected).
Reference: Agarwal et al., On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes (GKD), ICLR 2024.
"""
from kdbench import divergences as D
from kdbench.method import Method as Base, check_temperature, check_unit


class Method(Base):
    references = ["Agarwal et al., On-Policy Distillation of Language Models: Learning from "
                  "Self-Generated Mistakes, ICLR 2024"]

    def __init__(self, beta: float = 0.1, temperature: float = 1.0):
        self.beta = check_unit("beta", beta, open_ends=True)
        self.temperature = check_temperature(temperature)

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.jensen_shannon(student_logits, teacher_logits, mask, beta=self.beta,
                                temperature=self.temperature)
