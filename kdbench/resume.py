"""Resumable training: one checkpoint per training job, written atomically at step boundaries.

A checkpoint holds everything the rest of the run depends on: the model's and the optimizer's
state, the learning-rate schedule's position, the random number generators, the method's own
state (`Method.state_dict`, e.g. TAID's t and momentum) and the training loop's position and
accumulated tables (`loop`, a dict of plain values and arrays; a caller that adds keys to it,
such as the best weights so far, gets them back on resume). The data order itself is not
stored: it is a pure function of the seed, so the position (epoch, step inside the epoch) is
enough. A resumed run therefore ends with the same weights, bit for bit, as one that was
never interrupted (same machine, same threads).

A checkpoint holds tensors and plain values only and is loaded with
`torch.load(weights_only=True)`, so a file planted in its place cannot run code.

A checkpoint is tied to its run by `key` (the caller's fingerprint of the config plus hashes of
the initial weights, the tokenised data and any other input file, such as the teacher's model
and a curriculum's difficulty profile): one written for other inputs is ignored and replaced,
never resumed from.
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kdbench import io


def signature(model, examples) -> str:
    """Hash of the initial weights and of the tokenised examples (what else a run depends on
    besides the config)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for e in examples:
        h.update(np.asarray(e.ids, dtype=np.int64).tobytes())
        h.update(int(e.n_prompt).to_bytes(8, "little"))
    return h.hexdigest()[:16]


def digest(*parts) -> str:
    """Hash of further inputs of a run: numpy arrays (e.g. a difficulty profile), files and
    folders (e.g. the teacher's model; every file's relative path and bytes), None (absent)."""
    h = hashlib.sha256()
    for part in parts:
        if part is None:
            h.update(b"none")
        elif isinstance(part, np.ndarray):
            h.update(str(part.dtype).encode() + str(part.shape).encode() + np.ascontiguousarray(part).tobytes())
        else:
            root = Path(part)
            for f in sorted(root.rglob("*")) if root.is_dir() else [root]:
                if f.is_file():
                    h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode())
                    with open(f, "rb") as fh:
                        while chunk := fh.read(1 << 20):
                            h.update(chunk)
    return h.hexdigest()[:16]


class Checkpoint:
    """The checkpoint file of one training job.

    every_minutes: save after the first optimizer step that ends this long after the previous
    save (0: after every step); a save also happens at the end of every epoch.
    """

    def __init__(self, path: str | Path, every_minutes: float, key: str = ""):
        self.path, self.every_s, self.key = Path(path), 60.0 * every_minutes, key
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def save(self, model, opt, sched, method, loop: dict) -> None:
        payload = {"key": self.key, "model": model.state_dict(), "optimizer": opt.state_dict(),
                   "scheduler": sched.state_dict(), "rng": _rng_state(),
                   "method": method.state_dict() if method is not None else {}, "loop": loop}
        with io.atomic_path(self.path) as tmp:
            torch.save(payload, tmp)
        self._last = time.monotonic()

    def restore(self, model, opt, sched, method) -> dict | None:
        """Load the checkpoint into model, optimizer, schedule, RNGs and method; the loop state,
        or None when there is no checkpoint of this run (one of another run is deleted)."""
        if not self.path.is_file():
            return None
        try:  # tensors and plain values only: a pickle planted in its place runs no code
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable (e.g. written by another torch, or not ours): start over
            print(f"checkpoint {self.path} is unreadable or holds more than tensors and plain values "
                  f"({type(exc).__name__}); starting from step 0", file=sys.stderr)
            self.remove()
            return None
        if not isinstance(payload, dict) or payload.get("key") != self.key:
            print(f"checkpoint {self.path} belongs to other inputs (config, initial weights or data "
                  "changed); starting from step 0", file=sys.stderr)
            self.remove()
            return None
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        sched.load_state_dict(payload["scheduler"])
        if method is not None:
            method.load_state_dict(payload["method"])
        _set_rng_state(payload["rng"])
        loop = payload["loop"]
        print(f"resuming from checkpoint {self.path} at step {loop['step']} (epoch {loop['epoch']}, "
              f"step {loop['k']} of the epoch)", file=sys.stderr)
        self._last = time.monotonic()
        return loop

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
