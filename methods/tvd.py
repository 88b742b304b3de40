"""TVD: total variation distance between the teacher's and the student's distributions.

    L = τ² · token mean of ½ Σ_v |p_v − q_v|

Reference: Wen et al., f-Divergence Minimization for Sequence-Level Knowledge Distillation,
ACL 2023 (TVD as a distillation objective).
"""
from kdbench import divergences as D
from kdbench.method import Method as Base, check_temperature


class Method(Base):
    references = ["Wen, Li, Du & Mou, f-Divergence Minimization for Sequence-Level Knowledge "
                  "Distillation, ACL 2023"]

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_temperature(temperature)

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.total_variation(student_logits, teacher_logits, mask,
                                 temperature=self.temperature)
