"""CPD — Calibrated Progressive Distillation (Zhang & Liu, Findings of ACL 2026), our reading."""
from __future__ import annotations

import numpy as np

from kdbench import curriculum as C
from kdbench import divergences as D
from kdbench.method import EpochContext, Method as Base, Progress, check, check_choice, check_temperature

GRANULARITIES = ("epoch", "step")


class Method(Base):
    r"""Calibrated Progressive Distillation: a difficulty curriculum and a distillation target
    that move together.

    What the paper states (abstract only; the full algorithm is not available to us):
    a difficulty profile selects an epoch-specific subset whose average difficulty rises
    uniformly from epoch to epoch; the target's mixing coefficient and the temperature move
    in step with that progression, from teacher-dominated to student-informed supervision;
    gradients are bounded; early epochs on subsets save runtime. Everything below the
    abstract is *our* choice (REFERENCES.md), each one a parameter exercised by an ablation.

    Curriculum (``curriculum="uniform"``, `kdbench.curriculum.uniform_difficulty_subsets`):
    with π_e = e/(E−1), epoch e trains on the shortest easiest-first prefix whose mean
    difficulty reaches μ_e = μ_start + π_e·(μ_all − μ_start), μ_start being the mean of the
    easiest ``start_fraction`` and μ_all the mean of all; the last epoch sees everything.
    ``curriculum="stages"`` uses POCL's cumulative stages instead; ``"none"`` trains on all
    data every epoch. ``order`` = "hard_first" builds the same subsets from −d (anti-
    curriculum), "shuffled" from a seeded permutation of d (same sizes, no information).
    Within an epoch the subset is shuffled (seed, epoch); ``shuffle=False`` keeps it sorted.

    Target (per token, p = softmax(z_T/τ), q = softmax(z_S/τ), mean over masked tokens):

        L = τ² · KL(p ‖ α·p + (1−α)·q)            (skew forward KL; α = teacher weight)
        α(π) = alpha_start + π·(alpha_end − alpha_start)      0.9 → 0.1
        τ(π) = tau_start   + π·(tau_end   − tau_start)        1.0 → 2.0

    α near 1 makes the target almost the teacher alone (KL(p‖m) → 0 with a small, safe
    gradient); α near 0 is plain forward KL. π is the curriculum progress:
    ``granularity="epoch"``: π = e/(E−1) (constant within an epoch; 0 when E = 1);
    ``granularity="step"``: π = (e + epoch_step/epoch_steps)/max(1, E−1), clipped to [0, 1],
    so it reaches each epoch's value at that epoch's first step and stays at 1 during the
    last epoch. With ``curriculum="none"`` there is no data progression to follow, and π is
    the run's step fraction, progress.fraction.

    Bounded gradients. With m = α p + (1−α) q and r_v = p_v q_v / m_v (the weighted harmonic
    mean of q_v and p_v, so r_v ≤ α q_v + (1−α) p_v and Σ_v r_v ≤ 1), the per-token gradient
    with respect to the student logits is

        ∂L/∂z_j = −τ (1−α) (r_j − q_j Σ_v r_v),   hence |∂L/∂z_j| ≤ τ (1−α),

    against τ|q_j − p_j| ≤ τ for forward KL (the α = 0 case). With respect to the student
    probabilities, forward KL's −τ² p_v/q_v is unbounded as q_v → 0 where the teacher has
    mass, while the skew's −τ²(1−α) p_v/m_v ≤ τ²(1−α)/α because m_v ≥ α p_v. When the student
    is confidently wrong (q_v ≈ 0 on the teacher's token) the skew loss saturates at
    τ² log(1/α) and its logit gradient vanishes instead of pushing at full strength.

    Ablations (all through parameters): full (defaults); no curriculum (curriculum="none");
    no mixing schedule (alpha_start=0.1, α fixed at alpha_end); no temperature schedule
    (tau_end=1.0, τ fixed at 1); POCL stages (curriculum="stages"); shuffled difficulty
    (order="shuffled"); hardest first (order="hard_first").
    """

    references = ["Zhang & Liu, Calibrated Progressive Distillation, Findings of ACL 2026",
                  "Ko et al., DistiLLM (skew KL), ICML 2024",
                  "Liu & Zhang, POCL, arXiv 2506.05695"]
    uses_difficulty = True

    def __init__(self, alpha_start: float = 0.9, alpha_end: float = 0.1,
                 tau_start: float = 1.0, tau_end: float = 2.0,
                 granularity: str = "epoch", curriculum: str = "uniform",
                 order: str = "easy_first", start_fraction: float = 0.2,
                 n_stages: int = 4, shuffle: bool = True):
        for name, a in (("alpha_start", alpha_start), ("alpha_end", alpha_end)):
            check(0.0 <= a < 1.0, name, a, "in [0, 1) (α = 1 makes the skew loss zero)")
        check_temperature(tau_start, "tau_start")
        check_temperature(tau_end, "tau_end")
        check_choice("granularity", granularity, GRANULARITIES)
        check_choice("curriculum", curriculum, C.CURRICULA)
        check_choice("order", order, C.ORDERS)
        check(0.0 < start_fraction <= 1.0, "start_fraction", start_fraction, "in (0, 1]")
        check(int(n_stages) == n_stages and n_stages >= 1, "n_stages", n_stages, "a positive integer")
        self.alpha_start, self.alpha_end = float(alpha_start), float(alpha_end)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.granularity, self.curriculum, self.order = granularity, curriculum, order
        self.start_fraction, self.n_stages, self.shuffle = float(start_fraction), int(n_stages), shuffle
        # Without a curriculum the DAG need not score difficulty for this variant.
        self.uses_difficulty = curriculum != "none"

    # -- curriculum --------------------------------------------------------------------

    def epoch_indices(self, epoch: int, ctx: EpochContext) -> np.ndarray | None:
        """This epoch's examples (shuffled within the epoch), or None for curriculum="none"."""
        if self.curriculum == "none":
            return None
        d = C.check_difficulty(ctx.difficulty, ctx.n_examples, "cpd")
        subsets = C.build_subsets(d, ctx.n_epochs, curriculum=self.curriculum, order=self.order,
                                  seed=ctx.seed, start_fraction=self.start_fraction,
                                  n_stages=self.n_stages)
        return C.epoch_order(subsets[epoch], ctx.seed, epoch, self.shuffle)

    # -- schedule ----------------------------------------------------------------------

    def curriculum_progress(self, progress: Progress) -> float:
        """π in [0, 1] for this step (see the class docstring)."""
        if self.curriculum == "none":
            return float(progress.fraction)
        if self.granularity == "epoch":
            return float(progress.epoch_fraction)
        within = progress.epoch_step / max(1, progress.epoch_steps)
        pi = (progress.epoch + within) / max(1, progress.n_epochs - 1)
        return float(min(1.0, max(0.0, pi)))

    def schedule(self, progress: Progress) -> dict[str, float]:
        pi = self.curriculum_progress(progress)
        return {"alpha": self.alpha_start + pi * (self.alpha_end - self.alpha_start),
                "temperature": self.tau_start + pi * (self.tau_end - self.tau_start),
                "curriculum_progress": pi}

    # -- loss --------------------------------------------------------------------------

    def loss(self, student_logits, teacher_logits, mask, progress: Progress):
        v = progress.values  # this step's schedule (the engine runs it before every loss)
        return D.skew_forward_kl(student_logits, teacher_logits, mask,
                                 alpha=float(v["alpha"]), temperature=float(v["temperature"]))
