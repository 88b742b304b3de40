"""The method interface and its discovery.

A KD method is one file in `methods/` that defines `class Method(kdbench.method.Method)`.
The file stem is the method's name. Files starting with `_` or `template` are skipped.

Hooks (all optional except `loss`):
    loss(student_logits, teacher_logits, mask, progress) -> scalar tensor
        logits (N, V) at the N tokens that carry the loss, mask (N,) all true;
        the distillation term only; the engine adds CE and weights by kd_ratio. The engine
        always calls `schedule` first in the same step, so progress.values holds its result.
    epoch_indices(epoch, ctx) -> np.ndarray | None
        the training examples for this epoch (None: all, shuffled). Curricula live here.
    schedule(progress) -> dict[str, float]
        values scheduled for this step (alpha, temperature, kd_ratio, ...); logged every step.
        Methods with train_on = "mixed" schedule "on_policy" and "replay" here, the shares of
        steps trained on fresh / replayed student samples (see kdbench/onpolicy.py).
    state_dict() -> dict / load_state_dict(state)
        state the method changes while training (TAID's t and momentum, DistiLLM's adaptive
        threshold), saved in the run's checkpoint so that a resumed run continues exactly;
        tensors and plain values only (numbers, strings, None, lists, tuples, dicts: what
        `torch.load(weights_only=True)` reads); the default is no state.
    restarts(n_epochs) -> list[int]
        epochs (> 0) at which training restarts: a fresh optimizer and learning-rate schedule
        (warm-up and cosine over the segment's steps), from the weights of the previous
        segment's best epoch by validation (POCL's stages). Default: none.
    observe_validation_loss(loss)
        called before training and after every epoch with the student's validation
        cross-entropy, for methods with uses_validation_loss = True (DistiLLM's adaptive schedule).
Parameters are the keyword arguments of `__init__` (their defaults are the method's); a bad
value is rejected there with `check`, `check_temperature`, `check_unit` or `check_choice`
below, which raise UserError naming the parameter, its valid values and the value given
(`instantiate` adds the method's name and the config keys to fix).
Class attributes the engine and the DAG read:
    needs_teacher     False for SFT-style methods: the teacher is never loaded.
    uses_difficulty   True if epoch_indices reads ctx.difficulty (the DAG then scores it); an
                      instance may override it from its parameters (cpd without a curriculum).
    train_on          "reference" (the dataset's outputs), "teacher_samples" (SeqKD) or
                      "mixed" (references, and the student's own samples where its schedule
                      says so; the teacher then runs online on those).
    uses_validation_loss   True if the engine must measure the validation loss for
                      observe_validation_loss.
    starts_from       where the method's student starts, as in its reference scripts:
                      "pretrained" (the pair's student, `init_student`) or "sft" (that student
                      fine-tuned on the training split first, the `sft_init` stage: DistiLLM's
                      and MiniLLM's *init* checkpoint). docs/protocol.md lists each method's.
Attributes that "mixed" methods may set (usually from __init__ parameters):
    replay_capacity   student samples kept for replay (0: no replay buffer).
    max_new_tokens    cap on a student sample's new tokens; None: the profile's
                      evaluation.max_new_tokens.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.curriculum import epoch_progress
from kdbench.errors import UserError
from kdbench.paths import SAFE_NAME


STARTS = ("pretrained", "sft")  # values of Method.starts_from


@dataclasses.dataclass
class Progress:
    """Where training stands; passed to `schedule` and `loss` every step.

    Counters are 0-based optimizer steps. `fraction` = step / total_steps in [0, 1] over the
    whole run; `epoch_step` / `epoch_steps` locate the step inside the current epoch (epochs
    can differ in length under a curriculum). `values` holds what the method's schedule
    returned for this step (the trace logs it).
    """

    epoch: int = 0
    n_epochs: int = 1
    step: int = 0
    total_steps: int = 1
    epoch_step: int = 0
    epoch_steps: int = 1
    values: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def epoch_fraction(self) -> float:
        """π_e = e / (E - 1): 0 in the first epoch, 1 in the last. A single epoch is the last
        one (π = 1), the same π the curricula use (`kdbench.curriculum.epoch_progress`), so
        a one-epoch run trains on all data with the schedules' end values."""
        return epoch_progress(self.epoch, self.n_epochs)


@dataclasses.dataclass
class EpochContext:
    """What `epoch_indices` may use: run facts and the per-example difficulty profile.

    difficulty: float array (N,), higher is harder, or None if the DAG did not score it.
    """

    n_examples: int
    n_epochs: int
    seed: int
    difficulty: np.ndarray | None = None


class Method:
    """Base class of every method. Subclasses set defaults in `__init__` keyword arguments."""

    needs_teacher: bool = True
    uses_difficulty: bool = False
    train_on: str = "reference"
    uses_validation_loss: bool = False
    starts_from: str = "pretrained"
    replay_capacity: int = 0
    max_new_tokens: int | None = None
    references: list[str] = []

    def loss(self, student_logits, teacher_logits, mask, progress: Progress):
        raise NotImplementedError

    def epoch_indices(self, epoch: int, ctx: EpochContext) -> np.ndarray | None:
        return None

    def schedule(self, progress: Progress) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def restarts(self, n_epochs: int) -> list[int]:
        return []

    def observe_validation_loss(self, loss: float) -> None:
        return None


# --- parameter checks (the one convention for a bad method parameter) -----------------------

def check(ok: bool, name: str, value: Any, must: str) -> None:
    """Reject a parameter value: UserError "<name> must be <must> (got <value>)" unless `ok`."""
    if not ok:
        raise UserError(f"{name} must be {must} (got {value!r})")


def check_temperature(value: float, name: str = "temperature") -> float:
    """`value` as a float, finite and > 0."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    check(t > 0 and math.isfinite(t), name, value, "a finite number > 0")
    return t


def check_unit(name: str, value: float, *, open_ends: bool = False) -> float:
    """`value` as a float in [0, 1] (or (0, 1) with open_ends, where an endpoint makes the loss 0)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    ok = (0.0 < v < 1.0) if open_ends else (0.0 <= v <= 1.0)
    check(ok, name, value, "in (0, 1) (an endpoint makes the loss 0)" if open_ends else "in [0, 1]")
    return v


def check_choice(name: str, value: Any, choices) -> Any:
    """`value` if it is one of `choices`."""
    check(value in choices, name, value, f"one of {', '.join(map(str, choices))}")
    return value


# --- discovery -------------------------------------------------------------------------

def default_methods_dir() -> Path:
    """`methods/` of the working directory if present, else the one beside the package."""
    here = Path.cwd() / "methods"
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "methods"


def discover(methods_dir: str | Path | None = None) -> dict[str, type[Method]]:
    """Import every method file; {name: Method class}. A broken file raises UserError.

    Imports are cached per folder and file modification time, so the DAG, which asks once per
    job while it is built, imports each file once, and an edited or new file is seen at once.
    """
    d = Path(methods_dir) if methods_dir else default_methods_dir()
    if not d.is_dir():
        raise UserError(f"methods folder {d} does not exist; run from the repository root "
                        "or set `methods_dir` in the config.")
    files = tuple((str(p), p.stat().st_mtime_ns) for p in sorted(d.glob("*.py"))
                  if not p.stem.startswith(("_", "template")))
    for f, _ in files:
        if not re.match(SAFE_NAME, Path(f).stem):
            raise UserError(f"method file {f}: its name becomes folder names and command-line words; "
                            "rename it to letters, digits, _, . and - only, starting with a letter or digit.")
    return dict(_discover(files))


@functools.lru_cache(maxsize=32)
def _discover(files: tuple[tuple[str, int], ...]) -> tuple[tuple[str, type[Method]], ...]:
    return tuple((Path(f).stem, _load_file(Path(f))) for f, _ in files)


def _load_file(path: Path) -> type[Method]:
    modname = f"kdbench_methods.{path.stem}"
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules[modname] = module
        spec.loader.exec_module(module)
    except Exception as exc:  # report any import error of a user file in one sentence
        sys.modules.pop(modname, None)
        raise UserError(f"method file {path} failed to import ({type(exc).__name__}: {exc}); "
                        "fix the file or move it out of the methods folder.") from exc
    cls = getattr(module, "Method", None)
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise UserError(f"method file {path} does not define `class Method(kdbench.method.Method)`; "
                        "start from methods/template_method.py.")
    if cls.starts_from not in STARTS:
        raise UserError(f"method file {path}: `starts_from = {cls.starts_from!r}` is not one of {', '.join(STARTS)}; "
                        "set it to where the method's reference scripts start the student.")
    if cls.needs_teacher and cls.loss is Method.loss:
        raise UserError(f"method file {path}: its Method needs a teacher but defines no `loss`; define "
                        "loss(student_logits, teacher_logits, mask, progress) or set `needs_teacher = False`.")
    return cls


def get(name: str, methods_dir=None) -> type[Method]:
    methods = discover(methods_dir)
    if name not in methods:
        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(methods))}.")
    return methods[name]


def defaults(cls: type[Method]) -> dict[str, Any]:
    """The keyword defaults of a method's __init__."""
    sig = inspect.signature(cls.__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if k != "self" and p.default is not inspect.Parameter.empty}


def instantiate(cls: type[Method], params: dict[str, Any], name: str = "") -> Method:
    """`cls(**params)`; an unknown or rejected parameter raises one UserError naming the method.

    A method file written by a user may still raise ValueError or TypeError for a bad value;
    it gets the same sentence."""
    name = name or cls.__name__
    known = defaults(cls)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise UserError(f"method {name!r} has no parameter(s) {unknown}; its parameters are {sorted(known)}.")
    try:
        return cls(**params)
    except (UserError, ValueError, TypeError) as exc:
        raise UserError(f"method {name!r} rejects {params}: {str(exc).rstrip('.')}; fix the value in "
                        "`methods.params`, `methods.grids` or `ablations`.") from exc


def slug(overrides: dict[str, Any], cls: type[Method] | None = None) -> str:
    """Path-safe name of a variant: the parameters that differ from the defaults, sorted.

    {"alpha": 0.1, "temperature": 2} -> "alpha-0.1_temperature-2"; no difference -> "default".
    """
    base = defaults(cls) if cls is not None else {}
    diff = {k: v for k, v in overrides.items() if k not in base or base[k] != v}
    if not diff:
        return "default"
    parts = []
    for k in sorted(diff):
        v = diff[k]
        v = ("true" if v else "false") if isinstance(v, bool) else v
        parts.append(f"{k}-{v}")
    out = "_".join(parts)
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in out)
