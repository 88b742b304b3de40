"""The Snakemake profiles under profiles/: one GPU job at a time locally, every rule on SLURM."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GPU_RULES = {"train_teacher", "init_student", "sft_init", "cache_teacher", "score_difficulty",
             "teacher_samples", "distill", "tune_run"}
CPU_RULES = {"prepare_data", "train_tokenizer", "teacher_gate", "baselines", "collect", "tables", "figures", "tune"}


def _profile(name):
    return yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())


def _snakemake_args(name):
    """The profile as snakemake 9 turns it into command-line arguments."""
    from snakemake.profiles import ProfileConfigFileParser

    with open(ROOT / "profiles" / name / "config.yaml") as f:
        return ProfileConfigFileParser().parse(f)


def _rule_resources() -> dict[str, str]:
    """{rule: its `resources:` block text} from workflows/*.smk."""
    import re

    out = {}
    for smk in (ROOT / "workflows").glob("*.smk"):
        for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", smk.read_text(), re.M):
            res = re.search(r"^\s+resources:\n((?:\s{8}.*\n)+)", m.group(2), re.M)
            out[m.group(1)] = res.group(1) if res else ""
    return out


def test_default_profile_limits_the_gpu_to_one_job():
    prof = _profile("default")
    assert prof["resources"] == {"gpu": 1}
    assert prof["printshellcmds"] is True and prof["rerun-incomplete"] is True
    assert "set-resources" not in prof  # the rules declare gpu themselves
    args = _snakemake_args("default")
    assert args["resources"] == ["gpu=1"]
    res = _rule_resources()
    assert {r for r, block in res.items() if "gpu=GPU" in block} == GPU_RULES
    assert "GPU = 1 if shutil.which(\"nvidia-smi\") else 0" in (ROOT / "workflows" / "common.smk").read_text()


def test_slurm_profile_has_every_rule_and_gpus_where_needed():
    prof = _profile("slurm")
    assert prof["executor"] == "slurm" and int(prof["jobs"]) > 0
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb", "cpus_per_task"} <= set(prof["default-resources"])
    res = prof["set-resources"]
    assert set(res) == GPU_RULES | CPU_RULES
    assert {r for r in res if res[r].get("gpu") == 1} == GPU_RULES
    assert all("gres" not in v for v in res.values())  # the plugin refuses gpu and gres together
    args = _snakemake_args("slurm")
    assert "distill:gpu=1" in args["set-resources"] and "collect:gpu=1" not in args["set-resources"]

