# Reads and validates the profile, and defines what the rules share: the layout (kdbench.paths,
# the one place that names runs and files), each rule's settings fingerprint, and the command
# line of a stage. Nothing here trains or scores anything, and nothing here writes a file:
# the resolved config is written by `onstart`, i.e. only when Snakemake executes, under its lock.
import os
import shlex
import shutil
import sys
from pathlib import Path

from snakemake.utils import update_config

from kdbench import config as C
from kdbench import io
from kdbench import method as M
from kdbench.errors import UserError
from kdbench.paths import NAME_CHARS, TEACHER, Paths

# `--configfile X` replaces config/default.yaml rather than merging into it: a profile is
# complete on its own. The Snakefile therefore has no `configfile:` directive (Snakemake would
# merge the default into X); `--config key=value` still overrides single keys.
_settings = workflow.config_settings
try:
    if workflow.overwrite_configfiles:
        _raw = _settings.overwrite_config
        _source = ", ".join(map(str, workflow.overwrite_configfiles))
    else:
        _source = os.path.relpath(Path(workflow.main_snakefile).parent / "config" / "default.yaml")
        _raw = C.read(_source)
        update_config(_raw, _settings.overwrite_config or {})
    CFG = C.validate(_raw, source=_source)
    METHODS = M.discover(CFG["methods_dir"])
    RUNS = C.runs(CFG)
    if TEACHER in METHODS:
        raise UserError(f"{CFG['methods_dir']}/{TEACHER}.py: `{TEACHER}` is reserved for the teachers' runs; rename the file.")
except UserError as exc:
    sys.stderr.write(f"kdbench: error: {exc}\n")
    sys.exit(2)

P = Paths(CFG)
PAIRS = list(CFG["pairs"])
TEST_SETS = list(CFG["data"]["benchmarks"])  # the evaluation sets (config key data.benchmarks)
TEST_SET_FILES = [P.data(b) for b in TEST_SETS]  # written by prepare_data, read by every training job
# GPU rules claim the one GPU only where there is one (profiles/default limits gpu to 1)
GPU = 1 if shutil.which("nvidia-smi") else 0

# The resolved config, keyed by its fingerprint: every job reads the config this Snakemake
# decided with, and checks its fingerprint; another Snakemake (a dry run of an edited profile,
# say) can neither rewrite it nor change which file the jobs of this one read.
CONFIG_FP = C.fingerprint(CFG)
CONFIG = P.resolved_config(CONFIG_FP)
KD = "python -m kdbench"
STAGE_ARGS = f"--config {shlex.quote(CONFIG)} --fingerprint {CONFIG_FP}"


onstart:
    try:
        C.write_resolved(CFG, CONFIG)
    except OSError as exc:
        sys.stderr.write(f"kdbench: error: cannot write {CONFIG} ({exc.strerror}); make {CFG['results_dir']} "
                         "writable (or free disk space), then rerun.\n")
        sys.exit(2)


onsuccess:
    # the checkpoint files are gone once their runs are written; their folders go too
    io.remove_empty_folders(P.checkpoints)


def fp(*sections):
    """Fingerprint of the settings a rule's output depends on (a rule's `params`: when they
    change, Snakemake reruns the rule and, their inputs updated, everything downstream)."""
    return C.fingerprint(sections)


# how every stage puts a record to the models (kdbench.data.PromptFormat): a fingerprint part
# of each rule that encodes prompts
PROMPTS = (CFG["data"]["prompt_format"], CFG["data"]["system_prompt"], CFG["evaluation"]["stop_strings"])


# (pair, method, variant) -> its runs' shared settings (the runs differ in their seed only)
RUN_INDEX = {(r.pair, r.method, r.variant): r for r in RUNS}


def run_of(wc):
    return RUN_INDEX[(wc.pair, wc.method, wc.variant)]


def method_of(wc):
    """The run's method instance (its parameters may change what it needs, e.g. cpd without a
    curriculum does not use the difficulty profile)."""
    return M.instantiate(METHODS[wc.method], run_of(wc).params, wc.method)


def broad_inputs():
    """The teacher's broad collection, where the profile has one (synthetic `broad` split)."""
    return [P.data("broad")] if CFG["data"]["source"] == "synthetic" and CFG["data"]["synthetic_sizes"].get("broad") else []


def tokenizer_inputs():
    return [P.tokenizer] if CFG["tokenizer"]["train"] else []


wildcard_constraints:
    pair="|".join(PAIRS),
    seed=r"\d+",
    tseed=r"\d+",
    variant=NAME_CHARS,
