"""SeqKD: sequence-level KD as the instruction-KD papers run it: word-level KD on the teacher's
own sampled answers, with the teacher loaded.

    L = (1 − kd_ratio) · CE(student, y) + kd_ratio · τ² · token mean of KL(p ‖ q),
    y ~ teacher(· | prompt),  p, q the teacher's and student's distributions along y

`train_on = "teacher_samples"` tells the DAG to sample the teacher's answers to the training
prompts once (stage teacher_samples) and to train on them instead of the references. The
teacher's logits must then be those of the sampled sequences, not of the references, so the
engine computes them online for this method even where `distill.cache_teacher` is on (the
cache holds the reference sequences only).
kd_ratio: None follows `distill.kd_ratio`, which matches every reference, where SeqKD shares
the KD baseline's value (1.0 in DistiLLM's and POCL's scripts, the paper profiles' value; 0.5
in MiniLLM's, the variant {kd_ratio: 0.5}). kd_ratio = 0 is the textbook SeqKD of Kim & Rush
(SFT on teacher samples). docs/protocol.md lists both settings.
References: Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016; the SeqKD baseline
of MiniLLM (Gu et al., ICLR 2024), DistiLLM (Ko et al., ICML 2024) and POCL (Liu & Zhang, 2025).
"""
from kdbench import divergences as D
from kdbench.method import Method as Base, check_temperature, check_unit


class Method(Base):
    train_on = "teacher_samples"
    references = ["Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016",
                  "Gu et al., MiniLLM: Knowledge Distillation of Large Language Models, ICLR 2024 "
                  "(SeqKD baseline: KD loss on teacher samples)"]

    def __init__(self, kd_ratio: float | None = None, temperature: float = 1.0):
        self.kd_ratio = None if kd_ratio is None else check_unit("kd_ratio", kd_ratio)
        self.temperature = check_temperature(temperature)

    def schedule(self, progress):
        return {} if self.kd_ratio is None else {"kd_ratio": self.kd_ratio}

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.forward_kl(student_logits, teacher_logits, mask, temperature=self.temperature)
