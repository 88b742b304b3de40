"""Instruction data from the hub or local files, normalised to the suite's record schema.

Free of network access unless a hub id is asked for. Data in the layout of the MiniLLM hub
datasets (`MiniLLM/dolly`, `MiniLLM/self-inst`, `MiniLLM/Vicuna`, `MiniLLM/sinst`,
`MiniLLM/uinst`) is loaded through `datasets` from the hub (or its cache), or read line by line
from a local copy (so that an error names the file and the line), and normalised to::

    {"id": str, "instruction": str, "input": str, "output": list[str],
     "task": str, "difficulty": None}

`output` always holds one or more reference answers (S-NI has several per prompt).

Hub layout (one JSON object per line; all files also carry a pre-rendered Alpaca
`prompt`, which is ignored here because `kdbench.data.format_prompt` re-renders it):

============  ==========================  =====================================  =======
benchmark     file in the hub repo        fields                                 output
============  ==========================  =====================================  =======
dolly         raw.jsonl (train + valid)   topic, instruction, input, output      str
dolly         valid.jsonl (test, 500)     topic, instruction, input, output      str
self-inst     valid.jsonl (242)           topic, instruction, input, output      str
vicuna        valid.jsonl (80)            instruction, category, output          str
sinst         11_/valid.jsonl (1,694)     topic, instruction, input, output      list
uinst         11_/valid.jsonl (first 10k) instruction, input, output             str
============  ==========================  =====================================  =======

`sinst`/`uinst` also hold folders `0_2`, `3_5`/`3_6`, `6_10` (reference length buckets);
the protocol uses `11_` (references of 11+ tokens). Dolly's validation set is the first
1,000 lines of `raw.jsonl`, its training set the rest.

The prompt template is `kdbench.data`'s (PROMPT, PROMPT_WITH_INPUT, format_prompt);
checkpoints (vocabulary check, layer-cut students, GGUF) are `kdbench.checkpoints`'.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from kdbench.config import HUB_ID
from kdbench.data import PROMPT, PROMPT_WITH_INPUT, PROTOCOL, PromptFormat, encode_prompts
from kdbench.errors import UserError

# --------------------------------------------------------------------------------------
# Prompt template: owned by kdbench.data (PROMPT, PROMPT_WITH_INPUT, format_prompt)
# --------------------------------------------------------------------------------------


def _template_regex(text: str, fields: Sequence[str]) -> re.Pattern:
    pattern = re.escape(text)
    for name in fields:
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>.*)")
    return re.compile(pattern + r"\Z", re.DOTALL)


_WITH_INPUT_RE = _template_regex(PROMPT_WITH_INPUT, ["instruction", "input"])
_NO_INPUT_RE = _template_regex(PROMPT, ["instruction"])


def parse_prompt(prompt: str) -> tuple[str, str] | None:
    """Inverse of `kdbench.data.format_prompt`: (instruction, input), or None if `prompt` has
    another form. Accepts the `<n>` newline escape of MiniLLM's `.txt` files."""
    prompt = prompt.replace("<n>", "\n")
    m = _WITH_INPUT_RE.match(prompt)
    if m:
        return m["instruction"], m["input"]
    m = _NO_INPUT_RE.match(prompt)
    if m:
        return m["instruction"], ""
    return None


# --------------------------------------------------------------------------------------
# Benchmark registry: hub id -> files of each split
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SplitFile:
    """Rows [start, stop) of one JSONL file, given relative to the repo (or folder) root."""

    file: str
    start: int = 0
    stop: int | None = None


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A MiniLLM-layout instruction benchmark.

    `default_limit` is the protocol's cut (UnNI: first 10,000 examples); `load_instruction_split`
    applies it when called with `limit=None`.
    """

    name: str
    hub_id: str
    display: str
    splits: dict[str, SplitFile]
    default_split: str = "test"
    default_limit: int | None = None


def _bucket_splits(buckets: Iterable[str]) -> dict[str, SplitFile]:
    return {b: SplitFile(f"{b}/valid.jsonl") for b in buckets}


#: MiniLLM's training layout (MiniLLM/dolly, or any folder holding raw.jsonl): raw.jsonl is
#: the training pool, its first lines the validation set (MiniLLM's own processing script:
#: `dev_num` 1,000 for Dolly), the rest the training set; valid.jsonl is the test set.
#: prepare_data holds out the first min(1000, n/10) lines (`read_training`), which is these
#: splits for Dolly and keeps a small pool mostly for training.
MINILLM_TRAINING = {"train": SplitFile("raw.jsonl", 1000, None),
                    "validation": SplitFile("raw.jsonl", 0, 1000),
                    "raw": SplitFile("raw.jsonl"),
                    "test": SplitFile("valid.jsonl")}

BENCHMARKS: dict[str, Benchmark] = {
    "dolly": Benchmark("dolly", "MiniLLM/dolly", "DollyEval", MINILLM_TRAINING),
    "self-inst": Benchmark("self-inst", "MiniLLM/self-inst", "SelfInst", {"test": SplitFile("valid.jsonl")}),
    "vicuna": Benchmark("vicuna", "MiniLLM/Vicuna", "Vicuna", {"test": SplitFile("valid.jsonl")}),
    "sinst": Benchmark(
        "sinst", "MiniLLM/sinst", "S-NI",
        {"test": SplitFile("11_/valid.jsonl"), **_bucket_splits(["0_2", "3_6", "6_10", "11_"])},
    ),
    "uinst": Benchmark(
        "uinst", "MiniLLM/uinst", "UnNI",
        {"test": SplitFile("11_/valid.jsonl"), **_bucket_splits(["0_2", "3_5", "6_10", "11_"])},
        default_limit=10_000,
    ),
}

# names a hub id, folder or file may go by (lower-cased, "_" read as "-")
_ALIASES = {"dolly": "dolly", "dollyeval": "dolly", "self-inst": "self-inst", "selfinst": "self-inst",
            "vicuna": "vicuna", "sinst": "sinst", "s-ni": "sinst", "uinst": "uinst", "unni": "uinst"}


def benchmark_for(source: str) -> Benchmark | None:
    """The registered benchmark a hub id, benchmark name or local path refers to, if any.

    A hub id matches its repo name (`MiniLLM/sinst` -> sinst); a path matches the nearest
    component named like a benchmark (`/data/sinst/11_/valid.jsonl` -> sinst).
    """
    parts = re.split(r"[\\/]", str(source))
    for part in reversed(parts):
        key = _ALIASES.get(part.lower().replace("_", "-"))
        if key:
            return BENCHMARKS[key]
    return None


# --------------------------------------------------------------------------------------
# Layouts: what a local folder holds, recognised by its files (never by its name)
# --------------------------------------------------------------------------------------

_VALIDATION_NAMES = ("valid", "validation", "dev")
_RAW_READING = "raw.jsonl is the training pool, its first lines held out for validation (MiniLLM's rule)"
_TEST_NAMES = ("test", "valid", "validation")


def _json_file(folder: Path, stem: str) -> str | None:
    for ext in (".jsonl", ".json"):
        if (folder / f"{stem}{ext}").is_file():
            return f"{stem}{ext}"
    return None


def folder_layout(folder: Path) -> tuple[str, dict[str, SplitFile]]:
    """(description, {split: file}) of a local data folder, by the files it holds:

    - raw.jsonl: MiniLLM's training layout (`MINILLM_TRAINING`; valid.jsonl is its test set);
    - `<bucket>/valid.jsonl` folders (0_2, ..., 11_): MiniLLM's S-NI/UnNI layout, test = 11_;
    - otherwise split files: train, valid/validation/dev (validation), test/valid (test), and
      any other `<name>.jsonl` as split `<name>`;
    - a folder with a single JSON file: that file for every split.
    """
    if (folder / "raw.jsonl").is_file():
        splits = {k: v for k, v in MINILLM_TRAINING.items() if (folder / v.file).is_file()}
        return "MiniLLM's layout: " + _RAW_READING + (
            "; valid.jsonl beside it is a test set" if "test" in splits else ""), splits
    buckets = sorted(p.parent.name for p in folder.glob("*/valid.jsonl"))
    if "11_" in buckets:
        return f"MiniLLM length buckets {', '.join(buckets)} (test: 11_/valid.jsonl)", \
            {"test": SplitFile("11_/valid.jsonl"), **_bucket_splits(buckets)}
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.json*")
                   if p.suffix in (".jsonl", ".json"))
    if len(files) == 1:
        return f"a folder with one file, {files[0]}", {"all": SplitFile(files[0])}
    splits = {Path(f).stem: SplitFile(f) for f in files if "/" not in f}
    for split, names in (("validation", _VALIDATION_NAMES), ("test", _TEST_NAMES)):
        found = next((f for f in map(lambda n: _json_file(folder, n), names) if f), None)
        if found:
            splits[split] = SplitFile(found)
    shown = ", ".join(f"{k}: {v.file}" for k, v in sorted(splits.items()) if k in ("train", "validation", "test"))
    return f"split files ({shown or 'none of train/valid/test'})", splits


@dataclasses.dataclass(frozen=True)
class TrainingReading:
    """How `data.train` is read (`training_reading`); prepare_data prints `layout`.

    pool: the split holding every training example; train / validation: the layout's own
    split pair, if it has one (None: hold `holdout` examples out of the pool); holdout:
    "first" (the pool's first lines, MiniLLM's rule) or "random" (seeded).
    """

    layout: str
    pool: str
    train: str | None = None
    validation: str | None = None
    holdout: str = "random"


def training_reading(source: str | os.PathLike) -> TrainingReading:
    """The reading of a training source: a hub id (MiniLLM/dolly has MiniLLM's split), a
    local file (one pool), or a local folder (see `folder_layout`). Reads no data."""
    source_str = os.fspath(source)
    path = Path(source_str).expanduser()
    if path.is_dir():
        layout, splits = folder_layout(path)
        if "raw" in splits:
            return TrainingReading(layout, "raw", holdout="first")
        if "train" in splits and "validation" in splits:
            return TrainingReading(layout, "train", "train", "validation")
        return TrainingReading(layout, "train" if "train" in splits else "all")
    if path.is_file():
        if path.name == "raw.jsonl":
            return TrainingReading(_RAW_READING, "raw", holdout="first")
        return TrainingReading(f"one file, {path.name}", "train")
    bench = benchmark_for(source_str)
    if bench is not None and bench.hub_id.lower() == source_str.lower() and "validation" in bench.splits:
        return TrainingReading(f"hub dataset {bench.hub_id}, {_RAW_READING}", "raw", holdout="first")
    return TrainingReading(f"hub dataset {source_str}", "train")


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _download_hint(hub_id: str) -> str:
    return (f"download it on a machine with internet with `hf download {hub_id} --repo-type dataset "
            f"--local-dir DIR` (older clients: `huggingface-cli download {hub_id} --repo-type dataset "
            f"--local-dir DIR`), copy DIR here and set the benchmark's path in the config to DIR")


def _read_local_rows(path: Path) -> tuple[list[dict], list[str]]:
    """(rows, where each row is) of a local .jsonl/.json file (JSON lines, or one JSON array in
    a .json file), read in full; `where` is "<file>, line <n>" (1-based, as an editor counts) or
    "<file>, item <n>" of an array. A line that is not one JSON object stops here, naming it."""
    from kdbench import io

    with open(path, "rb") as f:
        array = path.suffix == ".json" and f.read(4096).lstrip()[:1] == b"["
    if not array:
        numbered = io.numbered_jsonl(path)
        return [row for _, row in numbered], [f"{path}, line {n}" for n, _ in numbered]
    try:
        rows = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fix the file (one array of records, or one "
                        "record per line)") from exc
    bad = next((i for i, row in enumerate(rows, 1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise UserError(f"{path}, item {bad} of its array, is not a JSON object; every record must be one {{...}}")
    return rows, [f"{path}, item {i}" for i in range(1, len(rows) + 1)]


def _load_hub_rows(hub_id: str, data_file: str | None, split: str | None, revision: str | None,
                   cache_dir: str | None) -> tuple[Any, str | None]:
    """(rows, split name) of a hub dataset or its cache; network and not-found errors -> UserError.

    With `data_file` the rows are that file of the repo; without, the repo's own `split` (or
    its only split when `split` is None).
    """
    import datasets
    from huggingface_hub import errors as hf_errors

    kwargs: dict[str, Any] = {"revision": revision, "cache_dir": cache_dir}
    if data_file is not None:
        kwargs.update(data_files=data_file, split="train")  # one file -> datasets calls it "train"
    try:
        ds = datasets.load_dataset(hub_id, **kwargs)
    except (ConnectionError, hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError) as e:
        raise UserError(f"cannot reach hub dataset '{hub_id}' and it is not in the local cache; "
                        f"{_download_hint(hub_id)}") from e
    except (datasets.exceptions.DatasetNotFoundError, hf_errors.RepositoryNotFoundError,
            hf_errors.RevisionNotFoundError, hf_errors.EntryNotFoundError,
            datasets.exceptions.DataFilesNotFoundError, FileNotFoundError) as e:
        what = f"file '{data_file}' of " if data_file else ""
        raise UserError(f"could not find {what}hub dataset '{hub_id}'"
                        f"{' at revision ' + repr(revision) if revision else ''} ({e}); "
                        f"check the id, or {_download_hint(hub_id)}") from e
    if data_file is None:  # unregistered repo: pick the requested split or the only one
        if split is None:
            if len(ds) != 1:
                raise UserError(f"hub dataset '{hub_id}' has splits {sorted(ds)}; name one as the split")
            split = next(iter(ds))
        if split not in ds:
            raise UserError(f"hub dataset '{hub_id}' has no split '{split}'; available: {sorted(ds)}")
        ds = ds[split]
    return ds, split


def _local_split_file(folder: Path, split: str) -> SplitFile:
    """Which file (and rows) of a local folder hold `split` (see `folder_layout`)."""
    layout, splits = folder_layout(folder)
    if split in splits:
        return splits[split]
    if "all" in splits:
        return splits["all"]
    raise UserError(f"folder {folder} has no file for split '{split}' (read as {layout}; splits: "
                    f"{sorted(splits) or 'none'}); add {split}.jsonl, or point the config at the file itself")


#: The fields each record field is read from, first present wins (`data.fields` goes first).
FIELD_ALIASES = {"instruction": ("instruction",), "input": ("input", "context"),
                 "output": ("output", "response", "outputs")}
#: `field_mapping`'s source of instruction and input read back from a pre-rendered Alpaca
#: `prompt` field (MiniLLM's files), when no field is named or found for the instruction
ALPACA_PROMPT = "prompt (an Alpaca prompt, parsed)"


def _candidates(name: str, fields: dict[str, str | None] | None) -> list[str]:
    chosen = (fields or {}).get(name)
    return ([chosen] if chosen else []) + list(FIELD_ALIASES[name])


def field_mapping(row: dict[str, Any], fields: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """{record field: the row's field it is read from, or None} for one raw row: `fields`
    (the config's `data.fields`) first, then `FIELD_ALIASES`; `ALPACA_PROMPT` for an
    instruction and input parsed back from an Alpaca `prompt`, when neither names one."""
    out = {name: next((k for k in _candidates(name, fields) if row.get(k) is not None), None)
           for name in FIELD_ALIASES}
    if out["instruction"] is None and isinstance(row.get("prompt"), str) and parse_prompt(row["prompt"]):
        out["instruction"] = ALPACA_PROMPT
        out["input"] = out["input"] or ALPACA_PROMPT
    return out


def normalise_record(row: dict[str, Any], *, task: str, rid: str,
                     fields: dict[str, str | None] | None = None, where: str | None = None) -> dict[str, Any]:
    """One raw row -> the suite's record schema, reading each field as `field_mapping` says.

    A row with no instruction field but an Alpaca `prompt` is parsed back into instruction
    and input. A single reference becomes a one-element list; empty references are dropped.
    `where` names the row in errors (its file and line; default: its id).
    """
    where, source = where or f"example {rid}", field_mapping(row, fields)
    if source["instruction"] == ALPACA_PROMPT:
        instruction, inp = parse_prompt(row["prompt"])
    else:
        instruction, inp = (row[source["instruction"]] if source["instruction"] else None), None
    if not isinstance(instruction, str):
        raise UserError(f"{where} has no instruction field (fields: {sorted(row)}); name the field "
                        f"that holds it in the config's data.fields.instruction (see docs/data.md)")
    if inp is None:
        inp = row[source["input"]] if source["input"] else ""
    out = row[source["output"]] if source["output"] else None
    refs = [out] if isinstance(out, str) else list(out) if isinstance(out, (list, tuple)) else []
    refs = [str(r) for r in refs if r is not None and str(r).strip()]
    if not refs:
        present = next((k for k in _candidates("output", fields) if k in row), None)
        if present is not None:
            raise UserError(f"{where} has an empty reference answer (field `{present}`); every example needs "
                            "a non-empty one: write it, or delete the line")
        raise UserError(f"{where} has no reference answer field (fields: {sorted(row)}); name the field that "
                        f"holds it in the config's data.fields.output (see docs/data.md)")
    return {"id": rid, "instruction": instruction, "input": str(inp), "output": refs,
            "task": task, "difficulty": None}


def load_instruction_split(
    source: str | os.PathLike,
    split: str | None = None,
    *,
    limit: int | str | None = None,
    revision: str | None = None,
    task: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    fields: dict[str, str | None] | None = None,
) -> list[dict[str, Any]]:
    """Load one split of an instruction benchmark as normalised records (see module doc).

    source: a hub id (`MiniLLM/sinst`), or a local folder (read by its files: `folder_layout`),
        or a `.jsonl`/`.json` file.
    split: `test` (default) for the evaluation sets; Dolly also has `train` (raw.jsonl from
        line 1,000), `validation` (its first 1,000 lines) and `raw`; S-NI/UnNI also take a
        length bucket (`0_2`, ..., `11_`). For an unregistered hub repo, one of its splits
        (default: its only split).
        Ignored for a file, except MiniLLM's raw.jsonl, whose splits are row ranges
        (`raw.jsonl` with split `train`: from line 1,000).
    limit: None -> the protocol's cut (UnNI: first 10,000, others: all); an int -> the first
        `limit` rows; "all" -> every row.
    revision: hub revision (branch, tag or commit); ignored for local paths.
    task: benchmark name for the records' `task` field and the protocol's default limit;
        inferred from the hub id or path when omitted (`sinst`), else the file or folder name.
    cache_dir: `datasets` cache folder of hub ids (default: the HF cache).
    fields: {record field: source field} read first (`field_mapping`), e.g. the config's
        `data.fields`.

    Record ids are `<task>-<split>-<row>` with the row number in the source file, so they are
    stable across limits and filters. Raises UserError when the hub cannot be reached and
    nothing is cached, naming the id and how to provide it locally.
    """
    source_str = os.fspath(source)
    path = Path(source_str).expanduser()
    bench = BENCHMARKS.get(_ALIASES.get(task.lower().replace("_", "-"), "")) if task else None
    bench = bench or benchmark_for(source_str)
    requested_split = split
    split = split or (bench.default_split if bench else "test")
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else None

    if path.exists():
        if path.is_dir():
            spec = _local_split_file(path, split)
            file = path / spec.file
        else:  # a file: all of it, except MiniLLM's raw.jsonl, whose row ranges are its splits
            file = path
            spec = MINILLM_TRAINING.get(split) if path.name == "raw.jsonl" else None
            spec = spec if spec and spec.file == path.name else SplitFile(path.name)
        if file.suffix not in (".jsonl", ".json"):
            raise UserError(f"{file} is not a .jsonl or .json file; instruction data is read from JSON lines")
        ds, places = _read_local_rows(file)
        if not ds:
            raise UserError(f"{file} holds no examples; fill it, or point the config at the file that holds them")
        place = places.__getitem__
        name = task or (bench.name if bench else (path.stem if path.is_file() else path.name))
    elif re.fullmatch(HUB_ID, source_str):
        spec = bench.splits.get(split) if bench and bench.hub_id.lower() == source_str.lower() else None
        if bench and bench.hub_id.lower() == source_str.lower() and spec is None:
            raise UserError(f"benchmark '{bench.name}' has no split '{split}'; available: {sorted(bench.splits)}")
        if spec is not None:
            ds, _ = _load_hub_rows(source_str, spec.file, None, revision, cache_dir)
        else:  # an unregistered repo: its own splits
            ds, split = _load_hub_rows(source_str, None, requested_split, revision, cache_dir)
            spec = SplitFile("")
        name = task or (bench.name if bench else source_str.split("/")[-1])
        place = lambda i: f"{source_str} {spec.file or split}, row {i + 1}"  # noqa: E731
    else:
        raise UserError(f"instruction data source '{source_str}' is neither an existing path nor a hub id "
                        f"(owner/name); fix the path in the config")

    n = len(ds)
    stop = n if spec.stop is None else min(spec.stop, n)
    start = min(spec.start, stop)
    if limit is None:
        limit = bench.default_limit if bench else None
    elif limit == "all":
        limit = None
    elif not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise UserError(f"limit must be a positive integer, 'all' or null, not {limit!r}; fix it in the config")
    if limit is not None:
        stop = min(stop, start + limit)
    rows = ds[start:stop] if isinstance(ds, list) else ds.select(range(start, stop)).to_list()
    return [normalise_record(row, task=name, rid=f"{name}-{split}-{i}", fields=fields, where=place(i))
            for i, row in zip(range(start, stop), rows)]


def read_training(d: dict, seed: int) -> tuple[str, list[dict], list[dict]]:
    """(the reading in words, training records, validation records) of the config's `data`
    section `d` (`train`, `validation`, `validation_size`, `fields`), before the
    prompt-length filter and `train_limit`:

    - `data.validation` names a source: it is the validation set (its `validation` split),
      and all of the training source's pool is training data;
    - else, without `data.validation_size`, a folder with train.jsonl and a valid.jsonl
      (or validation/dev) file reads those;
    - otherwise `validation_size` examples (default min(1000, n/10)) are held out of the pool:
      its first lines for MiniLLM's raw.jsonl (its own rule), a seeded random choice else.
    """
    from kdbench.config import derive_seed

    reading = training_reading(d["train"])
    load = lambda source, split: load_instruction_split(source, split, limit="all", fields=d["fields"])  # noqa: E731
    if d["validation"]:
        train, validation = load(d["train"], reading.pool), load(d["validation"], "validation")
        how = f"training: all of {reading.pool}; validation: {d['validation']}"
    elif reading.validation and d["validation_size"] is None:
        train, validation = load(d["train"], reading.train), load(d["train"], reading.validation)
        how = f"training: split {reading.train}; validation: split {reading.validation}"
    else:
        pool = load(d["train"], reading.pool)
        n_val = d["validation_size"] if d["validation_size"] is not None else min(1000, len(pool) // 10)
        if not 0 < n_val < len(pool):
            raise UserError(f"cannot hold out {n_val} of the {len(pool)} training examples of {d['train']} for "
                            "validation; set data.validation_size between 1 and the pool size minus one, or name "
                            "a validation set in data.validation.")
        if reading.holdout == "first":
            validation, train = pool[:n_val], pool[n_val:]
            how = f"validation: the first {n_val} examples; training: the other {len(train)}"
        else:
            rng = np.random.default_rng(derive_seed(seed, "validation"))
            held = set(rng.permutation(len(pool))[:n_val].tolist())
            validation = [r for i, r in enumerate(pool) if i in held]
            train = [r for i, r in enumerate(pool) if i not in held]
            how = f"validation: {n_val} examples held out at random (seeded); training: the other {len(train)}"
    return f"data.train {d['train']} read as {reading.layout}; {how}", train, validation


def local_file(source: str | os.PathLike, split: str | None) -> Path | None:
    """The local file `load_instruction_split(source, split)` reads, or None for a hub id."""
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        return path / _local_split_file(path, split or "test").file
    return path if path.is_file() else None


def first_row(file: Path) -> dict[str, Any]:
    """The first raw row of a JSON-lines file (or of a JSON array), for reports."""
    with open(file, encoding="utf-8") as f:
        if file.suffix == ".json" and f.read(1) == "[":
            f.seek(0)
            rows = json.load(f)
            return rows[0] if rows else {}
        f.seek(0)
        line = next((ln for ln in f if ln.strip()), "{}")
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"the first line of {file} is not JSON ({e}); every line must be one JSON object") from e
    return row if isinstance(row, dict) else {}


def filter_by_prompt_length(
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    max_prompt_tokens: int = 256,
    fmt: PromptFormat = PROTOCOL,
) -> tuple[list[dict[str, Any]], int]:
    """Drop records whose prompt has more than `max_prompt_tokens` tokens (the protocol's rule).

    Tokens are counted exactly as the engine encodes prompts for training and generation,
    `kdbench.data.encode_prompts(tokenizer, records, fmt)` (the Alpaca prompt with whatever
    special tokens the tokenizer adds, e.g. OPT's leading `</s>`, or the chat template), so a
    kept prompt is never cut later. Returns (kept records in order, number dropped).
    """
    kept = [r for r, ids in zip(records, encode_prompts(tokenizer, list(records), fmt)) if len(ids) <= max_prompt_tokens]
    return kept, len(records) - len(kept)
