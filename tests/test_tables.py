"""Publication tables on hand-made long tables whose means, stds and p-values are known.

Rouge-L per run (3 training seeds, benchmarks a and b; avg = mean of a and b per run):

    method   a            b            avg per seed        mean ± std (ddof=1)
    teacher  40           30           35                  35 (one run)
    sft      11 12 13     4  6  8      7.5  9   10.5       a 12±1   b 6±2   avg 9±1.5
    kd       10 20 30     10 10 10     10   15  20         a 20±10  b 10±0  avg 15±5
    cpd      24 25 26     9  10 11     16.5 17.5 18.5      a 25±1   b 10±1  avg 17.5±1

Per-example scores (30 examples per benchmark): sft equals kd on every example (p = 1);
cpd is kd + 5 on every example of a (a zero-variance difference: p = 0) and kd ± 3 alternating
on b, the same for every seed (mean difference exactly 0, p = 1). For avg the difference is
2.5 + (b's ±3)/2 per example: no seed variance, example variance only (t ≈ 9 on 2 df,
p ≈ 0.012; Holm over the family of sft and cpd: 0.025).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kdbench import tables as T
from kdbench.errors import UserError

SCORES = {
    "teacher": {"a": [40], "b": [30]},
    "sft": {"a": [11, 12, 13], "b": [4, 6, 8]},
    "kd": {"a": [10, 20, 30], "b": [10, 10, 10]},
    "cpd": {"a": [24, 25, 26], "b": [9, 10, 11]},
}
WALL = {"sft": [50, 55, 60], "kd": [100, 110, 120], "cpd": [80, 88, 96]}
SEEN = {"sft": 3000, "kd": 3000, "cpd": 1950}


def make_runs(scores=SCORES, variant_of=lambda m: "default"):
    rows = []
    for m, per in scores.items():
        for b, vals in per.items():
            for s, v in enumerate(vals):
                rows.append(dict(
                    pair="p", method=m, variant=variant_of(m), seed=s, benchmark=b,
                    rouge_l=float(v), rouge_l_eval_std=0.0, n_eval_seeds=2, n_examples=30,
                    train_wall_s=float(WALL[m][s]) if m in WALL else np.nan,
                    train_tokens=SEEN.get(m, 0) * 50, train_examples=SEEN.get(m, np.nan),
                    train_tokens_per_s=1000.0 + s, gen_tokens_per_s=500.0 + 10 * s,
                    student_params=1000))
    return pd.DataFrame(rows)


def make_examples(shift=None, methods=("teacher", "sft", "kd", "cpd")):
    """Per-example Rouge-L; the seed terms (+1, 0, -1 and ±0.5) average out per example."""
    shift = shift or {
        "cpd": {"a": lambda i: 5.0, "b": lambda i: 3.0 if i % 2 == 0 else -3.0}}
    rows = []
    for m in methods:
        seeds = [0] if m == "teacher" else [0, 1, 2]
        for b in ("a", "b"):
            for s in seeds:
                for e, eval_eff in ((10, 0.5), (20, -0.5)):
                    for i in range(30):
                        v = 20 + (i % 7) + (1 - s) + eval_eff
                        v += shift.get(m, {}).get(b, lambda i: 0.0)(i)
                        rows.append(dict(pair="p", method=m, variant="default", seed=s,
                                         benchmark=b, eval_seed=e, example_id=f"{b}{i}",
                                         task=b, difficulty=np.nan, rouge_l=v))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def main():
    return T.main_table(make_runs(), examples=make_examples())


def test_rows_teacher_first_then_fixed_order(main):
    assert list(main.index) == ["teacher", "sft", "kd", "cpd"]
    assert T.order_key("curriculum_kd", "default") < T.order_key("pocl", "default")
    assert T.order_key("kd", "x") > T.order_key("kd", "default")


def test_mean_and_std_over_seeds(main):
    expect = {  # (mean, std) per column
        "sft": {"a": (12, 1), "b": (6, 2), "avg": (9, 1.5)},
        "kd": {"a": (20, 10), "b": (10, 0), "avg": (15, 5)},
        "cpd": {"a": (25, 1), "b": (10, 1), "avg": (17.5, 1)},
    }
    for m, cols in expect.items():
        for c, (mu, sd) in cols.items():
            assert main.loc[m, f"{c}_mean"] == pytest.approx(mu)
            assert main.loc[m, f"{c}_std"] == pytest.approx(sd)
        assert main.loc[m, "n_seeds"] == 3
    assert main.loc["teacher", "avg_mean"] == 35
    assert math.isnan(main.loc["teacher", "avg_std"])


def test_p_values(main):
    assert main.loc["cpd", "a_p"] == 0.0  # + 5 on every example of every seed
    assert main.loc["cpd", "b_p"] == 1.0
    # avg: difference 2.5 ± 1.5 alternating over 30 examples, no seed variance: the variance is
    # the one-sample t-test's over the 30 example differences, the df S − 1 = 2 (not 29)
    d = np.array([4.0 if i % 2 == 0 else 1.0 for i in range(30)])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(30))
    assert main.loc["cpd", "avg_p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert main.loc["cpd", "avg_diff"] == pytest.approx(2.5)
    assert (main.loc["sft", ["a_p", "b_p", "avg_p"]] == 1.0).all()
    assert main.loc[["kd", "teacher"], ["a_p", "b_p", "avg_p"]].isna().all().all()
    # Holm over the primary family only: the avg of each tested row (sft and cpd), so the
    # smaller p is doubled; the per-test-set p are not adjusted
    assert main.loc["cpd", "avg_p_holm"] == pytest.approx(2 * main.loc["cpd", "avg_p"])
    assert main.loc["sft", "avg_p_holm"] == 1.0
    assert "a_p_holm" not in main.columns and main.loc["cpd", "avg_p_holm"] < T.ALPHA


def test_intervals(main):
    # cpd − kd on a is 5 everywhere: a zero-width interval; cpd's b difference: ±3 over 30
    # examples with no seed variance, so t(29) · sd / √30
    assert (main.loc["cpd", "a_diff_lo"], main.loc["cpd", "a_diff_hi"]) == (5.0, 5.0)
    d = np.array([3.0, -3.0] * 15)
    half = T.t_quantile(0.975, 2) * d.std(ddof=1) / math.sqrt(30)
    assert main.loc["cpd", "b_diff_hi"] == pytest.approx(half, rel=1e-9)
    assert main.loc["cpd", "b_diff_lo"] == pytest.approx(-half, rel=1e-9)
    assert main.loc["cpd", "a_lo"] < main.loc["cpd", "a_hi"]
    # one teacher seed: the seed-level variance is unknown, so no interval
    assert main.loc["teacher", ["a_lo", "a_hi"]].isna().all()


def _cpd_avg_half():
    """Half-width of cpd's 95% avg interval: the example differences 4, 1, 4, ... (sd
    1.5·√(30/29)) over 30 examples, on 2 df."""
    return T.t_quantile(0.975, 2) * 1.5 * math.sqrt(30 / 29) / math.sqrt(30)


def test_markdown_shows_differences_with_intervals_and_marks_only_the_primary_test(main):
    f = T.format_table(main, "md").set_index("method")
    assert list(f.columns) == ["a", "b", "avg", "Δ a", "Δ b", "Δ avg", "p (Holm)"]
    assert f.loc["cpd", "a"] == "25.00 ± 1.00"  # nothing bold
    assert not any("**" in x for x in f.to_numpy().ravel())
    # a: +5 on every example (p = 0), but a test-set cell: an interval, never a mark
    assert f.loc["cpd", "Δ a"] == "+5.00 [+5.00, +5.00]"
    half = _cpd_avg_half()
    assert f.loc["cpd", "Δ avg"] == f"+2.50 [{2.5 - half:+.2f}, {2.5 + half:+.2f}]†"
    assert f.loc["cpd", "p (Holm)"] == f"{main.loc['cpd', 'avg_p_holm']:.3f}"
    assert f.loc["sft", "Δ avg"] == "+0.00 [+0.00, +0.00]" and f.loc["sft", "p (Holm)"] == "1.000"
    # the baseline and the teacher: no difference, no test
    assert (f.loc[["kd", "teacher"], ["Δ a", "Δ avg", "p (Holm)"]] == "–").all().all()
    assert f.loc["teacher"].tolist()[:3] == ["40.00", "30.00", "35.00"]  # one run: no ± std


def test_caption_says_it_in_one_sentence(main):
    caption = main.attrs["caption"]
    assert caption.count(". ") == 0 and caption.endswith(".")
    for part in ("3 training seeds", "difference Δ to kd", "95% interval", "Holm",
                 "2 methods tested", "nothing is bold"):
        assert part in caption


def test_tex_cells(main):
    f = T.format_table(main, "tex").set_index("method")
    assert f.loc["cpd", "a"] == r"25.00 $\pm$ 1.00"
    assert f.loc["sft", "b"] == r"6.00 $\pm$ 2.00"
    assert f.loc["cpd", r"$\Delta$ avg"].endswith(r"$^{\dagger}$")
    assert f.loc["cpd", r"$\Delta$ b"].startswith("+0.00 [$-$")  # b: 0 ± its interval


def test_without_examples_no_differences_and_footnote_says_so():
    df = T.main_table(make_runs())
    assert df[["a_p", "b_p", "avg_p", "avg_diff"]].isna().all().all()
    f = T.format_table(df)
    assert list(f.columns) == ["method", "a", "b", "avg"]
    assert "†" not in "".join(f.drop(columns="method").to_numpy().ravel())
    assert any("No differences or tests" in line for line in df.attrs["footnote"])
    assert "no test" in df.attrs["caption"]


def test_identical_runs_are_one_row_found_from_the_data():
    """A method whose runs score exactly as another's on every example of every seed is folded
    into the first of them (display order), whatever its name; one differing example keeps it
    apart. The reason: "never sampled" where epochs.csv logs on-policy batches, all 0; the
    footnote explains the reasons the labels use, and no other."""
    scores = {**SCORES, "zz": SCORES["cpd"]}
    ex = make_examples(methods=("teacher", "sft", "kd", "cpd"))
    twin = ex[ex["method"] == "cpd"].assign(method="zz")
    df = T.main_table(make_runs(scores), examples=pd.concat([ex, twin], ignore_index=True))
    assert list(df.index) == ["teacher", "sft", "kd", "cpd (= zz: same scores)"]
    assert df.loc["cpd (= zz: same scores)", "same_as"] == "zz"
    assert "2 methods tested" in df.attrs["caption"]  # the family: sft and cpd, not zz
    note = next(line for line in df.attrs["footnote"] if "cpd (= zz: same scores)" in line)
    assert "same scores: different runs" in note and "never sampled" not in note  # only the reasons used

    epochs = pd.DataFrame([dict(pair="p", method="zz", variant="default", seed=s, epoch=0,
                                on_policy_batch=0.0) for s in range(3)])
    df = T.main_table(make_runs(scores), examples=pd.concat([ex, twin], ignore_index=True),
                      epochs=epochs)
    assert "cpd (= zz: never sampled)" in df.index
    note = next(line for line in df.attrs["footnote"] if "cpd (= zz: never sampled)" in line)
    assert "never sampled: one of them is an on-policy method" in note and "same scores:" not in note

    twin.loc[twin.index[0], "rouge_l"] += 1.0  # one example of one seed differs
    df = T.main_table(make_runs(scores), examples=pd.concat([ex, twin], ignore_index=True))
    assert list(df.index) == ["teacher", "sft", "kd", "cpd", "zz"]


def test_student_t_against_closed_forms():
    # df = 2: P(|T| > t) = 1 − t / sqrt(2 + t²); df = 1 (Cauchy): 1 − 2·atan(t)/π
    for t in (0.3, 1.0, 2.0, 7.5):
        assert 2 * T.t_sf(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
        assert 2 * T.t_sf(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-10)
    assert T.t_sf(-1.0, 5) == pytest.approx(1 - T.t_sf(1.0, 5))
    assert T.t_quantile(0.975, 2) == pytest.approx(math.sqrt(2 / (1 - 0.95 ** 2) - 2), rel=1e-9)
    assert T.t_quantile(0.975, math.inf) == pytest.approx(1.959963984540054, rel=1e-9)


def test_crossed_mean_test_reduces_to_t_tests():
    seeds = np.array([1.0, 2.0, 6.0])
    t = seeds.mean() / (seeds.std(ddof=1) / math.sqrt(3))  # the paired t over seeds, df 2
    closed = 1 - t / math.sqrt(2 + t * t)
    # seeds only (every example of a seed equal): the seed-level paired t-test
    est, se, df, p, half = T.crossed_mean_test([np.repeat(seeds[:, None], 40, axis=1)])
    assert (est, df) == (3.0, 2) and p == pytest.approx(closed, rel=1e-9)
    assert half == pytest.approx(T.t_quantile(0.975, 2) * se)
    # examples only (4 equal seeds): the one-sample variance over the examples, on S − 1 = 3 df
    est, se, df, p, _ = T.crossed_mean_test([np.repeat(seeds[None, :], 4, axis=0)])
    assert df == 3 and se == pytest.approx(seeds.std(ddof=1) / math.sqrt(3), rel=1e-12)
    assert p == pytest.approx(2 * T.t_sf(t, 3), rel=1e-9)
    # degenerate cases
    assert T.crossed_mean_test([np.zeros((3, 5))])[3] == 1.0
    assert T.crossed_mean_test([np.full((3, 5), 2.0)])[3] == 0.0
    one_seed = T.crossed_mean_test([np.arange(5.0)[None, :]])
    assert one_seed[0] == 2.0 and all(math.isnan(v) for v in one_seed[1:])


def test_crossed_mean_test_is_vectorised_and_continuous_where_the_example_term_vanishes():
    """Leading axes are independent problems (the simulations test thousands at once). Where
    MS_ex crosses MS_res the example term enters at 0, so p moves little; with Satterthwaite's
    df it jumped from 0.0003 to 0.84 on a committed cell (pocl − kd on ID)."""
    rng = np.random.default_rng(0)
    blocks = [rng.normal(1.0, 3.0, (4, 3, 50)) + rng.normal(0, 1, (4, 3, 1)) for _ in range(2)]
    batch = T.crossed_mean_test(blocks)
    for i in range(4):
        one = T.crossed_mean_test([b[i] for b in blocks])
        for got, want in zip(batch, one):
            assert np.asarray(got)[i] if np.ndim(got) else got == pytest.approx(want, rel=1e-12)
    # one block whose example mean square is a factor c of its residual one, c around 1
    x = rng.normal(0, 1, (3, 200))
    x -= x.mean(axis=0)  # no example effect: MS_ex = 0
    example = rng.normal(0, 1, 200)
    ps = []
    for c in (0.99, 1.0, 1.01):
        _, ms_res = T.mean_squares(x)
        scale = math.sqrt(c * ms_res / (3 * example.var(ddof=1)))
        y = x + scale * example + np.array([[0.5], [1.2], [0.9]])
        ms_ex, ms_res2 = T.mean_squares(y)
        assert ms_ex / ms_res2 == pytest.approx(c, rel=1e-9)
        ps.append(T.crossed_mean_test([y])[3])
    assert max(ps) - min(ps) < 0.01


def test_holm():
    p = np.array([[0.01, 0.04], [0.03, np.nan], [0.005, 0.9]])
    adj = T.holm(p)
    # family of 5: 0.005·5, 0.01·4, 0.03·3, 0.04·2 -> 0.09 (monotone), 0.9·1 -> 0.9
    np.testing.assert_allclose(adj, [[0.04, 0.09], [0.09, np.nan], [0.025, 0.9]])


def _simulated_difference(rng, delta, seed_sd, example_sd, method_example_sd=0.0, n_seeds=3,
                          n_examples=(200, 150, 80)):
    """Per benchmark, the seeds × examples differences of a method and the baseline. Each run
    (a trained model) has its own offset on every benchmark, each method its own effect on an
    example (method × example: the same for all its seeds), each (run, example) its own noise;
    the examples' difficulty is shared by both and cancels."""
    offsets = rng.normal(0, seed_sd, (2, n_seeds, 1))
    runs = [[offsets[r] + rng.normal(0, method_example_sd, (1, n)) + rng.normal(0, example_sd, (n_seeds, n))
             for n in n_examples] for r in range(2)]
    return [a + delta - b for a, b in zip(*runs)]


def _flagged(blocks):
    """The primary test of one row: its avg over the benchmarks."""
    return bool(T.crossed_mean_test(blocks)[3] < T.ALPHA)


@pytest.mark.parametrize("seed_sd,example_sd,method_example_sd",
                         [(1.0, 2.0, 0.0), (0.2, 15.0, 0.0), (0.3, 12.0, 5.0), (1.0, 12.0, 5.0)])
def test_null_tables_are_flagged_at_most_5_percent(seed_sd, example_sd, method_example_sd):
    """Two identical methods, 400 tables of 3 benchmarks, the avg tested: noise dominated by the
    training seeds, by the examples, or with a method × example component (the one that
    broke Satterthwaite's df, which marks 6.8% and 8.5% of these tables in the last two
    settings). At most 5% + two Monte-Carlo errors."""
    rng = np.random.default_rng(0)
    flagged = sum(_flagged(_simulated_difference(rng, 0.0, seed_sd, example_sd, method_example_sd))
                  for _ in range(400))
    assert flagged <= 0.05 * 400 + 2 * math.sqrt(0.05 * 0.95 * 400)


def test_a_planted_two_point_difference_is_flagged():
    """2 Rouge-L points with a run-to-run sd of 0.1 and a per-example sd of 2 (the per-seed sd of
    a difference is then about 0.25): flagged in (nearly) every table. With three seeds the test
    has two degrees of freedom, so a run-to-run sd of 1 (the embedded default's) hides a 2-point
    difference in most tables: the test says so rather than mark it."""
    rng = np.random.default_rng(1)
    hits = sum(_flagged(_simulated_difference(rng, 2.0, 0.1, 2.0)) for _ in range(20))
    assert hits >= 19
    noisy = sum(_flagged(_simulated_difference(rng, 2.0, 1.0, 2.0)) for _ in range(20))
    assert noisy < 10


def test_write_table_files(main, tmp_path):
    paths = T.write_table(main, tmp_path / "out" / "main")
    assert [p.name for p in paths] == ["main.md", "main.csv", "main.tex"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []
    md = paths[0].read_text()
    cpd = next(line for line in md.splitlines() if line.startswith("| cpd "))
    assert "| method" in md and " 25.00 ± 1.00 |" in cpd and cpd.count("†") == 1
    assert md.splitlines()[0] == f"**{main.attrs['caption']}**"
    csv = pd.read_csv(paths[1])
    assert list(csv["label"]) == ["teacher", "sft", "kd", "cpd"]
    assert {"a_mean", "a_std", "a_p", "a_lo", "a_hi", "a_diff", "a_diff_lo", "a_diff_hi",
            "avg_mean", "avg_std", "avg_p", "avg_p_holm", "same_as"} <= set(csv.columns)
    assert csv.set_index("label").loc["kd", "avg_std"] == 5
    assert csv.set_index("label").loc["cpd", "avg_diff"] == pytest.approx(2.5)
    tex = paths[2].read_text().splitlines()
    teacher = next(i for i, line in enumerate(tex) if line.startswith("teacher &"))
    assert tex[teacher + 1] == r"\midrule"
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert tex.index(r"\toprule") < teacher < tex.index(r"\bottomrule")


def test_write_table_plain_frame(tmp_path):
    plain = pd.DataFrame({"method": ["teacher", "my_kd"], "x": ["1 ± 2", "3"]})
    md, csv, tex = T.write_table(plain, tmp_path / "plain", caption="c", footnote="f_1")
    assert r"my\_kd & 3 \\" in tex.read_text() and r"f\_1" in tex.read_text()
    assert "my_kd" in md.read_text()


def _ablations():
    return pd.DataFrame({"ablation": ["full", "no_curriculum", "same_run"],
                         "method": ["cpd", "cpd", "cpd"],
                         "variant": ["default", "curriculum-false", "default"]})


def _ablation_runs():
    runs = make_runs()
    extra = make_runs({"cpd": {"a": [20, 21, 22], "b": [7, 8, 9]}},
                      variant_of=lambda m: "curriculum-false")
    return pd.concat([runs, extra], ignore_index=True)


def test_main_table_drops_ablation_only_variants():
    df = T.main_table(_ablation_runs(), _ablations())
    assert list(df.index) == ["teacher", "sft", "kd", "cpd"]
    df = T.main_table(_ablation_runs())
    assert list(df.index) == ["teacher", "sft", "kd", "cpd", "cpd (curriculum-false)"]


def test_ablation_table():
    ex = make_examples()
    nc = ex[ex["method"] == "kd"].assign(variant="curriculum-false", method="cpd")
    df = T.ablation_table(_ablation_runs(), _ablations(),
                          examples=pd.concat([ex, nc], ignore_index=True))
    # same_run names full's run: one row that says so
    assert list(df.index) == ["full (= same_run: same run)", "no_curriculum"]
    assert df.loc["no_curriculum", "a_mean"] == 21 and df.loc["no_curriculum", "b_std"] == 1
    assert df.loc["no_curriculum", "avg_mean"] == pytest.approx(14.5)
    # no_curriculum's examples equal kd's = full − 5 on a, full ∓ 3 on b: p = 0 on a, but only
    # the avg (−2.5, the one test of the family) is marked
    assert df.loc["no_curriculum", "a_p"] == 0.0
    assert df.loc["no_curriculum", "avg_p_holm"] == df.loc["no_curriculum", "avg_p"] < T.ALPHA
    f = T.format_table(df, "md").set_index("ablation")
    assert f.loc["no_curriculum", "Δ a"] == "-5.00 [-5.00, -5.00]"
    assert f.loc["no_curriculum", "Δ avg"].startswith("-2.50 [") and f.loc["no_curriculum", "Δ avg"].endswith("†")
    assert "1 ablations tested" in df.attrs["caption"]


def test_a_reference_that_repeats_an_earlier_row_is_that_row():
    """'full' listed after another name of the same run: the row of that name is the reference."""
    ex = make_examples()
    nc = ex[ex["method"] == "kd"].assign(variant="curriculum-false", method="cpd")
    abl = pd.DataFrame({"ablation": ["cpd_default", "full", "no_curriculum"], "method": ["cpd"] * 3,
                        "variant": ["default", "default", "curriculum-false"]})
    df = T.ablation_table(_ablation_runs(), abl, examples=pd.concat([ex, nc], ignore_index=True))
    assert list(df.index) == ["cpd_default (= full: same run)", "no_curriculum"]
    assert df.loc["no_curriculum", "avg_diff"] == pytest.approx(-2.5)
    assert "difference Δ to cpd_default" in df.attrs["caption"]


def test_runtime_table_ratio_and_data_fraction():
    ep = []
    for m, sizes in {"sft": [1000] * 3, "kd": [1000] * 3, "cpd": [300, 650, 1000]}.items():
        for s in range(3):
            for e, n in enumerate(sizes):
                ep.append(dict(pair="p", method=m, variant="default", seed=s, epoch=e,
                               n_examples=n))
    df = T.runtime_table(make_runs(), pd.DataFrame(ep))
    assert list(df.index) == ["sft", "kd", "cpd"]  # teacher not trained here: left out
    assert df.loc["kd", "train_wall_s_mean"] == 110 and df.loc["kd", "train_wall_s_std"] == 10
    assert df.loc["cpd", "time_ratio_mean"] == pytest.approx(0.8)
    assert df.loc["sft", "time_ratio_mean"] == pytest.approx(0.5)
    assert df.loc["kd", "time_ratio_mean"] == 1.0
    assert df.loc["cpd", "data_fraction_mean"] == pytest.approx(0.65)
    assert df.loc["cpd", "train_examples_mean"] == 1950
    assert df.loc["cpd", "gen_tokens_per_s_mean"] == 510
    f = T.format_table(df, "md").set_index("method")
    assert f.loc["sft", "train time (s)"] == "**55.0 ± 5.0**"
    assert f.loc["cpd", "time / kd"] == "0.80" and f.loc["sft", "time / kd"] == "**0.50**"
    assert f.loc["cpd", "examples seen"] == "1,950"
    kd_line = next(x for x in T.to_markdown(T.format_table(df)).splitlines()
                   if x.startswith("| kd "))
    cells = [c.strip() for c in kd_line.strip("|").split("|")]
    assert cells[4:6] == ["1.00", "1.00"]  # tabulate must not re-parse "1.00" as 1


def test_build_all(tmp_path):
    make_runs().to_csv(tmp_path / "runs.csv", index=False)
    make_examples().to_csv(tmp_path / "examples.csv.gz", index=False)
    pd.DataFrame(columns=["ablation", "method", "variant"]).to_csv(
        tmp_path / "ablations.csv", index=False)
    paths = T.build_all(tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        f"{t}.{e}" for t in ("main", "runtime") for e in ("md", "csv", "tex"))
    cpd = next(x for x in (tmp_path / "main.md").read_text().splitlines() if x.startswith("| cpd "))
    assert " 25.00 ± 1.00 |" in cpd and cpd.count("†") == 1

    _ablation_runs().to_csv(tmp_path / "runs.csv", index=False)
    _ablations().to_csv(tmp_path / "ablations.csv", index=False)
    names = {p.name for p in T.build_all(tmp_path)}
    assert {"ablation.md", "ablation.csv", "ablation.tex"} <= names
    runtime = pd.read_csv(tmp_path / "runtime.csv")
    assert "cpd (no_curriculum)" in set(runtime["label"])


def test_user_errors(tmp_path):
    runs = make_runs()
    with pytest.raises(UserError, match="several rows"):
        T.main_table(pd.concat([runs, runs.iloc[:1]]))
    with pytest.raises(UserError, match="several pairs"):
        T.main_table(pd.concat([runs, runs.assign(pair="q")]))
    assert list(T.main_table(pd.concat([runs, runs.assign(pair="q")]), pair="q").index) \
        == ["teacher", "sft", "kd", "cpd"]
    with pytest.raises(UserError, match="lacks the columns"):
        T.main_table(runs.drop(columns="rouge_l"))
    with pytest.raises(UserError, match="missing"):
        T.build_all(tmp_path)


def test_ablation_table_rows_of_other_methods_and_cost_ratios():
    abl = pd.concat([_ablations(), pd.DataFrame({"ablation": ["kd_control"], "method": ["kd"],
                                                 "variant": ["default"]})], ignore_index=True)
    df = T.ablation_table(_ablation_runs(), abl).rename(index={"full (= same_run: same run)": "full"})
    assert df.loc["kd_control", "method"] == "kd" and df.loc["kd_control", "a_mean"] == 20
    # cpd: 1950 of kd's 3000 examples; wall time 88 s over kd's 110 s
    assert df.loc["full", "examples_ratio_mean"] == pytest.approx(0.65)
    assert df.loc["full", "time_ratio_mean"] == pytest.approx(0.8)
    assert df.loc["kd_control", "examples_ratio_mean"] == 1.0
    f = T.format_table(df, "md").set_index("ablation")
    assert f.loc["full", "examples / kd"] == "0.65" and f.loc["full", "time / kd"] == "0.80"


def test_seed_counts_in_the_caption():
    """One training seed: "no std", not "std over 1 seeds"; two teacher seeds: the teacher row
    is their mean ± std (40/44 on a, 30/30 on b -> a 42 ± 2.83, avg 36 ± 1.41)."""
    one = {m: {b: v[:1] for b, v in per.items()} for m, per in SCORES.items()}
    df = T.main_table(make_runs(one))
    notes = " ".join(df.attrs["footnote"])
    assert "1 training seed, no std" in notes and "1 training seeds" not in notes
    assert "teacher: 1 teacher seed, no std" in notes
    # with per-example scores: the differences, without interval or test
    df = T.main_table(make_runs(one), examples=make_examples()[lambda e: e["seed"] == 0])
    f = T.format_table(df).set_index("method")
    assert f.loc["cpd", "Δ a"] == "+5.00" and "p (Holm)" not in f.columns
    assert "nan" not in "".join(f.to_numpy().ravel()) and "no interval or test" in df.attrs["caption"]
    two = {**SCORES, "teacher": {"a": [40, 44], "b": [30, 30]}}
    df = T.main_table(make_runs(two)).set_index("method")
    assert df.loc["teacher", "n_seeds"] == 2
    assert df.loc["teacher", "a_mean"] == pytest.approx(42) and df.loc["teacher", "a_std"] == pytest.approx(math.sqrt(8))
    assert df.loc["teacher", "avg_std"] == pytest.approx(math.sqrt(2))
    notes = " ".join(df.attrs["footnote"])
    assert "mean ± sample std over 3 training seeds (teacher: mean ± sample std over 2 teacher seeds; not tested)" in notes


def test_runtime_table_convergence_and_the_teachers_own_data_fraction():
    runs = make_runs()
    runs["selected_epoch"] = runs["seed"] + 17          # seeds 0, 1, 2 keep epochs 18, 19, 20
    runs["n_epochs"] = 20
    change = {0: -0.01, 1: 0.005, 2: -0.03}             # seed 2's change is the largest: -3%
    runs["val_loss_change_last20"] = runs["seed"].map(change)
    runs.loc[runs["method"] == "sft", ["selected_epoch", "val_loss_change_last20"]] = np.nan  # no validation
    ep = [dict(pair="p", method=m, variant="default", seed=s, epoch=e, n_examples=n)
          for m, n in (("teacher", 2000), ("kd", 1000)) for s in range(3) for e in range(3)]
    df = T.runtime_table(runs, pd.DataFrame(ep))
    assert df.loc["kd", "best_epoch_mean"] == pytest.approx(19.0)
    assert df.loc["kd", "best_epoch_std"] == pytest.approx(1.0)
    assert df.loc["kd", "val_loss_change_mean"] == pytest.approx(-3.0)
    # the teacher trains on twice as many examples: it does not halve the students' fraction
    assert df.loc["kd", "data_fraction_mean"] == pytest.approx(1.0)
    f = T.format_table(df, "md").set_index("method")
    assert f.loc["kd", "val-loss Δ last 20% (%)"] == "-3.0"
    assert np.isnan(df.loc["sft", "val_loss_change_mean"])
    assert "had not flattened (kd, cpd)." in " ".join(df.attrs["footnote"])


def test_the_validation_gap_is_best_minus_the_last_fifth_of_the_seed_mean_curve():
    from kdbench.tables import val_rouge_gap_last20

    # two seeds, 10 epochs: seed means 10, 11, ..., 19 except a peak of 25 at epoch 5; the
    # last 20% are epochs 8 and 9 (means 18 and 19): gap 25 - 18.5
    rows = []
    for seed, shift in ((0, -1.0), (1, 1.0)):
        for e in range(10):
            rows.append({"method": "kd", "variant": "default", "seed": seed, "epoch": e,
                         "val_rouge_l": (25.0 if e == 5 else 10.0 + e) + shift})
    gap = val_rouge_gap_last20(pd.DataFrame(rows))
    assert gap[("kd", "default")] == pytest.approx(25.0 - 18.5)


def test_the_main_table_says_how_the_learning_rates_were_set():
    from kdbench.tables import lr_note

    runs = pd.DataFrame({"method": ["teacher", "kd", "sft"], "lr": [0.003, 0.004, 0.004]})
    assert lr_note(runs) == "Learning rate: 0.004 for every student method."
    runs.loc[2, "lr"] = 0.012
    assert lr_note(runs).startswith("Learning rates: per method (0.004, 0.012; runtime table)")
    assert "validation Rouge-L" in lr_note(runs) and "never by a test score" in lr_note(runs)
