"""Reliability, second round: names that pandas would read as missing, numbers written the
YAML 1.2 way, mistyped local sources, user data read by line (prompt/completion fields, empty
and corrupt files), what validate says prepare_data will drop, results that follow a data
edit, outputs that survive a failed rerun, the suspect of a diverging run, checkpoints that
load without running code. Each test fails on the tree before this round's fixes."""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_hub as fx  # noqa: E402
from kdbench_cli import REPO, tiny_profile  # noqa: E402

from kdbench import config as C  # noqa: E402
from kdbench import io, loaders  # noqa: E402
from kdbench.__main__ import main  # noqa: E402
from kdbench.errors import UserError  # noqa: E402
from kdbench.paths import MISSING_VALUE_NAMES, NAME_CHARS, SAFE_NAME, SAFE_PATH  # noqa: E402


@pytest.fixture
def smoke():
    return yaml.safe_load(open(REPO / "config" / "smoke.yaml"))


def _refused(raw, *words):
    with pytest.raises(UserError) as err:
        C.validate(raw)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


# --- names (case 5) ---------------------------------------------------------------------------

def test_the_missing_value_names_are_pandas_own():
    from pandas._libs.parsers import STR_NA_VALUES  # the list pandas.read_csv reads as missing by default

    assert set(MISSING_VALUE_NAMES) == {v for v in STR_NA_VALUES if re.fullmatch(NAME_CHARS, v)}
    assert C.schema()["$defs"]["name"]["pattern"] == SAFE_NAME and C.schema()["$defs"]["folder"]["pattern"] == SAFE_PATH
    assert not any(re.match(SAFE_NAME, v) for v in STR_NA_VALUES)
    assert re.match(SAFE_NAME, "Nonesuch") and re.match(SAFE_NAME, "nan0")


@pytest.mark.parametrize("name", MISSING_VALUE_NAMES)
@pytest.mark.parametrize("where", ["pair", "test set", "ablation row", "profile"])
def test_names_pandas_reads_as_missing_are_refused(smoke, name, where):
    raw = copy.deepcopy(smoke)
    if where == "pair":
        raw["pairs"] = {name: raw["pairs"]["tiny"]}
    elif where == "test set":
        raw["data"]["benchmarks"] = {name: "id"}
    elif where == "ablation row":
        raw["ablations"]["variants"][name] = {}
    else:
        raw["profile"] = name
    _refused(raw, repr(name), "missing value")


@pytest.mark.parametrize("key, value", [("results_dir", "results;touch x"), ("results_dir", "$(touch x)"),
                                         ("results_dir", "-rf"), ("methods_dir", "methods dir")])
def test_folders_that_reach_command_lines_are_checked(smoke, key, value):
    _refused({**smoke, key: value}, f"`{key}`", repr(value))


def test_ablation_row_names_are_checked(smoke):
    raw = copy.deepcopy(smoke)
    raw["ablations"]["variants"]["../../x y;touch PWNED"] = {}
    _refused(raw, "ablations.variants", "is not allowed")


def test_long_tables_keep_a_key_named_like_a_missing_value(tmp_path):
    from kdbench.tables import read_tables

    df = pd.DataFrame({"pair": ["NA", "None"], "method": ["null", "kd"], "variant": ["default"] * 2,
                       "seed": [0, 0], "benchmark": ["nan", "id"], "rouge_l": [1.5, None]})
    io.write_csv(tmp_path / "runs.csv", df)
    runs = read_tables(tmp_path, ["runs"])["runs"]
    assert runs["pair"].tolist() == ["NA", "None"] and runs["method"].tolist() == ["null", "kd"]
    assert runs["benchmark"].tolist() == ["nan", "id"]
    assert runs["rouge_l"].iloc[0] == 1.5 and pd.isna(runs["rouge_l"].iloc[1])  # an empty number stays missing


# --- numbers (case 6) -------------------------------------------------------------------------

def test_numbers_in_exponent_form_are_numbers_everywhere(smoke, tmp_path):
    raw = copy.deepcopy(smoke)
    raw["methods"] = {"include": ["kd", "skl"]}
    text = yaml.safe_dump(raw) + "\n"
    text = text.replace("training:\n", "training:\n  per_method:\n    kd: {lr: 3e-3}\n", 1)
    text = text.replace("methods:\n", "methods:\n  params:\n    skl: {alpha: 1e-1}\n", 1)
    (tmp_path / "p.yaml").write_text(text)
    assert yaml.safe_load(text)["training"]["per_method"]["kd"]["lr"] == "3e-3"  # what PyYAML (YAML 1.1) reads
    cfg = C.load(tmp_path / "p.yaml")
    assert C.student_budget(cfg, "kd")["lr"] == 0.003
    assert cfg["methods"]["params"]["skl"]["alpha"] == 0.1
    assert {r.variant for r in C.runs(cfg) if r.method == "skl"} == {"default"}  # the default, trained once


def test_strings_stay_strings_where_the_schema_wants_one(smoke):
    raw = copy.deepcopy(smoke)
    raw["data"]["benchmarks"] = {"1e5": "id"}
    assert list(C.validate(raw)["data"]["benchmarks"]) == ["1e5"]


def test_variants_with_equal_values_under_two_names_are_refused(smoke):
    raw = copy.deepcopy(smoke)
    raw["methods"] = {"include": ["skl"], "grids": {"skl": {"temperature": [2, 2.0]}}}
    _refused(raw, "'temperature-2'", "'temperature-2.0'", "same values")


# --- a mistyped local source (case 7) ---------------------------------------------------------

@pytest.mark.parametrize("typo", ["mydta", "mydata/raw.jsnol", "hub_data/dolly"])
def test_a_mistyped_local_source_stops_validate(smoke, tmp_path, monkeypatch, typo):
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "raw.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (tmp_path / "hub_data").mkdir()
    monkeypatch.chdir(tmp_path)
    raw = copy.deepcopy(smoke)
    raw["data"] = {"source": "hub", "train": typo, "benchmarks": {"t": "MiniLLM/dolly"}}
    raw["training"]["teacher_data"] = "train"
    raw["methods_dir"] = str(REPO / "methods")
    _refused(raw, "`data.train`", typo, "neither an existing file or folder", "hub id")
    raw["data"]["train"] = "MiniLLM/dolly"  # a hub id is left to prepare_data
    C.validate(raw)
    raw["pairs"]["tiny"]["teacher"] = {"init": "pretrained", "path": "hub_data/gtp2"}  # a model folder alike
    _refused(raw, "`pairs.tiny.teacher`", "hub_data/gtp2", "does not exist")
    raw["pairs"]["tiny"]["teacher"]["path"] = "gpt2"  # a model id without an owner is a hub id
    C.validate(raw)


# --- user data read by line (cases 4, 9, 10) --------------------------------------------------

def _lines(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


PC = {"instruction": "prompt", "output": "completion"}


def test_prompt_completion_rows_read_through_data_fields(tmp_path):
    rows = [{"prompt": "Name a colour.", "completion": "Red."}, {"prompt": "Two plus two?", "completion": "4"}]
    recs = loaders.load_instruction_split(_lines(tmp_path / "pc.jsonl", rows), fields=PC)
    assert [(r["instruction"], r["input"], r["output"]) for r in recs] == [
        ("Name a colour.", "", ["Red."]), ("Two plus two?", "", ["4"])]
    alpaca = loaders.load_instruction_split(_lines(tmp_path / "a.jsonl", [{"prompt": fx.alpaca("i", "c"), "output": "o"}]))
    assert (alpaca[0]["instruction"], alpaca[0]["input"]) == ("i", "c")  # MiniLLM's files: still parsed back


def test_an_empty_reference_is_named_by_its_line_with_the_right_fix(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, "", {"prompt": "c", "completion": " "}]
    with pytest.raises(UserError) as err:
        loaders.load_instruction_split(_lines(tmp_path / "pc.jsonl", rows), fields=PC)
    msg = str(err.value)
    assert "pc.jsonl, line 3 has an empty reference answer (field `completion`)" in msg
    assert "data.fields" not in msg
    with pytest.raises(UserError, match=r"line 2 has no reference answer field .* data\.fields\.output"):
        loaders.load_instruction_split(_lines(tmp_path / "no.jsonl", [{"prompt": "a", "completion": "b"},
                                                                     {"prompt": "c"}]), fields=PC)


def _hub_profile(tmp_path, train, **data) -> Path:
    cfg = tiny_profile(tmp_path)
    cfg["data"] = {"source": "hub", "train": str(train), "benchmarks": {"t": str(train)}, "max_length": 256, **data}
    cfg["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("stage", ["validate", "prepare_data"])
@pytest.mark.parametrize("case", ["empty file", "corrupt line"])
def test_bad_data_files_give_one_sentence(tmp_path, capfd, stage, case):
    good = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(30)]
    train = _lines(tmp_path / "train.jsonl", good[:4] + ['{"instruction": "q", "output": '] + good[4:])
    if case == "empty file":
        train.write_text("")
    assert main([stage, "--config", str(_hub_profile(tmp_path, train))]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kdbench {stage}: error: {train}"), err
    assert ("holds no examples" if case == "empty file" else "line 5, is not valid JSON") in err[0]
    assert not (tmp_path / "results").exists()


def test_validate_counts_what_prepare_data_drops_for_long_prompts(tmp_path, capsys):
    from kdbench import preflight, stages
    from kdbench.paths import Paths

    snapshot = fx.make_minillm_snapshot(tmp_path / "minillm")
    tok = fx.make_tokenizer(tmp_path / "tok")
    teacher = {"init": "pretrained", "path": fx.model_dir(tmp_path / "t", tok, len(tok))}
    cfg = fx.hub_cfg(tmp_path, teacher, {"init": "layers_from_teacher", "layers": [0]}, train=str(snapshot["dolly"]),
                     benchmarks={"dolly": str(snapshot["dolly"])}, max_prompt_tokens=27, train_limit=500)
    line = next(x for x in preflight.data_report(cfg) if "prepare_data will drop" in x)
    stages.prepare_data(cfg)
    report = io.read_json(Paths(cfg).data_report)
    # 1,003 lines: 100 held out for validation, 500 of the rest kept by train_limit; odd rows have long prompts
    assert report["train"]["dropped_long_prompts"] == 250 and report["validation"]["dropped_long_prompts"] == 50
    assert "drop 250 of 500 training examples (50%) and 50 of 100 validation examples (50%)" in line


# --- checkpoints hold tensors and plain values only (case 8) ----------------------------------

class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_planted_pickle_is_never_executed(tmp_path, make_model, capsys):
    import torch

    from kdbench.resume import Checkpoint

    bomb = _Boom()
    bomb.target = str(tmp_path / "PWNED")
    torch.save({"key": "k", "loop": bomb}, tmp_path / "run.pt")
    model = make_model()
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    assert Checkpoint(tmp_path / "run.pt", 0, key="k").restore(model, opt, sched, None) is None
    assert not (tmp_path / "PWNED").exists()
    assert "starting from step 0" in capsys.readouterr().err and not (tmp_path / "run.pt").exists()


# --- what a run leaves on disk (cases 4, 10) --------------------------------------------------

def test_a_read_only_results_folder_stops_snakemake_with_one_sentence(tmp_path):
    import os
    import subprocess

    from kdbench_cli import env, write_profile

    results = tmp_path / "results"
    results.mkdir()
    profile = write_profile(tmp_path, {**tiny_profile(tmp_path), "results_dir": str(results)})
    if os.geteuid() == 0:  # root ignores permissions; an immutable folder refuses it too
        if subprocess.run(["chattr", "+i", str(results)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only here")
    else:
        results.chmod(0o555)
    try:
        out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                              str(tmp_path), "--configfile", str(profile), "--cores", "1"],
                             capture_output=True, text=True, cwd=tmp_path, env=env())
    finally:
        subprocess.run(["chattr", "-i", str(results)], capture_output=True)
        results.chmod(0o755)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("kdbench: error: cannot write ") and "writable" in last
    assert not any(results.iterdir())


def test_emptied_checkpoint_folders_are_removed(tmp_path):
    ckpt = tmp_path / "checkpoints"
    (ckpt / "tiny" / "kd" / "default").mkdir(parents=True)
    (ckpt / "tiny" / "teacher_pretrain").mkdir(parents=True)
    (ckpt / "other" / "cpd" / "default").mkdir(parents=True)
    (ckpt / "other" / "cpd" / "default" / "seed0.pt").write_bytes(b"a live run's")
    io.remove_empty_folders(ckpt)
    assert sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*")) == [
        "other", "other/cpd", "other/cpd/default", "other/cpd/default/seed0.pt"]
    (ckpt / "other" / "cpd" / "default" / "seed0.pt").unlink()
    io.remove_empty_folders(ckpt)
    assert not ckpt.exists()
    io.remove_empty_folders(ckpt)  # nothing there: nothing to do
