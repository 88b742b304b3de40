"""Curriculum KD: CPD's uniform-difficulty subsets with plain forward KL (no target schedule)."""
from __future__ import annotations

import numpy as np

from kdbench import curriculum as C
from kdbench import divergences as D
from kdbench.method import EpochContext, Method as Base, Progress, check, check_choice, check_temperature


class Method(Base):
    r"""Forward KL, τ² · KL(p ‖ q) at a fixed temperature, on CPD's curriculum.

    Epoch e trains on the shortest easiest-first prefix whose mean difficulty reaches
    μ_e = μ_start + e/(E−1)·(μ_all − μ_start) (`kdbench.curriculum.uniform_difficulty_subsets`),
    shuffled within the epoch; `scale` and `start_fraction` as in `cpd` (same defaults, so
    the same subsets: (1 + start_fraction)/2 of the data on the percentile scale). Nothing
    else changes over training. Read beside `kd` (same loss, all data) and `cpd` (same curriculum, scheduled mixed target), it separates what
    the curriculum brings from what the target schedule brings.
    """

    references = ["Zhang & Liu, Calibrated Progressive Distillation, Findings of ACL 2026 "
                  "(curriculum only)", "Hinton et al., Distilling the Knowledge in a Neural Network, 2015"]
    uses_difficulty = True

    def __init__(self, temperature: float = 1.0, start_fraction: float = 0.6,
                 scale: str = "percentile", order: str = "easy_first", shuffle: bool = True):
        check_choice("order", order, C.ORDERS)
        check_choice("scale", scale, C.SCALES)
        check(0.0 < start_fraction <= 1.0, "start_fraction", start_fraction, "in (0, 1]")
        self.temperature, self.start_fraction = check_temperature(temperature), float(start_fraction)
        self.scale = scale
        self.order, self.shuffle = order, shuffle

    def epoch_indices(self, epoch: int, ctx: EpochContext) -> np.ndarray:
        d = C.check_difficulty(ctx.difficulty, ctx.n_examples, "curriculum_kd")
        subsets = C.build_subsets(d, ctx.n_epochs, curriculum="uniform", order=self.order,
                                  seed=ctx.seed, start_fraction=self.start_fraction,
                                  scale=self.scale)
        return C.epoch_order(subsets[epoch], ctx.seed, epoch, self.shuffle)

    def schedule(self, progress: Progress) -> dict[str, float]:
        return {"temperature": self.temperature}

    def loss(self, student_logits, teacher_logits, mask, progress: Progress):
        return D.forward_kl(student_logits, teacher_logits, mask, temperature=self.temperature)
