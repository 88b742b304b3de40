# Validates the config, writes the resolved config every stage reads, and defines the helpers
# the rules use to name their inputs. Nothing here trains or scores anything.
import shutil
import sys

from kdbench import config as C
from kdbench import method as M
from kdbench.errors import UserError
from kdbench.paths import Paths

# `--configfile X` replaces config/default.yaml rather than merging into it: a profile is
# complete on its own (Snakemake would otherwise inherit the default's pairs and ablations).
_cli = workflow.config_settings.overwrite_config
_raw = _cli if workflow.overwrite_configfiles else config
_source = ", ".join(map(str, workflow.overwrite_configfiles)) or "config/default.yaml"

try:
    CFG = C.validate(_raw, source=_source)
    METHODS = M.discover(CFG["methods_dir"])
    RUNS = C.runs(CFG)
    if "teacher" in METHODS:
        raise UserError(f"{CFG['methods_dir']}/teacher.py: `teacher` is reserved for the teacher's runs; rename the file.")
except UserError as exc:
    sys.stderr.write(f"kdbench: error: {exc}\n")
    sys.exit(2)

P = Paths(CFG)
PAIRS = list(CFG["pairs"])
BENCHMARKS = list(CFG["data"]["benchmarks"])
SEEDS = list(range(CFG["training_seeds"]))
KD = "python -m kdbench"
# GPU rules claim the one GPU only where there is one (profiles/default limits gpu to 1)
GPU = 1 if shutil.which("nvidia-smi") else 0
CONFIG = P.config  # the resolved config: every stage command reads it
C.write_resolved(CFG, CONFIG)


def fp(*sections):
    """Fingerprint of the config sections a rule depends on (a change reruns that rule)."""
    return C.fingerprint(sections)


def method_cls(wc):
    return METHODS[wc.method]


RUN_INDEX = {(r.pair, r.method, r.variant, r.seed): r for r in RUNS}


def run_key(wc):
    return f"--pair {wc.pair} --method {wc.method} --variant {wc.variant} --seed {wc.seed}"


def teacher_model(pair):
    return P.teacher_model(pair)


def corpus_inputs():
    """The general pre-training corpus, where the profile has one (synthetic `pretrain` split)."""
    return [P.data("pretrain")] if CFG["data"]["source"] == "synthetic" and CFG["data"]["synthetic_sizes"].get("pretrain") else []


def tokenizer_inputs():
    return [P.tokenizer] if CFG["tokenizer"]["train"] else []


def run_dirs():
    """(pair, method, variant, seed) of the teacher and every student run."""
    return [(p, "teacher", "default", 0) for p in PAIRS] + [(r.pair, r.method, r.variant, r.seed) for r in RUNS]


wildcard_constraints:
    pair="|".join(PAIRS),
    seed=r"\d+",
    variant=r"[A-Za-z0-9_.\-]+",
