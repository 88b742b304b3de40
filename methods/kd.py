"""KD: forward KL between the teacher's and the student's next-token distributions.

    L = τ² · token mean of KL(p ‖ q),  p = softmax(z_T / τ), q = softmax(z_S / τ)

Reported as the true KL (public code often returns the cross-entropy −Σ p log q: same
gradient, a different value).
References: Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, NIPS Deep
Learning Workshop 2014 (arXiv:1503.02531); word-level KD for sequence models: Kim & Rush,
EMNLP 2016.
"""
from kdbench import divergences as D
from kdbench.method import Method as Base, check_temperature


class Method(Base):
    references = [
        "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, "
        "NIPS Deep Learning Workshop 2014 (arXiv:1503.02531)",
        "Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016 (word-level KD)",
    ]

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_temperature(temperature)

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.forward_kl(student_logits, teacher_logits, mask, temperature=self.temperature)
