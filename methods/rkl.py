"""RKL: reverse KL, the student's distribution against the teacher's (mode seeking).

    L = τ² · token mean of KL(q ‖ p),  p = softmax(z_T / τ), q = softmax(z_S / τ)

References: Gu et al., MiniLLM: Knowledge Distillation of Large Language Models, ICLR 2024
(reverse KL for LLM distillation); the token-level RKL baseline of Ko et al., DistiLLM, ICML 2024.
"""
from kdbench import divergences as D
from kdbench.method import Method as Base, check_temperature


class Method(Base):
    references = [
        "Gu et al., MiniLLM: Knowledge Distillation of Large Language Models, ICLR 2024",
        "Ko et al., DistiLLM: Towards Streamlined Distillation for Large Language Models, "
        "ICML 2024 (token-level RKL baseline)",
    ]

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_temperature(temperature)

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.reverse_kl(student_logits, teacher_logits, mask, temperature=self.temperature)
