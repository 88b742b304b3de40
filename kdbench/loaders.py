"""Instruction data from the hub or local files, normalised to the suite's record schema.

Free of network access unless a hub id is asked for. Data in the layout of the MiniLLM hub
datasets (`MiniLLM/dolly`, `MiniLLM/self-inst`, `MiniLLM/Vicuna`, `MiniLLM/sinst`,
`MiniLLM/uinst`) is loaded through `datasets` from the hub (or its cache) or from a local
copy, and normalised to::

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
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from kdbench.data import PROMPT, PROMPT_WITH_INPUT, encode_prompt
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


BENCHMARKS: dict[str, Benchmark] = {
    "dolly": Benchmark(
        "dolly", "MiniLLM/dolly", "DollyEval",
        {"train": SplitFile("raw.jsonl", 1000, None),
         "validation": SplitFile("raw.jsonl", 0, 1000),
         "raw": SplitFile("raw.jsonl"),
         "test": SplitFile("valid.jsonl")},
    ),
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


def has_protocol_split(source: str | os.PathLike, split: str) -> bool:
    """Whether `source` is a registered benchmark in its hub layout that defines `split`.

    True for the benchmark's own hub id, a local copy of the repo that holds the split's file,
    or that file itself; e.g. ("MiniLLM/dolly", "validation") -> True (the first 1,000 lines of
    raw.jsonl). Needs no network: prepare_data uses it to take the protocol's validation split
    instead of a random hold-out.
    """
    source_str = os.fspath(source)
    bench = benchmark_for(source_str)
    if bench is None or split not in bench.splits:
        return False
    path = Path(source_str).expanduser()
    if path.is_dir():
        return (path / bench.splits[split].file).is_file()
    if path.is_file():
        return path.name == Path(bench.splits[split].file).name
    return source_str.lower() == bench.hub_id.lower()


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _download_hint(hub_id: str) -> str:
    return (f"download it on a machine with internet with `hf download {hub_id} --repo-type dataset "
            f"--local-dir DIR` (older clients: `huggingface-cli download {hub_id} --repo-type dataset "
            f"--local-dir DIR`), copy DIR here and set the benchmark's path in the config to DIR")


def _read_json_rows(path: Path, cache_dir: str | None) -> Any:
    """A local .jsonl/.json file as a `datasets.Dataset` (JSON lines or one JSON array)."""
    import datasets

    try:
        return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
    except datasets.exceptions.DatasetGenerationError as e:
        if path.suffix == ".jsonl":  # name the first malformed line, if that is the problem
            from kdbench import io

            io.read_jsonl(path)
        cause = e.__cause__ or e
        raise UserError(f"could not read {path} as JSON lines ({type(cause).__name__}: {cause}); "
                        f"every line must be one JSON object with the same field types") from e


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


def _local_split_file(folder: Path, bench: Benchmark | None, split: str) -> SplitFile:
    """Which file of a local folder holds `split` (a registered layout first, then by name)."""
    if bench is not None and split in bench.splits and (folder / bench.splits[split].file).is_file():
        return bench.splits[split]
    names = [split]
    if split in ("test", "validation", "valid"):
        names += ["valid", "validation", "test"]
    for name in names:
        for ext in (".jsonl", ".json"):
            if (folder / f"{name}{ext}").is_file():
                return SplitFile(f"{name}{ext}")
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.json*"))
    if len(found) == 1:
        return SplitFile(found[0])
    expected = bench.splits[split].file if bench is not None and split in bench.splits else f"{split}.jsonl"
    raise UserError(f"folder {folder} has no file for split '{split}' (expected {expected}; "
                    f"JSON files found: {found[:10] or 'none'}); point the config at the file itself")


def normalise_record(row: dict[str, Any], *, task: str, rid: str) -> dict[str, Any]:
    """One raw row -> the suite's record schema.

    Field aliases: input <- input | context; output <- output | response | outputs. A row
    with no `instruction` but an Alpaca `prompt` is parsed back into instruction and input.
    A single reference becomes a one-element list; empty references are dropped.
    """
    instruction, inp = row.get("instruction"), None
    if instruction is None and isinstance(row.get("prompt"), str):
        parsed = parse_prompt(row["prompt"])
        if parsed:
            instruction, inp = parsed
    if not isinstance(instruction, str):
        raise UserError(f"example {rid} has no 'instruction' field (fields: {sorted(row)}); "
                        f"instruction data needs instruction/input/output fields")
    if inp is None:
        inp = next((row[k] for k in ("input", "context") if row.get(k) is not None), "")
    out = next((row[k] for k in ("output", "response", "outputs") if row.get(k) is not None), None)
    refs = [out] if isinstance(out, str) else list(out) if isinstance(out, (list, tuple)) else []
    refs = [str(r) for r in refs if r is not None and str(r).strip()]
    if not refs:
        raise UserError(f"example {rid} has no reference answer in 'output' (fields: {sorted(row)}); "
                        f"every example needs at least one non-empty reference")
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
) -> list[dict[str, Any]]:
    """Load one split of an instruction benchmark as normalised records (see module doc).

    source: a hub id (`MiniLLM/sinst`), or a local folder (a download of such a repo, or any
        folder with `<split>.jsonl`), or a `.jsonl`/`.json` file.
    split: `test` (default) for the evaluation sets; Dolly also has `train` (raw.jsonl from
        line 1,000), `validation` (its first 1,000 lines) and `raw`; S-NI/UnNI also take a
        length bucket (`0_2`, ..., `11_`). For an unregistered hub repo, one of its splits
        (default: its only split).
        Ignored for a file, except that a registered row range is applied when the file is the
        split's file (e.g. `dolly/raw.jsonl` with split `train`).
    limit: None -> the protocol's cut (UnNI: first 10,000, others: all); an int -> the first
        `limit` rows; "all" -> every row.
    revision: hub revision (branch, tag or commit); ignored for local paths.
    task: benchmark name for the records' `task` field and the layout; inferred from the hub
        id or path when omitted (`sinst`), else the file or folder name.
    cache_dir: `datasets` cache folder (default: the HF cache).

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
            spec = _local_split_file(path, bench, split)
            file = path / spec.file
        else:
            file = path
            registered = bench.splits.get(split) if bench else None
            spec = registered if registered and Path(registered.file).name == path.name else SplitFile(path.name)
        if file.suffix not in (".jsonl", ".json"):
            raise UserError(f"{file} is not a .jsonl or .json file; instruction data is read from JSON lines")
        ds = _read_json_rows(file, cache_dir)
        name = task or (bench.name if bench else (path.stem if path.is_file() else path.name))
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", source_str):
        spec = bench.splits.get(split) if bench and bench.hub_id.lower() == source_str.lower() else None
        if bench and bench.hub_id.lower() == source_str.lower() and spec is None:
            raise UserError(f"benchmark '{bench.name}' has no split '{split}'; available: {sorted(bench.splits)}")
        if spec is not None:
            ds, _ = _load_hub_rows(source_str, spec.file, None, revision, cache_dir)
        else:  # an unregistered repo: its own splits
            ds, split = _load_hub_rows(source_str, None, requested_split, revision, cache_dir)
            spec = SplitFile("")
        name = task or (bench.name if bench else source_str.split("/")[-1])
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
    rows = ds.select(range(start, stop)).to_list() if (start, stop) != (0, n) else ds.to_list()
    return [normalise_record(row, task=name, rid=f"{name}-{split}-{start + i}") for i, row in enumerate(rows)]


def filter_by_prompt_length(
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    max_prompt_tokens: int = 256,
) -> tuple[list[dict[str, Any]], int]:
    """Drop records whose prompt has more than `max_prompt_tokens` tokens (the protocol's rule).

    Tokens are counted exactly as the engine encodes prompts for training and generation,
    `kdbench.data.encode_prompt(tokenizer, record)` (the Alpaca prompt of `format_prompt`,
    with whatever special tokens the tokenizer adds, e.g. OPT's leading `</s>`), so a kept
    prompt is never cut later. Returns (kept records in order, number dropped).
    """
    kept = [r for r in records if len(encode_prompt(tokenizer, r)) <= max_prompt_tokens]
    return kept, len(records) - len(kept)
