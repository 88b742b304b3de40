"""Instruction data: the prompt template, loading a prepared split, tokenisation, batches.

A record (one JSONL line, the same for the synthetic suite and real benchmarks):
    {"id": str, "instruction": str, "input": str, "output": [str, ...], "task": str, "difficulty": int|None}
The model sees `format_prompt(instruction, input)` and learns `output[0]` followed by EOS.
"""
from __future__ import annotations

import dataclasses
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


def format_prompt(instruction: str, input: str = "") -> str:
    if input and input.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT.format(instruction=instruction)


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
    """One tokenised example: ids = prompt + response + EOS; the first n_prompt are the prompt."""

    ids: list[int]
    n_prompt: int
    index: int  # position in the split (the difficulty profile and teacher cache use it)

    @property
    def n_response(self) -> int:
        return len(self.ids) - self.n_prompt


def encode_prompts(tokenizer, records: list[dict]) -> list[list[int]]:
    """The token ids of every record's prompt, with the special tokens the tokenizer adds; one
    batched call (a call per prompt costs about 0.2 ms of Python overhead each)."""
    if not records:
        return []
    return tokenizer([format_prompt(r["instruction"], r.get("input", "")) for r in records])["input_ids"]


def encode(tokenizer, records: list[dict], max_length: int, responses: list[str] | None = None) -> list[Encoded]:
    """Tokenise prompts and (reference or given) responses; responses are cut to max_length."""
    out = []
    eos = tokenizer.eos_token_id
    texts = responses if responses is not None else [rec["output"][0] for rec in records]
    answers = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if records else []
    for i, (rec, prompt, answer) in enumerate(zip(records, encode_prompts(tokenizer, records), answers)):
        ids = (prompt + answer + [eos])[:max_length]
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
