"""Data curricula over a per-example difficulty profile (pure numpy, deterministic).

A difficulty profile is a float array d of shape (N,), one value per training example,
higher is harder (see the DAG's `score_difficulty` rule). Every function here works on
ranks or prefix means of d sorted easiest first; ties are broken by example index (stable
sort), so the same input always gives the same output.

Two curricula, both cumulative (an epoch's subset contains every easier example):

* `uniform_difficulty_subsets` — CPD's reading (methods/cpd.py): over E epochs with progress
  π_e = e/(E−1), the epoch's subset is the shortest easiest-first prefix whose mean
  difficulty reaches μ_e = μ_start + π_e·(μ_all − μ_start); μ_start is the mean of the
  easiest `start_fraction`, μ_all the mean of all. Equal steps in mean difficulty, not in
  size: the sizes follow the shape of the difficulty distribution.
* `stage_subsets` — POCL's "baby step": n cumulative stages with the easiest 1/n, 2/n, …, n/n
  of the data, the run's epochs spread evenly over the stages.

`order_profile` turns a profile into the one a curriculum is built from: as is
("easy_first"), negated ("hard_first", an anti-curriculum) or permuted with a seed
("shuffled", a control with the same subset sizes but no difficulty information).

Scale. The uniform rule averages difficulty values, so it depends on their scale (stages
only use ranks). `scale="raw"` uses d as scored; `scale="percentile"` first replaces d by its
rank percentile in [0, 1] (`percentile`). On the percentile scale the prefix mean of the
easiest k examples is (k−1)/(2(N−1)), so the subset size grows linearly from the start
fraction f₀ to all data and the fraction of example-epochs seen over E ≥ 2 epochs is
(1 + f₀)/2 whatever the data (`data_fraction`); on the raw scale it follows the shape of
the scorer's distribution (a convex one such as a rescaled rank fusion gives small early
subsets).

Returned index arrays are int64 and easiest first. Nothing here plots or writes: the training
engine logs each epoch's subset size and mean difficulty (a run's epochs.csv).
"""
from __future__ import annotations

import math

import numpy as np

from kdbench.errors import UserError

ORDERS = ("easy_first", "hard_first", "shuffled")
CURRICULA = ("uniform", "stages", "none")
SCALES = ("percentile", "raw")

# Tolerance on prefix means, in units of the profile's range (max − min). Prefix means are
# computed on the profile rescaled to [0, 1], so round-off is ~N·1e-16 there; 1e-9 absorbs it
# without ever merging two prefixes that differ by a representable amount of difficulty.
_TOL = 1e-9


# --- validation ------------------------------------------------------------------------

def as_profile(difficulty) -> np.ndarray:
    """`difficulty` as a float64 array (N,); UserError if it is empty, not 1-D or not finite."""
    d = np.asarray(difficulty, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise UserError(f"the difficulty profile must be a non-empty 1-D array (got shape "
                        f"{d.shape}); rerun the score_difficulty rule.")
    if not np.all(np.isfinite(d)):
        raise UserError(f"the difficulty profile has {int((~np.isfinite(d)).sum())} non-finite "
                        "value(s); rerun the score_difficulty rule or fix the scorer.")
    return d


def check_difficulty(difficulty, n_examples: int, method: str = "this method") -> np.ndarray:
    """The profile an `epoch_indices` hook received, validated against the training set.

    Raises UserError when it is missing (the DAG did not score difficulty) or its length is
    not the number of training examples.
    """
    if difficulty is None:
        raise UserError(f"method {method!r} needs the per-example difficulty profile, but none "
                        "was given; run the DAG's score_difficulty rule first (it runs for every "
                        "method with uses_difficulty = True), or choose a variant without a "
                        "curriculum.")
    d = as_profile(difficulty)
    if d.size != n_examples:
        raise UserError(f"the difficulty profile has {d.size} entries but the training set has "
                        f"{n_examples} examples; rerun score_difficulty for this training set.")
    return d


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise UserError(f"unknown difficulty scale {scale!r}; choose one of {', '.join(SCALES)}.")
    return scale


def _check_epochs(n_epochs) -> int:
    if int(n_epochs) != n_epochs or n_epochs < 1:
        raise UserError(f"n_epochs must be a positive integer (got {n_epochs!r}).")
    return int(n_epochs)


def _check_fraction(start_fraction) -> float:
    if not (0.0 < float(start_fraction) <= 1.0):
        raise UserError(f"start_fraction must be in (0, 1] (got {start_fraction!r}).")
    return float(start_fraction)


# --- orderings -------------------------------------------------------------------------

def easy_first(difficulty) -> np.ndarray:
    """Example indices sorted by difficulty, easiest first, ties by index (int64, (N,))."""
    return np.argsort(as_profile(difficulty), kind="stable").astype(np.int64)


def order_profile(difficulty, how: str = "easy_first", seed: int = 0) -> np.ndarray:
    """The profile a curriculum is built from, for the ordering `how`.

    easy_first: d itself. hard_first: −d, so "easiest first" means hardest first (the
    anti-curriculum; ties still by index). shuffled: d[perm] for a permutation drawn from
    `seed` — example i is given the difficulty of example perm[i], so the subsets keep the
    sizes and mean-difficulty steps of easy_first but are unrelated to the true difficulty.
    """
    d = as_profile(difficulty)
    if how == "easy_first":
        return d
    if how == "hard_first":
        return -d
    if how == "shuffled":
        perm = np.random.default_rng(int(seed) % 2**32).permutation(d.size)
        return d[perm]
    raise UserError(f"unknown curriculum order {how!r}; choose one of {', '.join(ORDERS)}.")


def percentile(difficulty) -> np.ndarray:
    """Rank percentile of each example in [0, 1], (N,): (rank − 1)/(N − 1), 0 = easiest.

    Ties share their average rank, so equal difficulties stay equal (a constant profile
    stays constant); N = 1 gives 0.
    """
    d = as_profile(difficulty)
    if d.size == 1:
        return np.zeros(1)
    order = np.argsort(d, kind="stable")
    ranks = np.empty(d.size)
    ranks[order] = np.arange(d.size, dtype=np.float64)
    # average the ranks of tied values: group by the sorted value
    sorted_d = d[order]
    starts = np.flatnonzero(np.r_[True, sorted_d[1:] != sorted_d[:-1]])
    ends = np.r_[starts[1:], d.size]
    mean_rank = (starts + ends - 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks / (d.size - 1)


def on_scale(difficulty, scale: str) -> np.ndarray:
    """The profile the uniform rule averages: d itself ("raw") or its `percentile`."""
    return percentile(difficulty) if check_scale(scale) == "percentile" else as_profile(difficulty)


def random_subset(n_examples: int, fraction: float, seed: int, epoch: int) -> np.ndarray:
    """A fresh random `fraction` of range(n_examples) for one epoch, in random order (int64).

    Size `start_count(n_examples, fraction)`; drawn from (seed, epoch) with a stream of its
    own (tag 0xB0), so the budget-matched control sees different examples every epoch.
    """
    k = start_count(n_examples, fraction)
    rng = np.random.default_rng([int(seed) % 2**32, 0xB0, int(epoch)])
    return rng.permutation(n_examples)[:k].astype(np.int64)


def epoch_order(indices: np.ndarray, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order in which an epoch visits its subset: a permutation seeded by (seed, epoch).

    Curricula choose *which* examples an epoch sees; within the epoch they are shuffled like
    ordinary SGD (shuffle=False keeps easiest first). Deterministic for the same arguments;
    the tag 0xC0 gives it a random stream of its own (the engine's default shuffle uses
    [seed, 1]).
    """
    idx = np.asarray(indices, dtype=np.int64)
    if not shuffle:
        return idx
    rng = np.random.default_rng([int(seed) % 2**32, 0xC0, int(epoch)])
    return idx[rng.permutation(idx.size)]


# --- CPD: uniform steps in mean difficulty --------------------------------------------

def epoch_progress(epoch: int, n_epochs: int) -> float:
    """π_e = e/(E−1) for the curriculum; a single epoch counts as the last one (π = 1)."""
    return epoch / (n_epochs - 1) if n_epochs > 1 else 1.0


def start_count(n_examples: int, start_fraction: float) -> int:
    """Size of the easiest `start_fraction`: ceil(f·N), at least 1, at most N.

    A 1e-9 slack keeps float products such as 0.1·30 = 3.0000000000000004 from rounding up.
    """
    f = _check_fraction(start_fraction)
    return int(min(n_examples, max(1, math.ceil(f * n_examples - 1e-9))))


def _normalised_prefix_means(sorted_d: np.ndarray) -> np.ndarray:
    """Means of the first k sorted values, k = 1..N, on the profile rescaled to [0, 1].

    Exactly non-decreasing (round-off removed by a running maximum), so searchsorted works.
    Requires a non-constant profile.
    """
    x = (sorted_d - sorted_d[0]) / (sorted_d[-1] - sorted_d[0])
    means = np.cumsum(x) / np.arange(1, x.size + 1)
    return np.maximum.accumulate(means)


def uniform_difficulty_subsets(difficulty, n_epochs: int,
                               start_fraction: float = 0.2) -> list[np.ndarray]:
    """CPD's epoch subsets: mean difficulty rises in equal steps from μ_start to μ_all.

    difficulty: (N,) floats, higher is harder. Returns E int64 arrays of example indices,
    easiest first; subset e is the shortest easiest-first prefix whose mean difficulty
    reaches μ_e = μ_start + π_e·(μ_all − μ_start) (μ_start: the mean of the easiest
    `start_fraction`; μ_all: the mean of all), and never shorter than the easiest
    `start_fraction`.

    Properties: prefix means of an easiest-first array never decrease, so the size grows
    with μ_e and sizes never shrink; the last epoch holds every example (forced, so float
    round-off cannot leave one out); E = 1 gives all data. Targets are met within 1e-9 of
    the profile's range (the slack that absorbs round-off). The rule is invariant to
    shifting and positively rescaling d.

    Constant difficulty (max == min): every prefix has the target mean, so the literal rule
    would train on the start fraction until the last epoch and then jump to all data, an
    artefact of an arbitrary index order. With no difficulty information there is nothing
    to build a curriculum from, so every epoch gets all data (the method reduces to its
    target schedule).
    """
    d = as_profile(difficulty)
    E = _check_epochs(n_epochs)
    N = d.size
    order = np.argsort(d, kind="stable").astype(np.int64)
    if E == 1 or d[order[-1]] == d[order[0]]:
        return [order.copy() for _ in range(E)]
    n0 = start_count(N, start_fraction)
    means = _normalised_prefix_means(d[order])
    t_start, t_all = means[n0 - 1], means[-1]
    sizes = []
    for e in range(E):
        target = t_start + epoch_progress(e, E) * (t_all - t_start)
        k = int(np.searchsorted(means, target - _TOL, side="left")) + 1
        sizes.append(max(n0, min(N, k)))
    sizes[-1] = N
    sizes = np.maximum.accumulate(sizes)
    return [order[:k].copy() for k in sizes]


# --- POCL: cumulative stages ----------------------------------------------------------

def stage_sizes(n_examples: int, n_stages: int) -> np.ndarray:
    """Sizes of the cumulative stages: ceil(s·N/n) for s = 1..n (int64, (n,)); last is N.

    With fewer examples than stages some stages repeat a size (never 0: at least one).
    """
    if int(n_stages) != n_stages or n_stages < 1:
        raise UserError(f"n_stages must be a positive integer (got {n_stages!r}).")
    n = int(n_stages)
    return np.array([max(1, -(-s * n_examples // n)) for s in range(1, n + 1)], dtype=np.int64)


def stage_of_epoch(epoch: int, n_epochs: int, n_stages: int) -> int:
    """The stage (0-based) an epoch trains on.

    E ≥ n: floor(e·n/E) — epochs spread evenly, e.g. 8 epochs over 4 stages give 2 per stage
    (POCL runs a fixed number of epochs per stage). E < n: the stages are compressed to
    floor(e·(n−1)/(E−1)) so the first epoch is still the easiest stage and the last epoch
    the full data, some intermediate stages being skipped; E = 1 is the last stage.
    """
    E, n = _check_epochs(n_epochs), int(n_stages)
    if not 0 <= epoch < E:
        raise ValueError(f"epoch {epoch} outside 0..{E - 1}")
    if E >= n:
        return epoch * n // E
    if E == 1:
        return n - 1
    return epoch * (n - 1) // (E - 1)


def stage_subsets(difficulty, n_epochs: int, n_stages: int = 4) -> list[np.ndarray]:
    """POCL's baby-step subsets per epoch: the easiest ceil(s·N/n) examples of the epoch's stage.

    Returns E int64 arrays, easiest first (ties by index), cumulative, the last being all
    data. Rank-based: only the ordering of d matters (a constant profile gives index order).
    """
    d = as_profile(difficulty)
    E = _check_epochs(n_epochs)
    order = np.argsort(d, kind="stable").astype(np.int64)
    sizes = stage_sizes(d.size, n_stages)
    return [order[:sizes[stage_of_epoch(e, E, n_stages)]].copy() for e in range(E)]


# --- dispatch and reporting -------------------------------------------------------------

def build_subsets(difficulty, n_epochs: int, *, curriculum: str = "uniform",
                  order: str = "easy_first", seed: int = 0, start_fraction: float = 0.2,
                  n_stages: int = 4, scale: str = "percentile") -> list[np.ndarray] | None:
    """The per-epoch subsets of a curriculum method; None for curriculum="none" (all data).

    `order` and `seed` go through `order_profile` first, so hard_first and shuffled reuse
    the same subset rules; `scale` (see the module docstring) matters to "uniform" only.
    """
    if curriculum == "none":
        return None
    profile = order_profile(difficulty, order, seed)
    if curriculum == "uniform":
        return uniform_difficulty_subsets(on_scale(profile, scale), n_epochs, start_fraction)
    if curriculum == "stages":
        return stage_subsets(profile, n_epochs, n_stages)
    raise UserError(f"unknown curriculum {curriculum!r}; choose one of {', '.join(CURRICULA)}.")


def data_fraction(subsets, n_examples: int) -> float:
    """Example-epochs seen over the run / those of training on all data every epoch.

    subsets: the per-epoch index arrays (None = a curriculum-free run: 1.0).
    """
    if subsets is None:
        return 1.0
    return sum(len(s) for s in subsets) / (len(subsets) * n_examples)


def subset_means(difficulty, subsets) -> np.ndarray:
    """Realised mean difficulty of each subset, (len(subsets),), in the profile's units."""
    d = as_profile(difficulty)
    return np.array([float(d[np.asarray(s, dtype=np.int64)].mean()) for s in subsets])
