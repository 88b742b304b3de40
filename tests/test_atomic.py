"""Outputs appear as a set or not at all (kdbench/io.py)."""
import pytest

from kdbench import io


def _write_set(tmp, tag):
    (tmp / "model").mkdir()
    (tmp / "model" / "w.bin").write_text(tag)
    (tmp / "trace.csv").write_text(tag)
    (tmp / "train.json").write_text(tag)


def test_a_failed_stage_leaves_the_previous_set(tmp_path):
    run = tmp_path / "seed0"
    with io.staged(run, marker="train.json") as tmp:
        _write_set(tmp, "old")
    (run / "answers").mkdir()  # another stage's output in the same folder
    with pytest.raises(RuntimeError):
        with io.staged(run, marker="train.json") as tmp:
            (tmp / "trace.csv").write_text("new")
            raise RuntimeError("disk full")
    assert {p.name for p in tmp_path.iterdir()} == {"seed0"}  # no temporary left
    assert (run / "trace.csv").read_text() == (run / "model" / "w.bin").read_text() == "old"
    with io.staged(run, marker="train.json") as tmp:
        _write_set(tmp, "new")
    assert (run / "trace.csv").read_text() == (run / "model" / "w.bin").read_text() == "new"
    assert (run / "train.json").read_text() == "new" and (run / "answers").is_dir()


def test_a_set_without_its_marker_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        with io.staged(tmp_path / "run", marker="train.json") as tmp:
            (tmp / "trace.csv").write_text("x")
    assert not (tmp_path / "run").exists()


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    stale = tmp_path / ".seed1.abcd_123"   # left by a killed writer of seed1
    other = tmp_path / ".seed10.abcd_123"  # a live writer of seed10
    stale.mkdir()
    other.mkdir()
    io.write_text(tmp_path / "seed1", "x")
    assert not stale.exists() and other.exists()
    assert (tmp_path / "seed1").read_text() == "x"


def test_a_gzipped_table_has_the_same_bytes_each_time(tmp_path):
    import time

    import pandas as pd
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    io.write_csv(tmp_path / "t1.csv.gz", df)
    time.sleep(1.1)  # the gzip header's time stamp has a resolution of one second
    io.write_csv(tmp_path / "t2.csv.gz", df)
    assert (tmp_path / "t1.csv.gz").read_bytes() == (tmp_path / "t2.csv.gz").read_bytes()
    assert pd.read_csv(tmp_path / "t2.csv.gz").equals(df)
