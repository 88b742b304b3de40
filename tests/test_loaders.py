"""kdbench.loaders: MiniLLM-layout loaders, the prompt-length filter and prepare_data's
validation split. Everything runs offline on fixtures written to tmp folders
(tests/fixtures_loaders.py)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_hub as fx  # noqa: E402

from kdbench import loaders  # noqa: E402
from kdbench.errors import UserError  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    fx.go_offline(monkeypatch)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return fx.make_minillm_snapshot(tmp_path_factory.mktemp("minillm"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_cache")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return fx.make_tokenizer(tmp_path_factory.mktemp("tok"))



# ----------------------------------------------------------------------------- prompt


def test_prompt_template_is_data_modules_and_parses_back():
    from kdbench import data

    assert not hasattr(loaders, "PROMPT_TEMPLATE") and not hasattr(loaders, "format_prompt")  # one template: data's
    assert data.format_prompt("name three colors") == fx.alpaca("name three colors")
    assert data.format_prompt("give the capital", "paris") == fx.alpaca("give the capital", "paris")
    assert loaders.parse_prompt(fx.alpaca("a\nb", "c\n\nd")) == ("a\nb", "c\n\nd")
    assert loaders.parse_prompt(fx.alpaca("x").replace("\n", "<n>")) == ("x", "")  # MiniLLM .txt escape
    assert loaders.parse_prompt("Question: x\nAnswer:") is None


# ----------------------------------------------------------------------------- loaders


def test_dolly_test_split_is_normalised(snapshot, cache):
    recs = loaders.load_instruction_split(snapshot["dolly"], cache_dir=cache)
    assert recs == [
        {"id": "dolly-test-0", "instruction": "name three colors", "input": "", "output": ["red green blue"],
         "task": "dolly", "difficulty": None},
        {"id": "dolly-test-1", "instruction": "give the capital", "input": "paris is the capital of france",
         "output": ["paris"], "task": "dolly", "difficulty": None},
    ]


def test_dolly_train_and_validation_split_raw_at_line_1000(snapshot, cache):
    val = loaders.load_instruction_split(snapshot["dolly"], "validation", cache_dir=cache)
    train = loaders.load_instruction_split(snapshot["dolly"], "train", cache_dir=cache)
    assert len(val) == 1000 and len(train) == 3
    assert [r["instruction"] for r in train] == ["what is 1000", "what is 1001", "what is 1002"]
    assert [r["id"] for r in train] == ["dolly-train-1000", "dolly-train-1001", "dolly-train-1002"]
    assert val[999]["id"] == "dolly-validation-999" and val[1]["input"] == "the cat sat on the mat"
    # the same split, read from the file itself, keeps the registered row range
    train_file = loaders.load_instruction_split(snapshot["dolly"] / "raw.jsonl", "train", cache_dir=cache)
    assert train_file == train


def test_sinst_keeps_every_reference_and_reads_the_11_bucket(snapshot, cache):
    recs = loaders.load_instruction_split(snapshot["sinst"], cache_dir=cache)
    assert [r["output"] for r in recs] == [["red green blue", "blue red green", "green blue red"],
                                           ["paris is the capital"]]
    assert recs[1]["input"] == "what is the capital of france" and {r["task"] for r in recs} == {"sinst"}
    bucket = loaders.load_instruction_split(snapshot["sinst"], "0_2", cache_dir=cache)
    assert [(r["id"], r["output"]) for r in bucket] == [("sinst-0_2-0", ["b"])]
    # a file path: the benchmark comes from the path's folder names
    from_file = loaders.load_instruction_split(snapshot["sinst"] / "11_" / "valid.jsonl", cache_dir=cache)
    assert from_file == recs


def test_vicuna_without_input_field_and_self_inst(snapshot, cache):
    (v,) = loaders.load_instruction_split(snapshot["vicuna"], cache_dir=cache)
    assert (v["instruction"], v["input"], v["output"], v["task"]) == ("explain why the cat sat", "", ["it was warm"], "vicuna")
    (s,) = loaders.load_instruction_split(snapshot["self-inst"], cache_dir=cache)
    assert (s["input"], s["task"]) == ("the cat sat on the mat", "self-inst")


def test_limit_protocol_default_all_and_invalid(snapshot, cache, monkeypatch):
    first5 = loaders.load_instruction_split(snapshot["uinst"], limit=5, cache_dir=cache)
    assert [r["id"] for r in first5] == [f"uinst-test-{i}" for i in range(5)]
    # protocol cut (10,000 for UnNI), here shrunk to 10 to keep the fixture small
    uinst = dataclasses.replace(loaders.BENCHMARKS["uinst"], default_limit=10)
    monkeypatch.setitem(loaders.BENCHMARKS, "uinst", uinst)
    assert len(loaders.load_instruction_split(snapshot["uinst"], cache_dir=cache)) == 10
    assert len(loaders.load_instruction_split(snapshot["uinst"], limit="all", cache_dir=cache)) == 12
    with pytest.raises(UserError, match="limit"):
        loaders.load_instruction_split(snapshot["uinst"], limit=0, cache_dir=cache)


def test_generic_local_files_json_array_and_field_aliases(tmp_path, cache):
    import json

    (tmp_path / "mine").mkdir()
    rows = [{"instruction": "i0", "context": "c0", "response": "r0"},
            {"prompt": fx.alpaca("i1", "c1"), "output": ["r1a", "r1b", ""]}]
    (tmp_path / "mine" / "eval.json").write_text(json.dumps(rows))
    recs = loaders.load_instruction_split(tmp_path / "mine" / "eval.json", cache_dir=cache)
    assert [(r["id"], r["instruction"], r["input"], r["output"], r["task"]) for r in recs] == [
        ("eval-test-0", "i0", "c0", ["r0"], "eval"), ("eval-test-1", "i1", "c1", ["r1a", "r1b"], "eval")]
    (tmp_path / "mine" / "dev.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (dev,) = loaders.load_instruction_split(tmp_path / "mine", "dev", task="custom", cache_dir=cache)
    assert (dev["id"], dev["task"]) == ("custom-dev-0", "custom")


def test_missing_reference_or_path_is_a_user_error(tmp_path, cache):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x", "output": ""}\n')
    with pytest.raises(UserError, match="reference"):
        loaders.load_instruction_split(tmp_path / "bad.jsonl", cache_dir=cache)
    with pytest.raises(UserError, match="neither an existing path nor a hub id"):
        loaders.load_instruction_split(str(tmp_path / "nope" / "x.jsonl"), cache_dir=cache)
    with pytest.raises(UserError, match="no split 'train'"):
        loaders.load_instruction_split("MiniLLM/sinst", "train", cache_dir=cache)


@pytest.mark.parametrize("hub_id", ["MiniLLM/sinst", "someone/unknown-dataset"])
def test_unreachable_hub_id_offline_names_the_id_and_the_fix(hub_id, tmp_path):
    with pytest.raises(UserError) as err:
        loaders.load_instruction_split(hub_id, cache_dir=tmp_path)
    msg = str(err.value)
    assert f"'{hub_id}'" in msg and f"hf download {hub_id} --repo-type dataset --local-dir DIR" in msg
    assert "\n" not in msg


def test_hub_ids_request_the_protocol_files(monkeypatch, tmp_path):
    """What reaches `datasets.load_dataset` for hub ids (stubbed: no network, no cache)."""
    import datasets

    calls = []
    raw = [{"instruction": f"what is {i}", "input": "", "output": f"a{i}"} for i in range(1003)]

    def fake_load_dataset(path, **kw):
        calls.append((path, kw.get("data_files"), kw.get("split"), kw.get("revision")))
        if kw.get("data_files"):
            return datasets.Dataset.from_list(raw)
        splits = {"train": raw[:2]} if path == "someone/one-split" else {"train": raw[:2], "test": raw[:1]}
        return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    train = loaders.load_instruction_split("MiniLLM/dolly", "train", revision="abc123")
    assert [r["id"] for r in train] == ["dolly-train-1000", "dolly-train-1001", "dolly-train-1002"]
    assert len(loaders.load_instruction_split("MiniLLM/uinst", limit=7)) == 7
    loaders.load_instruction_split("MiniLLM/sinst")
    loaders.load_instruction_split("MiniLLM/Vicuna", "test")
    assert calls == [("MiniLLM/dolly", "raw.jsonl", "train", "abc123"),
                     ("MiniLLM/uinst", "11_/valid.jsonl", "train", None),
                     ("MiniLLM/sinst", "11_/valid.jsonl", "train", None),
                     ("MiniLLM/Vicuna", "valid.jsonl", "train", None)]
    one = loaders.load_instruction_split("someone/one-split")
    assert [(r["id"], r["task"]) for r in one] == [("one-split-train-0", "one-split"), ("one-split-train-1", "one-split")]
    assert len(loaders.load_instruction_split("someone/two-splits", "test")) == 1
    with pytest.raises(UserError, match=r"has splits \['test', 'train'\]; name one"):
        loaders.load_instruction_split("someone/two-splits")


def test_benchmark_for_resolves_hub_ids_and_paths():
    assert loaders.benchmark_for("MiniLLM/Vicuna").name == "vicuna"
    assert loaders.benchmark_for("/data/self_inst/valid.jsonl").name == "self-inst"
    assert loaders.benchmark_for("/data/uinst/11_/valid.jsonl").hub_id == "MiniLLM/uinst"
    assert loaders.benchmark_for("/data/other/valid.jsonl") is None


def test_layouts_are_recognised_by_files_not_folder_names(snapshot, tmp_path):
    def folder(name, files):
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / f).write_text('{"instruction": "x", "output": "y"}\n')
        return tmp_path / name

    mine = folder("mine", ["raw.jsonl", "valid.jsonl"])            # MiniLLM's layout, any name
    assert loaders.training_reading(mine) == loaders.training_reading(snapshot["dolly"])
    r = loaders.training_reading(mine)
    assert (r.pool, r.train, r.validation, r.holdout) == ("raw", None, None, "first")
    assert loaders.folder_layout(mine)[1]["test"].file == "valid.jsonl"
    dolly = folder("dolly", ["train.jsonl", "dev.jsonl"])           # named dolly, split files
    r = loaders.training_reading(dolly)
    assert (r.pool, r.train, r.validation, r.holdout) == ("train", "train", "validation", "random")
    assert loaders.folder_layout(dolly)[1]["validation"].file == "dev.jsonl"
    assert loaders.training_reading(folder("one", ["data.jsonl"])).pool == "all"
    assert loaders.training_reading(tmp_path / "one" / "data.jsonl").holdout == "random"
    assert loaders.training_reading(mine / "raw.jsonl").holdout == "first"
    r = loaders.training_reading("MiniLLM/dolly")
    assert (r.pool, r.holdout) == ("raw", "first") and loaders.training_reading("someone/x").pool == "train"
    buckets = folder("other", ["0_2/valid.jsonl", "11_/valid.jsonl"])  # S-NI's layout, any name
    assert loaders.folder_layout(buckets)[1]["test"].file == "11_/valid.jsonl"
    with pytest.raises(UserError, match="no file for split 'train'"):
        loaders.load_instruction_split(folder("two", ["a.jsonl", "b.jsonl"]), "train")


def test_field_mapping_config_first_then_aliases(tmp_path):
    row = {"question": "q", "context": "c", "answer": ["a1", "a2"], "output": "ignored?"}
    assert loaders.field_mapping(row) == {"instruction": None, "input": "context", "output": "output"}
    fields = {"instruction": "question", "output": "answer"}
    assert loaders.field_mapping(row, fields) == {"instruction": "question", "input": "context", "output": "answer"}
    rec = loaders.normalise_record(row, task="t", rid="t-0", fields=fields)
    assert (rec["instruction"], rec["input"], rec["output"]) == ("q", "c", ["a1", "a2"])
    with pytest.raises(UserError, match="data.fields.instruction"):
        loaders.normalise_record(row, task="t", rid="t-0")


# ----------------------------------------------------------------------------- length filter


def test_prompt_length_filter_drops_and_counts(snapshot, cache, tok):
    from kdbench.data import encode_prompts, format_prompt

    recs = loaders.load_instruction_split(snapshot["dolly"], "validation", limit=10, cache_dir=cache)
    # hand count of the no-input prompt "... ### Instruction:\nwhat is 0\n\n### Response:\n": 27 tokens
    assert fx.count_tokens(format_prompt("what is 0")) == 27
    lengths = [len(ids) for ids in encode_prompts(tok, recs)]  # one batched call, counted one by one
    assert lengths == [fx.count_tokens(fx.alpaca(r["instruction"], r["input"])) for r in recs]
    kept, dropped = loaders.filter_by_prompt_length(recs, tok, max_prompt_tokens=27)
    assert dropped == 5 and [r["id"] for r in kept] == [f"dolly-validation-{i}" for i in range(0, 10, 2)]
    kept, dropped = loaders.filter_by_prompt_length(recs, tok, max_prompt_tokens=max(lengths))
    assert (len(kept), dropped) == (10, 0)
    assert loaders.filter_by_prompt_length([], tok) == ([], 0)


def test_prompt_length_filter_counts_special_tokens_the_engine_adds(snapshot, cache, tmp_path):
    """A tokenizer that prepends a BOS (like OPT's </s>): the filter counts it, as training does."""
    from tokenizers.processors import TemplateProcessing

    from kdbench.data import encode

    bos_tok = fx.make_tokenizer(tmp_path / "bos")
    bos_tok._tokenizer.post_processor = TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", 2)])
    recs = loaders.load_instruction_split(snapshot["dolly"], "validation", limit=10, cache_dir=cache)
    # the no-input prompts are 27 words + the BOS = 28 tokens: none fits in 27 any more
    assert loaders.filter_by_prompt_length(recs, bos_tok, max_prompt_tokens=27) == ([], 10)
    kept, dropped = loaders.filter_by_prompt_length(recs, bos_tok, max_prompt_tokens=28)
    assert dropped == 5 and [r["id"] for r in kept] == [f"dolly-validation-{i}" for i in range(0, 10, 2)]
    assert all(e.n_prompt == 28 for e in encode(bos_tok, kept, max_length=64))  # what training sees



# ----------------------------------------------------------------------------- prepare_data


def test_prepare_data_holds_out_the_first_lines_of_raw_jsonl(snapshot, tmp_path, tok, capfd):
    """MiniLLM's layout: the first min(1000, n/10) lines of raw.jsonl are validation (1,003
    lines here: 100; real Dolly: 1,000, the protocol's split), or data.validation_size."""
    from kdbench import io, stages
    from kdbench.paths import Paths

    teacher = {"init": "pretrained", "path": fx.model_dir(tmp_path / "t", tok, len(tok))}
    student = {"init": "layers_from_teacher", "layers": [0]}
    data = dict(train=str(snapshot["dolly"]), benchmarks={"dolly": str(snapshot["dolly"]), "sinst": str(snapshot["sinst"])},
                max_prompt_tokens=27)
    for size, n_val in ((None, 100), (1000, 1000)):
        cfg = fx.hub_cfg(tmp_path, teacher, student, **data, validation_size=size)
        stages.prepare_data(cfg)
        P = Paths(cfg)
        val, train = io.read_jsonl(P.data("validation")), io.read_jsonl(P.data("train"))
        # odd rows carry an input (37 tokens > 27): dropped
        assert [r["id"] for r in val] == [f"dolly-raw-{i}" for i in range(0, n_val, 2)]
        assert [r["id"] for r in train] == [f"dolly-raw-{i}" for i in range(n_val, 1003, 2)]
        report = io.read_json(P.data_report)
        # test-set prompts over 27 tokens are kept (generation cuts them) and counted
        assert {k: (v["n"], v["dropped_long_prompts"], v["truncated_long_prompts"]) for k, v in report.items()} == {
            "train": (len(train), 1003 - n_val - len(train), 0), "validation": (n_val // 2, n_val // 2, 0),
            "dolly": (2, 0, 1), "sinst": (2, 0, 1)}
        err = capfd.readouterr().err
        assert "truncated 1 prompt(s) longer than 27 tokens" in err
        assert f"validation: the first {n_val} examples" in err and "MiniLLM's layout" in err
        assert f"validation: the first {n_val} examples" in report["train"]["reading"]


def test_prepare_data_reads_data_validation(snapshot, tmp_path, tok):
    from kdbench import io, stages
    from kdbench.paths import Paths

    teacher = {"init": "pretrained", "path": fx.model_dir(tmp_path / "t", tok, len(tok))}
    cfg = fx.hub_cfg(tmp_path, teacher, {"init": "layers_from_teacher", "layers": [0]},
                     train=str(snapshot["dolly"] / "raw.jsonl"), validation=str(snapshot["self-inst"]),
                     benchmarks={"vicuna": str(snapshot["vicuna"])})
    stages.prepare_data(cfg)
    P = Paths(cfg)
    assert len(io.read_jsonl(P.data("train"))) == 1003  # all of raw.jsonl: nothing held out
    assert [r["task"] for r in io.read_jsonl(P.data("validation"))] == ["self-inst"]


def test_prepare_data_holds_out_a_seeded_validation_set_otherwise(tmp_path, tok):
    import json

    from kdbench import io, stages
    from kdbench.paths import Paths

    rows = [{"instruction": f"what is {i}", "output": f"answer {i}"} for i in range(30)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = {"init": "pretrained", "path": fx.model_dir(tmp_path / "t", tok, len(tok))}
    cfg = fx.hub_cfg(tmp_path, teacher, {"init": "layers_from_teacher", "layers": [0]},
                   train=str(tmp_path / "mine.jsonl"), benchmarks={"mine": str(tmp_path / "mine.jsonl")})
    stages.prepare_data(cfg)
    P = Paths(cfg)
    val, train = io.read_jsonl(P.data("validation")), io.read_jsonl(P.data("train"))
    assert len(val) == 3 and len(train) == 27  # min(1000, 30 // 10) held out
    assert sorted(r["id"] for r in val + train) == sorted(f"mine-train-{i}" for i in range(30))
    first = [r["id"] for r in val]
    stages.prepare_data(cfg)
    assert [r["id"] for r in io.read_jsonl(P.data("validation"))] == first  # seeded
    assert io.read_json(P.data_report)["validation"]["n"] == 3

