"""SKL: skew forward KL (DistiLLM), the teacher against a teacher-student mixture.

    L = τ² · token mean of KL(p ‖ α p + (1−α) q),  α ∈ [0, 1], default 0.1

The mixture keeps the loss and its gradient bounded where the student puts little mass;
α = 0 is forward KL, α = 1 gives 0.
Reference: Ko et al., DistiLLM: Towards Streamlined Distillation for Large Language Models,
ICML 2024.
"""
from kdbench import divergences as D
from kdbench.method import Method as Base, check_temperature, check_unit


class Method(Base):
    references = ["Ko et al., DistiLLM: Towards Streamlined Distillation for Large Language "
                  "Models, ICML 2024"]

    def __init__(self, alpha: float = 0.1, temperature: float = 1.0):
        self.alpha = check_unit("alpha", alpha)
        self.temperature = check_temperature(temperature)

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.skew_forward_kl(student_logits, teacher_logits, mask, alpha=self.alpha,
                                 temperature=self.temperature)
