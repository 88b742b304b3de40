"""kdbench.checkpoints: the vocabulary check, layer-subset students, GGUF loading and conversion
(tiny generated files; the real SmolLM2 file only if provided), and the checkpoint side of the
stages (init_student's vocabulary check and kdbench.json, the GGUF teacher converted once).
Everything runs offline on fixtures written to tmp folders (tests/fixtures_checkpoints.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fixtures_hub as fx  # noqa: E402

from kdbench import checkpoints, io  # noqa: E402
from kdbench.errors import UserError  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    fx.go_offline(monkeypatch)

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return fx.make_tokenizer(tmp_path_factory.mktemp("tok"))



# ----------------------------------------------------------------------------- vocabulary


def test_check_vocab_identical_padded_and_mismatched(tmp_path, tok):
    n = len(tok)
    same = fx.make_tokenizer(tmp_path / "same")
    assert checkpoints.check_vocab(tok, same, n, n, "T", "S") == n
    assert checkpoints.check_vocab(tok, same, n + 8, n + 3, "T", "S") == n + 3  # padded embeddings
    other = fx.make_tokenizer(tmp_path / "other", extra_words=("zebra",))
    with pytest.raises(UserError, match="teacher 'gpt2-xl' and student 'opt-125m' have different tokenizers"):
        checkpoints.check_vocab(tok, other, n, n + 1, "gpt2-xl", "opt-125m")
    other_eos = fx.make_tokenizer(tmp_path / "eos", eos="<pad>")
    with pytest.raises(UserError, match="special tokens"):
        checkpoints.check_vocab(tok, other_eos, n, n, "T", "S")
    with pytest.raises(UserError, match=f"model 'S' has {n - 1} output logits"):
        checkpoints.check_vocab(tok, same, n, n - 1, "T", "S")


def test_a_scratch_model_may_pad_its_vocabulary_beyond_the_tokenizer(tok):
    """`config.vocab_size` sets a scratch model's output rows (as real checkpoints pad theirs;
    config/paper-gpt2-shapes.yaml: GPT-2's 50,257 over a small trained tokenizer); fewer rows
    than tokens is one sentence; ids past the tokenizer decode to nothing."""
    from kdbench.models import build

    cfg = {"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2}
    spec = {"init": "scratch", "attn_implementation": "sdpa"}
    n = len(tok)
    assert build({**spec, "config": cfg}, tok, 0, "p.student").config.vocab_size == n
    padded = build({**spec, "config": {**cfg, "vocab_size": n + 100}}, tok, 0, "p.student")
    assert padded.get_output_embeddings().weight.shape[0] == n + 100
    assert tok.decode([n + 50, n + 99], skip_special_tokens=True) == ""
    with pytest.raises(UserError, match=r"`pairs.p.student.config.vocab_size` is 3, fewer rows than the tokenizer's"):
        build({**spec, "config": {**cfg, "vocab_size": 3}}, tok, 0, "p.student")


def test_check_vocab_ignores_the_padding_token(tmp_path, tok):
    """MiniLLM's GPT-2 teacher sets pad = EOS, openai-community/gpt2 sets no pad: same model family."""
    pad_is_eos = fx.make_tokenizer(tmp_path / "pad_eos")
    pad_is_eos.pad_token = "<eos>"
    assert tok.pad_token == "<pad>" and pad_is_eos.pad_token == "<eos>"
    assert checkpoints.check_vocab(tok, pad_is_eos, len(tok), len(tok)) == len(tok)
    assert checkpoints.check_vocab(pad_is_eos, tok, len(tok), len(tok)) == len(tok)


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
    student = checkpoints.student_from_teacher_layers(teacher, idx)

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
            checkpoints.student_from_teacher_layers(teacher, bad)


# ----------------------------------------------------------------------------- GGUF


def test_convert_gguf_command_writes_a_plain_safetensors_folder_atomically(tmp_path, capsys):
    """`python -m kdbench convert_gguf` (main() in-process): the same as checkpoints.convert_gguf."""
    pytest.importorskip("gguf")
    from kdbench.__main__ import main

    import hashlib
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    embedding = fx.make_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "converted"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    assert main(["convert_gguf", "--path", str(tmp_path), "--gguf-file", "tiny.gguf", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
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
    assert main(["convert_gguf", "--path", str(tmp_path), "--gguf-file", "missing.gguf", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


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
    out = checkpoints.convert_gguf(gguf_path.parent, gguf_path.name, tmp_path / "smollm2")
    assert not (tmp_path / "smollm2.tmp").exists() and (out / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert (model.config.num_hidden_layers, model.config.vocab_size, len(tok)) == (30, 49152, 49152)
    x = tok(format_prompt("Name three primary colors."), return_tensors="pt")
    with torch.no_grad():
        y = model.generate(**x, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    assert y.shape[1] == x["input_ids"].shape[1] + 3



# ----------------------------------------------------------------------------- stages


def test_init_student_checks_the_students_own_tokenizer_first(tmp_path, tok):
    from kdbench import models, stages
    from kdbench.paths import Paths

    n = len(tok)
    other = fx.make_tokenizer(tmp_path / "other_tok", extra_words=("zebra",))
    teacher = {"init": "pretrained", "path": fx.model_dir(tmp_path / "teacher", tok, n + 8), "finetuned": True}
    bad = {"init": "pretrained", "path": fx.model_dir(tmp_path / "student_bad", other, n + 1)}
    cfg = fx.hub_cfg(tmp_path, teacher, bad)
    with pytest.raises(UserError) as err:
        stages.init_student(cfg, "p", 0)
    msg = str(err.value)
    assert "different tokenizers" in msg and str(tmp_path / "teacher") in msg and str(tmp_path / "student_bad") in msg
    assert not Path(Paths(cfg).student_init("p", 0)).exists()  # nothing written

    good = {"init": "pretrained", "path": fx.model_dir(tmp_path / "student", tok, n + 3)}
    cfg = fx.hub_cfg(tmp_path, teacher, good)
    stages.init_student(cfg, "p", 1)
    folder = Path(Paths(cfg).student_init("p", 1))
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert json_of(folder / "kdbench.json")["shared_vocab_size"] == n + 3  # min(teacher n+8, student n+3)
    student = models.load_model(folder)
    assert stages._shared_vocab(str(folder), "p", student) == n + 3  # what distill slices logits to
    with pytest.raises(UserError, match="rerun init_student"):
        stages._shared_vocab(Paths(cfg).student_init("p", 0), "p", student)


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
    cfg = fx.hub_cfg(tmp_path, teacher, {"init": "layers_from_teacher", "layers": [1]})
    P = Paths(cfg)
    # train_teacher ends by answering the test set (stages.evaluate): one prompt
    io.write_jsonl(P.data("unused"), [{"id": "q", "instruction": "a b", "input": "", "output": ["a"]}])
    stages.train_teacher(cfg, "p", 0)
    saved = Path(P.teacher_model("p", 0))
    t = AutoModelForCausalLM.from_pretrained(saved)
    assert torch.equal(t.get_input_embeddings().weight, torch.from_numpy(embedding))
    assert "quantization_config" not in json_of(saved / "config.json")
    assert Path(P.teacher_file("trace", "p", 0)).is_file()  # a rule output
    for seed in (0, 1):
        stages.init_student(cfg, "p", seed)
        s = AutoModelForCausalLM.from_pretrained(P.student_init("p", seed))
        assert s.config.num_hidden_layers == 1
        assert torch.equal(s.model.layers[0].mlp.up_proj.weight, t.model.layers[1].mlp.up_proj.weight)
        assert json_of(Path(P.student_init("p", seed)) / "kdbench.json")["shared_vocab_size"] == 33
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == ["tiny.gguf"]
    assert not list(Path(P.root).rglob("*converted*"))
