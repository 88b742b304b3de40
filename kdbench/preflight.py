"""What `python -m kdbench validate` checks beyond the schema, before anything runs.

- `data_report`: reads every local data file the profile will use, the way `prepare_data`
  reads it, and describes each (layout, field mapping, example counts), so a run cannot
  stop at `prepare_data` on something visible now.
- `schedule_warnings`: a profile that makes a method's curriculum or schedule a no-op (e.g.
  `epochs: 1` with a per-epoch curriculum), or scores a difficulty profile that no run uses.

Methods are never named here: each run's method is simulated on a stand-in training set
(`kdbench.train.epoch_plan` and the engine's `Progress`), once with the profile's epochs
and once with more, and a curriculum or schedule that moves with more epochs but not with
the profile's is reported.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kdbench import config as C
from kdbench import method as M

# the stand-in training set of the simulation: N examples, B per step, a linear profile
_N, _B = 100, 10


def _fields(source: str, split: str | None, fields: dict) -> str:
    """'instruction <- question, input <- (none), output <- answer' for the first row of a
    local source."""
    from kdbench import loaders

    file = loaders.local_file(source, split)
    where = loaders.field_mapping(loaders.first_row(file), fields)
    return f"fields of {file.name}: " + ", ".join(f"{k} <- {v or '(none)'}" for k, v in where.items())


def data_report(cfg: dict) -> list[str]:
    """Lines describing how every data source of the profile will be read: the layout, the
    field mapping, the example counts and how many training and validation examples
    prepare_data will drop for prompts over data.max_prompt_tokens (`_long_prompts`). Local
    sources are read in full, exactly as prepare_data reads them, so a bad row, field or layout
    stops here; hub ids are left to prepare_data (they need the network or the cache)."""
    from kdbench import loaders

    d = cfg["data"]
    if d["source"] == "synthetic":
        return [f"data: the embedded synthetic suite ({', '.join(f'{k} {v}' for k, v in d['synthetic_sizes'].items())})"]
    local = lambda source: Path(source).expanduser().exists()  # noqa: E731
    lines = []
    if local(d["train"]) and (not d["validation"] or local(d["validation"])):
        how, train, validation = loaders.read_training(d, cfg["seed"])
        limit = f", {d['train_limit']} kept (data.train_limit)" if d["train_limit"] and d["train_limit"] < len(train) else ""
        lines += [f"data: {how}",
                  f"  train: {len(train)} examples{limit}; validation: {len(validation)} examples",
                  _long_prompts(cfg, train[:d["train_limit"]] if d["train_limit"] else train, validation),
                  "  " + _fields(d["train"], loaders.training_reading(d["train"]).pool, d["fields"])]
        if d["validation"]:
            lines.append("  " + _fields(d["validation"], "validation", d["fields"]))
    else:
        lines.append(f"data: data.train {d['train']} is a hub dataset, read by prepare_data "
                     f"(validate reads local files only)")
    for name, source in d["benchmarks"].items():
        if not local(source):
            lines.append(f"  benchmark {name}: hub dataset {source}, read by prepare_data")
            continue
        rows = loaders.load_instruction_split(source, None, limit=d["benchmark_limit"], fields=d["fields"])
        path = Path(source).expanduser()
        layout = loaders.folder_layout(path)[0] if path.is_dir() else f"one file, {path.name}"
        lines.append(f"  benchmark {name}: {source} read as {layout}: {len(rows)} examples; "
                     + _fields(source, None, d["fields"]))
    return lines


def _long_prompts(cfg: dict, train: list[dict], validation: list[dict]) -> str:
    """The line saying how many training and validation examples prepare_data will drop for a
    prompt over data.max_prompt_tokens, counted as it counts them (the first pair's teacher
    tokenizer, `kdbench.loaders.filter_by_prompt_length`)."""
    from kdbench import loaders
    from kdbench.errors import UserError
    from kdbench.stages import teacher_tokenizer

    cap = f"prompts over data.max_prompt_tokens = {cfg['data']['max_prompt_tokens']} tokens"
    if cfg["tokenizer"]["train"]:
        return f"  {cap}: none dropped (the tokenizer is trained on the data after prepare_data)"
    try:
        tok = teacher_tokenizer(cfg, next(iter(cfg["pairs"])))
    except UserError as exc:
        return f"  {cap}: not counted here ({exc})"
    parts = []
    for what, rows in (("training", train), ("validation", validation)):
        dropped = loaders.filter_by_prompt_length(rows, tok, cfg["data"]["max_prompt_tokens"])[1]
        parts.append(f"{dropped} of {len(rows)} {what} examples ({dropped / max(1, len(rows)):.0%})")
    return f"  {cap}: prepare_data will drop {parts[0]} and {parts[1]}"


def _simulate(meth: M.Method, n_epochs: int) -> tuple[list[int], list[dict]]:
    """(subset size per epoch, schedule values per step) of `meth` over `n_epochs` epochs
    of the stand-in set, computed as `kdbench.train.train` computes them."""
    from kdbench.train import epoch_plan

    difficulty = np.linspace(0.0, 1.0, _N)
    plan = epoch_plan(meth, _N, n_epochs, 0, difficulty if meth.uses_difficulty else None)
    steps = [math.ceil(len(p) / _B) for p in plan]
    values, step = [], 0
    for e, n in enumerate(steps):
        for k in range(n):
            p = M.Progress(epoch=e, n_epochs=n_epochs, step=step, total_steps=sum(steps),
                           epoch_step=k, epoch_steps=n)
            values.append(dict(meth.schedule(p)))
            step += 1
    return [len(p) for p in plan], values


def _moves(values: list[dict]) -> bool:
    return any(v != values[0] for v in values)


def schedule_warnings(cfg: dict) -> list[str]:
    """One sentence per method variant whose curriculum or schedule does nothing under its
    epochs (`training.student.epochs`, or the method's `training.per_method` override), and
    one if difficulty is scored but unused."""
    out, scored, used = [], False, False
    seen: set[tuple[str, str]] = set()
    for run in C.runs(cfg):
        if (run.method, run.variant) in seen:
            continue
        seen.add((run.method, run.variant))
        cls = M.get(run.method, cfg["methods_dir"])
        meth = M.instantiate(cls, run.params, run.method)
        scored |= cls.uses_difficulty  # the DAG scores difficulty for the class (workflows/runs.smk)
        epochs = C.student_budget(cfg, run.method)["epochs"]
        key = (f"training.per_method.{run.method}.epochs" if "epochs" in cfg["training"]["per_method"].get(run.method, {})
               else "training.student.epochs")
        if epochs < 1:
            continue
        sizes, values = _simulate(meth, epochs)
        curriculum = meth.uses_difficulty and any(s < _N for s in sizes)
        used |= curriculum
        idle = []
        for more in range(epochs + 1, epochs + 5):  # the fewest epochs that make it move
            sizes_more, values_more = _simulate(meth, more)
            if meth.uses_difficulty and not curriculum and any(s < _N for s in sizes_more):
                idle.append("its curriculum trains on all data in every epoch")
            if not _moves(values) and _moves(values_more):
                held = ", ".join(f"{k} = {v:g}" for k, v in values[0].items())
                idle.append(f"its schedule holds {held} at every step")
            if idle:
                out.append(f"{run.method}/{run.variant}: with {key}: {epochs} "
                           f"{' and '.join(idle)}; it needs {more} or more epochs to do what it is for.")
                break
    if scored and not used and cfg["training"]["student"]["epochs"] >= 1:
        out.append("the score_difficulty stage will score every training prompt, but no run's curriculum "
                   "uses the profile with its epochs; raise the epochs or drop the "
                   "curriculum methods from methods.include and ablations.")
    return out
