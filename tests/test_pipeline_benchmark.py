"""benchmarks/pipeline.py --precision: a renamed copy of a profile with every training stage and
the sampling at one precision, and nothing else changed."""
import importlib.util
from pathlib import Path

import pytest

from kdbench import config as C

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("pipeline_bench", REPO / "benchmarks" / "pipeline.py")
pipeline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pipeline)


@pytest.mark.parametrize("name", ["default", "smoke"])
def test_at_precision_sets_every_stage_and_renames_the_profile(name):
    raw = C.read(REPO / "config" / f"{name}.yaml")
    copy = pipeline.at_precision(raw, "bf16")
    cfg, ref = C.validate(copy), C.validate(raw)
    assert cfg["profile"] == f"{name}-bf16"
    stages = [k for k, v in cfg["training"].items() if isinstance(v, dict) and "lr" in v]
    assert {"teacher", "student", "pretrain"} <= set(stages)
    assert all(cfg["training"][k]["precision"] == "bf16" for k in stages)
    assert cfg["evaluation"]["precision"] == "bf16"
    # everything else as the profile says; the profile's own dict is not modified
    assert raw["profile"] == name and all(v.get("precision", "fp32") == "fp32"
                                          for v in raw["training"].values() if isinstance(v, dict) and "lr" in v)
    assert cfg["training"]["per_method"] == ref["training"]["per_method"]
    for k in stages:
        assert {**cfg["training"][k], "precision": None} == {**ref["training"][k], "precision": None}
    for key in ("data", "pairs", "methods", "ablations"):
        assert cfg[key] == ref[key]


def test_the_214c625_default_profile_keeps_the_work_of_214c625():
    """benchmarks/profiles/default214.yaml: the default of 214c625 under today's schema, for a
    before/after timing of the engine: no per-epoch validation, one job per run, 57 runs."""
    cfg = C.validate(C.read(REPO / "benchmarks" / "profiles" / "default214.yaml"))
    assert cfg["profile"] == "default214"
    assert cfg["training"]["student"]["selection"] == cfg["training"]["teacher"]["selection"] == "last"
    assert cfg["training"]["student"]["epochs"] == 5 and cfg["data"]["synthetic_sizes"]["train"] == 3000
    assert cfg["distill"]["group_seeds"] is False
    assert len(C.runs(cfg)) == 57


def test_time_limit_interrupts_the_dag_and_reports_how_far_it_got(tmp_path, monkeypatch):
    """--time-limit: past the limit Snakemake gets SIGINT (it stops its jobs and exits), the run
    counts as not completed, and the stopped report lists the jobs whose timing files exist."""
    import subprocess
    import sys
    import types

    started, real_popen = [], subprocess.Popen
    # a stand-in for Snakemake that runs until interrupted and exits as Snakemake does then
    fake = ("import signal, sys, time\n"
            "signal.signal(signal.SIGINT, lambda *_: sys.exit(130))\n"
            "time.sleep(60)\n")

    def popen(cmd, **kw):
        if cmd[1:3] != ["-m", "snakemake"]:
            return real_popen(cmd, **kw)
        started.append(cmd)
        return real_popen([sys.executable, "-c", fake])

    monkeypatch.setattr(pipeline.subprocess, "Popen", popen)
    wall, cpu, done = pipeline.run("config/smoke.yaml", "1", 1, time_limit=2.0)
    assert not done and 2.0 <= wall < 30 and cpu >= 0
    assert len(started) == 1

    timings = tmp_path / "timings"
    (timings / "train_teacher").mkdir(parents=True)
    (timings / "train_teacher" / "seed0.tsv").write_text("s\tcpu_time\n12.5\t11.0\n")
    per_rule = pipeline.stage_times(timings)
    monkeypatch.setattr(pipeline, "REPO", tmp_path)
    args = types.SimpleNamespace(time_limit=0.5, cores="1", cold=True, note="")
    pipeline.partial({"profile": "smoke"}, args, 31.0, 20.0, per_rule, "")
    report = (tmp_path / "benchmarks" / "results" / "pipeline_smoke.md").read_text()
    assert "(stopped)" in report and "time limit (0.5 min)" in report
    assert "train_teacher" in report and "12.5" in report
