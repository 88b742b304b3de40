"""Teacher logits for a training batch: computed online, or read from a cache built once per
pair and shared by every offline method (the embedded default's vocabulary is small enough).

Cache layout (folder): logits.npy — (N_rows, V) uint16 holding bf16 bits, one row per
response position of each training example, in example order; offsets.npy — (N+1,) int64
row offsets; meta.json.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kdbench import io
from kdbench.data import Encoded, collate
from kdbench.errors import UserError
from kdbench.models import autocast, rows_logits


class OnlineTeacher:
    """Runs the teacher on each batch. Returns (N, V) logits (bf16 or fp32) at the N true
    entries of batch["mask"], row-major."""

    def __init__(self, model, precision: str, dev):
        self.model = model.eval().requires_grad_(False).to(dev)
        self.precision, self.dev = precision, dev

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        with autocast(self.precision, self.dev):
            return rows_logits(self.model, batch["input_ids"], batch["mask"])


class CachedTeacher:
    """Reads cached response-position logits: (N, V) bf16 rows at the N true entries of
    batch["mask"], which must mark the response positions (loss_on: response)."""

    def __init__(self, cache_dir: str | Path, examples: list[Encoded]):
        cache_dir = Path(cache_dir)
        try:
            self.logits = np.load(cache_dir / "logits.npy", mmap_mode="r")
            self.offsets = np.load(cache_dir / "offsets.npy")
        except (OSError, ValueError) as exc:
            raise UserError(f"teacher cache {cache_dir} is unreadable ({type(exc).__name__}: {exc}); delete it "
                            "and rerun the cache_teacher stage.") from exc
        counts = np.diff(self.offsets)
        if (len(self.offsets) == 0 or self.offsets[-1] != len(self.logits)
                or any(e.index >= len(counts) or counts[e.index] != e.n_response for e in examples)):
            raise UserError(f"the teacher cache {cache_dir} does not match the training examples "
                            "(other data or max_length); delete it and rerun the cache_teacher stage.")

    def __call__(self, batch: dict) -> torch.Tensor:
        # the cache rows of an example are its response positions in order, which is the
        # order of its true mask entries: one gather of the concatenated row ranges
        index = batch["index"].tolist()
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in index])
        if len(rows) != int(batch["mask"].sum()):
            raise UserError("the teacher cache holds response positions only, but the batch's loss "
                            "covers other tokens; use loss_on: response for distillation or set "
                            "distill.cache_teacher: false.")
        out = torch.from_numpy(self.logits[rows].view(np.int16)).view(torch.bfloat16)
        return out.to(batch["input_ids"].device)


@torch.no_grad()
def build_cache(model, examples: list[Encoded], pad_id: int, out_dir, precision: str, dev,
                batch_size: int = 32) -> dict:
    """Run the teacher once over the training set and store its response-position logits."""
    teacher = OnlineTeacher(model, precision, dev)
    V = model.config.vocab_size
    counts = np.array([e.n_response for e in examples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    with io.atomic_path(out_dir) as tmp:
        tmp.mkdir()
        arr = np.lib.format.open_memmap(tmp / "logits.npy", mode="w+", dtype=np.uint16, shape=(int(offsets[-1]), V))
        for s in tqdm(range(0, len(examples), batch_size), desc="cache teacher logits", unit="batch"):
            chunk = examples[s:s + batch_size]
            batch = {k: v.to(dev) for k, v in collate(chunk, pad_id).items()}
            rows = teacher(batch).to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
            at = 0  # the rows are the chunk's response positions, example after example
            for e in chunk:
                arr[offsets[e.index]:offsets[e.index + 1]] = rows[at:at + e.n_response]
                at += e.n_response
        arr.flush()
        del arr
        np.save(tmp / "offsets.npy", offsets)
        meta = {"n_examples": len(examples), "n_rows": int(offsets[-1]), "vocab_size": V,
                "dtype": "bfloat16 bits in uint16", "megabytes": round(int(offsets[-1]) * V * 2 / 2**20, 1)}
        io.write_json(tmp / "meta.json", meta)
    return meta
