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
from kdbench.models import autocast


class OnlineTeacher:
    """Runs the teacher on each batch. Returns (B, T, V) logits (bf16 or fp32)."""

    def __init__(self, model, precision: str, dev):
        self.model = model.eval().requires_grad_(False).to(dev)
        self.precision, self.dev = precision, dev

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        with autocast(self.precision, self.dev):
            return self.model(input_ids=batch["input_ids"]).logits


class CachedTeacher:
    """Reads cached response-position logits into a (B, T, V) bf16 tensor (zeros elsewhere)."""

    def __init__(self, cache_dir: str | Path, examples: list[Encoded]):
        cache_dir = Path(cache_dir)
        try:
            self.logits = np.load(cache_dir / "logits.npy", mmap_mode="r")
            self.offsets = np.load(cache_dir / "offsets.npy")
        except (OSError, ValueError) as exc:
            raise UserError(f"teacher cache {cache_dir} is unreadable ({type(exc).__name__}: {exc}); delete it "
                            "and rerun the cache_teacher stage.") from exc
        if len(self.offsets) != len(examples) + 1 or self.offsets[-1] != len(self.logits):
            raise UserError(f"teacher cache {cache_dir} does not match the training split ({len(self.offsets) - 1} "
                            f"examples cached, {len(examples)} in the split); delete it and rerun cache_teacher.")
        self.examples = {e.index: e for e in examples}

    def __call__(self, batch: dict) -> torch.Tensor:
        B, T = batch["input_ids"].shape
        out = torch.zeros((B, T, self.logits.shape[1]), dtype=torch.bfloat16)
        for b, i in enumerate(batch["index"].tolist()):
            e = self.examples[i]
            rows = np.array(self.logits[self.offsets[i]:self.offsets[i + 1]])
            out[b, e.n_prompt - 1:e.n_prompt - 1 + len(rows)] = torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16)
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
            logits = teacher(batch).to(torch.bfloat16)
            for b, e in enumerate(chunk):
                rows = logits[b, e.n_prompt - 1:len(e.ids) - 1].cpu()
                arr[offsets[e.index]:offsets[e.index + 1]] = rows.view(torch.int16).numpy().view(np.uint16)
        arr.flush()
        del arr
        np.save(tmp / "offsets.npy", offsets)
        meta = {"n_examples": len(examples), "n_rows": int(offsets[-1]), "vocab_size": V,
                "dtype": "bfloat16 bits in uint16", "megabytes": round(int(offsets[-1]) * V * 2 / 2**20, 1)}
        io.write_json(tmp / "meta.json", meta)
    return meta
