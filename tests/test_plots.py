"""Figures: every function writes non-empty PNG and PDF files from small hand-made tables.

`fake_tables` builds a realistic set of the collect step's long tables (see the contract in
kdbench/tables.py); `python tests/test_plots.py OUT_DIR [--default]` writes them at full size (13
methods × 3 seeds × 3 benchmarks; --default: the embedded profile's synthetic benchmark
names) plus every figure, for looking at the figures by eye.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench import plots as P
from kdbench.errors import UserError

METHODS = ["teacher", "sft", "seqkd", "kd", "rkl", "skl", "srkl", "jsd", "tvd", "akl",
           "taid", "cpd", "pocl", "curriculum_kd"]
# Plausible average Rouge-L and training cost relative to kd, after the published numbers.
QUALITY = dict(teacher=23.4, sft=16.8, seqkd=17.2, kd=18.1, rkl=19.4, skl=19.9, srkl=21.4,
               jsd=19.4, tvd=20.7, akl=20.1, taid=20.9, cpd=21.9, pocl=19.7,
               curriculum_kd=18.9)
COST = dict(teacher=3.0, sft=0.62, seqkd=0.66, kd=1.0, rkl=1.01, skl=1.03, srkl=1.04,
            jsd=1.06, tvd=1.0, akl=1.12, taid=1.08, cpd=0.86, pocl=0.93, curriculum_kd=0.88)
CURRICULA = {"cpd", "pocl", "curriculum_kd"}


def fake_tables(methods=METHODS, n_seeds=3, benchmarks=("dolly", "selfinst", "synth"),
                n_examples=40, n_eval_seeds=2, n_epochs=4, steps_per_epoch=25,
                train_size=1000, ablation_variants=True, leveled=("synth",), rng=0,
                babbler="srkl") -> dict[str, pd.DataFrame]:
    """Long tables (runs, examples, trace, epochs, bin_loss, ablations) of one pair "p".

    The benchmarks in `leveled` carry difficulty levels 1–5 (harder: lower Rouge-L); the
    others have NaN difficulty. Curricula (cpd, pocl, curriculum_kd) train on growing
    subsets; cpd logs alpha and temperature per epoch. `babbler` writes long answers that
    mostly hit the generation cap (runs.csv's answer-shape columns).
    """
    rng = np.random.default_rng(rng)
    keys = [(m, "default") for m in methods]
    ablations = pd.DataFrame(columns=["ablation", "method", "variant"])
    if ablation_variants and "cpd" in methods:
        keys += [("cpd", "curriculum-false"), ("cpd", "alpha_start-0.1")]
        ablations = pd.DataFrame(
            [("full", "cpd", "default"), ("no_curriculum", "cpd", "curriculum-false"),
             ("fixed_alpha", "cpd", "alpha_start-0.1")],
            columns=["ablation", "method", "variant"])
    q = dict(QUALITY)
    q.update({("cpd", "curriculum-false"): 20.6, ("cpd", "alpha_start-0.1"): 21.0})
    runs, examples, trace, epochs, bins = [], [], [], [], []
    for m, v in keys:
        base = q.get((m, v), q.get(m, 18.0))
        cost = COST.get(m, 1.0) * (1.15 if v == "curriculum-false" else 1.0)
        seeds = [0] if m == "teacher" else range(n_seeds)
        for s in seeds:
            seed_eff = rng.normal(0, 0.35)
            if m in CURRICULA and v != "curriculum-false":
                sizes = np.linspace(0.3 if m == "cpd" else 0.25, 1, n_epochs) * train_size
            else:
                sizes = np.full(n_epochs, train_size)
            sizes = sizes.astype(int)
            wall = 120.0 * cost * (1 + rng.normal(0, 0.03))
            for bi, b in enumerate(benchmarks):
                offset = (bi - 1) * 4.0
                per_ex = []
                for e in range(n_eval_seeds):
                    for i in range(n_examples):
                        level = 1 + i % 5 if b in leveled else np.nan
                        hard = 0 if b not in leveled else (level - 3) * (3.0 + (base - 18) * 0.3)
                        r = base + offset + seed_eff - hard + np.sin(i) * 6 + rng.normal(0, 4)
                        r = float(np.clip(r, 0, 100))
                        per_ex.append(r)
                        examples.append(dict(pair="p", method=m, variant=v, seed=s,
                                             benchmark=b, eval_seed=10 * (e + 1),
                                             example_id=f"{b}-{i}", task=b,
                                             difficulty=level, rouge_l=r))
                runs.append(dict(
                    pair="p", method=m, variant=v, seed=s, benchmark=b,
                    rouge_l=float(np.mean(per_ex)), rouge_l_eval_std=0.3,
                    n_eval_seeds=n_eval_seeds, n_examples=n_examples,
                    train_wall_s=wall, train_tokens=int(sizes.sum() * 60),
                    train_examples=int(sizes.sum()),
                    train_tokens_per_s=sizes.sum() * 60 / wall,
                    gen_tokens_per_s=900 + rng.normal(0, 20), student_params=124_000_000,
                    length_ratio=4.0 if m == babbler else 0.9 + 0.2 * rng.random(),
                    capped=0.9 if m == babbler else 0.05, repetition=0.02))
            # trace / epochs / bin_loss
            step, seen, t = 0, 0, 0.0
            lo = {"sft": 2.2, "seqkd": 2.1, "tvd": 0.25}.get(m, 0.6 + (m == "teacher") * 1.2)
            for ep, size in enumerate(sizes):
                n_steps = max(1, int(steps_per_epoch * size / train_size))
                alpha = 0.9 - 0.8 * ep / max(1, n_epochs - 1)
                tau = 1 + ep / max(1, n_epochs - 1)
                for _ in range(n_steps):
                    step += 1
                    seen += size // n_steps
                    t += wall / (steps_per_epoch * n_epochs)
                    decay = np.exp(-step / 40)
                    ce = 2.4 + 1.8 * decay + rng.normal(0, 0.05)
                    loss = lo * (1 + 2.0 * decay) * (1 + rng.normal(0, 0.04))
                    row = dict(pair="p", method=m, variant=v, seed=s, step=step, epoch=ep,
                               loss=loss if m not in ("sft", "seqkd") else ce, ce=ce,
                               distill=loss, lr=5e-4, tokens=seen * 60, examples=seen,
                               wall_s=t, alpha=np.nan, temperature=np.nan)
                    if m == "cpd":
                        row.update(alpha=alpha, temperature=tau)
                    trace.append(row)
                frac = size / train_size
                epochs.append(dict(pair="p", method=m, variant=v, seed=s, epoch=ep,
                                   n_examples=size, n_tokens=size * 60,
                                   wall_s=wall * size / sizes.sum(),
                                   mean_difficulty=(0.5 * frac if m in CURRICULA else 0.5)
                                   + rng.normal(0, 0.005),
                                   alpha=alpha if m == "cpd" else np.nan,
                                   temperature=tau if m == "cpd" else np.nan))
                for b in range(1, 6):
                    seen_bin = b <= int(np.ceil(5 * frac - 1e-9))
                    bins.append(dict(pair="p", method=m, variant=v, seed=s, epoch=ep, bin=b,
                                     n_examples=int(train_size / 5) if seen_bin else 0,
                                     ce=(2.0 + 0.25 * b - 0.15 * ep + rng.normal(0, 0.02))
                                     if seen_bin else np.nan))
    return dict(runs=pd.DataFrame(runs), examples=pd.DataFrame(examples),
                trace=pd.DataFrame(trace), epochs=pd.DataFrame(epochs),
                bin_loss=pd.DataFrame(bins), ablations=ablations)


SMALL = ["teacher", "sft", "kd", "cpd", "pocl"]


@pytest.fixture(scope="module")
def small():
    return fake_tables(SMALL, n_seeds=2, benchmarks=("dolly", "synth"), n_examples=10,
                       n_epochs=3, steps_per_epoch=6, train_size=100, babbler="pocl")


def _assert_files(paths, out):
    assert [p.name for p in paths] == [f"{out.name}.png", f"{out.name}.pdf"]
    png, pdf = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 2000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporaries left"


@pytest.mark.parametrize("name,table", [
    ("rouge_by_method", "runs"), ("train_time", "runs"), ("quality_vs_cost", "runs"),
    ("rouge_vs_length", "runs"),
    ("training_curves", "trace"), ("rouge_by_difficulty", "examples"),
    ("method_schedule", "epochs"), ("bin_loss", "bin_loss"), ("data_fraction_pareto", "runs"),
    ("curriculum_subsets", "epochs")])
def test_figure_writes_png_and_pdf(small, tmp_path, name, table):
    out = tmp_path / "figs" / name
    kwargs = {"method": "cpd"} if name in ("method_schedule", "bin_loss") else {}
    paths = getattr(P, name)(small[table], out, **kwargs)
    _assert_files(paths, out)


def test_rouge_by_difficulty_without_levels_returns_nothing(small, tmp_path):
    ex = small["examples"].assign(difficulty=np.nan)
    assert P.rouge_by_difficulty(ex, tmp_path / "d") == []
    assert P.rouge_by_difficulty(ex.drop(columns="difficulty"), tmp_path / "d") == []
    assert list(tmp_path.iterdir()) == []


def test_schedule_and_bin_loss_skip_an_absent_method(small, tmp_path):
    assert P.method_schedule(small["epochs"], tmp_path / "s", method="nosuch") == []
    assert P.bin_loss(small["bin_loss"], tmp_path / "b", method="nosuch") == []


def test_one_epoch_schedule_has_a_whole_epoch_axis_and_visible_comparisons(monkeypatch, tmp_path):
    """One epoch: a single tick "1" in a unit-wide axis (not matplotlib's fractional ±5%), and
    comparison runs drawn hollow above the main run, so one that coincides with it (all data
    in a one-epoch run) still shows its marker."""
    t = fake_tables(["kd", "cpd", "pocl"], n_seeds=1, benchmarks=("synth",), n_examples=4,
                    n_epochs=1, steps_per_epoch=3, train_size=100, ablation_variants=False)
    figs = []
    monkeypatch.setattr(P, "save", lambda fig, out: figs.append(fig) or [])
    P.method_schedule(t["epochs"], tmp_path / "s", method="cpd")
    (fig,) = figs
    size_ax = fig.axes[2]
    assert size_ax.get_xlim() == (0.5, 1.5) and list(size_ax.get_xticks()) == [1]
    lines = {line.get_label(): line for line in size_ax.get_lines()}
    # one epoch shows no curriculum to discover (subset sizes cannot vary), so pocl is not drawn
    assert set(lines) == {"cpd", "kd (all data)"}
    for label in ("kd (all data)",):
        assert lines[label].get_markerfacecolor() == "none"
        assert lines[label].get_zorder() > lines["cpd"].get_zorder()
    assert "one epoch" in fig._suptitle.get_text()


def test_rouge_vs_length_rings_the_babbler(small, monkeypatch, tmp_path):
    """The row whose answers mostly hit the cap (pocl in `small`) is ringed, far right;
    runs scored before the answer-shape columns existed draw nothing."""
    figs = []
    monkeypatch.setattr(P, "save", lambda fig, out: figs.append(fig) or [])
    P.rouge_vs_length(small["runs"], tmp_path / "r")
    (fig,) = figs
    ax = fig.axes[0]
    rings = [line for line in ax.get_lines() if line.get_markeredgecolor() == "#CC3311"]
    assert len(rings) == 1 and rings[0].get_xdata()[0] == pytest.approx(4.0)
    assert ax.get_xscale() == "log"
    old = small["runs"].drop(columns=["length_ratio", "capped", "repetition"])
    assert P.rouge_vs_length(old, tmp_path / "old") == []


def test_several_pairs_need_a_choice(small, tmp_path):
    two = pd.concat([small["runs"], small["runs"].assign(pair="q")])
    with pytest.raises(UserError, match="several pairs"):
        P.train_time(two, tmp_path / "t")


def test_data_fraction_pareto_shows_curricula_ablations_and_kd(small, tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(P, "save", lambda fig, out: figs.append(fig) or [Path(out)])
    P.data_fraction_pareto(small["runs"], tmp_path / "p", small["ablations"])
    ax = figs[0].axes[0]
    labels = {t.get_text() for t in ax.texts}
    # curricula (fewer examples than kd), every ablation row, kd itself; not full-data others
    assert labels == {"kd", "cpd", "pocl", "cpd (no_curriculum)", "cpd (fixed_alpha)"}
    # x is examples seen / kd's: kd at 1, cpd's subsets (0.3..1 linearly over 3 epochs) 0.65
    xs = {t.get_text(): t.xy[0] for t in ax.texts}
    assert xs["kd"] == 1.0 and xs["cpd"] == pytest.approx(0.65, abs=0.01)


def test_curriculum_subsets_merges_runs_on_the_same_subsets(small, tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(P, "save", lambda fig, out: figs.append(fig) or [Path(out)])
    ep = small["epochs"]
    cpd = ep[(ep["method"] == "cpd") & (ep["variant"] == "default")]
    twin = cpd.assign(variant="alpha_start-0.1")
    P.curriculum_subsets(pd.concat([ep[ep["variant"] != "alpha_start-0.1"], twin]),
                         tmp_path / "s", small["ablations"])
    labels = [t.get_text() for t in figs[0].legends[0].get_texts()]
    assert "cpd, cpd (fixed_alpha)" in labels and "all data" in labels
    assert not any("kd" == lab or "no_curriculum" in lab for lab in labels)  # full data


def test_pareto_front():
    # cost, quality: (1,1) (2,3) (3,2) dominated by (2,3), (4,5), (4,4) dominated at equal cost
    front = P.pareto_front([1, 2, 3, 4, 4], [1, 3, 2, 5, 4])
    assert front.tolist() == [0, 1, 3]


def test_colours_are_fixed_per_method():
    assert P.method_color("kd") == P.METHOD_COLORS["kd"]
    assert P.method_color("new_method") == P.method_color("new_method")
    assert len(set(P.METHOD_COLORS.values())) == len(P.METHOD_COLORS)
    assert len(set(P.METHOD_MARKERS.values())) == len(P.METHOD_MARKERS)


def test_build_all_makes_every_figure(small, tmp_path, monkeypatch):
    # Rendering is covered above; here only which figures get drawn (save is stubbed).
    saved = []
    monkeypatch.setattr(P, "save", lambda fig, out: saved.append(Path(out)) or [Path(out)])
    tables = tmp_path / "tables"
    tables.mkdir()
    for name, fname in [("runs", "runs.csv"), ("examples", "examples.csv.gz"),
                        ("trace", "trace.csv.gz"), ("epochs", "epochs.csv"),
                        ("bin_loss", "bin_loss.csv"), ("ablations", "ablations.csv")]:
        small[name].to_csv(tables / fname, index=False)
    paths = P.build_all(tables, tmp_path / "figures", method="cpd")
    assert paths == saved
    assert sorted(p.name for p in paths) == sorted(
        ["rouge_by_method", "train_time", "quality_vs_cost", "rouge_vs_length", "training_curves",
         "rouge_by_difficulty", "cpd_schedule", "bin_loss", "data_fraction_pareto",
         "curriculum_subsets"])
    assert all(p.parent == tmp_path / "figures" for p in paths)
    # Only runs.csv: the figures that need other tables are skipped, not failed.
    (tables / "trace.csv.gz").unlink()
    (tables / "epochs.csv").unlink()
    (tables / "bin_loss.csv").unlink()
    (tables / "examples.csv.gz").unlink()
    paths = P.build_all(tables, tmp_path / "figures2", method="cpd")
    assert sorted(p.name for p in paths) == ["data_fraction_pareto", "quality_vs_cost",
                                             "rouge_by_method", "rouge_vs_length", "train_time"]


if __name__ == "__main__":  # full-size figures for eyeballing
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = Path(args[0] if args else "fake_figures")
    (out / "tables").mkdir(parents=True, exist_ok=True)
    synthetic = ("id", "paraphrase", "hard")  # the embedded default's benchmarks
    t = fake_tables(**({"benchmarks": synthetic, "leveled": synthetic}
                       if "--default" in sys.argv else {}))
    for name, fname in [("runs", "runs.csv"), ("examples", "examples.csv.gz"),
                        ("trace", "trace.csv.gz"), ("epochs", "epochs.csv"),
                        ("bin_loss", "bin_loss.csv"), ("ablations", "ablations.csv")]:
        t[name].to_csv(out / "tables" / fname, index=False)
    for p in P.build_all(out / "tables", out / "figures", method="cpd"):
        print(p)
