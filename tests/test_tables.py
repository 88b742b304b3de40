"""Publication tables on hand-made long tables whose means, stds and p-values are known.

Rouge-L per run (3 training seeds, benchmarks a and b; avg = mean of a and b per run):

    method   a            b            avg per seed        mean ± std (ddof=1)
    teacher  40           30           35                  35 (one run)
    sft      11 12 13     4  6  8      7.5  9   10.5       a 12±1   b 6±2   avg 9±1.5
    kd       10 20 30     10 10 10     10   15  20         a 20±10  b 10±0  avg 15±5
    cpd      24 25 26     9  10 11     16.5 17.5 18.5      a 25±1   b 10±1  avg 17.5±1

Per-example scores (30 examples per benchmark): sft equals kd on every example (p = 1);
cpd is kd + 5 on every example of a (p = 1/(n_boot+1), the minimum) and kd ± 3 alternating
on b (mean difference exactly 0, p = 1). For avg the difference is 2.5 + (resampled b)/2 and
|resampled b| ≤ 3 < 5, so cpd's avg p is the minimum as well.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kdbench import tables as T
from kdbench.errors import UserError

N_BOOT = 199  # minimum p = 1/200 = 0.005
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
    return T.main_table(make_runs(), examples=make_examples(), n_boot=N_BOOT)


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
    assert main.loc["cpd", "a_p"] == pytest.approx(1 / (N_BOOT + 1))
    assert main.loc["cpd", "avg_p"] == pytest.approx(1 / (N_BOOT + 1))
    assert main.loc["cpd", "b_p"] == 1.0
    assert (main.loc["sft", ["a_p", "b_p", "avg_p"]] == 1.0).all()
    assert main.loc[["kd", "teacher"], ["a_p", "b_p", "avg_p"]].isna().all().all()


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


def test_paired_bootstrap_closed_form():
    ps, p_avg = T.paired_bootstrap([np.full(10, 2.0), np.zeros(10)], n_boot=99, seed=1)
    assert ps == [pytest.approx(0.01), 1.0]
    assert p_avg == pytest.approx(0.01)  # avg draws are constant 1.0, observed 1.0
    ps, p_avg = T.paired_bootstrap([np.array([])], n_boot=10)
    assert math.isnan(ps[0]) and math.isnan(p_avg)
    # a noisy difference of mean 0 is not significant; a large one is
    d = np.array([1.0, -1.0] * 20)
    assert T.paired_bootstrap([d], n_boot=199)[0][0] > 0.5
    assert T.paired_bootstrap([d + 3], n_boot=199)[0][0] == pytest.approx(1 / 200)
    with pytest.raises(UserError):
        T.paired_bootstrap([d], n_boot=0)


def test_write_table_files(main, tmp_path):
    paths = T.write_table(main, tmp_path / "out" / "main")
    assert [p.name for p in paths] == ["main.md", "main.csv", "main.tex"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []
    md = paths[0].read_text()
    assert "| method" in md and "**25.00 ± 1.00**†" in md and "paired bootstrap" in md
    csv = pd.read_csv(paths[1])
    assert list(csv["label"]) == ["teacher", "sft", "kd", "cpd"]
    assert {"a_mean", "a_std", "a_p", "avg_mean", "avg_std", "avg_p"} <= set(csv.columns)
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
                          examples=pd.concat([ex, nc], ignore_index=True), n_boot=N_BOOT)
    assert list(df.index) == ["full", "no_curriculum", "same_run"]
    assert df.loc["no_curriculum", "a_mean"] == 21 and df.loc["no_curriculum", "b_std"] == 1
    assert df.loc["no_curriculum", "avg_mean"] == pytest.approx(14.5)
    # no_curriculum's examples equal kd's = full − 5 on a: significant; same_run: identical
    assert df.loc["no_curriculum", "a_p"] == pytest.approx(1 / (N_BOOT + 1))
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
    paths = T.build_all(tmp_path, n_boot=N_BOOT)
    assert sorted(p.name for p in paths) == sorted(
        f"{t}.{e}" for t in ("main", "runtime") for e in ("md", "csv", "tex"))
    assert "**25.00 ± 1.00**†" in (tmp_path / "main.md").read_text()

    _ablation_runs().to_csv(tmp_path / "runs.csv", index=False)
    _ablations().to_csv(tmp_path / "ablations.csv", index=False)
    names = {p.name for p in T.build_all(tmp_path, n_boot=N_BOOT)}
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


def test_seed_counts_in_the_caption():
    """One training seed: "no std", not "std over 1 seeds"; two teacher seeds: the teacher row
    is their mean ± std (40/44 on a, 30/30 on b -> a 42 ± 2.83, avg 36 ± 1.41)."""
    one = {m: {b: v[:1] for b, v in per.items()} for m, per in SCORES.items()}
    df = T.main_table(make_runs(one), n_boot=N_BOOT)
    notes = " ".join(df.attrs["footnote"])
    assert "1 training seed, no std" in notes and "1 training seeds" not in notes
    assert "teacher: 1 teacher seed, no std" in notes
    two = {**SCORES, "teacher": {"a": [40, 44], "b": [30, 30]}}
    df = T.main_table(make_runs(two), n_boot=N_BOOT).set_index("method")
    assert df.loc["teacher", "n_seeds"] == 2
    assert df.loc["teacher", "a_mean"] == pytest.approx(42) and df.loc["teacher", "a_std"] == pytest.approx(math.sqrt(8))
    assert df.loc["teacher", "avg_std"] == pytest.approx(math.sqrt(2))
    notes = " ".join(df.attrs["footnote"])
    assert "mean ± sample std over 3 training seeds (teacher: mean ± sample std over 2 teacher seeds)" in notes
