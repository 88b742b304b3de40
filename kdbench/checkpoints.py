"""Checkpoints of a teacher–student pair: the vocabulary check, a DistilBERT-style student
built from a subset of the teacher's layers, and GGUF checkpoints (loaded and dequantized in
memory, or converted to a safetensors folder by `python -m kdbench convert_gguf`).

Free of network access unless a hub id is asked for. Loading and saving ordinary
checkpoints is `kdbench.models`'.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from kdbench import io
from kdbench.errors import UserError

# --------------------------------------------------------------------------------------
# Teacher–student vocabulary
# --------------------------------------------------------------------------------------


def _special_tokens(tok: Any) -> dict[str, Any]:
    """The special tokens that decide how text is cut into ids and where answers end: named
    ones (bos/eos/unk/...) and the set of all, WITHOUT the padding token (padding never carries
    a loss or a logit that is compared; hub checkpoints often differ only in whether a pad
    token is set, e.g. MiniLLM's GPT-2 teacher sets pad = <|endoftext|>, openai-community/gpt2
    sets none)."""
    named = dict(getattr(tok, "special_tokens_map", {}) or {})
    named.pop("additional_special_tokens", None)
    pad = named.pop("pad_token", None)
    every = set(getattr(tok, "all_special_tokens", []) or [])
    if pad is not None and str(pad) not in {str(v) for v in named.values()}:
        every.discard(str(pad))
    return {"named": {k: str(v) for k, v in named.items()}, "all": sorted(every)}


def check_vocab(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    teacher_vocab_size: int,
    student_vocab_size: int,
    teacher_name: str = "teacher",
    student_name: str = "student",
) -> int:
    """The vocabulary size V to compare teacher and student logits over: logits[..., :V].

    Requires identical tokenizers (same token -> id map, same special tokens apart from the
    padding token, which never carries a loss); call it with each model's OWN tokenizer,
    before either is saved with the other's. The models' output sizes (`config.vocab_size`)
    may differ by padding of the embedding matrix (Qwen2.5: 151,665 tokens, 151,936 or
    152,064 rows; OPT: 50,265 tokens, 50,272 rows): the shared size
    min(teacher_vocab_size, student_vocab_size) is returned as long as it covers every token of
    the tokenizer. Anything else raises UserError naming both models.
    """
    pair = f"teacher '{teacher_name}' and student '{student_name}'"
    tv, sv = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if tv != sv:
        diff = sorted(set(tv.items()) ^ set(sv.items()), key=lambda kv: kv[1])
        example = ", ".join(f"{tok!r}->{i}" for tok, i in diff[:3])
        raise UserError(f"{pair} have different tokenizers ({len(tv)} vs {len(sv)} tokens, "
                        f"{len(diff)} token->id entries differ, e.g. {example}); pick a pair from one "
                        f"model family, since KD compares their logits token id by token id")
    ts, ss = _special_tokens(teacher_tokenizer), _special_tokens(student_tokenizer)
    if ts != ss:
        raise UserError(f"{pair} share a vocabulary but not their special tokens ({ts['named']} vs "
                        f"{ss['named']}); pick checkpoints whose special tokens match (e.g. both -Instruct "
                        f"or both base models of one family) so both end answers with the same EOS")
    n_tokens = max(len(teacher_tokenizer), len(student_tokenizer))
    shared = min(int(teacher_vocab_size), int(student_vocab_size))
    if shared < n_tokens:
        small = teacher_name if teacher_vocab_size <= student_vocab_size else student_name
        raise UserError(f"model '{small}' has {shared} output logits but its tokenizer has {n_tokens} "
                        f"tokens ({pair}); resize its embeddings to at least {n_tokens} before distilling")
    return shared


# --------------------------------------------------------------------------------------
# Student initialised from a subset of the teacher's layers
# --------------------------------------------------------------------------------------

# (path to the module holding the decoder layers, attribute name of the ModuleList)
_LAYER_PATHS = [("model", "layers"),            # Llama, Qwen2, Mistral, Gemma, SmolLM, ...
                ("transformer", "h"),           # GPT-2, GPT-J, GPT-Neo, Bloom
                ("model.decoder", "layers"),    # OPT
                ("gpt_neox", "layers")]         # Pythia / GPT-NeoX


def decoder_layers(model: Any) -> tuple[Any, str]:
    """(parent module, attribute) of a causal LM's list of decoder layers."""
    for parent_path, attr in _LAYER_PATHS:
        parent = model
        for part in parent_path.split("."):
            parent = getattr(parent, part, None)
            if parent is None:
                break
        if parent is not None and hasattr(parent, attr):
            return parent, attr
    raise UserError(f"cannot find the decoder layers of {type(model).__name__} (looked for "
                    f"{', '.join(p + '.' + a for p, a in _LAYER_PATHS)}); initialise this student "
                    f"from a pretrained checkpoint instead")


def student_from_teacher_layers(teacher_model: Any, layer_indices: Sequence[int]) -> Any:
    """A smaller model of the teacher's class keeping only the decoder layers `layer_indices`.

    DistilBERT-style initialisation: the student is a copy of the teacher (config, embeddings,
    positional embeddings, final norm, LM head and their tying, generation config) whose layer
    list holds copies of the selected layers, in the given (strictly increasing) order. The
    config's layer count (and per-layer `layer_types`, if any) is updated and every copied
    layer is renumbered (`layer_idx`) so its KV cache slot matches its new position. The
    teacher is left untouched; only the kept layers are copied (peak memory ~ teacher +
    student).
    """
    import torch.nn as nn

    idx = [int(i) for i in layer_indices]
    parent, attr = decoder_layers(teacher_model)
    layers = getattr(parent, attr)
    n = len(layers)
    if not idx or any(b <= a for a, b in zip(idx, idx[1:])) or idx[0] < 0 or idx[-1] >= n:
        raise UserError(f"student layer indices {list(layer_indices)} must be non-empty, strictly "
                        f"increasing and within 0..{n - 1} (the teacher has {n} layers); fix them in the config")
    setattr(parent, attr, nn.ModuleList())  # detach the layers so deepcopy skips them
    try:
        student = copy.deepcopy(teacher_model)
    finally:
        setattr(parent, attr, layers)
    kept = nn.ModuleList(copy.deepcopy(layers[i]) for i in idx)
    for new_i, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_i
    student_parent, _ = decoder_layers(student)
    setattr(student_parent, attr, kept)

    config = student.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == n:
        config.layer_types = [layer_types[i] for i in idx]
    config.num_hidden_layers = len(idx)
    return student


# --------------------------------------------------------------------------------------
# GGUF checkpoints (e.g. SmolLM2-135M-Instruct.Q4_1.gguf)
# --------------------------------------------------------------------------------------


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _gguf_location(repo_or_dir: str | os.PathLike, gguf_file: str) -> tuple[str, Path | None]:
    """(what to pass to from_pretrained, the local .gguf path or None for a hub repo)."""
    src = Path(os.fspath(repo_or_dir)).expanduser()
    if src.is_dir():
        if not (src / gguf_file).is_file():
            raise UserError(f"GGUF file {src / gguf_file} does not exist; check the folder and file name "
                            f"(`path` and `gguf_file` in the config)")
        return str(src), src / gguf_file
    return os.fspath(repo_or_dir), None


def _require(*packages: str) -> None:
    for name in packages:
        try:
            __import__(name)
        except ImportError as e:
            raise UserError(f"reading GGUF checkpoints needs the packages gguf and accelerate ({name} is "
                            f"missing); run `pip install gguf accelerate` (or `pip install -e \".[gguf]\"`)") from e


def load_gguf_tokenizer(repo_or_dir: str | os.PathLike, gguf_file: str) -> Any:
    """The tokenizer stored in a GGUF file (read-only: safe for concurrent jobs). Needs `gguf`."""
    _require("gguf")
    from transformers import AutoTokenizer

    location, _ = _gguf_location(repo_or_dir, gguf_file)
    try:
        return AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)
    except OSError as e:  # a hub repo without network or cache
        raise UserError(_gguf_unreachable(location, gguf_file, e)) from e


def _gguf_unreachable(location: str, gguf_file: str, exc: Exception) -> str:
    return (f"cannot read GGUF file {gguf_file!r} from {location!r} ({type(exc).__name__}); download it "
            f"where there is network (`hf download {location} {gguf_file} --local-dir DIR`), copy DIR here "
            f"and set the model's `path` in the config to DIR")


def load_gguf(repo_or_dir: str | os.PathLike, gguf_file: str, *, dtype: Any = None,
              **from_pretrained_kwargs: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of a GGUF checkpoint, dequantized into plain dense weights in memory.

    repo_or_dir: a local folder holding `gguf_file`, or a hub model repo (needs the network or
    the HF cache). dtype: torch dtype of the weights (default float32, what transformers
    dequantizes to; the quantization rounding is baked in). The model carries no GGUF
    quantizer, so `save_pretrained` writes an ordinary safetensors checkpoint. Nothing is
    written to disk, so concurrent jobs cannot race. Needs `pip install gguf accelerate`.
    """
    _require("gguf", "accelerate")  # transformers refuses gguf_file= without accelerate
    from transformers import AutoModelForCausalLM

    location, _ = _gguf_location(repo_or_dir, gguf_file)
    tokenizer = load_gguf_tokenizer(location, gguf_file)
    kwargs: dict[str, Any] = dict(from_pretrained_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:  # transformers >= 5 can keep GGUF blocks packed; ask for plain dense weights
        from transformers import GgufConfig
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantize
        pass
    try:
        model = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, **kwargs)
    except OSError as e:
        raise UserError(_gguf_unreachable(location, gguf_file, e)) from e
    # the weights are now dense: drop the GGUF loader record, or save_pretrained refuses to
    # write (a GGUF quantizer is not serializable) and from_pretrained would expect a GGUF file
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model, tokenizer


def convert_gguf(
    repo_or_dir: str | os.PathLike,
    gguf_file: str,
    out_dir: str | os.PathLike,
    *,
    dtype: Any = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Dequantize a GGUF checkpoint into a Hugging Face folder (safetensors + tokenizer).

    `load_gguf`, then `save_pretrained` into a private temporary folder beside `out_dir`,
    renamed onto `out_dir` only when complete (an existing `out_dir` is replaced). The folder
    also holds `kdbench_source.json` with the GGUF's origin and sha256. The DAG does not
    call this (train_teacher saves the loaded teacher itself); it is the by-hand way to get
    a safetensors copy, e.g. to share or inspect.
    """
    say = progress or (lambda msg: None)
    location, local_file = _gguf_location(repo_or_dir, gguf_file)
    say(f"loading and dequantizing {location}/{gguf_file}")
    model, tokenizer = load_gguf(location, gguf_file, dtype=dtype)
    out = Path(os.fspath(out_dir)).expanduser()
    with io.atomic_path(out) as tmp:
        say(f"writing {tmp}")
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        provenance = {"source": location, "gguf_file": gguf_file,
                      "sha256": _sha256(local_file) if local_file else None,
                      "dtype": str(next(model.parameters()).dtype)}
        (tmp / "kdbench_source.json").write_text(json.dumps(provenance, indent=2) + "\n")
    say(f"wrote {out}")
    return out
