"""POCL — progressive-overload curriculum KD (Liu & Zhang, arXiv 2506.05695) over a base divergence."""
from __future__ import annotations

import numpy as np

from kdbench import curriculum as C
from kdbench import divergences as D
from kdbench.method import (EpochContext, Method as Base, Progress, check, check_choice,
                            check_temperature, check_unit)


class Method(Base):
    r"""POCL: the "baby step" curriculum over a base divergence (KD + POCL by default).

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
        loss       = τ_s² · base(p, q)   (token mean; forward KL by default); the engine forms
                     (1 − kd_ratio_s)·CE + kd_ratio_s·loss

    (The released scripts write 1.33 and 1.67, i.e. 4/3 and 5/3 rounded; n = 1 uses the end
    values.)

    ``restart=True`` (the published recipe; default): every stage is its own training run, as
    in POCL's per-stage scripts: a fresh optimizer and a fresh warm-up + cosine learning-rate
    schedule over the stage's steps, starting from the previous stage's best epoch by
    validation Rouge-L (`Method.restarts`, `kdbench.train`); the run's final weights are
    then chosen among the last stage's epochs. ``restart=False`` trains one continuous run
    (one schedule, each stage continuing from the last weights).

    ``base`` is the divergence under the curriculum ("KD + POCL", "SRKL + POCL", ...): kd
    (forward KL, default), rkl, skl, srkl (skew α = ``alpha``, 0.1 as in DistiLLM), jsd
    (β = ``alpha``), tvd; each with the stage's temperature, the τ² convention, token mean.

    The published budget is 8 epochs per stage (32 in all) at lr 1e-4: a profile gives it
    with a per-method budget, ``training.methods.pocl: {epochs: 32, lr: 1.0e-4}``
    (config/paper-gpt2.yaml); the stages split whatever number of epochs the run has.
    """

    references = ["Liu & Zhang, Being Strong Progressively! (POCL), arXiv 2506.05695",
                  "Ko et al., DistiLLM (skew KL), ICML 2024"]
    uses_difficulty = True

    def __init__(self, n_stages: int = 4, tau_start: float = 1.0, tau_end: float = 2.0,
                 kd_ratio_start: float = 0.7, kd_ratio_end: float = 1.0, shuffle: bool = True,
                 restart: bool = True, base: str = "kd", alpha: float = 0.1):
        check(int(n_stages) == n_stages and n_stages >= 1, "n_stages", n_stages, "a positive integer")
        check_temperature(tau_start, "tau_start")
        check_temperature(tau_end, "tau_end")
        check_unit("kd_ratio_start", kd_ratio_start)
        check_unit("kd_ratio_end", kd_ratio_end)
        self.n_stages = int(n_stages)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.kd_ratio_start, self.kd_ratio_end = float(kd_ratio_start), float(kd_ratio_end)
        check_choice("base", base, tuple(BASES))
        check_unit("alpha", alpha, open_ends=True)
        self.shuffle, self.restart, self.base, self.alpha = shuffle, bool(restart), base, float(alpha)

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

    def restarts(self, n_epochs: int) -> list[int]:
        """The first epoch of every stage after the first (none with restart=False)."""
        if not self.restart:
            return []
        stages = [C.stage_of_epoch(e, n_epochs, self.n_stages) for e in range(n_epochs)]
        return [e for e in range(1, n_epochs) if stages[e] != stages[e - 1]]

    def loss(self, student_logits, teacher_logits, mask, progress: Progress):
        # this step's schedule (the engine runs it before every loss)
        fn, skewed = BASES[self.base]
        kw = {skewed: self.alpha} if skewed else {}
        return fn(student_logits, teacher_logits, mask, temperature=progress.values["temperature"], **kw)


#: base loss -> (divergence, name of its skew/β argument or None)
BASES = {"kd": (D.forward_kl, None), "rkl": (D.reverse_kl, None),
         "skl": (D.skew_forward_kl, "alpha"), "srkl": (D.skew_reverse_kl, "alpha"),
         "jsd": (D.jensen_shannon, "beta"), "tvd": (D.total_variation, None)}
