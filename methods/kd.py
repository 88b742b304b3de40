"""KD: forward KL between the teacher's and the student's next-token distributions.

    L = τ² · token mean of KL(p ‖ q),  p = softmax(z_T / τ), q = softmax(z_S / τ)

Reported as the true KL (public code often returns the cross-entropy −Σ p log q: same
gradient, a different value).

`data_fraction` < 1 is the budget-matched control of the curriculum methods: every epoch
trains on a fresh random `data_fraction` of the training set (drawn from the run's seed and
the epoch), so the run takes that fraction of the optimizer steps, with the learning-rate
schedule spread over them, and no difficulty information. `cpd` with its defaults sees 0.8
of the data (`kdbench.curriculum.data_fraction`), hence the `kd_budget_matched` ablation row.
References: Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, NIPS Deep
Learning Workshop 2014 (arXiv:1503.02531); word-level KD for sequence models: Kim & Rush,
EMNLP 2016.
"""
from kdbench import curriculum as C
from kdbench import divergences as D
from kdbench.method import Method as Base, check, check_temperature


class Method(Base):
    references = [
        "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, "
        "NIPS Deep Learning Workshop 2014 (arXiv:1503.02531)",
        "Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016 (word-level KD)",
    ]

    def __init__(self, temperature: float = 1.0, data_fraction: float = 1.0):
        self.temperature = check_temperature(temperature)
        check(0.0 < data_fraction <= 1.0, "data_fraction", data_fraction, "in (0, 1]")
        self.data_fraction = float(data_fraction)

    def epoch_indices(self, epoch, ctx):
        """All data (None: the engine shuffles it), or a fresh random subset of the epoch."""
        if self.data_fraction == 1.0:
            return None
        return C.random_subset(ctx.n_examples, self.data_fraction, ctx.seed, epoch)

    def loss(self, student_logits, teacher_logits, mask, progress):
        return D.forward_kl(student_logits, teacher_logits, mask, temperature=self.temperature)
