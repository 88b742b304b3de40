"""POCL — progressive-overload curriculum KD (Liu & Zhang, arXiv 2506.05695), forward KL."""
from __future__ import annotations

import numpy as np

from kdbench import curriculum as C
from kdbench import divergences as D
from kdbench.method import EpochContext, Method as Base, Progress, check, check_temperature, check_unit


class Method(Base):
    r"""KD + POCL: forward KL under the "baby step" curriculum.

    Data: ``n_stages`` cumulative stages with the easiest ceil(s·N/n) examples, s = 1..n
    (25/50/75/100 % for n = 4), ranked easiest first by the difficulty profile (POCL's
    reciprocal-rank fusion of the initial student's Rouge-L and NLL, computed by the DAG's
    score_difficulty rule). The run's E epochs are spread evenly over the stages
    (stage = floor(e·n/E); POCL itself runs 8 epochs per stage); when E < n the stages are
    compressed so the first epoch is the easiest stage and the last the full data
    (`kdbench.curriculum.stage_of_epoch`). Within an epoch the subset is shuffled.

    Per stage s (0-based), linear from start to end over the stages:

        τ_s        = tau_start      + s/(n−1)·(tau_end − tau_start)            1, 1.33, 1.67, 2
        kd_ratio_s = kd_ratio_start + s/(n−1)·(kd_ratio_end − kd_ratio_start)  0.7, 0.8, 0.9, 1.0
        loss       = τ_s² · KL(p ‖ q)   (token mean); the engine forms
                     (1 − kd_ratio_s)·CE + kd_ratio_s·loss

    (The released scripts write 1.33 and 1.67, i.e. 4/3 and 5/3 rounded; n = 1 uses the end
    values.) Not implemented: POCL restarts each stage from the previous stage's *best*
    checkpoint (selected on validation) and resets the learning-rate schedule per stage; our
    engine trains one continuous run, so each stage continues from the last weights. POCL
    also plugs into other base losses (e.g. SRKL + POCL); this file is the forward-KL one.
    """

    references = ["Liu & Zhang, Being Strong Progressively! (POCL), arXiv 2506.05695"]
    uses_difficulty = True

    def __init__(self, n_stages: int = 4, tau_start: float = 1.0, tau_end: float = 2.0,
                 kd_ratio_start: float = 0.7, kd_ratio_end: float = 1.0, shuffle: bool = True):
        check(int(n_stages) == n_stages and n_stages >= 1, "n_stages", n_stages, "a positive integer")
        check_temperature(tau_start, "tau_start")
        check_temperature(tau_end, "tau_end")
        check_unit("kd_ratio_start", kd_ratio_start)
        check_unit("kd_ratio_end", kd_ratio_end)
        self.n_stages = int(n_stages)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.kd_ratio_start, self.kd_ratio_end = float(kd_ratio_start), float(kd_ratio_end)
        self.shuffle = shuffle

    def epoch_indices(self, epoch: int, ctx: EpochContext) -> np.ndarray:
        d = C.check_difficulty(ctx.difficulty, ctx.n_examples, "pocl")
        subsets = C.stage_subsets(d, ctx.n_epochs, self.n_stages)
        return C.epoch_order(subsets[epoch], ctx.seed, epoch, self.shuffle)

    def stage_values(self, stage: int) -> dict[str, float]:
        """Temperature and kd_ratio of a stage (0-based)."""
        f = stage / (self.n_stages - 1) if self.n_stages > 1 else 1.0
        return {"temperature": self.tau_start + f * (self.tau_end - self.tau_start),
                "kd_ratio": self.kd_ratio_start + f * (self.kd_ratio_end - self.kd_ratio_start),
                "stage": float(stage)}

    def schedule(self, progress: Progress) -> dict[str, float]:
        return self.stage_values(C.stage_of_epoch(progress.epoch, progress.n_epochs, self.n_stages))

    def loss(self, student_logits, teacher_logits, mask, progress: Progress):
        # this step's schedule (the engine runs it before every loss)
        return D.forward_kl(student_logits, teacher_logits, mask, temperature=progress.values["temperature"])
