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
2.5 + (b's ±3)/2 per example: no seed variance, example variance only (p ≈ 1e-9).
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
    # avg: difference 2.5 ± 1.5 alternating over 30 examples, no seed variance: a one-sample
    # t-test over the 30 example differences (df 29)
    d = np.array([4.0 if i % 2 == 0 else 1.0 for i in range(30)])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(30))
    assert main.loc["cpd", "avg_p"] == pytest.approx(2 * T.t_sf(t, 29), rel=1e-9)
    assert main.loc["cpd", "avg_p"] < 1e-6
    assert (main.loc["sft", ["a_p", "b_p", "avg_p"]] == 1.0).all()
    assert main.loc[["kd", "teacher"], ["a_p", "b_p", "avg_p"]].isna().all().all()
    # Holm over the 6 tests of the table: the smallest p is multiplied by 6, the next by 5
    assert main.loc["cpd", "avg_p_holm"] == pytest.approx(5 * main.loc["cpd", "avg_p"])
    assert main.loc["cpd", "a_p_holm"] == 0.0 and main.loc["sft", "a_p_holm"] == 1.0


def test_intervals(main):
    # cpd − kd on a is 5 everywhere: a zero-width interval; cpd's b difference: ±3 over 30
    # examples with no seed variance, so t(29) · sd / √30
    assert (main.loc["cpd", "a_diff_lo"], main.loc["cpd", "a_diff_hi"]) == (5.0, 5.0)
    d = np.array([3.0, -3.0] * 15)
    half = T.t_quantile(0.975, 29) * d.std(ddof=1) / math.sqrt(30)
    assert main.loc["cpd", "b_diff_hi"] == pytest.approx(half, rel=1e-9)
    assert main.loc["cpd", "b_diff_lo"] == pytest.approx(-half, rel=1e-9)
    assert main.loc["cpd", "a_lo"] < main.loc["cpd", "a_hi"]
    # one teacher seed: the seed-level variance is unknown, so no interval
    assert main.loc["teacher", ["a_lo", "a_hi"]].isna().all()


def test_markdown_bold_and_dagger(main):
    f = T.format_table(main, "md").set_index("method")
    assert f.loc["cpd", "a"] == "**25.00 ± 1.00**†"
    assert f.loc["cpd", "avg"] == "**17.50 ± 1.00**†"
    # b: kd and cpd tie at 10.00 -> both bold; cpd's b equals kd on average -> no dagger
    assert f.loc["kd", "b"] == "**10.00 ± 0.00**"
    assert f.loc["cpd", "b"] == "**10.00 ± 1.00**"
    assert f.loc["sft", "a"] == "12.00 ± 1.00"  # identical to kd per example: no dagger
    assert f.loc["kd", "a"] == "20.00 ± 10.00"
    # the teacher is best everywhere but never bold; one run: no ± std
    assert f.loc["teacher"].tolist() == ["40.00", "30.00", "35.00"]
    assert not any("†" in x for x in f.loc[["sft", "kd", "teacher"]].to_numpy().ravel())


def test_teacher_never_bold_even_when_tied_with_the_best_student():
    scores = {k: dict(v) for k, v in SCORES.items()}
    scores["teacher"] = {"a": [25], "b": [10]}  # equals cpd's a and the best b
    f = T.format_table(T.main_table(make_runs(scores)), "md").set_index("method")
    assert f.loc["teacher", "a"] == "25.00" and f.loc["teacher", "b"] == "10.00"
    assert f.loc["cpd", "a"] == "**25.00 ± 1.00**"


def test_tex_cells(main):
    f = T.format_table(main, "tex").set_index("method")
    assert f.loc["cpd", "a"] == r"\textbf{25.00 $\pm$ 1.00}$^{\dagger}$"
    assert f.loc["sft", "b"] == r"6.00 $\pm$ 2.00"


def test_without_examples_no_marks_and_footnote_says_so():
    df = T.main_table(make_runs())
    assert df[["a_p", "b_p", "avg_p"]].isna().all().all()
    assert "†" not in "".join(T.format_table(df).drop(columns="method").to_numpy().ravel())
    assert any("No significance marks" in line for line in df.attrs["footnote"])


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
    assert (est, df) == (3.0, pytest.approx(2.0)) and p == pytest.approx(closed, rel=1e-9)
    assert half == pytest.approx(T.t_quantile(0.975, 2) * se)
    # examples only (every seed equal): the one-sample t-test over the examples
    est, se, df, p, _ = T.crossed_mean_test([np.repeat(seeds[None, :], 4, axis=0)])
    assert df == pytest.approx(2.0) and p == pytest.approx(closed, rel=1e-9)
    # degenerate cases
    assert T.crossed_mean_test([np.zeros((3, 5))])[3] == 1.0
    assert T.crossed_mean_test([np.full((3, 5), 2.0)])[3] == 0.0
    one_seed = T.crossed_mean_test([np.arange(5.0)[None, :]])
    assert one_seed[0] == 2.0 and all(math.isnan(v) for v in one_seed[1:])


def test_holm():
    p = np.array([[0.01, 0.04], [0.03, np.nan], [0.005, 0.9]])
    adj = T.holm(p)
    # family of 5: 0.005·5, 0.01·4, 0.03·3, 0.04·2 -> 0.09 (monotone), 0.9·1 -> 0.9
    np.testing.assert_allclose(adj, [[0.04, 0.09], [0.09, np.nan], [0.025, 0.9]])


def _simulated_difference(rng, delta, seed_sd, example_sd, n_seeds=3, n_examples=(200, 150, 80)):
    """Per benchmark, the seeds × examples differences of a method and the baseline. Each run
    (a trained model) has its own offset on every benchmark, each (run, example) its own noise;
    the examples' difficulty is shared by both and cancels."""
    offsets = rng.normal(0, seed_sd, (2, n_seeds, 1))
    runs = [[offsets[r] + rng.normal(0, example_sd, (n_seeds, n)) for n in n_examples] for r in range(2)]
    return [a + delta - b for a, b in zip(*runs)]


def _flagged(blocks):
    ps = [T.crossed_mean_test([b])[3] for b in blocks] + [T.crossed_mean_test(blocks)[3]]
    return bool((T.holm(np.array(ps)) < T.ALPHA).any())


@pytest.mark.parametrize("seed_sd,example_sd", [(1.0, 2.0), (0.2, 15.0)])
def test_null_tables_are_flagged_at_most_5_percent(seed_sd, example_sd):
    """Two identical methods, 200 tables of 3 benchmarks + avg (Holm over 4 tests), with the
    noise dominated by the training seeds or by the examples."""
    rng = np.random.default_rng(0)
    flagged = sum(_flagged(_simulated_difference(rng, 0.0, seed_sd, example_sd)) for _ in range(200))
    assert flagged <= 10


def test_a_planted_two_point_difference_is_flagged():
    """2 Rouge-L points with a run-to-run sd of 0.1 and a per-example sd of 2 (the per-seed sd of
    a difference is then about 0.25): flagged in (nearly) every table. With three seeds the test
    has two degrees of freedom at the seed level, so a run-to-run sd of 1 (the embedded
    default's) hides a 2-point difference in most tables: the test says so rather than mark it."""
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
    assert "| method" in md and "**25.00 ± 1.00**†" in md and "Holm" in md
    assert "Holm-corrected paired test against kd" in md.splitlines()[0]  # the caption
    csv = pd.read_csv(paths[1])
    assert list(csv["label"]) == ["teacher", "sft", "kd", "cpd"]
    assert {"a_mean", "a_std", "a_p", "a_p_holm", "a_lo", "a_hi", "a_diff_lo", "a_diff_hi",
            "avg_mean", "avg_std", "avg_p"} <= set(csv.columns)
    assert csv.set_index("label").loc["kd", "avg_std"] == 5
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
    assert list(df.index) == ["full", "no_curriculum", "same_run"]
    assert df.loc["no_curriculum", "a_mean"] == 21 and df.loc["no_curriculum", "b_std"] == 1
    assert df.loc["no_curriculum", "avg_mean"] == pytest.approx(14.5)
    # no_curriculum's examples equal kd's = full − 5 on a: significant; same_run: identical
    assert df.loc["no_curriculum", "a_p"] == 0.0
    assert df.loc["same_run", "a_p"] == 1.0
    f = T.format_table(df, "md").set_index("ablation")
    assert f.loc["no_curriculum", "a"].endswith("†")
    assert f.loc["full", "a"] == "**25.00 ± 1.00**" and f.loc["same_run", "a"] == f.loc["full", "a"]


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
    assert "**25.00 ± 1.00**†" in (tmp_path / "main.md").read_text()

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
    df = T.ablation_table(_ablation_runs(), abl)
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
    two = {**SCORES, "teacher": {"a": [40, 44], "b": [30, 30]}}
    df = T.main_table(make_runs(two)).set_index("method")
    assert df.loc["teacher", "n_seeds"] == 2
    assert df.loc["teacher", "a_mean"] == pytest.approx(42) and df.loc["teacher", "a_std"] == pytest.approx(math.sqrt(8))
    assert df.loc["teacher", "avg_std"] == pytest.approx(math.sqrt(2))
    notes = " ".join(df.attrs["footnote"])
    assert "mean ± sample std over 3 training seeds (teacher: mean ± sample std over 2 teacher seeds)" in notes


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
