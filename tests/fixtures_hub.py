"""Offline fixtures for tests/test_loaders.py and tests/test_checkpoints.py, created in temporary
folders.

- `go_offline`: no test may touch the network (offline env vars and import-time constants).
- `hub_cfg` / `model_dir`: a validated hub-source profile and a tiny saved model folder.

- `make_tokenizer`: a word-level tokenizer (whitespace + punctuation pre-tokenizer), saved with
  `save_pretrained`; its token count for a text is `count_tokens(text)`, computed here
  independently of the tokenizer (the pre-tokenizer's regex `\\w+|[^\\w\\s]+`).
- `make_gpt2` / `make_llama` / `make_qwen2`: tiny random models built from a config (a few thousand
  parameters), saved with `save_pretrained`.
- `make_tiny_gguf`: a 2-layer Llama GGUF (float32 tensors, GPT-2-style BPE tokenizer of 32 tokens)
  written with the `gguf` package's writer, for the conversion test.
- `make_minillm_snapshot`: local copies of the MiniLLM hub repos, in their real file layout
  (raw.jsonl / valid.jsonl / 11_/valid.jsonl, fields topic/instruction/input/output/prompt),
  with single references and, for sinst, lists of references. The `prompt` field is written
  from the literal protocol template, not from kdbench's `format_prompt`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

WORDS = ("the a of to and is in what why how who name give write list explain three colors "
         "cat sat on mat it was warm answer question text summary sentence paris capital france").split()
SPECIALS = ["<unk>", "<pad>", "<eos>"]

# the protocol's two prompt forms, written out literally (docs/protocol.md, prompt format)
_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
             "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
               "further context. Write a response that appropriately completes the request.\n\n"
               "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


def alpaca(instruction: str, inp: str = "") -> str:
    return _WITH_INPUT.format(instruction=instruction, input=inp) if inp else _NO_INPUT.format(instruction=instruction)


def count_tokens(text: str) -> int:
    """Tokens the fixture tokenizer produces for `text` (no special tokens)."""
    return len(re.findall(r"\w+|[^\w\s]+", text))


def make_tokenizer(folder: Path, extra_words: tuple[str, ...] = (), eos: str = "<eos>"):
    """Word-level tokenizer: specials, then WORDS (+ extra_words), then the template words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    template_words = re.findall(r"\w+|[^\w\s]+", _WITH_INPUT.format(instruction="", input=""))
    vocab: dict[str, int] = {}
    for w in SPECIALS + list(WORDS) + list(extra_words) + template_words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token=eos)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def make_gpt2(folder: Path, vocab_size: int, n_layer: int = 4, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=16, n_layer=n_layer, n_head=2,
                     bos_token_id=2, eos_token_id=2, pad_token_id=1)
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(folder)
    return model


def make_llama(folder: Path, vocab_size: int, n_layer: int = 4, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=n_layer,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      bos_token_id=2, eos_token_id=2, pad_token_id=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    return model


def make_qwen2(folder: Path, vocab_size: int, n_layer: int = 4, seed: int = 0):
    """Qwen2 with sliding-window attention in its upper half: per-layer `config.layer_types`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=n_layer,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      use_sliding_window=True, sliding_window=4, max_window_layers=n_layer // 2,
                      bos_token_id=2, eos_token_id=2, pad_token_id=1)
    model = Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    return model


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _row(i: int, instruction: str, inp: str, output, **extra) -> dict:
    return {**extra, "instruction": instruction, "input": inp, "output": output, "prompt": alpaca(instruction, inp)}


def make_minillm_snapshot(root: Path) -> dict[str, Path]:
    """Folders dolly/, self-inst/, vicuna/, sinst/, uinst/ in the hub layout; returns their paths.

    dolly/raw.jsonl has 1,003 rows (the validation split is its first 1,000, train the last 3);
    instruction i of raw.jsonl is "what is <i>" so rows can be told apart.
    """
    root.mkdir(parents=True, exist_ok=True)
    raw = [_row(i, f"what is {i}", "the cat sat on the mat" if i % 2 else "", f"answer {i}", topic="open_qa")
           for i in range(1003)]
    _write_jsonl(root / "dolly" / "raw.jsonl", raw)
    _write_jsonl(root / "dolly" / "valid.jsonl", [
        _row(0, "name three colors", "", "red green blue", topic="brainstorming"),
        _row(1, "give the capital", "paris is the capital of france", "paris", topic="closed_qa"),
    ])
    _write_jsonl(root / "self-inst" / "valid.jsonl", [
        _row(0, "write a summary", "the cat sat on the mat", "a cat sat", topic="Grammarly"),
    ])
    # Vicuna: no input field at all, a category instead of a topic
    _write_jsonl(root / "vicuna" / "valid.jsonl", [
        {"instruction": "explain why the cat sat", "category": "generic",
         "prompt": alpaca("explain why the cat sat"), "output": "it was warm"},
    ])
    _write_jsonl(root / "sinst" / "11_" / "valid.jsonl", [
        _row(0, "list three colors", "", ["red green blue", "blue red green", "green blue red"], topic="task1"),
        _row(1, "answer the question", "what is the capital of france", ["paris is the capital"], topic="task2"),
    ])
    _write_jsonl(root / "sinst" / "0_2" / "valid.jsonl", [_row(0, "answer", "a", ["b"], topic="t")])
    _write_jsonl(root / "uinst" / "11_" / "valid.jsonl",
                 [_row(i, f"question {i}", "", f"answer number {i}") for i in range(12)])
    return {name: root / name for name in ("dolly", "self-inst", "vicuna", "sinst", "uinst")}


def make_tiny_gguf(path: Path, n_layer: int = 2, hidden: int = 16, ff: int = 32, heads: int = 2, kv: int = 1,
                   extra_control_tokens: tuple[str, ...] = ()):
    """Write a tiny Llama GGUF file; returns the token-embedding matrix written (vocab, hidden).

    `extra_control_tokens` are appended to the vocabulary (e.g. "<|endoftext|>", which
    transformers' GGUF reader adds to a GPT-2-style vocabulary when it is missing)."""
    import gguf
    import numpy as np

    toks = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(97, 123)] + ["\u0120", "ab", "\u0120a"]
    toks += list(extra_control_tokens)
    vocab, hd = len(toks), hidden // heads
    rng = np.random.default_rng(0)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ff)
    w.add_embedding_length(hidden)
    w.add_rope_dimension_count(hd)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(toks)
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3 - len(extra_control_tokens)) + [3] * len(extra_control_tokens))
    w.add_token_merges(["a b", "\u0120 a"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    embedding = rand(vocab, hidden)
    w.add_tensor("token_embd.weight", embedding)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(kv * hd, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(kv * hd, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(hidden, hidden))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ff, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(ff, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, ff))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", rand(vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return embedding


ROOT = Path(__file__).resolve().parents[1]


def go_offline(monkeypatch) -> None:
    """Offline env vars plus the constants `datasets` and `huggingface_hub` read at import time."""
    import datasets
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def hub_cfg(tmp_path: Path, teacher: dict, student: dict, **data) -> dict:
    """A validated profile with data.source hub, one pair `p` and two training seeds."""
    from kdbench import config as C

    raw = {"profile": "hubtest", "results_dir": str(tmp_path / "results"), "methods_dir": str(ROOT / "methods"),
           "data": {"source": "hub", "train": "someone/unused", "benchmarks": {"unused": "someone/unused"}, **data},
           "pairs": {"p": {"teacher": teacher, "student": student}}, "training_seeds": 2}
    return C.validate(raw)


def model_dir(folder: Path, tok, vocab_size: int, n_layer: int = 2) -> str:
    """A tiny Llama saved with `tok` in `folder`."""
    make_llama(folder, vocab_size=vocab_size, n_layer=n_layer)
    tok.save_pretrained(folder)
    return str(folder)


# ChatML, as Qwen2.5 and SmolLM2 write it (without their default system messages)
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def make_chat_tokenizer(folder: Path, records: list[dict], vocab_size: int = 300):
    """A byte-level BPE trained on `records` (kdbench.tokenizer.train_bpe) plus the ChatML
    control tokens `<|im_start|>`, `<|im_end|>` and template, as an instruction-tuned model's
    tokenizer has them; saved with `save_pretrained` in `folder` and returned."""
    from kdbench.models import load_tokenizer
    from kdbench.tokenizer import train_bpe

    train_bpe(records, vocab_size, folder)
    tok = load_tokenizer(folder)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    tok.save_pretrained(folder)
    return load_tokenizer(folder)


def make_chat_model(folder: Path, tok, n_layer: int = 1, seed: int = 0, never_ends: bool = False):
    """A tiny Llama over `tok`'s vocabulary saved with `tok` in `folder` (a pretrained model for
    `init: pretrained`). never_ends: the model never samples `<|im_end|>`: every embedding has
    a large constant first coordinate, so after the final RMSNorm the first coordinate of every
    hidden state is about sqrt(hidden_size), and the untied output row of `<|im_end|>` is -100
    there and 0 elsewhere (a logit near -400 at every position)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=n_layer,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=not never_ends)
    model = LlamaForCausalLM(cfg).eval()
    if never_ends:
        end = tok.convert_tokens_to_ids("<|im_end|>")
        with torch.no_grad():
            model.model.embed_tokens.weight[:, 0] = 50.0
            model.lm_head.weight[end] = 0.0
            model.lm_head.weight[end, 0] = -100.0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model
