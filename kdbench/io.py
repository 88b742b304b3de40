"""Atomic writes: every file and folder appears whole or not at all (write, then rename)."""
from __future__ import annotations

import contextlib
import glob
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from kdbench.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    Works for files and folders (a folder that already exists is replaced).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


@contextlib.contextmanager
def staged(folder: str | Path, marker: str):
    """Yield an empty temporary folder beside `folder`; when the block succeeds, move what it
    holds into `folder`, `marker` (a file) last. A block that fails leaves `folder` as it was.

    For a stage whose outputs are several files of a folder that also holds other stages'
    outputs (a run directory): the old marker is removed before anything else is replaced, so
    at every moment the set is either the old one, or incomplete without its marker, or the
    new one; readers (and Snakemake) treat a set without its marker as absent.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        if not (tmp / marker).is_file():
            raise FileNotFoundError(f"staged outputs lack their marker {marker}")
        folder.mkdir(exist_ok=True)
        (folder / marker).unlink(missing_ok=True)
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == marker):
            dest = folder / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(path: Path) -> None:
    """Delete the temporaries a killed writer of `path` left beside it (one writer per path:
    Snakemake runs one job per output at a time)."""
    for old in path.parent.glob(f".{glob.escape(path.name)}.????????"):  # mkdtemp's 8 random characters
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def remove_empty_folders(root: str | Path) -> None:
    """Delete every empty folder under `root`, deepest first, and `root` if it ends up empty."""
    root = Path(root)
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [root]:
        with contextlib.suppress(OSError):  # not empty
            folder.rmdir()


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def read_json(path) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in rows))


def read_jsonl(path) -> list[dict]:
    """The JSON objects of a JSON-lines file; a line that is not one names the file and line."""
    return [row for _, row in numbered_jsonl(path)]


def numbered_jsonl(path) -> list[tuple[int, dict]]:
    """(line number from 1, JSON object) of every non-blank line of a JSON-lines file; a line
    that is not one JSON object stops here, naming the file and the line."""
    rows = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                what = exc.msg if isinstance(exc, json.JSONDecodeError) else "bytes that are not UTF-8"
                raise UserError(f"{path}, line {n}, is not valid JSON ({what}); fix that line (a file the DAG "
                                "wrote: delete it and rerun the stage that writes it).") from exc
            if not isinstance(row, dict):
                raise UserError(f"{path}, line {n}, is a JSON {type(row).__name__}, not an object; "
                                "every line must be one record {...}.")
            rows.append((n, row))
    return rows


def read_csv(path, **kwargs):
    """A CSV the suite wrote (gzip by its name) as a pandas DataFrame, with only empty fields
    read as missing: pandas' default would also turn a pair, method or test set named `NA`,
    `None` or `null` into a missing value and its rows would drop out of every grouping."""
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False, na_values=[""], **kwargs)


def write_csv(path, df) -> None:
    """Write a pandas DataFrame as CSV (gzip if the name ends in .gz), atomically. The gzip
    header carries no time stamp, so the same table gives the same bytes."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".gz"):  # gzip.compress writes neither a file name nor (mtime=0) a time
            Path(tmp).write_bytes(gzip.compress(df.to_csv(index=False).encode(), mtime=0))
        else:
            df.to_csv(tmp, index=False)
