"""Starting points (docs/protocol.md, "Starting points and per-pair constants"): each method
declares where its student starts (`Method.starts_from`); the sft_init stage fine-tunes the
pre-trained student for the methods that start from it, and the DAG builds it only then."""
import re
import subprocess
import sys

import pytest
import torch

from kdbench import io
from kdbench import method as M
from kdbench import models
from kdbench.errors import UserError
from kdbench.paths import Paths
from kdbench_cli import REPO, env, prepare_tree, tiny_profile, write_profile

# from each reference's scripts: DistiLLM's distillm/ and gkd/ scripts load results/*/train/init/,
# MiniLLM's minillm/ scripts an SFT-initialised student, ABKD's scripts/gpt2/ab/*.sh the init
# checkpoint, DistiLLM-2's configs an SFT'd student (model_name_or_path: outputs/*-sft); the
# divergence baselines, SFT, SeqKD and POCL load the pre-trained checkpoint (DistiLLM and POCL
# scripts/*/kd, sft, seqkd, pocl)
FROM_SFT = {"distillm", "gkd", "minillm", "abkd", "distillm2"}


def test_every_method_starts_where_its_reference_scripts_do():
    starts = {name: cls.starts_from for name, cls in M.discover(REPO / "methods").items()}
    assert set(starts.values()) <= set(M.STARTS)
    assert {n for n, s in starts.items() if s == "sft"} == FROM_SFT & set(starts)


def test_an_unknown_start_is_refused_in_one_sentence(tmp_path):
    (tmp_path / "odd.py").write_text("from kdbench.method import Method as B\n"
                                     "class Method(B):\n    needs_teacher = False\n    starts_from = 'finetuned'\n")
    with pytest.raises(UserError, match=r"starts_from = 'finetuned'.*pretrained, sft"):
        M.discover(tmp_path)


def test_sft_init_fine_tunes_the_pretrained_student_and_keeps_its_vocabulary(tmp_path):
    from kdbench import stages as S
    from kdbench.data import encode, load_records

    cfg = prepare_tree(tmp_path, tiny_profile(tmp_path, methods={"include": ["gkd"]}),
                       stages=("prepare_data", "train_tokenizer", "init_student"))
    cfg["training"]["init"] = {"epochs": 2, "selection": "last"}
    S.sft_init(cfg, "tiny", 0)
    P = Paths(cfg)
    pre, sft = models.load_model(P.student_init("tiny", 0)), models.load_model(P.student_sft("tiny", 0))
    info = io.read_json(f"{P.student_sft('tiny', 0)}/kdbench.json")
    assert info["shared_vocab_size"] == io.read_json(f"{P.student_init('tiny', 0)}/kdbench.json")["shared_vocab_size"]
    assert info["sft_init"]["n_epochs"] == 2 and info["sft_init"]["train_steps"] > 0
    # fine-tuned on the references: its cross-entropy on the training responses is lower
    tok = models.load_tokenizer(P.student_sft("tiny", 0))
    ex = encode(tok, load_records(P.data("train")), cfg["data"]["max_length"])
    assert _response_ce(sft, ex, tok.pad_token_id) < _response_ce(pre, ex, tok.pad_token_id)


def _response_ce(model, examples, pad_id) -> float:
    from kdbench.data import collate

    batch = collate(examples, pad_id, "response")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    return float(torch.nn.functional.cross_entropy(logits[batch["mask"]], batch["targets"][batch["mask"]]))


@pytest.mark.parametrize("methods, n_sft", [(["kd", "sft"], 0), (["kd", "gkd"], 2)])
def test_the_dag_builds_the_fine_tuned_start_only_for_methods_that_need_it(tmp_path, methods, n_sft):
    cfg = tiny_profile(tmp_path, methods={"include": methods}, training_seeds=2)
    cfg["distill"] = {"cache_teacher": False}
    path = write_profile(tmp_path, cfg)
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(path), "--cores", "1"],
                         capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout[out.stdout.index("Job stats:"):], re.M))
    assert int(jobs.get("sft_init", 0)) == n_sft
    if n_sft:  # gkd's distill job reads the fine-tuned start, kd's the pre-trained one
        assert re.search(r"rule distill:\n\s+input:[^\n]*student_sft/seed0", out.stdout)


# --- one tuning budget for all: `snakemake tune` -------------------------------------------------

def test_tune_runs_every_main_method_at_every_rate_and_samples_no_test_set(tmp_path):
    cfg = tiny_profile(tmp_path, methods={"include": ["kd", "sft"], "grids": {"kd": {"temperature": [1.0, 2.0]}}},
                       tuning={"lr": [0.001, 0.01]},
                       ablations={"method": "kd", "variants": {"full": {}, "hot": {"temperature": 4.0}}})
    path = write_profile(tmp_path, cfg)
    out = subprocess.run([sys.executable, "-m", "snakemake", "tune", "-n", "-s", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path), "--configfile", str(path), "--cores", "1"],
                         capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout[out.stdout.index("Job stats:"):], re.M))
    # kd default + kd temperature-2 + sft, at 2 rates; the ablation-only row trains at kd's choice
    assert int(jobs["tune_run"]) == 3 * 2 and "distill" not in jobs and int(jobs["tune"]) == 1
    assert "temperature-4" not in out.stdout
    tune_inputs = re.findall(r"rule tune_run:\n\s+input: ([^\n]*)", out.stdout)
    assert tune_inputs and not any("data/id.jsonl" in i for i in tune_inputs)  # the test set is not read


def test_the_choice_is_the_best_validation_score_and_lands_in_the_report(tmp_path):
    from kdbench import config as C
    from kdbench import tuning

    cfg = C.validate({**tiny_profile(tmp_path, methods={"include": ["kd", "sft"]}, tuning={"lr": [0.001, 0.003, 0.01]}),
                      "results_dir": str(tmp_path / "results")})
    scores = {("kd", 0.001): 10.0, ("kd", 0.003): 12.5, ("kd", 0.01): 11.0,
              ("sft", 0.001): 9.0, ("sft", 0.003): 8.0, ("sft", 0.01): 9.0}  # sft: a tie goes to the smaller rate
    for (m, lr), v in scores.items():
        io.write_json(Paths(cfg).tuning_result("tiny", m, "default", lr),
                      {"val_rouge_l_selected": v, "selected_epoch": 0, "n_epochs": 1, "train_wall_s": 1.0,
                       "device": "cpu: test"})
    df = tuning.results(cfg)
    assert dict(zip(df.loc[df["chosen"], "method"], df.loc[df["chosen"], "lr"])) == {"kd": 0.003, "sft": 0.001}
    text = tuning.report(cfg, df)
    assert "| kd | 10.00 | **12.50** | 11.00 | 0.003 |" in text
    assert "| sft | **9.00** | 8.00 | 9.00 | 0.001 † |" in text  # at the edge of the grid
    assert "    kd: {lr: 0.003}" in text and "    sft: {lr: 0.001}" in text


def test_a_tuning_seed_outside_the_training_seeds_is_refused(tmp_path):
    from kdbench import config as C

    with pytest.raises(UserError, match=r"`tuning.seed` is 3.*seeds 0..0"):
        C.validate(tiny_profile(tmp_path, tuning={"lr": [0.001], "seed": 3}))


def test_the_default_profile_trains_every_main_method_at_its_committed_tuning_choice():
    """`training.per_method` is pasted by hand from `snakemake tune`'s report; a stale line would
    run a method at a rate the committed grid did not choose."""
    import pandas as pd

    from kdbench import config as C

    cfg = C.load(REPO / "config" / "default.yaml")
    grid = pd.read_csv(REPO / Paths(cfg).tuning_table)  # results_dir is relative to the repository
    assert set(grid.lr) == set(cfg["tuning"]["lr"])
    chosen = grid[grid.chosen].set_index("method").lr
    assert len(chosen) == grid.method.nunique()
    for method, lr in chosen.items():
        assert C.student_budget(cfg, method)["lr"] == pytest.approx(lr), method
