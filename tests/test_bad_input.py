"""Every bad input a user can cause ends in one sentence, with no traceback and nothing written
under results/: config files, data files, method files, model folders, a refused disk. Each
case goes through the real entry point (`python -m kdbench <stage>`), on a tree whose first
stages were run once (tests/kdbench_cli.py)."""
import copy
import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from kdbench_cli import REPO, files_under, kdbench, prepare_tree, tiny_profile, write_profile

RUN = ["--pair", "tiny", "--method", "kd", "--variant", "default", "--seed", "0"]
TEACHER_RUN = ["--pair", "tiny", "--method", "teacher", "--variant", "default", "--seed", "0"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    cfg = prepare_tree(root, tiny_profile(root))
    return root, cfg


# --- the cases: (name, edit(work, cfg) -> argv, expected words of the sentence) --------------------

def _config(edit):
    def case(work, cfg):
        edit(cfg)
        return ["validate", "--config", write_profile(work, cfg)]
    return case


def _data(split, text, stage=("train_tokenizer",)):
    def case(work, cfg):
        (Path(cfg["results_dir"]) / "tiny" / "data" / f"{split}.jsonl").write_bytes(text)
        return [*stage, "--config", write_profile(work, cfg)]
    return case


def _method_file(body):
    def case(work, cfg):
        methods = work / "methods"
        shutil.copytree(REPO / "methods", methods)
        (methods / "bad.py").write_text(body)
        cfg["methods_dir"] = str(methods)
        return ["validate", "--config", write_profile(work, cfg)]
    return case


def _nan_gradient_method(work, cfg):
    methods = work / "methods"
    shutil.copytree(REPO / "methods", methods)
    (methods / "kd.py").write_text(
        "import torch\nfrom kdbench.method import Method as Base\n\n\nclass Method(Base):\n"
        "    references = ['test']\n\n    def loss(self, s, t, mask, progress):\n"
        "        return torch.sqrt((s - s.detach()).pow(2).sum())\n")
    cfg["methods_dir"] = str(methods)
    return ["distill", "--config", write_profile(work, cfg), *RUN]


def _corrupt_model(work, cfg):
    model = Path(cfg["results_dir"]) / "tiny/runs/tiny/teacher/default/seed0/model/model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    return ["evaluate", "--config", write_profile(work, cfg), *TEACHER_RUN]


def _missing_config(work, cfg):
    return ["validate", "--config", work / "nope.yaml"]


def _not_yaml(work, cfg):
    (work / "bad.yaml").write_text("pairs: [unclosed\n")
    return ["validate", "--config", work / "bad.yaml"]


def _partial_config(work, cfg):
    (work / "partial.yaml").write_text("training:\n  student: {epochs: 3}\n")  # meant as an override
    return ["validate", "--config", work / "partial.yaml"]


def _unknown_run(work, cfg):
    return ["distill", "--config", write_profile(work, cfg), *RUN[:-1], "7"]


def _set(path, value):
    def edit(cfg):
        *head, last = path.split(".")
        d = cfg
        for k in head:
            d = d.setdefault(k, {})
        d[last] = value
    return edit


LINE = json.dumps({"id": "x", "instruction": "a", "input": "", "output": ["b"]}) + "\n"
CASES = {
    "missing config file": (_missing_config, "does not exist"),
    "config not YAML": (_not_yaml, "not valid YAML"),
    "partial config file": (_partial_config, "not a complete profile"),
    "unknown config key": (_config(_set("trainng", {})), "unknown key"),
    "wrong type": (_config(_set("training_seeds", "zero")), "training_seeds"),
    "typo in a model config": (_config(_set("pairs.tiny.student.config.hidden_sise", 8)), "did you mean `hidden_size`"),
    "unknown method": (_config(_set("methods.include", ["kdd"])), "unknown method 'kdd'"),
    "missing local model": (_config(_set("pairs.tiny.teacher", {"init": "pretrained", "path": "/no/such/model"})),
                            "does not exist"),
    "method without loss": (_method_file("from kdbench.method import Method as B\n\n\nclass Method(B):\n    pass\n"),
                            "defines no `loss`"),
    "method with a syntax error": (_method_file("def (:\n"), "failed to import"),
    "corrupted split file": (_data("train", b"\x00\x9f\x92\x96 garbage \xff\n"), "line 1, is not valid JSON"),
    "malformed JSONL line": (_data("train", (LINE * 2 + LINE[:20] + "\n").encode()), "line 3, is not valid JSON"),
    "record without output": (_data("train", b'{"id": "x", "instruction": "a"}\n'), "lacks ['output']"),
    "empty training split": (_data("train", b"", ("train_teacher", "--pair", "tiny", "--tseed", "0")), "holds no records"),
    "missing data file": (_data("train", b"", ("evaluate", *TEACHER_RUN)), None),  # replaced below
    "corrupted model folder": (_corrupt_model, "is not a readable model"),
    "NaN gradients from a method": (_nan_gradient_method, "method 'kd' is the suspect"),
    "run not in the profile": (_unknown_run, "has no run"),
}


def _missing_benchmark(work, cfg):
    (Path(cfg["results_dir"]) / "tiny/data/id.jsonl").unlink()
    return ["evaluate", "--config", write_profile(work, cfg), *TEACHER_RUN]


CASES["missing data file"] = (_missing_benchmark, "is missing; run the prepare_data stage")


def _check_one_sentence(out, stage, expected):
    err = out.stderr
    assert out.returncode == 2, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"kdbench {stage}: error: "), err[-2000:]
    assert expected in last, last
    assert sum("error" in line for line in err.splitlines()) == 1, err[-2000:]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_sentence_and_writes_nothing(case, tree, tmp_path):
    root, cfg = tree
    cfg = copy.deepcopy(cfg)
    cfg["results_dir"] = str(tmp_path / "results")
    shutil.copytree(root / "results", tmp_path / "results")
    edit, expected = CASES[case]
    argv = edit(tmp_path, cfg)
    before = files_under(tmp_path / "results")
    out = kdbench(tmp_path, *argv, check=False)
    _check_one_sentence(out, argv[0], expected)
    assert files_under(tmp_path / "results") == before


def _fill_disk():  # in the child: any file grows to at most 64 KiB, then writes fail (EFBIG)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))


@pytest.mark.parametrize("kind", ["full disk", "read-only results"])
def test_refused_writes_give_one_sentence_and_leave_no_partial_outputs(kind, tree, tmp_path):
    root, cfg = tree
    cfg = copy.deepcopy(cfg)
    cfg["results_dir"] = str(tmp_path / "results")
    shutil.copytree(root / "results", tmp_path / "results")
    config = write_profile(tmp_path, cfg)
    run_dir = tmp_path / "results/tiny/runs/tiny/teacher/default/seed0"
    shutil.rmtree(run_dir)
    before = files_under(tmp_path / "results")
    # the profile's folder and the (possibly left empty) checkpoint folders the job writes into first
    locked = [tmp_path / "results" / "tiny", *sorted((tmp_path / "results/tiny/checkpoints").rglob("*")),
              *([tmp_path / "results/tiny/checkpoints"] if (tmp_path / "results/tiny/checkpoints").exists() else [])]
    locked = [p for p in locked if p.is_dir()]
    popen = {}
    if kind == "full disk":
        popen["preexec_fn"] = _fill_disk
    elif os.geteuid() == 0:  # root ignores permissions; an immutable folder refuses it too
        if any(subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode != 0 for p in locked):
            pytest.skip("cannot make a folder read-only here")
    else:
        for p in locked:
            p.chmod(0o555)
    try:
        out = kdbench(tmp_path, "train_teacher", "--config", config, "--pair", "tiny", "--tseed", "0", check=False, **popen)
    finally:
        if kind != "full disk":
            for p in locked:
                subprocess.run(["chattr", "-i", str(p)], capture_output=True)
                p.chmod(0o755)
    _check_one_sentence(out, "train_teacher", "the results could not be written")
    assert files_under(tmp_path / "results") == before
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_lr_written_the_usual_way_is_a_number(tmp_path):
    cfg = tiny_profile(tmp_path)
    text = yaml.safe_dump(cfg).replace("lr: 0.003", "lr: 3e-3")
    assert "lr: 3e-3" in text
    (tmp_path / "p.yaml").write_text(text)
    from kdbench import config as C

    assert C.load(tmp_path / "p.yaml")["training"]["student"]["lr"] == 0.003


def _snakemake_dry_run(work, profile):
    import sys

    from kdbench_cli import env

    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(profile), "-n", "--cores", "1"]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env())


def test_snakemake_reads_lr_3e_3_as_a_number_and_stops_on_a_method_without_loss(tmp_path):
    cfg = tiny_profile(tmp_path)
    text = yaml.safe_dump(cfg).replace("lr: 0.003", "lr: 3e-3")
    (tmp_path / "ok.yaml").write_text(text)
    out = _snakemake_dry_run(tmp_path, tmp_path / "ok.yaml")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "distill" in out.stdout

    methods = tmp_path / "methods"
    shutil.copytree(REPO / "methods", methods)
    (methods / "bad.py").write_text("from kdbench.method import Method as B\n\n\nclass Method(B):\n    pass\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.yaml").write_text(text.replace(str(REPO / "methods"), str(methods)))
    out = _snakemake_dry_run(bad, bad / "bad.yaml")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("kdbench: error: method file")
    assert "defines no `loss`" in out.stderr
    assert not (bad / "results").exists()


def test_snakemake_configfile_errors(tmp_path):
    """A partial or empty profile given to Snakemake stops in the Snakefile with our sentence;
    a --configfile that does not exist is read by Snakemake's command line before any workflow
    code runs, so its own message stays (README, Troubleshooting): its last line names the path."""
    (tmp_path / "partial.yaml").write_text("training:\n  student: {epochs: 3}\n")
    out = _snakemake_dry_run(tmp_path, tmp_path / "partial.yaml")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("kdbench: error: ") and "not a complete profile" in last and "config/*.yaml" in last
    out = _snakemake_dry_run(tmp_path, tmp_path / "nope.yaml")
    assert out.returncode == 1 and str(tmp_path / "nope.yaml") in out.stdout.strip().splitlines()[-1]  # its logger
    assert not (tmp_path / "results").exists()
