"""End to end: the smoke profile through Snakemake in a temporary directory, a rerun that
does nothing, method discovery in the DAG, and the notebooks on the smoke results."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir, *args, methods_dir=REPO / "methods", config=(), configfile=REPO / "config" / "smoke.yaml",
              check=True, env=None):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), *args,
           "--config", f"methods_dir={methods_dir}", *config]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory):
    """The smoke DAG, run under the socket guard (tests/netguard) without the Hugging Face
    offline switches in the environment: the suite must set them itself."""
    from kdbench_cli import env

    work = tmp_path_factory.mktemp("smoke")
    snakemake(work, "--cores", "2", env=env(netguard_log=work / "network.log"))
    return work / "results" / "smoke"


@pytest.mark.slow
def test_smoke_dag_opens_no_socket(smoke_results):
    log = smoke_results.parents[1] / "network.log"
    assert not log.exists(), log.read_text()[:3000]


@pytest.mark.slow
def test_smoke_profile_end_to_end(smoke_results):
    import yaml

    tables = smoke_results / "tables"
    main = (tables / "main.md").read_text()
    runs = pd.read_csv(tables / "runs.csv")
    include = yaml.safe_load(open(REPO / "config" / "smoke.yaml"))["methods"]["include"]
    for name in ["teacher", *include]:
        assert name in set(runs["method"]), name
        assert f"| {name}" in main or f"|{name}" in main or name in main
    assert set(runs["benchmark"]) == {"id", "paraphrase", "hard"}
    assert runs["rouge_l"].between(0, 100).all()
    # the answers sampled before training are costed apart (seqkd: the teacher's; distillm2: both)
    pregen = runs.groupby("method")["pregen_wall_s"].max()
    assert pregen["distillm2"] > pregen["seqkd"] > 0 and pregen["kd"] == 0
    assert "pre-gen time (s)" in (tables / "runtime.md").read_text()
    for stem in ("main", "runtime", "ablation"):
        for ext in ("md", "csv", "tex"):
            assert (tables / f"{stem}.{ext}").stat().st_size > 0
    assert list((smoke_results / "figures").glob("*.png"))
    # every training job timed itself (`--timing`): one row of wall, CPU seconds and peak memory,
    # a job's wall covering at least its runs' training and validation (train.json; the smoke
    # profile has one training seed)
    timing = pd.read_csv(smoke_results / "timings/distill/tiny/kd/default.tsv", sep="\t")
    assert list(timing.columns) == ["s", "cpu_time", "max_rss"] and len(timing) == 1
    train = json.loads((smoke_results / "runs/tiny/kd/default/seed0/train.json").read_text())
    assert timing["s"][0] >= train["train_wall_s"] + train["val_wall_s"] and timing["cpu_time"][0] > 0
    assert timing["max_rss"][0] > 50  # MB: torch alone takes more
    assert {p.parts[-1] for p in (smoke_results / "timings").iterdir()} >= {"train_teacher", "init_student", "distill"}


@pytest.mark.slow
def test_rerun_of_an_up_to_date_dag_does_nothing(smoke_results):
    out = snakemake(smoke_results.parents[1], "-n", "--cores", "2")
    assert "Nothing to be done" in out.stdout + out.stderr


@pytest.mark.slow
def test_a_changed_setting_reruns_its_rule_and_what_depends_on_it(smoke_results, tmp_path):
    """cache_teacher's settings (precision) are part of what Snakemake compares: changing them
    reruns the cache and the runs that read it, not the teacher."""
    import yaml

    raw = yaml.safe_load(open(REPO / "config" / "smoke.yaml"))
    raw["training"]["student"]["precision"] = "auto"
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(raw))
    out = snakemake(smoke_results.parents[1], "-n", "--cores", "1", configfile=tmp_path / "edited.yaml").stdout
    jobs = out.split("\n\n")
    cache = [j for j in jobs if "rule cache_teacher:" in j]
    assert len(cache) == 1 and "params have changed" in cache[0].lower()
    assert any("rule distill:" in j and "teacher_cache/seed0" in j for j in jobs)
    assert "rule train_teacher:" not in out and "rule prepare_data:" not in out


def test_gradient_checkpointing_reruns_nothing(smoke_results, tmp_path):
    """How a step computes (kdbench.config.HOW_ONLY: gradient checkpointing, the same results)
    is not part of what Snakemake compares: turning it on for every budget leaves the DAG done."""
    import yaml

    raw = yaml.safe_load(open(REPO / "config" / "smoke.yaml"))
    for budget in ("teacher_pretrain", "teacher", "pretrain", "student", "init"):
        raw["training"][budget]["gradient_checkpointing"] = True
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(raw))
    out = snakemake(smoke_results.parents[1], "-n", "--cores", "1", configfile=tmp_path / "edited.yaml").stdout
    assert "Nothing to be done" in out, out[-3000:]


def test_new_method_file_shows_up_in_the_dag(tmp_path):
    import yaml

    methods = tmp_path / "methods"
    shutil.copytree(REPO / "methods", methods)
    shutil.copy(methods / "kd.py", methods / "my_new_kd.py")
    cfg = yaml.safe_load(open(REPO / "config" / "smoke.yaml"))
    cfg.pop("methods")  # include: all, the default
    (tmp_path / "all.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "-n", "--cores", "1", methods_dir=methods, configfile=tmp_path / "all.yaml")
    assert "my_new_kd" in out.stdout
    assert "template_method" not in out.stdout


def test_bad_config_stops_before_any_job(tmp_path):
    out = snakemake(tmp_path, "-n", "--cores", "1", config=["training_seeds=zero"], check=False)
    assert out.returncode != 0
    assert "training_seeds" in out.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.parametrize("notebook", sorted(p.name for p in (REPO / "analysis").glob("*.ipynb")))
def test_notebook_runs_on_smoke_results(notebook, smoke_results, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("KDBENCH_RESULTS", str(smoke_results))
    nb = nbformat.read(REPO / "analysis" / notebook, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "analysis")}}).execute()


@pytest.mark.slow
def test_fresh_clone_with_committed_tables_rebuilds_the_runs(smoke_results, tmp_path):
    # a clone has results/<profile>/tables and figures (committed) but no runs (git-ignored)
    for sub in ("tables", "figures"):
        shutil.copytree(smoke_results / sub, tmp_path / "results" / "smoke" / sub)
    out = snakemake(tmp_path, "-n", "--cores", "1")
    assert "distill" in out.stdout and "collect" in out.stdout
