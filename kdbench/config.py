"""Profiles: load, validate against workflows/schemas/config.schema.yaml, fill defaults,
and enumerate the runs a profile asks for.

A run is (pair, method, variant, seed index). Variants of a method come from its parameter
overrides, its grid, and (for the ablation method) the ablation rows; each variant is named
by `kdbench.method.slug`, so identical parameters share one run.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from kdbench import method as M
from kdbench.errors import UserError
from kdbench.paths import MISSING_VALUE_NAMES, SAFE_NAME, SAFE_PATH

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflows" / "schemas" / "config.schema.yaml"


def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _with_defaults(cls):
    """A jsonschema validator class that fills `default`s into the instance as it validates."""
    validate_props = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, sch):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, sch)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)

# A float as YAML 1.2 and JSON write it; YAML 1.1 (PyYAML, hence Snakemake's --configfile)
# reads `3e-3` or `1E5`, without a dot or a signed exponent, as a string.
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def yaml12_numbers(value: Any, sch: dict, defs: dict) -> Any:
    """`value` (a profile, or a part of it under schema `sch`) with every string written as a
    float (`3e-3`, `1e-1`) read as the float YAML 1.2 makes of it, wherever the schema does not
    allow a string: typed numbers, budgets under `training.per_method`, method parameters,
    grids and ablation rows alike, so a value means the same wherever it is written."""
    ref = sch.get("$ref")
    if ref:
        sch = {**defs[ref.rsplit("/", 1)[-1]], **{k: v for k, v in sch.items() if k != "$ref"}}
    if isinstance(value, str):
        return float(value) if _FLOAT.match(value) and not _allows("string", sch) else value
    if isinstance(value, (dict, list)):  # a container under oneOf: the branch of its type
        kind = "object" if isinstance(value, dict) else "array"
        sch = next((b for b in sch.get("oneOf", []) if _allows(kind, b)), sch)
    if isinstance(value, dict):
        props, extra = sch.get("properties", {}), sch.get("additionalProperties")
        return {k: yaml12_numbers(v, props.get(k, extra if isinstance(extra, dict) else {}), defs)
                for k, v in value.items()}
    if isinstance(value, list):
        items = sch.get("items")
        return [yaml12_numbers(v, items if isinstance(items, dict) else {}, defs) for v in value]
    return value


def _allows(kind: str, sch: dict) -> bool:
    types = sch.get("type", [])
    return kind in ([types] if isinstance(types, str) else types) or any(_allows(kind, b) for b in sch.get("oneOf", []))


def validate(raw: dict, source: str = "the config") -> dict:
    """Validated copy of `raw` with every default filled in; UserError on the first problem."""
    cfg = copy.deepcopy(raw or {})
    cfg.pop("__resolved__", None)
    sch = schema()
    cfg = yaml12_numbers(cfg, sch, sch["$defs"])
    if "pairs" not in cfg:  # the one key without a usable default: an empty or partial file
        raise UserError(f"{source} names no `pairs`, so it is not a complete profile (a --configfile replaces "
                        "config/default.yaml rather than adding to it); start from a copy of one of "
                        "config/*.yaml, or override single keys with --config key=value.")
    errors = sorted(_Validator(sch).iter_errors(cfg), key=lambda e: (len(e.path), list(e.path)))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        name = next((x for x in [e, *e.context] if x.validator == "pattern" and x.validator_value == SAFE_NAME), None)
        if name is not None:  # also inside a oneOf (methods.include)
            why = ("pandas reads it as a missing value, so its rows would vanish from the tables; pick another name"
                   if name.instance in MISSING_VALUE_NAMES else "names become folder names and command-line words, "
                   "so use letters, digits, _, . and - only, starting with a letter or digit")
            raise UserError(f"{source}: the name {name.instance!r} under `{key}` is not allowed; {why}.")
        if e.validator == "pattern" and e.validator_value == SAFE_PATH:
            raise UserError(f"{source}: the folder {e.instance!r} under `{key}` is not allowed; it becomes part of "
                            "command lines, so use letters, digits, _, ., - and / only, not starting with -.")
        if e.validator == "additionalProperties":
            msg = f"{e.message.split('(')[-1].rstrip(')')}" if "(" in e.message else e.message
            raise UserError(f"{source}: unknown key under `{key}` ({msg}); "
                            f"see workflows/schemas/config.schema.yaml for the allowed keys.")
        raise UserError(f"{source}: config key `{key}` is invalid: {e.message}; "
                        f"fix it (the schema is workflows/schemas/config.schema.yaml).")
    _check_semantics(cfg, source)
    return cfg


def read(path: str | Path) -> dict:
    """The raw YAML mapping of a profile file (not validated)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass one of config/*.yaml.")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML ({where}{what}); fix its syntax.") from exc


def load(path: str | Path) -> dict:
    return validate(read(path), source=str(path))


def _check_semantics(cfg: dict, source: str) -> None:
    if not cfg["pairs"]:
        raise UserError(f"{source}: `pairs` is empty; name at least one teacher–student pair.")
    if not cfg["data"]["benchmarks"]:
        raise UserError(f"{source}: `data.benchmarks` is empty; name at least one test benchmark.")
    if cfg["data"]["source"] == "hub" and not cfg["data"]["train"]:
        raise UserError(f"{source}: `data.train` is required when `data.source` is hub; "
                        "give a hub id such as MiniLLM/dolly or a local path.")
    if cfg["data"]["source"] == "synthetic":
        from kdbench.synthetic import TEST_BENCHMARKS
        for name, split in cfg["data"]["benchmarks"].items():
            if split not in TEST_BENCHMARKS:
                raise UserError(f"{source}: benchmark {name!r} names split {split!r}, which the "
                                f"synthetic suite does not have; use one of {list(TEST_BENCHMARKS)}.")
    if cfg["data"]["source"] == "hub":
        for key, where in [("data.train", cfg["data"]["train"]),
                           *([("data.validation", cfg["data"]["validation"])] if cfg["data"]["validation"] else []),
                           *((f"data.benchmarks.{k}", v) for k, v in cfg["data"]["benchmarks"].items())]:
            if _missing_local(where):
                raise UserError(f"{source}: `{key}` names {where}, which is neither an existing file or folder "
                                "(relative paths are read from the folder snakemake runs in) nor a hub id "
                                "(owner/name); fix the path or give a hub id.")
    for pair, spec in cfg["pairs"].items():
        for role in ("teacher", "student"):
            m = spec[role]
            if m["init"] == "pretrained" and m["path"] and _missing_local(m["path"], m["gguf_file"], bare_ids=True):
                shown = Path(m["path"]) / (m["gguf_file"] or "")
                raise UserError(f"{source}: `pairs.{pair}.{role}` names the local file or folder {shown}, "
                                "which does not exist; fix `path` (see the profile's header for how to get it).")
            if m["init"] == "scratch" and not m["config"]:
                raise UserError(f"{source}: `pairs.{pair}.{role}.config` is empty; a scratch model "
                                "needs a transformers config (model_type, hidden_size, ...).")
            if m["init"] == "pretrained" and not m["path"]:
                raise UserError(f"{source}: `pairs.{pair}.{role}.path` is missing; give a hub id "
                                "or local folder for a pretrained model.")
        if spec["teacher"]["init"] == "scratch" and not cfg["tokenizer"]["train"]:
            raise UserError(f"{source}: pair {pair} has a scratch teacher but `tokenizer.train` is false; "
                            "set it to true (a scratch model needs the trained BPE) or load a pretrained teacher.")
        if spec["teacher"]["init"] == "layers_from_teacher":
            raise UserError(f"{source}: `pairs.{pair}.teacher.init` cannot be layers_from_teacher.")
        if spec["student"]["init"] == "layers_from_teacher" and not spec["student"]["layers"]:
            raise UserError(f"{source}: `pairs.{pair}.student.layers` is empty; list the teacher "
                            "layers to copy for init: layers_from_teacher.")
    if cfg["data"]["prompt_format"] == "chat" and cfg["tokenizer"]["train"]:
        raise UserError(f"{source}: `data.prompt_format: chat` needs the teacher's own tokenizer and its chat "
                        "template, but `tokenizer.train` is true (the trained BPE has none); use "
                        "`prompt_format: alpaca`, or a pretrained teacher with `tokenizer.train: false`.")
    if cfg["data"]["system_prompt"] is not None and cfg["data"]["prompt_format"] != "chat":
        raise UserError(f"{source}: `data.system_prompt` is a chat template's system message, but "
                        "`data.prompt_format` is alpaca; set `prompt_format: chat` or remove `system_prompt`.")
    if cfg["training"]["teacher_data"] == "broad" and not (
            cfg["data"]["source"] == "synthetic" and cfg["data"]["synthetic_sizes"].get("broad")):
        raise UserError(f"{source}: `training.teacher_data: broad` needs the synthetic `broad` split; "
                        "set `data.synthetic_sizes.broad` to a positive size or `teacher_data: train`.")
    for name in cfg["training"]["per_method"]:
        student_budget(cfg, name, source)
    init_budget(cfg, source)
    if cfg["tuning"]["lr"] and cfg["tuning"]["seed"] >= cfg["training_seeds"]:
        raise UserError(f"{source}: `tuning.seed` is {cfg['tuning']['seed']} but the profile trains seeds "
                        f"0..{cfg['training_seeds'] - 1}; pick one of them.")
    # every method name, parameter and grid must resolve (also of methods not included)
    runs(cfg, source)
    for name in set(cfg["methods"]["params"]) | set(cfg["methods"]["grids"]):
        variants(cfg, name, source)


def student_budget(cfg: dict, method: str, source: str = "the config") -> dict:
    """The training budget of `method`'s runs: `training.student` with the method's
    `training.per_method` overrides; UserError for an unknown method or a bad key or value."""
    over = cfg["training"]["per_method"].get(method, {})
    if over and method not in M.discover(cfg["methods_dir"]):
        raise UserError(f"{source}: `training.per_method` names the unknown method {method!r}; "
                        f"available: {', '.join(sorted(M.discover(cfg['methods_dir'])))}.")
    return _budget({**cfg["training"]["student"], **over}, f"training.per_method.{method}", source)


# budget keys that change how a run computes, not what it computes (the same results up to float
# rounding, tested): left out of the DAG's fingerprints, so turning one on reruns nothing
HOW_ONLY = ("gradient_checkpointing",)


def budget_settings(budget: dict) -> dict:
    """`budget` without its HOW_ONLY keys: what a rule's fingerprint takes of it."""
    return {k: v for k, v in budget.items() if k not in HOW_ONLY}


def init_budget(cfg: dict, source: str = "the config") -> dict:
    """The budget of the sft_init stage: `training.student` with the `training.init` overrides."""
    return _budget({**cfg["training"]["student"], **cfg["training"]["init"]}, "training.init", source)


def _budget(budget: dict, key: str, source: str) -> dict:
    """`budget` checked against the schema's budget; UserError naming `key` otherwise."""
    sch = schema()
    errors = list(jsonschema.Draft202012Validator({"$defs": sch["$defs"], "$ref": "#/$defs/budget"})
                  .iter_errors(budget))
    if errors:
        raise UserError(f"{source}: `{key}` is invalid: {errors[0].message}; "
                        "use the keys of a budget (see workflows/schemas/config.schema.yaml).")
    return budget


HUB_ID = r"[\w.-]+/[\w.-]+"  # owner/name: what the loaders take for a hub id when no such path exists


def _missing_local(path: str, file: str | None = None, bare_ids: bool = False) -> bool:
    """True for a path that does not exist and cannot be a hub id either: absolute, ./, ../,
    ~, a .json/.jsonl file, a path inside an existing local folder (`mydata/raw.jsnol`), or
    one not of the form owner/name (`mydta`; unless `bare_ids`: model ids such as `gpt2`); or
    for a folder that lacks `file`. Anything else may be a hub id and is left to the loader."""
    p, text = Path(path).expanduser(), str(path)
    if p.is_dir():
        return bool(file) and not (p / file).is_file()
    if p.exists():
        return False
    return (text.startswith(("/", "./", "../", "~")) or text.endswith((".json", ".jsonl"))
            or (len(p.parts) > 1 and Path(p.parts[0]).is_dir())
            or not (re.fullmatch(HUB_ID, text) or (bare_ids and "/" not in text)))


def local_data_files(cfg: dict) -> list[str]:
    """Every local file a hub profile's data is read from (data.train, data.validation and the
    test sets; each .json/.jsonl file of a folder): prepare_data's inputs, so that editing one
    reruns prepare_data and, their inputs updated, the stages after it."""
    d = cfg["data"]
    if d["source"] != "hub":
        return []
    files = set()
    for source in (d["train"], d["validation"], *d["benchmarks"].values()):
        path = Path(source).expanduser() if source else None
        if path is not None and path.is_file():
            files.add(str(path))
        elif path is not None and path.is_dir():
            files |= {str(f) for f in path.rglob("*") if f.suffix in (".json", ".jsonl") and f.is_file()}
    return sorted(files)


# --- runs ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Run:
    pair: str
    method: str
    variant: str
    seed: int
    params_json: str  # parameter overrides as canonical JSON (hashable)

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)


def method_names(cfg: dict, source: str = "the config") -> list[str]:
    available = M.discover(cfg["methods_dir"])
    include = cfg["methods"]["include"]
    names = sorted(available) if include == "all" else list(include)
    for n in names + list(cfg["methods"]["params"]) + list(cfg["methods"]["grids"]):
        if n not in available:
            raise UserError(f"{source}: unknown method {n!r}; available: {', '.join(sorted(available))}.")
    abl = cfg["ablations"]["method"]
    if abl and abl not in available:
        raise UserError(f"{source}: `ablations.method` is {abl!r}, an unknown method; "
                        f"available: {', '.join(sorted(available))}.")
    return names


def variants(cfg: dict, name: str, source: str = "the config") -> dict[str, dict]:
    """{slug: parameter overrides} of the main-table variants of one method."""
    cls = M.discover(cfg["methods_dir"])[name]
    base = dict(cfg["methods"]["params"].get(name, {}))
    grid = cfg["methods"]["grids"].get(name, {})
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    out = {}
    for combo in combos:
        params = {**base, **combo}
        _check_params(cls, name, params, source)
        out[M.slug(params, cls)] = params
    return out


def ablation_variants(cfg: dict, source: str = "the config") -> dict[str, tuple[str, str, dict]]:
    """{row name: (method, slug, overrides)} of the ablation grid, in config order.

    A row varies `ablations.method` unless it names another method under the key `method`
    (a control such as budget-matched kd: `{method: kd, data_fraction: 0.8}`); its other keys
    override that method's `methods.params`.
    """
    default = cfg["ablations"]["method"]
    if not default:
        return {}
    available = M.discover(cfg["methods_dir"])
    out = {}
    for row, over in cfg["ablations"]["variants"].items():
        over = dict(over)
        name = over.pop("method", default)
        if name not in available:
            raise UserError(f"{source}: ablation {row!r} names the unknown method {name!r}; "
                            f"available: {', '.join(sorted(available))}.")
        params = {**cfg["methods"]["params"].get(name, {}), **over}
        _check_params(available[name], name, params, f"{source} (ablation {row!r})")
        out[row] = (name, M.slug(params, available[name]), params)
    return out


def _check_params(cls, name, params, source):
    try:
        M.instantiate(cls, params, name)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from exc


def runs(cfg: dict, source: str = "the config") -> list[Run]:
    """Every student run of the profile (the teacher is not a run of a method)."""
    out: dict[tuple, Run] = {}
    seeds = range(cfg["training_seeds"])
    per_method: dict[str, dict[str, dict]] = {n: variants(cfg, n, source) for n in method_names(cfg, source)}
    for name, slug_, params in ablation_variants(cfg, source).values():
        per_method.setdefault(name, {})[slug_] = params
    for name, vs in per_method.items():
        _check_distinct(name, vs, source, cfg["methods_dir"])
    for pair in cfg["pairs"]:
        for name, vs in per_method.items():
            for slug_, params in vs.items():
                for k in seeds:
                    r = Run(pair, name, slug_, k, json.dumps(params, sort_keys=True))
                    out[(pair, name, slug_, k)] = r
    return list(out.values())


def tuning_runs(cfg: dict) -> list[tuple[str, str, str, float]]:
    """(pair, method, variant, lr) of the learning-rate grid: every main-table method and
    variant (not the ablation-only variants, which train at their method's choice) at every
    `tuning.lr` value."""
    mains = [(pair, name, slug_) for pair in cfg["pairs"] for name in method_names(cfg)
             for slug_ in variants(cfg, name)]
    return [(*key, float(lr)) for key in mains for lr in cfg["tuning"]["lr"]]


def _check_distinct(name: str, variants: dict[str, dict], source: str, methods_dir: str) -> None:
    """Stop when two variants of a method (main-table variants and ablation rows) would train
    the same model under two names, e.g. `temperature: 2` and `temperature: 2.0`."""
    defaults, seen = M.defaults(M.discover(methods_dir)[name]), {}
    for slug_, params in variants.items():
        full = {**defaults, **params}
        other = next((s for s, p in seen.items() if p == full), None)
        if other is not None:
            raise UserError(f"{source}: method {name!r} has the variants {other!r} and {slug_!r}, which set the same "
                            "values; write each value once and the same way in `methods` and `ablations`.")
        seen[slug_] = full


def find_run(cfg: dict, pair: str, method: str, variant: str, seed: int) -> Run:
    for r in runs(cfg):
        if (r.pair, r.method, r.variant, r.seed) == (pair, method, variant, seed):
            return r
    raise UserError(f"the profile has no run {pair}/{method}/{variant}/seed{seed}; "
                    "check the pair, method, variant and seed against the config.")


def uses_teacher_cache(cfg: dict, cls: type[M.Method]) -> bool:
    """Whether a run of method class `cls` reads the cached teacher logits: the cache is on and
    holds the sequences the method trains on (the references, also those of on-policy methods'
    reference batches; a method trained on teacher samples, such as SeqKD, runs the teacher
    online)."""
    return bool(cfg["distill"]["cache_teacher"]) and cls.needs_teacher and cls.train_on in ("reference", "mixed")


# --- seeds -----------------------------------------------------------------------------------

def derive_seed(base: int, *parts: Any) -> int:
    """A 31-bit seed from the base seed and any labels (pair, seed index, purpose).

    Never from the method: every method sees the same initialisation and data order.
    """
    h = hashlib.sha256("/".join(map(str, (base, *parts))).encode()).hexdigest()
    return int(h[:8], 16) & 0x7FFFFFFF


def fingerprint(obj: Any) -> str:
    """Short stable hash of a config section (Snakemake params: reruns only what changed)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_resolved(cfg: dict, path: str | Path) -> None:
    """Write the validated config the DAG decided with, atomically, where its jobs read it.

    The path is keyed by `fingerprint(cfg)` (`Paths.resolved_config`), so a file, once
    written, never changes: a second Snakemake with another config writes another file and
    cannot change what a live run's jobs read. The DAG calls this only when it executes
    (Snakemake's `onstart`, under its lock), never on a dry run or `--unlock`."""
    from kdbench import io

    path = Path(path)
    if not path.is_file():
        io.write_text(path, "# written by the DAG from the profile; do not edit (edit config/<profile>.yaml)\n"
                      + yaml.safe_dump(cfg, sort_keys=False))


def check_fingerprint(cfg: dict, expected: str, source: str) -> None:
    """Stop unless `cfg` is the config the DAG fingerprinted (what a stage was told to run with)."""
    got = fingerprint(cfg)
    if got != expected:
        raise UserError(f"{source} has fingerprint {got}, not the {expected} the DAG decided with (the file "
                        "was edited or replaced); delete it and run snakemake again.")
