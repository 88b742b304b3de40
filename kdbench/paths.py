"""Every output path of a profile, in one place.

The patterns use `{pair}`, `{method}`, `{variant}`, `{seed}`, `{split}`, so the same strings
serve as Snakemake wildcards and, through `.format(...)`, as paths in the stages.
"""
from __future__ import annotations

from pathlib import Path


class Paths:
    def __init__(self, cfg: dict):
        self.root = Path(cfg["results_dir"]) / cfg["profile"]

    def _p(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))

    # shared by the profile
    @property
    def config(self): return self._p("config.yaml")
    @property
    def data_dir(self): return self._p("data")
    def data(self, split="{split}"): return self._p("data", f"{split}.jsonl")
    @property
    def data_report(self): return self._p("data", "report.json")
    @property
    def tokenizer(self): return self._p("tokenizer")

    # per pair
    def teacher_model(self, pair="{pair}"): return self.run_dir(pair, "teacher", "default", 0) + "/model"
    def student_init(self, pair="{pair}", seed="{seed}"): return self._p("pairs", pair, "student_init", f"seed{seed}")
    def teacher_cache(self, pair="{pair}"): return self._p("pairs", pair, "teacher_cache")
    def teacher_samples(self, pair="{pair}"): return self._p("pairs", pair, "teacher_samples.jsonl")
    def difficulty(self, pair="{pair}"): return self._p("difficulty", f"{pair}.csv")

    # per run (the teacher is the run teacher/default/seed0)
    def run_dir(self, pair="{pair}", method="{method}", variant="{variant}", seed="{seed}"):
        return self._p("runs", pair, method, variant, f"seed{seed}")

    def run_file(self, name, **kw): return str(Path(self.run_dir(**kw)) / name)

    # resume state of an unfinished training job (kdbench/resume.py), removed when it ends
    def checkpoint(self, *parts): return self._p("checkpoints", *map(str, parts)) + ".pt"

    # outputs of the whole profile
    @property
    def tables(self): return self._p("tables")
    @property
    def figures(self): return self._p("figures")
    def log(self, *parts): return self._p("logs", *parts)
    def bench(self, *parts): return self._p("benchmarks", *parts)
