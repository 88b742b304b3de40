"""`python -m kdbench validate` beyond the schema (kdbench/preflight.py), and the one π a
single epoch gets across curricula and schedules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from kdbench import config as C
from kdbench import curriculum
from kdbench.__main__ import main
from kdbench.method import Progress, get, instantiate

ROOT = Path(__file__).resolve().parents[1]


def _smoke(tmp_path, **student) -> Path:
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["training"]["student"].update(student)
    raw["methods_dir"] = str(ROOT / "methods")
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_one_epoch_is_the_last_for_curricula_and_schedules():
    """E = 1: π = 1 for Progress, the curriculum and every per-epoch schedule (all data, end values)."""
    assert Progress(epoch=0, n_epochs=1).epoch_fraction == curriculum.epoch_progress(0, 1) == 1.0
    assert [Progress(epoch=e, n_epochs=3).epoch_fraction for e in range(3)] == [0.0, 0.5, 1.0]
    cpd = instantiate(get("cpd", ROOT / "methods"), {}, "cpd")
    v = cpd.schedule(Progress(epoch=0, n_epochs=1, epoch_step=0, epoch_steps=5))
    assert (v["alpha"], v["temperature"], v["curriculum_progress"]) == pytest.approx((0.1, 2.0, 1.0))
    d = np.linspace(0, 1, 50)
    (subset,) = curriculum.build_subsets(d, 1)
    assert sorted(subset) == list(range(50))  # the curriculum's π = 1: all data


def test_validate_warns_on_a_one_epoch_cpd_profile(tmp_path, capsys):
    assert main(["validate", "--config", str(_smoke(tmp_path, epochs=1))]) == 0
    err = capsys.readouterr().err
    cpd = next(line for line in err.splitlines() if "cpd/default" in line)
    assert "epochs: 1" in cpd and "curriculum trains on all data" in cpd and "alpha = 0.1" in cpd
    assert "needs 2 or more epochs" in cpd
    assert "score_difficulty stage will score every training prompt" in err


def test_validate_is_quiet_when_the_schedules_move(tmp_path, capsys):
    assert main(["validate", "--config", str(_smoke(tmp_path, epochs=2))]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_per_step_schedule_still_moves_in_one_epoch(tmp_path):
    raw = yaml.safe_load(_smoke(tmp_path, epochs=1).read_text())
    raw["methods"] = {"include": ["kd", "cpd"], "params": {"cpd": {"granularity": "step"}}}
    raw["ablations"] = {"method": None}
    from kdbench import preflight

    warnings = preflight.schedule_warnings(C.validate(raw))
    assert len(warnings) == 2 and "cpd/granularity-step" in warnings[0]
    assert "curriculum trains on all data" in warnings[0] and "schedule" not in warnings[0]
    assert "no run's curriculum uses the profile" in warnings[1]


def test_a_per_method_epoch_override_counts(tmp_path):
    """cpd with `training.per_method.cpd.epochs: 2` in a 1-epoch profile moves its curriculum
    (config/paper-gpt2-shapes.yaml): no warning; the override's key is named when it is too few."""
    from kdbench import preflight

    raw = yaml.safe_load(_smoke(tmp_path, epochs=1).read_text())
    raw["methods"] = {"include": ["kd", "cpd"]}
    raw["ablations"] = {"method": None}
    raw["training"]["per_method"] = {"cpd": {"epochs": 2}}
    assert preflight.schedule_warnings(C.validate(raw)) == []
    raw["training"]["student"]["epochs"] = 3
    raw["training"]["per_method"] = {"cpd": {"epochs": 1}}
    (warning, unused) = preflight.schedule_warnings(C.validate(raw))
    assert "cpd/default: with training.per_method.cpd.epochs: 1" in warning and "curriculum" in unused
