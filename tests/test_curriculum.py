"""kdbench.curriculum: CPD's uniform-difficulty subsets and POCL's cumulative stages."""
import math
from fractions import Fraction

import numpy as np
import pytest

from kdbench import curriculum as C
from kdbench.errors import UserError


# --- an independent reference: exact rational arithmetic, brute force ---------------------


def targets_of(difficulty, n_epochs, start_fraction=0.2):
    """μ_e = μ_start + e/(E−1)·(μ_all − μ_start): CPD's target mean difficulty per epoch,
    computed here independently of kdbench.curriculum."""
    d = np.sort(np.asarray(difficulty, dtype=float), kind="stable")
    n0 = max(1, math.ceil(start_fraction * d.size - 1e-9))
    start, full = d[:n0].mean(), d.mean()
    return np.array([start + (e / (n_epochs - 1) if n_epochs > 1 else 1.0) * (full - start)
                     for e in range(n_epochs)])


def reference_sizes(d, n_epochs, start_fraction):
    """Subset sizes by the written rule, in exact fractions (integer difficulties only)."""
    N = len(d)
    order = sorted(range(N), key=lambda i: (d[i], i))
    s = [Fraction(d[i]) for i in order]
    n0 = max(1, min(N, math.ceil(Fraction(str(start_fraction)) * N)))   # exact ceil(f·N)
    mu_start = sum(s[:n0]) / n0
    mu_all = sum(s) / N
    if n_epochs == 1 or s[0] == s[-1]:
        return order, [N] * n_epochs
    sizes = []
    for e in range(n_epochs):
        target = mu_start + Fraction(e, n_epochs - 1) * (mu_all - mu_start)
        k = next(k for k in range(1, N + 1) if sum(s[:k]) / k >= target)
        sizes.append(max(k, n0))
    return order, sizes


def test_pinned_example_sizes_follow_the_shape_of_the_distribution():
    # six easy (0), two medium (1), two hard (10): μ_start = 0, μ_all = 22/10 = 2.2,
    # targets 0, 1.1, 2.2. Prefix means: 0 up to k=6, 1/7, 2/8, 12/9 = 1.33 ≥ 1.1, 22/10.
    d = np.array([10, 0, 1, 0, 0, 10, 0, 1, 0, 0], dtype=float)
    subsets = C.uniform_difficulty_subsets(d, 3, start_fraction=0.2)
    assert [len(s) for s in subsets] == [2, 9, 10]
    assert subsets[0].tolist() == [1, 3]                   # the two first zeros, by index
    assert subsets[1].tolist() == [1, 3, 4, 6, 8, 9, 2, 7, 0]
    assert all(s.dtype == np.int64 for s in subsets)
    np.testing.assert_allclose(targets_of(d, 3, 0.2), [0.0, 1.1, 2.2])
    np.testing.assert_allclose(C.subset_means(d, subsets), [0.0, 12 / 9, 2.2])


def test_linear_profile_gives_equal_size_steps():
    # d = 0..9 shuffled: prefix mean of k is (k−1)/2; μ_start = 0.5, μ_all = 4.5, E = 5
    # targets 0.5, 1.5, 2.5, 3.5, 4.5 → k = 2, 4, 6, 8, 10.
    rng = np.random.default_rng(0)
    d = rng.permutation(10).astype(float)
    subsets = C.uniform_difficulty_subsets(d, 5, start_fraction=0.2)
    assert [len(s) for s in subsets] == [2, 4, 6, 8, 10]
    assert [sorted(d[s].tolist()) for s in subsets][2] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("seed", range(25))
def test_matches_exact_reference_and_invariants(seed):
    rng = np.random.default_rng(seed)
    N = int(rng.integers(1, 40))
    E = int(rng.integers(1, 7))
    f = float(rng.choice([0.1, 0.2, 0.25, 0.5, 1.0]))
    d = rng.integers(0, 6, size=N)                          # many ties
    subsets = C.uniform_difficulty_subsets(d.astype(float), E, f)
    order, sizes = reference_sizes(d.tolist(), E, f)
    assert [len(s) for s in subsets] == sizes
    n0 = C.start_count(N, f)
    assert len(subsets) == E
    assert len(subsets[-1]) == N and sorted(subsets[-1].tolist()) == list(range(N))
    assert all(len(a) <= len(b) for a, b in zip(subsets, subsets[1:]))      # never shrink
    assert all(len(s) >= n0 for s in subsets)                               # ≥ start fraction
    for s in subsets:
        assert s.tolist() == order[:len(s)]                 # easiest-first prefix, ties by index
    # targets reached, and one example fewer does not reach them (unless clamped at n0)
    targets = targets_of(d, E, f)
    srt = np.sort(d.astype(float), kind="stable")
    tol = 1e-9 * max(1.0, float(srt[-1] - srt[0]))
    if srt[0] != srt[-1]:
        for k, t in zip(sizes, targets):
            assert srt[:k].mean() >= t - tol
            if k > n0:
                assert srt[:k - 1].mean() < t - tol


def test_target_means_rise_in_equal_steps():
    rng = np.random.default_rng(3)
    d = rng.gamma(2.0, 1.0, size=500)
    E = 6
    targets = targets_of(d, E, 0.2)
    steps = np.diff(targets)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-12)
    easiest = np.sort(d)[:100]
    assert targets[0] == pytest.approx(easiest.mean())
    assert targets[-1] == pytest.approx(d.mean())
    means = C.subset_means(d, C.uniform_difficulty_subsets(d, E, 0.2))
    # realised means reach the target and overshoot by less than one example's effect
    assert np.all(means >= targets - 1e-12)
    assert np.all(means - targets < (d.max() - d.min()) / 100)


def test_deterministic_and_float_roundoff_does_not_drop_the_last_example():
    # 0.01, 0.02, ..., 1.00 and 0.3, ..., 9.0: in exact arithmetic each target equals a prefix
    # mean; in floats some miss by an ulp (without the tolerance: 61 and 13 instead of 60, 12).
    d = np.arange(1, 101) * 0.01
    assert [len(s) for s in C.uniform_difficulty_subsets(d[::-1], 5)] == [20, 40, 60, 80, 100]
    d = np.arange(1, 31) * 0.3
    assert [len(s) for s in C.uniform_difficulty_subsets(d, 5, 0.2)] == [6, 12, 18, 24, 30]
    d = np.random.default_rng(1).random(1000) * 1e6 + 1e9
    a = C.uniform_difficulty_subsets(d, 7, 0.2)
    b = C.uniform_difficulty_subsets(d.copy(), 7, 0.2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(a[-1]) == 1000


def test_ties_broken_by_index():
    d = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 2.0])
    assert C.easy_first(d).tolist() == [1, 3, 0, 2, 4, 5]
    s = C.uniform_difficulty_subsets(d, 2, start_fraction=0.5)
    assert s[0].tolist() == [1, 3, 0]


def test_constant_difficulty_gives_all_data_every_epoch():
    subsets = C.uniform_difficulty_subsets(np.full(7, 3.5), 4, 0.2)
    assert [s.tolist() for s in subsets] == [list(range(7))] * 4
    np.testing.assert_allclose(targets_of(np.full(7, 3.5), 4), 3.5)


def test_one_epoch_and_tiny_sets():
    d = np.array([3.0, 1.0, 2.0])
    assert [s.tolist() for s in C.uniform_difficulty_subsets(d, 1)] == [[1, 2, 0]]
    assert [s.tolist() for s in C.uniform_difficulty_subsets([4.0], 3)] == [[0], [0], [0]]
    # N = 2: μ_start = 1, μ_all = 3, targets 1, 2, 3; prefix means 1, 3
    assert [s.tolist() for s in C.uniform_difficulty_subsets([5.0, 1.0], 3)] == [[1], [1, 0], [1, 0]]
    assert C.start_count(30, 0.1) == 3 and C.start_count(7, 0.2) == 2 and C.start_count(2, 0.2) == 1


def test_bad_inputs_raise_user_errors():
    for bad in ([], [[1.0, 2.0]], [1.0, np.nan]):
        with pytest.raises(UserError):
            C.uniform_difficulty_subsets(bad, 2)
    with pytest.raises(UserError):
        C.uniform_difficulty_subsets([1.0, 2.0], 0)
    with pytest.raises(UserError):
        C.uniform_difficulty_subsets([1.0, 2.0], 2, start_fraction=0.0)
    with pytest.raises(UserError, match="score_difficulty"):
        C.check_difficulty(None, 3, "cpd")
    with pytest.raises(UserError, match="4 entries but the training set has 3"):
        C.check_difficulty(np.zeros(4), 3, "cpd")
    with pytest.raises(UserError):
        C.order_profile([1.0], "random")
    with pytest.raises(UserError):
        C.build_subsets([1.0], 2, curriculum="spiral")


# --- orderings ---------------------------------------------------------------------------

def test_hard_first_is_the_mirror_image():
    d = np.arange(10, dtype=float)
    s = C.build_subsets(d, 5, curriculum="uniform", order="hard_first")
    assert [len(x) for x in s] == [2, 4, 6, 8, 10]
    assert s[0].tolist() == [9, 8]
    assert C.subset_means(d, s).tolist() == [8.5, 7.5, 6.5, 5.5, 4.5]


def test_shuffled_keeps_sizes_but_not_the_difficulty():
    d = np.random.default_rng(5).random(200)
    easy = C.build_subsets(d, 5, order="easy_first")
    sh = C.build_subsets(d, 5, order="shuffled", seed=7)
    again = C.build_subsets(d, 5, order="shuffled", seed=7)
    other = C.build_subsets(d, 5, order="shuffled", seed=8)
    assert [len(x) for x in sh] == [len(x) for x in easy]
    assert all(np.array_equal(a, b) for a, b in zip(sh, again))
    assert not np.array_equal(sh[0], other[0])
    # the first subset is no longer the easiest: its true mean is far above the easiest 20 %
    assert C.subset_means(d, sh)[0] > C.subset_means(d, easy)[0] + 0.2


def test_epoch_order_is_a_seeded_permutation():
    idx = np.arange(50, dtype=np.int64)
    a = C.epoch_order(idx, seed=1, epoch=0)
    assert sorted(a.tolist()) == idx.tolist() and not np.array_equal(a, idx)
    assert np.array_equal(a, C.epoch_order(idx, seed=1, epoch=0))
    assert not np.array_equal(a, C.epoch_order(idx, seed=1, epoch=1))
    assert np.array_equal(C.epoch_order(idx, 1, 0, shuffle=False), idx)


# --- POCL stages ------------------------------------------------------------------------

def test_stage_subsets_are_cumulative_quartiles():
    d = np.array([7, 2, 5, 0, 6, 1, 4, 3], dtype=float)      # easiest first: 3,5,1,7,6,2,4,0
    s = C.stage_subsets(d, 8, n_stages=4)
    assert [len(x) for x in s] == [2, 2, 4, 4, 6, 6, 8, 8]
    assert s[0].tolist() == [3, 5] and s[2].tolist() == [3, 5, 1, 7]
    assert s[-1].tolist() == [3, 5, 1, 7, 6, 2, 4, 0]
    assert C.stage_sizes(10, 4).tolist() == [3, 5, 8, 10]
    assert C.stage_sizes(2, 4).tolist() == [1, 1, 2, 2]


def test_stage_of_epoch_spreads_and_compresses():
    assert [C.stage_of_epoch(e, 32, 4) for e in range(32)] == [0] * 8 + [1] * 8 + [2] * 8 + [3] * 8
    assert [C.stage_of_epoch(e, 6, 4) for e in range(6)] == [0, 0, 1, 2, 2, 3]
    assert [C.stage_of_epoch(e, 3, 4) for e in range(3)] == [0, 1, 3]
    assert [C.stage_of_epoch(e, 2, 4) for e in range(2)] == [0, 3]
    assert C.stage_of_epoch(0, 1, 4) == 3
    d = np.arange(8.0)
    assert [len(x) for x in C.stage_subsets(d, 2, 4)] == [2, 8]


# --- scale: percentile vs raw ---------------------------------------------------------------

def test_percentile_ranks_with_ties_and_degenerate_profiles():
    d = np.array([5.0, 1.0, 3.0, 3.0, 9.0])
    # sorted 1, 3, 3, 5, 9 → 0-based ranks 0, 1.5 (tie), 1.5, 3, 4, over N − 1 = 4
    np.testing.assert_allclose(C.percentile(d), [0.75, 0.0, 0.375, 0.375, 1.0])
    assert C.percentile(np.full(4, 2.0)).tolist() == [0.5] * 4   # constant stays constant
    assert C.percentile([7.0]).tolist() == [0.0]
    with pytest.raises(UserError, match="percentile, raw"):
        C.build_subsets(d, 3, scale="log")


@pytest.mark.parametrize("n,epochs", [(3000, 5), (3000, 15), (14000, 20), (101, 2)])
@pytest.mark.parametrize("f0", [0.2, 0.6, 0.8])
def test_percentile_scale_grows_linearly_and_sees_one_plus_f0_over_two(n, epochs, f0):
    # a strongly convex, tie-free profile: the percentile scale ignores its shape
    d = np.random.default_rng(n + epochs).random(n) ** 8
    subsets = C.build_subsets(d, epochs, start_fraction=f0, scale="percentile")
    n0 = C.start_count(n, f0)
    # percentiles are (k−1)/(N−1) easiest first, their prefix mean (k−1)/(2(N−1)); the target
    # μ_e = μ_start + π_e(1/2 − μ_start) is reached at k = n0 + ceil(π_e (N − n0))
    expected = [n0 + math.ceil(Fraction(e, epochs - 1) * (n - n0)) for e in range(epochs)]
    assert [len(s) for s in subsets] == expected
    # so the fraction of example-epochs is (1 + n0/N)/2 plus < 1/N of rounding
    frac = C.data_fraction(subsets, n)
    assert (1 + f0) / 2 - 1e-12 <= frac < (1 + f0) / 2 + 1.5 / n


def test_raw_scale_follows_the_shape_of_the_profile():
    # a rescaled rank fusion of two independent rankings (the default scorer): most examples
    # sit near the top of the range, so equal steps in mean need tiny early subsets
    rng = np.random.default_rng(0)
    n, epochs = 3000, 20
    s = 1 / (rng.permutation(n) + 61) + 1 / (rng.permutation(n) + 61)
    d = (s.max() - s) / (s.max() - s.min())
    assert np.median(d) > 0.9
    raw = C.data_fraction(C.build_subsets(d, epochs, start_fraction=0.2, scale="raw"), n)
    pct = C.data_fraction(C.build_subsets(d, epochs, start_fraction=0.2, scale="percentile"), n)
    assert raw < 0.5 and pct == pytest.approx(0.6, abs=1e-3)
    # a profile already uniform on its range gives the same subsets on both scales
    u = rng.permutation(n).astype(float)
    assert [len(x) for x in C.build_subsets(u, 5, scale="raw")] == \
        [len(x) for x in C.build_subsets(u, 5, scale="percentile")]


def test_data_fraction_and_random_subsets():
    assert C.data_fraction(None, 10) == 1.0
    assert C.data_fraction([np.arange(2), np.arange(4), np.arange(10)], 10) == pytest.approx(16 / 30)
    a, b = C.random_subset(50, 0.8, seed=1, epoch=0), C.random_subset(50, 0.8, seed=1, epoch=1)
    assert len(a) == len(b) == 40 and a.dtype == np.int64
    assert len(set(a.tolist())) == 40 and set(a.tolist()) != set(b.tolist())   # fresh each epoch
    assert np.array_equal(a, C.random_subset(50, 0.8, seed=1, epoch=0))        # deterministic
