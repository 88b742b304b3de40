"""The run layout has one owner (kdbench/paths.py); the config a job runs with is the one the
DAG decided with; names are safe. Dry runs only: a few seconds each (that a dry run of every
paper profile writes nothing is in test_paper_profiles.py)."""
import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdbench import config as C
from kdbench import method as M
from kdbench.errors import UserError
from kdbench.paths import LONG_TABLES, RUN_FILES, SAFE_NAME, Paths

REPO = Path(__file__).resolve().parents[1]
SOURCES = [*sorted((REPO / "kdbench").glob("*.py")), *sorted((REPO / "workflows").glob("*.smk")),
           REPO / "Snakefile", *sorted((REPO / "benchmarks").glob("*.py"))]


def dry_run(workdir, configfile, *args, repo=REPO):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
           "-n", "--cores", "1", "--configfile", str(configfile), *args,
           "--config", f"methods_dir={REPO / 'methods'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def smoke(**edits) -> dict:
    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    raw.update(edits)
    return raw


# --- one owner -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(set(LONG_TABLES.values()) | set(RUN_FILES.values()) - {"model"}))
def test_each_file_name_is_spelled_in_paths_only(name):
    literal = re.compile(r"[\"']" + re.escape(name) + r"[\"']")
    spelled = [p.name for p in SOURCES if literal.search(p.read_text())]
    assert spelled == ["paths.py"], f"{name} is spelled in {spelled}"


def test_renaming_an_output_is_one_line(tmp_path):
    """Rename one run file in a copy of the workflow and package: the DAG follows (Snakemake
    imports kdbench from beside the Snakefile)."""
    copy_ = tmp_path / "repo"
    for part in ("workflows", "kdbench", "config", "profiles"):
        shutil.copytree(REPO / part, copy_ / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "Snakefile", copy_ / "Snakefile")
    paths_py = copy_ / "kdbench" / "paths.py"
    text = paths_py.read_text()
    assert text.count('"scores": "scores.csv"') == 1
    paths_py.write_text(text.replace('"scores": "scores.csv"', '"scores": "per_example.csv"'))
    work = tmp_path / "work"
    work.mkdir()
    out = dry_run(work, REPO / "config" / "smoke.yaml", repo=copy_)
    assert "runs/tiny/kd/default/seed0/per_example.csv" in out
    assert "scores.csv" not in out


def test_two_pairs_and_teacher_seeds(tmp_path):
    """The two-pair profile: one set of tables per pair, named by kdbench.paths; every teacher
    seed is a run, and student seed k distils from teacher seed k mod teacher_seeds."""
    raw = smoke(teacher_seeds=2, training_seeds=3)
    raw["pairs"]["other"] = copy.deepcopy(raw["pairs"]["tiny"])
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(raw))
    out = dry_run(tmp_path, tmp_path / "two.yaml", "--printshellcmds")
    P = Paths(C.validate(raw))
    for f in P.table_files():
        assert f in out
    assert "tables/main_tiny.md" in out and "tables/main_other.md" in out
    for pair in ("tiny", "other"):
        for t in (0, 1):
            assert P.run_file("metrics", pair=pair, method="teacher", variant="default", seed=t) in out
            assert f"train_teacher --config" in out and f"--pair {pair} --tseed {t}" in out
    # one distill job per (pair, method, variant) runs every training seed, reading the teacher
    # caches its seeds distil from
    jobs = [j for j in out.split("\n\n") if "rule distill:" in j and "runs/tiny/kd/default/" in j]
    assert len(jobs) == 1 and all(f"runs/tiny/kd/default/seed{s}/train.json" in jobs[0] for s in (0, 1, 2))
    assert "--seed 0 1 2" in jobs[0]
    assert P.teacher_cache("tiny", 0) in jobs[0] and P.teacher_cache("tiny", 1) in jobs[0]
    assert [P.teacher_seed(s) for s in (0, 1, 2)] == [0, 1, 0]
    # distill.group_seeds: false (the paper profiles): one job per seed, reading its own teacher
    raw["distill"] = {**raw.get("distill", {}), "group_seeds": False}
    (tmp_path / "per_seed.yaml").write_text(yaml.safe_dump(raw))
    out = dry_run(tmp_path, tmp_path / "per_seed.yaml", "--printshellcmds")
    jobs = [j for j in out.split("\n\n") if "rule distill:" in j and "runs/tiny/kd/default/" in j]
    assert len(jobs) == 3
    for s in (0, 1, 2):
        job = next(j for j in jobs if f"runs/tiny/kd/default/seed{s}/train.json" in j)
        assert f"--seed {s} " in job and P.teacher_cache("tiny", P.teacher_seed(s)) in job
        assert P.teacher_cache("tiny", 1 - P.teacher_seed(s)) not in job


# --- config integrity ----------------------------------------------------------------------

def test_a_dry_run_of_an_edited_profile_leaves_a_live_run_alone(tmp_path):
    """A live run executes with results/<profile>/configs/<fp>.yaml (written by its onstart);
    a dry run of an edited profile in the same folder neither rewrites that file nor writes
    its own, and a stage given the live run's file and fingerprint still runs that config."""
    live = C.validate(smoke())
    P = Paths(live)
    live_file = tmp_path / P.resolved_config(C.fingerprint(live))
    C.write_resolved(live, live_file)
    before = live_file.read_bytes()
    edited = smoke()
    edited["training"]["student"].update(epochs=9, lr=0.5)
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    dry_run(tmp_path, tmp_path / "edited.yaml")
    assert live_file.read_bytes() == before
    assert [p.name for p in live_file.parent.iterdir()] == [live_file.name]
    loaded = C.load(live_file)
    C.check_fingerprint(loaded, C.fingerprint(live), str(live_file))
    assert loaded["training"]["student"]["epochs"] == 2
    # a resolved config edited by hand is refused by every stage
    live_file.write_text(live_file.read_text().replace("epochs: 2", "epochs: 9", 1))
    cmd = [sys.executable, "-m", "kdbench", "validate", "--config", str(live_file),
           "--fingerprint", C.fingerprint(live)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "fingerprint" in res.stderr and "Traceback" not in res.stderr


def test_the_resolved_config_reloads_to_the_same_fingerprint(tmp_path):
    for name in ("default", "smoke", "paper-gpt2", "paper-opt", "paper-qwen"):  # no local model files
        profile = REPO / "config" / f"{name}.yaml"
        cfg = C.validate(C.read(profile))
        C.write_resolved(cfg, tmp_path / profile.name)
        assert C.fingerprint(C.load(tmp_path / profile.name)) == C.fingerprint(cfg), profile.name


# --- safe names ------------------------------------------------------------------------------

HOSTILE = "t&touch PWNED&t"


@pytest.mark.parametrize("edit", [
    lambda c: c["pairs"].update({HOSTILE: c["pairs"].pop("tiny")}),
    lambda c: c.update(profile=HOSTILE),
    lambda c: c.update(profile=".."),
    lambda c: c["data"]["benchmarks"].update({HOSTILE: "id"}),
    lambda c: c["methods"].update(include=["kd", HOSTILE]),
    lambda c: c["ablations"].update(method=HOSTILE),
])
def test_hostile_names_are_rejected_in_one_sentence(edit):
    raw = smoke()
    edit(raw)
    with pytest.raises(UserError) as err:
        C.validate(raw)
    assert "is not allowed" in str(err.value) and "\n" not in str(err.value)


def test_a_hostile_method_file_name_is_rejected(tmp_path):
    shutil.copy(REPO / "methods" / "kd.py", tmp_path / f"{HOSTILE}.py")
    with pytest.raises(UserError, match="rename it"):
        M.discover(tmp_path)


def test_a_hostile_pair_never_reaches_a_shell(tmp_path):
    raw = smoke()
    raw["pairs"] = {HOSTILE: raw["pairs"]["tiny"]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "1", "--configfile", str(tmp_path / "bad.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "is not allowed" in out.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "results").exists()


def test_every_shell_word_from_a_name_is_quoted():
    """Wildcards and logs in shell commands use Snakemake's `:q`; run keys are shlex-quoted."""
    for smk in sorted((REPO / "workflows").glob("*.smk")):
        for cmd in re.findall(r'^\s+"(\{KD\}[^"]*)"', smk.read_text(), re.M):
            for field in re.findall(r"\{([^}]+)\}", cmd):
                assert field in ("KD", "STAGE_ARGS", "threads", "params.key") or field.endswith(":q") \
                    or field == "wildcards.seed" or field == "wildcards.tseed", (smk.name, cmd, field)
    assert "shlex.quote" in (REPO / "workflows" / "common.smk").read_text()


def test_the_schema_and_paths_agree_on_safe_names():
    assert C.schema()["$defs"]["name"]["pattern"] == SAFE_NAME
    assert C.schema()["properties"]["ablations"]["properties"]["method"]["pattern"] == SAFE_NAME


def test_distill_takes_every_seed_of_its_job_and_other_stages_one():
    from kdbench.__main__ import parser

    key = ["--pair", "tiny", "--method", "kd", "--variant", "default"]
    assert parser().parse_args(["distill", *key, "--seed", "0", "1", "2"]).seed == [0, 1, 2]
    assert parser().parse_args(["evaluate", *key, "--seed", "1"]).seed == 1
    with pytest.raises(SystemExit):
        parser().parse_args(["init_student", "--pair", "tiny", "--seed", "0", "1"])
