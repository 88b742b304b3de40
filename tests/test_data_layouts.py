"""docs/data.md's worked example, run as written: a foreign data set in MiniLLM's layout
(raw.jsonl + valid.jsonl) with its own field names is validated (the printed reading must be
the one the page shows) and then goes through the whole DAG; an edit of its data file then
reruns prepare_data and what depends on it."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdbench import io
from kdbench.__main__ import main

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "data.md").read_text()


def _worked_example(folder: Path) -> Path:
    """Write the page's named blocks (`make_mydata.py`, `mydata.yaml`) into `folder`, run the
    script there and return the profile (pointed at this checkout's methods)."""
    blocks = dict(re.findall(r"`([\w./-]+)`:\n\n```\w*\n(.*?)```", DOC, re.S))
    assert set(blocks) == {"make_mydata.py", "mydata.yaml"}
    for name, text in blocks.items():
        (folder / name).write_text(text)
    subprocess.run([sys.executable, "make_mydata.py"], cwd=folder, check=True)
    profile = yaml.safe_load(blocks["mydata.yaml"])
    profile.update(methods_dir=str(REPO / "methods"), results_dir=str(folder / "results"))
    (folder / "mydata.yaml").write_text(yaml.safe_dump(profile))
    return folder / "mydata.yaml"


def test_validate_prints_the_reading_the_page_shows(tmp_path, capsys, monkeypatch):
    profile = _worked_example(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--config", str(profile)]) == 0
    printed = capsys.readouterr().out
    shown = re.search(r"`validate` prints how each source is read:\n\n```\n(.*?)```", DOC, re.S).group(1)
    assert shown.strip() in printed  # the page shows what validate prints
    assert "instruction <- question, input <- context, output <- answer" in printed


def test_validate_names_a_missing_field(tmp_path, capsys, monkeypatch):
    profile = _worked_example(tmp_path)
    raw = yaml.safe_load(profile.read_text())
    raw["data"]["fields"] = {"output": "answer"}  # instruction lives in `question`: not found
    profile.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--config", str(profile)]) == 2
    err = capsys.readouterr().err
    assert "mydata/raw.jsonl, line 1 has no instruction field" in err and "data.fields.instruction" in err


@pytest.mark.slow
def test_worked_example_runs_through_the_dag(tmp_path):
    profile = _worked_example(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(profile), "--cores", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    results = tmp_path / "results" / "mydata"
    assert "validation: the first 6 examples" in io.read_json(results / "data" / "report.json")["train"]["reading"]
    for method in ("sft", "kd"):
        answers = io.read_jsonl(results / "runs" / "tiny" / method / "default" / "seed0" / "answers" / "mytest.jsonl")
        assert len(answers) == 12 and all(isinstance(a["answer"], str) and a["ended"] in (True, False)
                                          for a in answers)
    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert set(runs["method"]) == {"teacher", "sft", "kd"} and set(runs["benchmark"]) == {"mytest"}
    assert runs[["length_ratio", "capped", "repetition"]].notna().all().all()
    assert runs["capped"].between(0, 1).all()
    assert "capped" in (results / "tables" / "runtime.md").read_text()
    assert not (results / "checkpoints").exists()  # each run removed its checkpoint, the DAG their folders

    # an edited data file reruns prepare_data and everything after it; the data is refreshed
    raw = tmp_path / "mydata" / "raw.jsonl"
    raw.write_text(raw.read_text() + json.dumps({"question": "What colour is the sun?", "context": "The sun is "
                                                 "yellow.", "answer": "The sun is yellow."}) + "\n")
    dry = subprocess.run(cmd + ["-n"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert "rule prepare_data:" in dry.stdout and "Updated input files: mydata/raw.jsonl" in dry.stdout, dry.stdout
    assert "rule distill:" in dry.stdout and "rule tables:" in dry.stdout
    assert len(io.read_jsonl(results / "data" / "train.jsonl")) == 54
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    train = io.read_jsonl(results / "data" / "train.jsonl")
    assert len(train) == 55 and train[-1]["instruction"] == "What colour is the sun?"
