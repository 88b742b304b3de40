"""Instruction data: the prompt format, loading a prepared split, tokenisation, batches.

A record (one JSON line, the same for the synthetic suite and real benchmarks):
    {"id": str, "instruction": str, "input": str, "output": [str, ...], "task": str, "difficulty": int|None}

How a record is put to a model is the profile's `PromptFormat` (`data.prompt_format`):
    alpaca  the protocol's Alpaca prompt as plain text (`format_prompt`); the answer ends with EOS
    chat    the tokenizer's own chat template: one user turn (instruction, then the input after
            a blank line), an optional system message (`data.system_prompt`), the template's
            assistant header; the answer ends with the template's end-of-turn token
Every stage (training, difficulty scoring, teacher sampling, on-policy sampling, validation,
evaluation) gets its prompt ids from `encode_prompts` and the end of an answer from
`end_token`, so the same record is the same prompt everywhere. The model learns
`output[0]` followed by the end token.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from kdbench.errors import UserError

# Alpaca-style prompts of the instruction-KD protocol (MiniLLM / DistiLLM / POCL), verbatim.
PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                     "provides further context. Write a response that appropriately completes the "
                     "request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")

ALPACA, CHAT = "alpaca", "chat"


def format_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt text of an instruction and its optional input."""
    if input and input.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT.format(instruction=instruction)


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """How records are put to a model and where its answers end: `kind` alpaca or chat
    (`data.prompt_format`), the chat system message (`data.system_prompt`), and strings that
    end a sampled answer where they first appear (`evaluation.stop_strings`, for base models
    that go on to write a new "### Instruction:")."""

    kind: str = ALPACA
    system: str | None = None
    stop_strings: tuple[str, ...] = ()

    @classmethod
    def of(cls, cfg: dict) -> "PromptFormat":
        """The profile's format (a validated config)."""
        d = cfg["data"]
        return cls(d["prompt_format"], d["system_prompt"], tuple(cfg["evaluation"]["stop_strings"]))

    def cut(self, text: str) -> tuple[str, str | None]:
        """`text` up to the first stop string, and that string (None: no stop string in it)."""
        hits = [(text.find(s), s) for s in self.stop_strings if s in text]
        if not hits:
            return text, None
        at, stop = min(hits)
        return text[:at], stop


PROTOCOL = PromptFormat()  # the protocol's Alpaca prompt, no stop strings


def _user_turn(record: dict) -> str:
    inp = record.get("input") or ""
    return record["instruction"] + (f"\n\n{inp}" if inp.strip() else "")


def _chat_text(tokenizer, messages: list[dict], **kwargs) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"`data.prompt_format` is chat, but the tokenizer {tokenizer.name_or_path!r} has no chat "
                        "template; use `prompt_format: alpaca` for a base model, or a tokenizer that has one "
                        "(an instruction-tuned model's).")
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def _messages(record: dict, fmt: PromptFormat) -> list[dict]:
    system = [{"role": "system", "content": fmt.system}] if fmt.system else []
    return system + [{"role": "user", "content": _user_turn(record)}]


def render_prompt(tokenizer, record: dict, fmt: PromptFormat = PROTOCOL) -> str:
    """The prompt text of `record` in format `fmt`: the one place a prompt is written (the
    tokenizer is needed for chat only)."""
    if fmt.kind == ALPACA:
        return format_prompt(record["instruction"], record.get("input") or "")
    return _chat_text(tokenizer, _messages(record, fmt), add_generation_prompt=True)


def encode_prompts(tokenizer, records: list[dict], fmt: PromptFormat = PROTOCOL) -> list[list[int]]:
    """The token ids of every record's prompt, in one batched call (a call per prompt costs
    about 0.2 ms of Python overhead each). Alpaca: with the special tokens the tokenizer adds
    (e.g. OPT's leading `</s>`); chat: none, the template writes its own (BOS included)."""
    if not records:
        return []
    texts = [render_prompt(tokenizer, r, fmt) for r in records]
    _announce(tokenizer, fmt, texts[0])
    return tokenizer(texts, add_special_tokens=fmt.kind == ALPACA)["input_ids"]


_ANNOUNCED: set = set()


def _announce(tokenizer, fmt: PromptFormat, text: str) -> None:
    """Log a format's first rendered prompt once per process (each stage's log shows what the
    models were given)."""
    key = (fmt, getattr(tokenizer, "name_or_path", None))
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        print(f"prompt format {fmt.kind}: {text!r}", file=sys.stderr)


_SENTINEL = "KDBENCHANSWER"


def end_token(tokenizer, fmt: PromptFormat = PROTOCOL) -> int:
    """The token that ends an answer, which training appends and sampling stops at: EOS
    (alpaca), or the chat template's end of turn, the first control token it writes after an
    assistant message (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3)."""
    if fmt.kind == ALPACA:
        return tokenizer.eos_token_id
    text = _chat_text(tokenizer, _messages({"instruction": "x"}, fmt) + [{"role": "assistant", "content": _SENTINEL}])
    after = text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""
    control = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    ids = [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in control]
    if not ids:
        raise UserError(f"the chat template of {tokenizer.name_or_path!r} writes no control token after an "
                        f"assistant's answer ({after!r}), so kdbench cannot tell where an answer ends; use "
                        "`prompt_format: alpaca` (answers end with EOS) or a template that closes its turns.")
    return ids[0]


def load_records(path: str | Path) -> list[dict]:
    """Records of one prepared split (JSON lines). Keys missing from some records are filled
    with None, so every record has the same keys. A malformed or incomplete line, or an empty
    file, stops here naming the file and line."""
    from kdbench import io

    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} is missing; run the prepare_data stage "
                        "(snakemake runs it) or check `data` in the config.")
    rows = io.read_jsonl(path)
    if not rows:
        raise UserError(f"data file {path} holds no records; rebuild it (delete it and rerun prepare_data) "
                        "or check the source in `data`.")
    for n, row in enumerate(rows, 1):
        missing = [k for k in ("id", "instruction", "output") if k not in row]
        if missing or not (isinstance(row["output"], list) and row["output"]):
            raise UserError(f"{path}: record {n} ({row.get('id', 'no id')}) lacks {missing or '`output` (a non-empty list)'}; "
                            "rebuild the file (delete it and rerun prepare_data).")
    keys = dict.fromkeys(k for row in rows for k in row)
    return [{k: row.get(k) for k in keys} for row in rows]


@dataclasses.dataclass
class Encoded:
    """One tokenised example: ids = prompt + response + end token; the first n_prompt are the prompt."""

    ids: list[int]
    n_prompt: int
    index: int  # position in the split (the difficulty profile and teacher cache use it)

    @property
    def n_response(self) -> int:
        return len(self.ids) - self.n_prompt


def encode(tokenizer, records: list[dict], max_length: int, responses: list[str] | None = None,
           fmt: PromptFormat = PROTOCOL, max_prompt_tokens: int | None = None) -> list[Encoded]:
    """Tokenise prompts (format `fmt`; cut to their first `max_prompt_tokens` tokens, as
    generation cuts test prompts) and (reference or given) responses, each followed by the
    format's end token; responses are cut to max_length."""
    out = []
    end = end_token(tokenizer, fmt) if records else None
    texts = responses if responses is not None else [rec["output"][0] for rec in records]
    answers = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if records else []
    prompts = [p[:max_prompt_tokens] for p in encode_prompts(tokenizer, records, fmt)]
    for i, (rec, prompt, answer) in enumerate(zip(records, prompts, answers)):
        ids = (prompt + answer + [end])[:max_length]
        if len(ids) <= len(prompt):
            raise UserError(f"example {rec.get('id', i)} has a prompt of {len(prompt)} tokens, which "
                            f"leaves no room for a response within max_length={max_length}; raise "
                            "`data.max_length` or lower `data.max_prompt_tokens`.")
        out.append(Encoded(ids, len(prompt), i))
    return out


def encode_corpus(tokenizer, records: list[dict], max_length: int) -> list[Encoded]:
    """Records as plain language-model text, "instruction\ninput\nanswer" + EOS, without the
    instruction template: a pre-training corpus (every token carries the loss)."""
    eos = tokenizer.eos_token_id
    out = []
    for i, rec in enumerate(records):
        text = "\n".join(t for t in (rec["instruction"], rec.get("input", ""), rec["output"][0]) if t)
        ids = (tokenizer(text, add_special_tokens=False)["input_ids"] + [eos])[:max_length]
        out.append(Encoded(ids, 1, i))
    return out


# --- batches ------------------------------------------------------------------------------

def make_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int, window: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """Length-bucketed batches that keep the given order at the scale of a window.

    `order` (the epoch's example indices, in the order the method wants) is cut into windows
    of `window * batch_size` examples; inside a window examples are sorted by length, cut into
    batches, and the batches shuffled. Padding waste drops; the curriculum order survives.
    """
    batches = []
    span = window * batch_size
    for start in range(0, len(order), span):
        chunk = np.asarray(order[start:start + span])
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        group = [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        batches.extend(group[j] for j in rng.permutation(len(group)))
    return batches


def collate(examples: list[Encoded], pad_id: int, loss_on: str = "response") -> dict[str, torch.Tensor]:
    """Right-padded tensors. Position t predicts token t+1; `mask` marks the positions whose
    next token carries the loss (response tokens, or every real token for loss_on="all").

    Models are called on these batches WITHOUT the attention mask: with right padding and
    causal attention, padding never influences a real position, and leaving the mask out keeps
    the fused causal attention kernel (about 4x faster on CPU than the masked path).

    input_ids, attention_mask, mask, targets: (B, T); index: (B,) example indices.
    """
    T = max(len(e.ids) for e in examples)
    B = len(examples)
    lengths = np.array([len(e.ids) for e in examples])
    first = np.zeros(B, dtype=np.int64) if loss_on == "all" else np.array([e.n_prompt - 1 for e in examples])
    ids = np.full((B, T), pad_id, dtype=np.int64)
    for b, e in enumerate(examples):  # numpy slice writes: ~1 us each, a torch write costs ~10
        ids[b, :len(e.ids)] = e.ids
    col = np.arange(T)
    attn = col < lengths[:, None]
    mask = (col >= first[:, None]) & (col < lengths[:, None] - 1)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn.astype(np.int64)),
            "mask": torch.from_numpy(mask), "targets": torch.from_numpy(np.roll(ids, -1, axis=1)),
            "index": torch.tensor([e.index for e in examples])}
