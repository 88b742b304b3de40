"""Models and devices: build a scratch model from a config, load a pretrained one, save with
safetensors, pick the device and precision. Teacher and student take the same code path
whether they were built here or come from the hub."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from kdbench import io
from kdbench.errors import UserError


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(dev: torch.device | None = None) -> str:
    """The accelerator's name, or "cpu: <model name>" from /proc/cpuinfo (timings name their machine)."""
    dev = dev or device()
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"cpu: {name}"


def setup_threads(n: int) -> None:
    torch.set_num_threads(max(1, n))


def bf16_supported(dev: torch.device) -> bool:
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast(precision: str, dev: torch.device):
    """bf16 autocast for precision bf16 (or auto where supported); a no-op context for fp32."""
    use = precision == "bf16" or (precision == "auto" and bf16_supported(dev))
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def load_tokenizer(path: str | Path, gguf_file: str | None = None):
    """A tokenizer folder or hub id (or the tokenizer inside `path`/`gguf_file`), with the pad
    token defaulting to EOS."""
    from transformers import AutoTokenizer

    if gguf_file:
        from kdbench.checkpoints import load_gguf_tokenizer

        tok = load_gguf_tokenizer(path, gguf_file)
    else:
        tok = _from_pretrained(AutoTokenizer, str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def build(spec: dict, tokenizer, seed: int, name: str):
    """A model as the config's model spec says (scratch or pretrained), on CPU, in float32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec["init"] == "scratch":
        cfg = dict(spec["config"])
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise UserError(f"model {name}: `config.model_type` is missing; use e.g. llama or gpt2.")
        cfg["vocab_size"] = scratch_vocab_size(spec, len(tokenizer), name)
        conf = AutoConfig.for_model(model_type, bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **cfg)
        _check_config_keys(conf, cfg, name)
        conf._attn_implementation = spec["attn_implementation"]
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(conf)
    if spec["init"] == "pretrained":
        return load_model(spec["path"], spec)
    raise UserError(f"model {name}: init {spec['init']!r} is built by the init_student stage.")


def scratch_vocab_size(spec: dict, n_tokens: int, name: str) -> int:
    """The output size of a scratch model: one logit per token of its tokenizer (`n_tokens`),
    or `config.vocab_size` rows where the config sets it, as real checkpoints pad their
    embedding beyond the tokenizer (Qwen2.5: 151,936 rows for 151,665 tokens; the true-size
    profile config/paper-gpt2-shapes.yaml: GPT-2's 50,257 over a small trained tokenizer).
    Ids past the tokenizer decode to nothing."""
    rows = spec["config"].get("vocab_size")
    if rows is None:
        return n_tokens
    if not isinstance(rows, int) or rows < n_tokens:
        raise UserError(f"`pairs.{name}.config.vocab_size` is {rows!r}, fewer rows than the tokenizer's {n_tokens} "
                        "tokens; set it to at least that, or remove it (one row per token).")
    return rows


def check_scratch_config(spec: dict, name: str) -> None:
    """Check a scratch model's `config` without building the model (`validate` runs this)."""
    from transformers import AutoConfig

    cfg = dict(spec["config"])
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise UserError(f"model {name}: `config.model_type` is missing; use e.g. llama or gpt2.")
    try:
        conf = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"`pairs.{name}.config` is not a valid {model_type} config ({exc}); fix it.") from exc
    _check_config_keys(conf, cfg, name)


def _check_config_keys(conf, given: dict, name: str) -> None:
    """A key transformers neither knows nor consumes (it keeps it as a stray attribute, e.g. a
    typo such as `hidden_sise`) is an error, not a silently ignored setting."""
    import difflib

    known = set(type(conf)().to_dict()) | set(type(conf).attribute_map)
    stray = [k for k in given if k in conf.to_dict() and k not in known]
    if stray:
        close = difflib.get_close_matches(stray[0], sorted(known), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise UserError(f"`pairs.{name}.config.{stray[0]}` is not a {conf.model_type} config key; {hint}"
                        "fix the key (the transformers config class lists the valid ones).")


def load_model(path: str | Path, spec: dict | None = None):
    from transformers import AutoModelForCausalLM

    spec = spec or {}
    dtype = spec.get("torch_dtype", "auto")
    kwargs = {"attn_implementation": spec.get("attn_implementation", "sdpa")}
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    if spec.get("gguf_file"):  # dequantized in memory, saved later as plain safetensors
        from kdbench.checkpoints import load_gguf

        model, _ = load_gguf(path, spec["gguf_file"], **kwargs)
    else:
        model = _from_pretrained(AutoModelForCausalLM, str(path), **kwargs)
    return model.float() if device().type == "cpu" else model


def _from_pretrained(cls, path: str, **kwargs):
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as exc:  # a local folder: any failure to read it (truncated or corrupted files)
        if Path(path).exists():
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise UserError(f"{path} is not a readable model/tokenizer folder ({type(exc).__name__}: {first}); "
                            "delete it and rerun the stage that wrote it.") from exc
        if not isinstance(exc, OSError):
            raise
        raise UserError(f"{path!r} is neither a local folder nor a reachable hub id (no network or "
                        f"cache); download it where there is network (`huggingface-cli download {path} "
                        "--local-dir DIR`) and set the config's path to DIR.") from exc


def save(model, tokenizer, out_dir: str | Path) -> None:
    """save_pretrained (safetensors) of model and tokenizer into out_dir, atomically."""
    with io.atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


# Architectures whose causal-LM logits are the output layer applied to the base model's last
# hidden state, nothing else (no soft-capping or scaling): for these the engine projects only
# the positions that carry the loss.
PLAIN_HEAD = frozenset({"llama", "gpt2", "opt", "qwen2", "qwen3", "mistral"})


def checkpoint_activations(model, on: bool) -> None:
    """Gradient checkpointing of `model`'s layers (transformers' own, non-reentrant): in training
    mode each layer keeps only its input and recomputes the rest in the backward pass, so a
    step's saved activations shrink from every layer's (about 1 GiB per 512-token row for GPT-2
    base in fp32 on a CPU, benchmarks/results/student_activations.md) to one layer's, for one more
    forward of the model per step. The recomputation replays the same dropout masks, so
    gradients are those of the plain step. Inactive in eval mode (sampling, validation)."""
    # transformers 5.x names it "activation checkpointing"; 4.x "gradient checkpointing"
    new = hasattr(model, "activation_checkpointing_enable")
    if on:
        kwargs = {"use_reentrant": False}
        if new:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif is_checkpointing(model):
        model.activation_checkpointing_disable() if new else model.gradient_checkpointing_disable()


def is_checkpointing(model) -> bool:
    if hasattr(model, "activation_checkpointing_enable"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


def projects_rows(model) -> bool:
    """Whether `model`'s logits are its output layer applied to the last hidden state."""
    return model.config.model_type in PLAIN_HEAD and getattr(model, model.base_model_prefix, None) is not None


def rows_hidden(model, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (N, H) at the N true positions of `mask` (B, T), in row-major order;
    the model's output layer turns them into its logits (PLAIN_HEAD architectures only)."""
    body = getattr(model, model.base_model_prefix)
    return body(input_ids=input_ids, use_cache=False).last_hidden_state[mask]


def rows_logits(model, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) at the N true positions of `mask` (B, T), in row-major order.

    For PLAIN_HEAD architectures the output layer runs on those N hidden states only, so the
    (B, T, V) logits are never formed (on the default profile N is about 1/8 of B * T, and the
    output layer is most of the step's arithmetic). Other architectures: full logits, then the
    rows. (The fused path, kdbench/fused.py, does not form the (N, V) rows either.)
    """
    if not projects_rows(model):
        return model(input_ids=input_ids, use_cache=False).logits[mask]
    return model.get_output_embeddings()(rows_hidden(model, input_ids, mask))


def next_token_logits(model, input_ids, attention_mask, position_ids, cache):
    """(B, V) logits of the last position and the updated KV cache (a new one when `cache` is
    None). input_ids, position_ids: (B, t) new tokens; attention_mask: (B, past + t)."""
    body = getattr(model, model.base_model_prefix, None)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
              "cache": cache, "use_cache": True}
    if model.config.model_type not in PLAIN_HEAD or body is None:
        out = model(**kwargs)
        return out.logits[:, -1], out.cache
    out = body(**kwargs)
    return model.get_output_embeddings()(out.last_hidden_state[:, -1]), out.cache


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
