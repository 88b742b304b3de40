"""Offline by construction: a profile whose data and models are all local sets the Hugging Face
offline switches itself, and its stages run with every socket refused (tests/netguard)."""
from kdbench import config as C
from kdbench import offline
from kdbench_cli import kdbench, tiny_profile, write_profile


def test_local_profile_needs_no_hub_and_a_hub_id_does(tmp_path):
    cfg = C.validate(tiny_profile(tmp_path))
    assert offline.hub_sources(cfg) == []
    cfg["pairs"]["tiny"]["teacher"] = {**cfg["pairs"]["tiny"]["teacher"], "init": "pretrained", "path": "owner/some-model"}
    cfg["pairs"]["tiny"]["student"] = {**cfg["pairs"]["tiny"]["student"], "init": "pretrained", "path": str(tmp_path)}  # local: fine
    assert offline.hub_sources(cfg) == ["owner/some-model"]


def test_stages_of_a_local_profile_open_no_socket(tmp_path):
    log = tmp_path / "net.log"
    config = write_profile(tmp_path, tiny_profile(tmp_path))
    run = ["--pair", "tiny", "--method", "teacher", "--variant", "default", "--seed", "0"]
    for stage in (["prepare_data"], ["train_tokenizer"], ["train_teacher", "--pair", "tiny", "--tseed", "0"], ["evaluate", *run]):
        kdbench(tmp_path, *stage, "--config", config, netguard_log=log)
    assert (tmp_path / "results/tiny/runs/tiny/teacher/default/seed0/answers/id.jsonl").is_file()
    assert not log.exists(), log.read_text()[:3000]


def test_the_guard_catches_what_the_switches_prevent(tmp_path):
    """Without the switches `datasets` reaches for the network: the guard must see it."""
    import subprocess
    import sys

    from kdbench_cli import env

    log = tmp_path / "net.log"
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n')
    code = "import datasets; datasets.load_dataset('json', data_files='x.jsonl', split='train')"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(log), capture_output=True)
    assert "s3.amazonaws.com" in log.read_text() or "huggingface" in log.read_text()
