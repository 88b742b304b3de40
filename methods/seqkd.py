"""SeqKD: sequence-level KD, i.e. SFT on the teacher's own sampled answers.

    L = CE(student, y),  y ~ teacher(· | prompt)          (kd_ratio = 0)

`train_on = "teacher_samples"` tells the DAG to sample the teacher's answers to the training
prompts once and train on them instead of the references; the teacher is not needed during
training. As for SFT, the distillation term is empty: `loss` returns a zero connected to the
student logits and `schedule` sets kd_ratio = 0.
Reference: Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016.
"""
from kdbench import divergences as D
from kdbench.method import Method as Base


class Method(Base):
    needs_teacher = False
    train_on = "teacher_samples"
    references = ["Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016"]

    def schedule(self, progress):
        return {"kd_ratio": 0.0}

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.zero(student_logits)
