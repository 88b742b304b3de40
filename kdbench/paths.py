"""The layout of a profile's results: every run and every output file, in one place.

The Snakemake rules, the stages, `collect`, `tables`, `plots` and the benchmarks all take
their paths from here, so renaming a file is a one-line change below. Path methods take
`{pair}`, `{method}`, `{variant}`, `{seed}`, `{tseed}` as defaults, so the same strings serve
as Snakemake wildcards and, given values, as paths in the stages.

    results/<profile>/
      configs/<fingerprint>.yaml        the resolved config a DAG run executes with
      data/<split>.jsonl, report.json   train, validation and the test sets
      tokenizer/                        trained BPE (embedded default)
      pairs/<pair>/student_init/seed<k>/          the pre-trained student (Method.starts_from "pretrained")
      pairs/<pair>/student_sft/seed<k>/           it fine-tuned on the training split ("sft", sft_init)
      pairs/<pair>/teacher_cache/seed<t>/         cached teacher logits (per teacher seed)
      pairs/<pair>/teacher_samples/seed<t>.jsonl  the teacher's answers (SeqKD)
      pairs/<pair>/teacher_gate.json              the teacher gate's verdict (written when it passes)
      difficulty/<pair>.csv             per-example difficulty profile
      runs/<pair>/<method>/<variant>/seed<k>/     one run: RUN_FILES, answers/<test set>.json[l]
      tuning/<pair>/<method>/<variant>/lr<lr>.json  one point of the learning-rate grid (validation only)
                                        (the teachers are runs teacher/default/seed<t>)
      tables/   LONG_TABLES, baselines.csv (trivial baselines), then main, ablation, runtime
                (.md/.csv/.tex; `_<pair>` per pair when the profile has several pairs)
      figures/  <name>[_<pair>].png/.pdf
      logs/<rule>/..., timings/<rule>/...   per-job logs, and timings the jobs write (--timing)
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple

NAME_CHARS = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
"""The characters of a name: folder names and command-line words, so no shell syntax, no
spaces, no leading dash or dot (a Snakemake wildcard constraint: `variant`)."""
MISSING_VALUE_NAMES = ("NA", "NULL", "NaN", "None", "nan", "null")
"""The strings of pandas' default missing values (`na_values` of `pandas.read_csv`) that
NAME_CHARS allows: a pair, method or test set of that name would vanish from a table read
with pandas' defaults (tests/test_reliability.py checks the list against pandas')."""
SAFE_NAME = rf"^(?!(?:{'|'.join(MISSING_VALUE_NAMES)})$){NAME_CHARS}$"
"""Profile, pair, test-set, method and ablation-row names (workflows/schemas/config.schema.yaml)."""
SAFE_PATH = r"^(?!-)[A-Za-z0-9_./-]+$"
"""`results_dir` and `methods_dir`: folders that become part of command lines, so the name
characters and `/` only, not starting with a dash."""
TEACHER = "teacher"  # the method name of the teachers' runs (variant "default", seed = teacher seed)

#: files of a run folder (a training job writes them all: train_teacher or distill, which end with `evaluate`)
RUN_FILES = {"model": "model", "train": "train.json", "trace": "trace.csv", "epochs": "epochs.csv",
             "bin_loss": "bin_loss.csv", "scores": "scores.csv", "metrics": "metrics.json"}
#: the long tables `collect` writes (the contract of results/<profile>/tables/)
LONG_TABLES = {"runs": "runs.csv", "examples": "examples.csv.gz", "trace": "trace.csv.gz",
               "epochs": "epochs.csv", "bin_loss": "bin_loss.csv", "ablations": "ablations.csv"}
#: the formatted tables `tables` writes, each as .md, .csv and .tex
MAIN_TABLE, ABLATION_TABLE, RUNTIME_TABLE = "main", "ablation", "runtime"
TABLE_STEMS = (MAIN_TABLE, ABLATION_TABLE, RUNTIME_TABLE)
TABLE_FORMATS = ("md", "csv", "tex")
#: the trivial baselines' scores (the `baselines` stage; kdbench/baselines.py)
BASELINES_TABLE = "baselines.csv"
FIGURES_DONE = ".done"  # the figures rule's marker file inside figures/


class RunKey(NamedTuple):
    pair: str
    method: str
    variant: str
    seed: int


def per_pair(stem: str, pair: str, pairs: Iterable[str]) -> str:
    """A table or figure name: `stem` when the profile has one pair, `stem_<pair>` otherwise."""
    return stem if len(list(pairs)) == 1 else f"{stem}_{pair}"


def teacher_seed_of(seed: int, teacher_seeds: int) -> int:
    """The teacher seed that student seed `seed` distils from: seed mod teacher_seeds."""
    return int(seed) % int(teacher_seeds)


class Paths:
    def __init__(self, cfg: dict):
        self.root = Path(cfg["results_dir"]) / cfg["profile"]
        self.profile = cfg["profile"]
        self.pairs = list(cfg["pairs"])
        self.teacher_seeds = int(cfg.get("teacher_seeds", 1))

    def _p(self, *parts) -> str:
        return str(self.root.joinpath(*map(str, parts)))

    # --- shared by the profile ---------------------------------------------------------
    def resolved_config(self, fingerprint): return self._p("configs", f"{fingerprint}.yaml")
    @property
    def data_dir(self): return self._p("data")
    def data(self, split="{split}"): return self._p("data", f"{split}.jsonl")
    @property
    def data_report(self): return self._p("data", "report.json")
    @property
    def tokenizer(self): return self._p("tokenizer")

    # --- per pair ------------------------------------------------------------------------
    def teacher_seed(self, seed) -> int:
        return teacher_seed_of(seed, self.teacher_seeds)

    def teacher_runs(self) -> list[RunKey]:
        return [RunKey(p, TEACHER, "default", t) for p in self.pairs for t in range(self.teacher_seeds)]

    def teacher_model(self, pair="{pair}", tseed="{tseed}"):
        return self.run_file("model", pair=pair, method=TEACHER, variant="default", seed=tseed)

    def teacher_file(self, name, pair="{pair}", tseed="{tseed}"):
        return self.run_file(name, pair=pair, method=TEACHER, variant="default", seed=tseed)

    def student_init(self, pair="{pair}", seed="{seed}"): return self._p("pairs", pair, "student_init", f"seed{seed}")
    def student_sft(self, pair="{pair}", seed="{seed}"): return self._p("pairs", pair, "student_sft", f"seed{seed}")

    def student_start(self, starts_from: str, pair="{pair}", seed="{seed}") -> str:
        """The folder a run of a method with `Method.starts_from` = `starts_from` loads."""
        return self.student_sft(pair, seed) if starts_from == "sft" else self.student_init(pair, seed)
    def teacher_cache(self, pair="{pair}", tseed="{tseed}"): return self._p("pairs", pair, "teacher_cache", f"seed{tseed}")
    def teacher_samples(self, pair="{pair}", tseed="{tseed}"):
        return self._p("pairs", pair, "teacher_samples", f"seed{tseed}.jsonl")
    def teacher_gate(self, pair="{pair}"): return self._p("pairs", pair, "teacher_gate.json")
    def difficulty(self, pair="{pair}"): return self._p("difficulty", f"{pair}.csv")

    # --- per run ---------------------------------------------------------------------------
    def run_dir(self, pair="{pair}", method="{method}", variant="{variant}", seed="{seed}"):
        return self._p("runs", pair, method, variant, f"seed{seed}")

    def run_file(self, name, **run) -> str:
        """A file of a run folder by its key in RUN_FILES (e.g. "metrics")."""
        return str(Path(self.run_dir(**run)) / RUN_FILES[name])

    def answers(self, test_set, **run): return str(Path(self.run_dir(**run)) / "answers" / f"{test_set}.jsonl")
    def answer_stats(self, test_set, **run): return str(Path(self.run_dir(**run)) / "answers" / f"{test_set}.json")

    # the learning-rate grid (`snakemake tune`): one validation-only run per method, variant and lr
    def tuning_result(self, pair="{pair}", method="{method}", variant="{variant}", lr="{lr}"):
        return self._p("tuning", pair, method, variant, f"lr{lr}.json")
    @property
    def tuning_table(self): return self._p("tables", "tuning.csv")
    @property
    def tuning_report(self):  # beside the other benchmark reports of the repository
        return f"benchmarks/results/tuning_{self.profile}.md"

    # resume state of an unfinished training job (kdbench/resume.py), removed when it ends
    @property
    def checkpoints(self): return self._p("checkpoints")
    def checkpoint(self, *parts): return str(Path(self.checkpoints).joinpath(*map(str, parts))) + ".pt"

    # --- the profile's tables and figures ----------------------------------------------------
    @property
    def tables(self): return self._p("tables")
    @property
    def figures(self): return self._p("figures")
    @property
    def figures_done(self): return self._p("figures", FIGURES_DONE)

    def long_table(self, name) -> str: return self._p("tables", LONG_TABLES[name])
    @property
    def baselines(self): return self._p("tables", BASELINES_TABLE)

    def table_files(self, stems=TABLE_STEMS) -> list[str]:
        """Every formatted table file the tables rule writes for `stems`."""
        return [self.table(stem, pair, ext) for stem in stems for pair in self.pairs for ext in TABLE_FORMATS]

    def table(self, stem, pair, ext) -> str:
        return self._p("tables", f"{per_pair(stem, pair, self.pairs)}.{ext}")

    # --- per-job logs and timings (each job writes its own: `python -m kdbench ... --timing`) ---
    def log(self, *parts): return self._p("logs", *parts)
    def timing(self, *parts): return self._p("timings", *parts)
