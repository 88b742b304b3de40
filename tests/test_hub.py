"""kdbench.hub: MiniLLM-layout loaders, prompt-length filter, vocabulary check, layer-subset
students, GGUF loading and conversion (tiny generated files; the real SmolLM2 file only if
provided), the workflow profiles, and the hub side of the stages (prepare_data's validation
split, init_student's vocabulary check and kdbench.json, the GGUF teacher converted once).

Everything runs offline on fixtures written to tmp folders (tests/fixtures_hub.py).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_hub as fx  # noqa: E402

from kdbench import hub  # noqa: E402
from kdbench.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GPU_RULES = {"train_teacher", "init_student", "cache_teacher", "score_difficulty", "teacher_samples",
             "distill", "generate"}
CPU_RULES = {"prepare_data", "train_tokenizer", "score", "collect", "tables", "figures"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may touch the network: offline env vars plus the constants read at import time."""
    import datasets
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


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

    assert not hasattr(hub, "PROMPT_TEMPLATE") and not hasattr(hub, "format_prompt")  # one template: data's
    assert data.format_prompt("name three colors") == fx.alpaca("name three colors")
    assert data.format_prompt("give the capital", "paris") == fx.alpaca("give the capital", "paris")
    assert hub.parse_prompt(fx.alpaca("a\nb", "c\n\nd")) == ("a\nb", "c\n\nd")
    assert hub.parse_prompt(fx.alpaca("x").replace("\n", "<n>")) == ("x", "")  # MiniLLM .txt escape
    assert hub.parse_prompt("Question: x\nAnswer:") is None


# ----------------------------------------------------------------------------- loaders


def test_dolly_test_split_is_normalised(snapshot, cache):
    recs = hub.load_instruction_split(snapshot["dolly"], cache_dir=cache)
    assert recs == [
        {"id": "dolly-test-0", "instruction": "name three colors", "input": "", "output": ["red green blue"],
         "task": "dolly", "difficulty": None},
        {"id": "dolly-test-1", "instruction": "give the capital", "input": "paris is the capital of france",
         "output": ["paris"], "task": "dolly", "difficulty": None},
    ]


def test_dolly_train_and_validation_split_raw_at_line_1000(snapshot, cache):
    val = hub.load_instruction_split(snapshot["dolly"], "validation", cache_dir=cache)
    train = hub.load_instruction_split(snapshot["dolly"], "train", cache_dir=cache)
    assert len(val) == 1000 and len(train) == 3
    assert [r["instruction"] for r in train] == ["what is 1000", "what is 1001", "what is 1002"]
    assert [r["id"] for r in train] == ["dolly-train-1000", "dolly-train-1001", "dolly-train-1002"]
    assert val[999]["id"] == "dolly-validation-999" and val[1]["input"] == "the cat sat on the mat"
    # the same split, read from the file itself, keeps the registered row range
    train_file = hub.load_instruction_split(snapshot["dolly"] / "raw.jsonl", "train", cache_dir=cache)
    assert train_file == train


def test_sinst_keeps_every_reference_and_reads_the_11_bucket(snapshot, cache):
    recs = hub.load_instruction_split(snapshot["sinst"], cache_dir=cache)
    assert [r["output"] for r in recs] == [["red green blue", "blue red green", "green blue red"],
                                           ["paris is the capital"]]
    assert recs[1]["input"] == "what is the capital of france" and {r["task"] for r in recs} == {"sinst"}
    bucket = hub.load_instruction_split(snapshot["sinst"], "0_2", cache_dir=cache)
    assert [(r["id"], r["output"]) for r in bucket] == [("sinst-0_2-0", ["b"])]
    # a file path: the benchmark comes from the path's folder names
    from_file = hub.load_instruction_split(snapshot["sinst"] / "11_" / "valid.jsonl", cache_dir=cache)
    assert from_file == recs


def test_vicuna_without_input_field_and_self_inst(snapshot, cache):
    (v,) = hub.load_instruction_split(snapshot["vicuna"], cache_dir=cache)
    assert (v["instruction"], v["input"], v["output"], v["task"]) == ("explain why the cat sat", "", ["it was warm"], "vicuna")
    (s,) = hub.load_instruction_split(snapshot["self-inst"], cache_dir=cache)
    assert (s["input"], s["task"]) == ("the cat sat on the mat", "self-inst")


def test_limit_protocol_default_all_and_invalid(snapshot, cache, monkeypatch):
    first5 = hub.load_instruction_split(snapshot["uinst"], limit=5, cache_dir=cache)
    assert [r["id"] for r in first5] == [f"uinst-test-{i}" for i in range(5)]
    # protocol cut (10,000 for UnNI), here shrunk to 10 to keep the fixture small
    uinst = dataclasses.replace(hub.BENCHMARKS["uinst"], default_limit=10)
    monkeypatch.setitem(hub.BENCHMARKS, "uinst", uinst)
    assert len(hub.load_instruction_split(snapshot["uinst"], cache_dir=cache)) == 10
    assert len(hub.load_instruction_split(snapshot["uinst"], limit="all", cache_dir=cache)) == 12
    with pytest.raises(UserError, match="limit"):
        hub.load_instruction_split(snapshot["uinst"], limit=0, cache_dir=cache)


def test_generic_local_files_json_array_and_field_aliases(tmp_path, cache):
    import json

    (tmp_path / "mine").mkdir()
    rows = [{"instruction": "i0", "context": "c0", "response": "r0"},
            {"prompt": fx.alpaca("i1", "c1"), "output": ["r1a", "r1b", ""]}]
    (tmp_path / "mine" / "eval.json").write_text(json.dumps(rows))
    recs = hub.load_instruction_split(tmp_path / "mine" / "eval.json", cache_dir=cache)
    assert [(r["id"], r["instruction"], r["input"], r["output"], r["task"]) for r in recs] == [
        ("eval-test-0", "i0", "c0", ["r0"], "eval"), ("eval-test-1", "i1", "c1", ["r1a", "r1b"], "eval")]
    (tmp_path / "mine" / "dev.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (dev,) = hub.load_instruction_split(tmp_path / "mine", "dev", task="custom", cache_dir=cache)
    assert (dev["id"], dev["task"]) == ("custom-dev-0", "custom")


def test_missing_reference_or_path_is_a_user_error(tmp_path, cache):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x", "output": ""}\n')
    with pytest.raises(UserError, match="reference"):
        hub.load_instruction_split(tmp_path / "bad.jsonl", cache_dir=cache)
    with pytest.raises(UserError, match="neither an existing path nor a hub id"):
        hub.load_instruction_split(str(tmp_path / "nope" / "x.jsonl"), cache_dir=cache)
    with pytest.raises(UserError, match="no split 'train'"):
        hub.load_instruction_split("MiniLLM/sinst", "train", cache_dir=cache)


@pytest.mark.parametrize("hub_id", ["MiniLLM/sinst", "someone/unknown-dataset"])
def test_unreachable_hub_id_offline_names_the_id_and_the_fix(hub_id, tmp_path):
    with pytest.raises(UserError) as err:
        hub.load_instruction_split(hub_id, cache_dir=tmp_path)
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
    train = hub.load_instruction_split("MiniLLM/dolly", "train", revision="abc123")
    assert [r["id"] for r in train] == ["dolly-train-1000", "dolly-train-1001", "dolly-train-1002"]
    assert len(hub.load_instruction_split("MiniLLM/uinst", limit=7)) == 7
    hub.load_instruction_split("MiniLLM/sinst")
    hub.load_instruction_split("MiniLLM/Vicuna", "test")
    assert calls == [("MiniLLM/dolly", "raw.jsonl", "train", "abc123"),
                     ("MiniLLM/uinst", "11_/valid.jsonl", "train", None),
                     ("MiniLLM/sinst", "11_/valid.jsonl", "train", None),
                     ("MiniLLM/Vicuna", "valid.jsonl", "train", None)]
    one = hub.load_instruction_split("someone/one-split")
    assert [(r["id"], r["task"]) for r in one] == [("one-split-train-0", "one-split"), ("one-split-train-1", "one-split")]
    assert len(hub.load_instruction_split("someone/two-splits", "test")) == 1
    with pytest.raises(UserError, match=r"has splits \['test', 'train'\]; name one"):
        hub.load_instruction_split("someone/two-splits")


def test_benchmark_for_resolves_hub_ids_and_paths():
    assert hub.benchmark_for("MiniLLM/Vicuna").name == "vicuna"
    assert hub.benchmark_for("/data/self_inst/valid.jsonl").name == "self-inst"
    assert hub.benchmark_for("/data/uinst/11_/valid.jsonl").hub_id == "MiniLLM/uinst"
    assert hub.benchmark_for("/data/other/valid.jsonl") is None


def test_has_protocol_split_only_for_the_registered_layout(snapshot, tmp_path):
    assert hub.has_protocol_split("MiniLLM/dolly", "validation")
    assert hub.has_protocol_split(snapshot["dolly"], "validation")               # a local copy of the repo
    assert hub.has_protocol_split(snapshot["dolly"] / "raw.jsonl", "validation")  # the split's own file
    assert not hub.has_protocol_split(snapshot["dolly"] / "valid.jsonl", "validation")  # the test file
    assert not hub.has_protocol_split("MiniLLM/sinst", "validation")             # no such split
    assert not hub.has_protocol_split("someone/dolly", "validation")             # another repo's layout
    (tmp_path / "dolly").mkdir()
    (tmp_path / "dolly" / "train.jsonl").write_text("{}\n")
    assert not hub.has_protocol_split(tmp_path / "dolly", "validation")          # named dolly, no raw.jsonl
    assert not hub.has_protocol_split(tmp_path / "mine.jsonl", "validation")


# ----------------------------------------------------------------------------- length filter


def test_prompt_length_filter_drops_and_counts(snapshot, cache, tok):
    from kdbench.data import encode_prompt, format_prompt

    recs = hub.load_instruction_split(snapshot["dolly"], "validation", limit=10, cache_dir=cache)
    # hand count of the no-input prompt "... ### Instruction:\nwhat is 0\n\n### Response:\n": 27 tokens
    assert fx.count_tokens(format_prompt("what is 0")) == 27
    lengths = [len(encode_prompt(tok, r)) for r in recs]
    assert lengths == [fx.count_tokens(fx.alpaca(r["instruction"], r["input"])) for r in recs]
    kept, dropped = hub.filter_by_prompt_length(recs, tok, max_prompt_tokens=27)
    assert dropped == 5 and [r["id"] for r in kept] == [f"dolly-validation-{i}" for i in range(0, 10, 2)]
    kept, dropped = hub.filter_by_prompt_length(recs, tok, max_prompt_tokens=max(lengths))
    assert (len(kept), dropped) == (10, 0)
    assert hub.filter_by_prompt_length([], tok) == ([], 0)


def test_prompt_length_filter_counts_special_tokens_the_engine_adds(snapshot, cache, tmp_path):
    """A tokenizer that prepends a BOS (like OPT's </s>): the filter counts it, as training does."""
    from tokenizers.processors import TemplateProcessing

    from kdbench.data import encode

    bos_tok = fx.make_tokenizer(tmp_path / "bos")
    bos_tok._tokenizer.post_processor = TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", 2)])
    recs = hub.load_instruction_split(snapshot["dolly"], "validation", limit=10, cache_dir=cache)
    # the no-input prompts are 27 words + the BOS = 28 tokens: none fits in 27 any more
    assert hub.filter_by_prompt_length(recs, bos_tok, max_prompt_tokens=27) == ([], 10)
    kept, dropped = hub.filter_by_prompt_length(recs, bos_tok, max_prompt_tokens=28)
    assert dropped == 5 and [r["id"] for r in kept] == [f"dolly-validation-{i}" for i in range(0, 10, 2)]
    assert all(e.n_prompt == 28 for e in encode(bos_tok, kept, max_length=64))  # what training sees


# ----------------------------------------------------------------------------- vocabulary


def test_check_vocab_identical_padded_and_mismatched(tmp_path, tok):
    n = len(tok)
    same = fx.make_tokenizer(tmp_path / "same")
    assert hub.check_vocab(tok, same, n, n, "T", "S") == n
    assert hub.check_vocab(tok, same, n + 8, n + 3, "T", "S") == n + 3  # padded embeddings
    other = fx.make_tokenizer(tmp_path / "other", extra_words=("zebra",))
    with pytest.raises(UserError, match="teacher 'gpt2-xl' and student 'opt-125m' have different tokenizers"):
        hub.check_vocab(tok, other, n, n + 1, "gpt2-xl", "opt-125m")
    other_eos = fx.make_tokenizer(tmp_path / "eos", eos="<pad>")
    with pytest.raises(UserError, match="special tokens"):
        hub.check_vocab(tok, other_eos, n, n, "T", "S")
    with pytest.raises(UserError, match=f"model 'S' has {n - 1} output logits"):
        hub.check_vocab(tok, same, n, n - 1, "T", "S")


def test_check_vocab_ignores_the_padding_token(tmp_path, tok):
    """MiniLLM's GPT-2 teacher sets pad = EOS, openai-community/gpt2 sets no pad: same model family."""
    pad_is_eos = fx.make_tokenizer(tmp_path / "pad_eos")
    pad_is_eos.pad_token = "<eos>"
    assert tok.pad_token == "<pad>" and pad_is_eos.pad_token == "<eos>"
    assert hub.check_vocab(tok, pad_is_eos, len(tok), len(tok)) == len(tok)
    assert hub.check_vocab(pad_is_eos, tok, len(tok), len(tok)) == len(tok)


# ----------------------------------------------------------------------------- students


def _layers(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_student_copies_the_chosen_layers_exactly(arch, tmp_path, tok):
    from transformers import AutoModelForCausalLM

    make = {"gpt2": fx.make_gpt2, "llama": fx.make_llama, "qwen2": fx.make_qwen2}[arch]
    teacher = make(tmp_path / "teacher", vocab_size=len(tok), n_layer=4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    idx = [0, 2, 3]
    student = hub.student_from_teacher_layers(teacher, idx)

    assert student.config.num_hidden_layers == 3 and len(_layers(student)) == 3
    assert teacher.config.num_hidden_layers == 4 and len(_layers(teacher)) == 4
    if arch == "qwen2":  # per-layer attention types follow the kept layers
        assert teacher.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
        assert student.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    for j, i in enumerate(idx):
        s_sd, t_sd = _layers(student)[j].state_dict(), _layers(teacher)[i].state_dict()
        assert s_sd.keys() == t_sd.keys()
        assert all(torch.equal(s_sd[k], t_sd[k]) for k in s_sd)
        assert all(m.layer_idx == j for m in _layers(student)[j].modules() if hasattr(m, "layer_idx"))
    # everything outside the layer list is copied too (embeddings, final norm, head)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    outside = [k for k in t_sd if ".h." not in k and ".layers." not in k]
    assert outside and all(torch.equal(t_sd[k], s_sd[k]) for k in outside)
    tied = lambda m: m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()  # noqa: E731
    assert tied(student) == tied(teacher) == (arch != "qwen2")  # tying preserved (qwen2 fixture: untied)
    # a copy, not a view: training the student leaves the teacher as it was
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())

    # KV-cache slots follow the new numbering; save/reload gives the same model
    with torch.no_grad():
        x = torch.tensor([[5, 6, 7, 8]])
        cached = student.generate(x, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=1)
        plain = student.generate(x, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=1)
        assert torch.equal(cached, plain)
        student.save_pretrained(tmp_path / "student")
        again = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
        assert again.config.num_hidden_layers == 3
        assert torch.equal(again(x).logits, student.eval()(x).logits)


def test_student_layer_indices_are_validated(tmp_path, tok):
    teacher = fx.make_gpt2(tmp_path / "t", vocab_size=len(tok), n_layer=4)
    for bad in ([], [1, 1], [2, 1], [0, 4], [-1, 2]):
        with pytest.raises(UserError, match="layer indices"):
            hub.student_from_teacher_layers(teacher, bad)


# ----------------------------------------------------------------------------- GGUF


def test_convert_gguf_writes_a_plain_safetensors_folder_atomically(tmp_path):
    pytest.importorskip("gguf")
    import hashlib
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    embedding = fx.make_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "converted"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    assert hub.convert_gguf(tmp_path, "tiny.gguf", out) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "tiny.gguf"]  # no temporary left
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf"))
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    source = json.loads((out / "kdbench_source.json").read_text())
    assert source["sha256"] == hashlib.sha256((tmp_path / "tiny.gguf").read_bytes()).hexdigest()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert (type(model).__name__, model.config.num_hidden_layers, model.config.vocab_size) == ("LlamaForCausalLM", 2, 32)
    assert torch.equal(model.get_input_embeddings().weight, torch.from_numpy(embedding))  # float32: exact
    assert tok("ab a")["input_ids"] == [30, 31] and tok.eos_token == "</s>"
    with pytest.raises(UserError, match="does not exist"):
        hub.convert_gguf(tmp_path, "missing.gguf", tmp_path / "x")


def test_load_gguf_in_memory_through_models(tmp_path):
    """models.load_model / load_tokenizer read a GGUF spec directly: dense weights, no quantizer,
    nothing written beside the file (so concurrent jobs cannot race)."""
    pytest.importorskip("gguf")
    from kdbench import models

    embedding = fx.make_tiny_gguf(tmp_path / "tiny.gguf")
    model = models.load_model(tmp_path, {"gguf_file": "tiny.gguf"})
    tok = models.load_tokenizer(tmp_path, "tiny.gguf")
    assert getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None
    assert torch.equal(model.get_input_embeddings().weight, torch.from_numpy(embedding))
    assert tok("ab a")["input_ids"] == [30, 31] and tok.pad_token == tok.eos_token == "</s>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]
    models.save(model, tok, tmp_path / "saved")  # a GGUF quantizer would make this raise
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    with pytest.raises(UserError, match="does not exist"):
        models.load_tokenizer(tmp_path, "missing.gguf")


@pytest.mark.slow
def test_convert_real_smollm2_gguf_if_present(tmp_path):
    """Set KDBENCH_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (see hub_report) to run."""
    gguf_path = os.environ.get("KDBENCH_SMOLLM2_GGUF")
    if not gguf_path or not Path(gguf_path).is_file():
        pytest.skip("KDBENCH_SMOLLM2_GGUF is not set to an existing .gguf file")
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdbench.data import format_prompt

    gguf_path = Path(gguf_path)
    out = hub.convert_gguf(gguf_path.parent, gguf_path.name, tmp_path / "smollm2")
    assert not (tmp_path / "smollm2.tmp").exists() and (out / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert (model.config.num_hidden_layers, model.config.vocab_size, len(tok)) == (30, 49152, 49152)
    x = tok(format_prompt("Name three primary colors."), return_tensors="pt")
    with torch.no_grad():
        y = model.generate(**x, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    assert y.shape[1] == x["input_ids"].shape[1] + 3


# ----------------------------------------------------------------------------- profiles


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
    assert "generate:gpu=1" in args["set-resources"] and "collect:gpu=1" not in args["set-resources"]


# ----------------------------------------------------------------------------- stages (hub side)


def _hub_cfg(tmp_path, teacher, student, **data):
    from kdbench import config as C

    raw = {"profile": "hubtest", "results_dir": str(tmp_path / "results"), "methods_dir": str(ROOT / "methods"),
           "data": {"source": "hub", "train": "unused", "benchmarks": {"unused": "unused"}, **data},
           "pairs": {"p": {"teacher": teacher, "student": student}}, "training_seeds": 2}
    return C.validate(raw)


def _model_dir(folder, tok, vocab_size, n_layer=2):
    fx.make_llama(folder, vocab_size=vocab_size, n_layer=n_layer)
    tok.save_pretrained(folder)
    return str(folder)


def test_prepare_data_takes_dollys_protocol_validation_split(snapshot, tmp_path, tok, capfd):
    from kdbench import io, stages
    from kdbench.paths import Paths

    teacher = {"init": "pretrained", "path": _model_dir(tmp_path / "t", tok, len(tok))}
    cfg = _hub_cfg(tmp_path, teacher, {"init": "layers_from_teacher", "layers": [0]},
                   train=str(snapshot["dolly"]), benchmarks={"dolly": str(snapshot["dolly"]), "sinst": str(snapshot["sinst"])},
                   max_prompt_tokens=27)
    stages.prepare_data(cfg)
    P = Paths(cfg)
    val, train = io.read_jsonl(P.data("validation")), io.read_jsonl(P.data("train"))
    # raw.jsonl rows 0..999 are validation (odd rows carry an input: 37 tokens > 27, dropped);
    # rows 1000..1002 are train (1001 dropped); no random hold-out is taken from train;
    # benchmark prompts over 27 tokens are kept (generation cuts them) and counted
    assert [r["id"] for r in val] == [f"dolly-validation-{i}" for i in range(0, 1000, 2)]
    assert [r["id"] for r in train] == ["dolly-train-1000", "dolly-train-1002"]
    report = io.read_json(P.data_report)
    assert {k: (v["n"], v["dropped_long_prompts"], v["truncated_long_prompts"]) for k, v in report.items()} == {
        "train": (2, 1, 0), "validation": (500, 500, 0), "dolly": (2, 0, 1), "sinst": (2, 0, 1)}
    assert len(io.read_jsonl(P.data("sinst"))) == 2
    err = capfd.readouterr().err
    assert "validation" in err and "dropped 500 prompt(s) longer than 27 tokens" in err
    assert "truncated 1 prompt(s) longer than 27 tokens" in err


def test_prepare_data_holds_out_a_seeded_validation_set_otherwise(tmp_path, tok):
    import json

    from kdbench import io, stages
    from kdbench.paths import Paths

    rows = [{"instruction": f"what is {i}", "output": f"answer {i}"} for i in range(30)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = {"init": "pretrained", "path": _model_dir(tmp_path / "t", tok, len(tok))}
    cfg = _hub_cfg(tmp_path, teacher, {"init": "layers_from_teacher", "layers": [0]},
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


def test_init_student_checks_the_students_own_tokenizer_first(tmp_path, tok):
    from kdbench import models, stages
    from kdbench.paths import Paths

    n = len(tok)
    other = fx.make_tokenizer(tmp_path / "other_tok", extra_words=("zebra",))
    teacher = {"init": "pretrained", "path": _model_dir(tmp_path / "teacher", tok, n + 8), "finetuned": True}
    bad = {"init": "pretrained", "path": _model_dir(tmp_path / "student_bad", other, n + 1)}
    cfg = _hub_cfg(tmp_path, teacher, bad)
    with pytest.raises(UserError) as err:
        stages.init_student(cfg, "p", 0)
    msg = str(err.value)
    assert "different tokenizers" in msg and str(tmp_path / "teacher") in msg and str(tmp_path / "student_bad") in msg
    assert not Path(Paths(cfg).student_init("p", 0)).exists()  # nothing written

    good = {"init": "pretrained", "path": _model_dir(tmp_path / "student", tok, n + 3)}
    cfg = _hub_cfg(tmp_path, teacher, good)
    stages.init_student(cfg, "p", 1)
    folder = Path(Paths(cfg).student_init("p", 1))
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert json_of(folder / "kdbench.json")["shared_vocab_size"] == n + 3  # min(teacher n+8, student n+3)
    student = models.load_model(folder)
    assert stages._shared_vocab(cfg, "p", 1, student) == n + 3  # what distill slices logits to
    with pytest.raises(UserError, match="rerun init_student"):
        stages._shared_vocab(cfg, "p", 0, student)


def json_of(path):
    import json

    return json.loads(Path(path).read_text())


def test_gguf_teacher_is_converted_once_by_train_teacher(tmp_path):
    """train_teacher dequantizes the GGUF and saves the teacher; init_student (every seed) cuts
    its layers from that saved teacher; nothing else is written for the conversion."""
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    from kdbench import stages
    from kdbench.paths import Paths

    (tmp_path / "gguf").mkdir()
    embedding = fx.make_tiny_gguf(tmp_path / "gguf" / "tiny.gguf", extra_control_tokens=("<|endoftext|>",))
    teacher = {"init": "pretrained", "path": str(tmp_path / "gguf"), "gguf_file": "tiny.gguf", "finetuned": True}
    cfg = _hub_cfg(tmp_path, teacher, {"init": "layers_from_teacher", "layers": [1]})
    P = Paths(cfg)
    stages.train_teacher(cfg, "p")
    saved = Path(P.teacher_model("p"))
    t = AutoModelForCausalLM.from_pretrained(saved)
    assert torch.equal(t.get_input_embeddings().weight, torch.from_numpy(embedding))
    assert "quantization_config" not in json_of(saved / "config.json")
    assert (Path(P.run_dir("p", "teacher", "default", 0)) / "trace.csv").is_file()  # a rule output
    for seed in (0, 1):
        stages.init_student(cfg, "p", seed)
        s = AutoModelForCausalLM.from_pretrained(P.student_init("p", seed))
        assert s.config.num_hidden_layers == 1
        assert torch.equal(s.model.layers[0].mlp.up_proj.weight, t.model.layers[1].mlp.up_proj.weight)
        assert json_of(Path(P.student_init("p", seed)) / "kdbench.json")["shared_vocab_size"] == 33
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == ["tiny.gguf"]
    assert not list(Path(P.root).rglob("*converted*"))
