"""SFT: supervised fine-tuning of the student on the reference answers; no distillation.

    L = CE(student, reference)            (the engine's total loss with kd_ratio = 0)

The engine owns the cross-entropy and uses kd_ratio = 0 for this method (also returned by
`schedule`), so `loss`, the distillation term, is never needed; it returns a float32 zero
connected to the student logits so that a generic caller can still backpropagate through it.
Reference: the SFT baseline of MiniLLM (Gu et al., ICLR 2024) and DistiLLM (Ko et al., ICML 2024).
"""
from kdbench import divergences as D
from kdbench.method import Method as Base


class Method(Base):
    needs_teacher = False
    references = ["Gu et al., MiniLLM: Knowledge Distillation of Large Language Models, ICLR 2024 "
                  "(SFT baseline)"]

    def schedule(self, progress):
        return {"kd_ratio": 0.0}

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.zero(student_logits)
