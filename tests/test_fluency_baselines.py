"""What Rouge-L misses: the teacher-scored fluency of answers (kdbench/fluency.py) and the
trivial baselines of the main table (kdbench/baselines.py, kdbench.tables.with_baselines)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from kdbench import plots as P
from kdbench import tables as T
from kdbench.baselines import LABELS, frequent_words, score
from kdbench.data import encode, format_prompt
from kdbench.fluency import answer_nll
from kdbench.generate import sample
from kdbench.metrics import rouge_l_per_example
from test_plots import fake_tables


# --- fluency --------------------------------------------------------------------------------

def test_answer_nll_is_the_mean_token_nll_of_the_answer_after_its_prompt(records, tokenizer, make_model):
    model = make_model().eval()
    recs = records[:3]
    answers = ["the cat sat on the mat", "", recs[2]["output"][0]]
    got = answer_nll(model, tokenizer, recs, answers, max_length=256)
    assert math.isnan(got[1])  # an empty answer has no tokens to judge
    for i in (0, 2):  # independently: the full forward of prompt + answer, log-softmax, gather
        prompt = tokenizer(format_prompt(recs[i]["instruction"], recs[i]["input"]))["input_ids"]
        answer = tokenizer(answers[i], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([prompt + answer])).logits[0].double().log_softmax(-1)
        want = -np.mean([float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(answer)])
        assert got[i] == pytest.approx(want, rel=1e-4)
    # smaller batches (by answer tokens, by positions) give the same numbers
    import kdbench.fluency as F
    old = F.LOGIT_BUDGET, F.POSITION_BUDGET
    try:
        F.LOGIT_BUDGET = model.config.vocab_size * 3  # three answer tokens per batch
        assert np.allclose(answer_nll(model, tokenizer, recs, answers, max_length=256), got, equal_nan=True)
        F.LOGIT_BUDGET, F.POSITION_BUDGET = old[0], 1  # one example per batch
        assert np.allclose(answer_nll(model, tokenizer, recs, answers, max_length=256), got, equal_nan=True)
    finally:
        F.LOGIT_BUDGET, F.POSITION_BUDGET = old


def test_word_salad_scores_far_above_the_teachers_own_answers(records, tokenizer, make_model):
    """A teacher fine-tuned on the records judges its own sampled answers far more fluent
    than shuffled words of the same references."""
    from kdbench.train import train

    judge = make_model(seed=3)
    budget = {"epochs": 15, "batch_size": 8, "grad_accum": 1, "lr": 0.02, "min_lr_ratio": 0.1, "warmup": 0.0,
              "weight_decay": 0.0, "grad_clip": 1.0, "loss_on": "response", "precision": "fp32",
              "bucket_window": 50, "selection": "last"}
    train(judge, encode(tokenizer, records, 256), budget, seed=0, pad_id=tokenizer.pad_token_id)
    judge.eval()
    recs = records[:20]
    own, _ = sample(judge, tokenizer, recs, seed=1, max_new_tokens=16, batch_size=20)
    rng = np.random.default_rng(0)
    vocab = sorted({w for r in recs for w in r["output"][0].split()})
    salad = [" ".join(rng.choice(vocab, size=6)) for _ in recs]
    own_nll = np.nanmean(answer_nll(judge, tokenizer, recs, own, max_length=256))
    salad_nll = np.nanmean(answer_nll(judge, tokenizer, recs, salad, max_length=256))
    assert salad_nll > own_nll + 0.5  # 3.70 against 2.61 nats on a 2-core EPYC (15 epochs)


def test_runtime_table_and_figure_show_the_fluency():
    t = fake_tables(["teacher", "kd", "srkl"], n_seeds=2, benchmarks=("synth",), n_examples=3,
                    n_epochs=1, steps_per_epoch=1, train_size=10, ablation_variants=False)
    runs = t["runs"].assign(teacher_nll=lambda d: np.where(d["method"] == "srkl", 6.0, 2.0))
    df = T.runtime_table(runs)
    assert df.loc["srkl", "teacher_nll_mean"] == pytest.approx(6.0) and "teacher NLL" in T.format_table(df).columns
    assert any("Teacher NLL" in n for n in df.attrs["footnote"])
    figs = []
    import kdbench.plots as KP
    save = KP.save
    KP.save = lambda fig, out: figs.append(fig) or []
    try:
        P.rouge_vs_length(runs, "unused")
        P.rouge_vs_length(t["runs"], "unused")  # runs scored before teacher_nll existed: one panel
    finally:
        KP.save = save
    two, one = figs
    assert len(one.axes) == 1 and len(two.axes) == 2
    xs = {round(float(line.get_xdata()[0]), 3) for line in two.axes[1].get_lines()}
    assert {2.0, 6.0} <= xs


# --- trivial baselines ------------------------------------------------------------------------

def test_frequent_words_closed_form():
    train = [{"output": ["the cat sat"]}, {"output": ["The cat, the dog!"]}, {"output": ["a b c d e"]}]
    # words: the x3, cat x2, then sat, dog, a, ... in order of first appearance; mean length 4
    assert frequent_words(train) == "the cat sat dog"
    assert frequent_words([{"output": ["x y"]}] * 2 + [{"output": ["x y x y x y"]}]) == "x y x"  # repeats


def test_baselines_are_scored_like_the_methods():
    train = [{"instruction": "i", "input": "", "output": ["red and blue"]}] * 3
    test = [{"instruction": "Name the colour.", "input": "the sky is blue", "output": ["blue", "it is blue"]},
            {"instruction": "Copy this: red and blue", "input": "", "output": ["red and blue"]}]
    df = score(train, {"t": test}).set_index("baseline")
    assert list(df.index) == list(LABELS)
    refs = [r["output"] for r in test]
    for name, answers in (("copy_input", ["the sky is blue", ""]),
                          ("copy_instruction", ["Name the colour.", "Copy this: red and blue"]),
                          ("frequent_words", ["red and blue"] * 2)):
        assert df.loc[name, "rouge_l"] == pytest.approx(np.mean(rouge_l_per_example(answers, refs)))
    assert df.loc["frequent_words", "answer_words"] == 3.0


def test_main_table_carries_the_baseline_rows_without_std_test_or_bold():
    t = fake_tables(["teacher", "kd", "sft"], n_seeds=3, benchmarks=("a", "b"), n_examples=8,
                    n_epochs=1, steps_per_epoch=1, train_size=10, ablation_variants=False)
    main = T.main_table(t["runs"], examples=t["examples"])
    base = pd.DataFrame({"baseline": ["copy_input", "copy_input", "frequent_words", "frequent_words"],
                         "benchmark": ["a", "b", "a", "b"], "rouge_l": [90.0, 80.0, 10.0, 20.0],
                         "answer_words": [5.0, 5.0, 7.0, 7.0]})
    df = T.with_baselines(main, base)
    assert list(df.index[:len(main)]) == list(main.index)  # the methods' rows are untouched
    row = df.loc[LABELS["copy_input"]]
    assert row["method"] == T.TRIVIAL and row["n_seeds"] == 0
    assert row["avg_mean"] == pytest.approx(85.0) and math.isnan(row["avg_std"]) and math.isnan(row["avg_p_holm"])
    shown = T.format_table(df).set_index("method")
    assert shown.loc[LABELS["copy_input"], "avg"] == "85.00"  # no ±, no †, never bold though highest
    assert shown.loc[LABELS["frequent_words"], "avg"] == "15.00"
    assert shown.loc[LABELS["copy_input"], "Δ avg"] == "–"  # never compared with kd
    assert "the 7 most frequent words" in df.attrs["footnote"][-1]
    assert T.with_baselines(main, None) is main
