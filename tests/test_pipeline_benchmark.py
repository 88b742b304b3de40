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
