"""kdbench.notebook: absent tables give notes and Nones, never exceptions; the pair shown is
$KDBENCH_PAIR or the first one; labels and looks follow the tables' row order."""
from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("IPython")

from kdbench import notebook as NB  # noqa: E402
from kdbench.errors import UserError  # noqa: E402


@pytest.fixture
def shown(monkeypatch):
    """Everything the helpers display, in order (Markdown objects and Images)."""
    out = []
    monkeypatch.setattr(NB, "display", out.append)
    monkeypatch.delenv("KDBENCH_PAIR", raising=False)
    return out


def notes(shown):
    return [obj.data for obj in shown if isinstance(obj, NB.Markdown)]


def test_note_is_a_highlighted_markdown_line(shown):
    assert NB.note("x is absent") is None
    assert notes(shown) == ["> **Note.** x is absent"]


def test_read_missing_folder_returns_nones_and_one_note(tmp_path, shown):
    missing = tmp_path / "nope" / "tables"
    t = NB.read(missing, ["runs", "ablations"])
    assert t == {"runs": None, "ablations": None}
    assert len(notes(shown)) == 1
    assert f"`{missing}` does not exist" in notes(shown)[0]


def test_read_empty_folder_names_every_absent_file(tmp_path, shown):
    t = NB.read(tmp_path, ["runs", "epochs", "ablations"])
    assert t == {"runs": None, "epochs": None, "ablations": None}
    [text] = notes(shown)
    assert "runs.csv, epochs.csv, ablations.csv" in text
    assert str(tmp_path) in text


def test_read_present_table_is_returned_and_only_absent_ones_noted(tmp_path, shown):
    pd.DataFrame({"pair": ["p"], "method": ["kd"], "variant": ["default"], "seed": [0]}).to_csv(
        tmp_path / "runs.csv", index=False)
    (tmp_path / "ablations.csv").write_text("")  # empty file counts as absent
    t = NB.read(tmp_path, ["runs", "ablations"])
    assert t["ablations"] is None
    assert t["runs"].to_dict("list") == {"pair": ["p"], "method": ["kd"], "variant": ["default"], "seed": [0]}
    [text] = notes(shown)
    assert "ablations.csv" in text and "runs.csv" not in text


def test_read_all_present_gives_no_note(tmp_path, shown):
    pd.DataFrame({"pair": ["p"]}).to_csv(tmp_path / "runs.csv", index=False)
    NB.read(tmp_path, ["runs"])
    assert shown == []


def _tables():
    # pairs in order of first appearance over the tables: p2, p1, p3
    return {"runs": pd.DataFrame({"pair": ["p2", "p1", "p2"]}),
            "examples": None,
            "ablations": pd.DataFrame({"ablation": ["full"]}),  # no pair column: ignored
            "epochs": pd.DataFrame({"pair": ["p3", "p1"]})}


def test_choose_pair_takes_the_first_pair_and_notes_several(shown):
    assert NB.choose_pair(_tables()) == ("p2", "_p2")
    [text] = notes(shown)
    assert "['p2', 'p1', 'p3']" in text and "showing 'p2'" in text


def test_choose_pair_follows_kdbench_pair(shown, monkeypatch):
    monkeypatch.setenv("KDBENCH_PAIR", "p3")
    assert NB.choose_pair(_tables()) == ("p3", "_p3")


def test_choose_pair_unknown_kdbench_pair_falls_back_to_the_first(shown, monkeypatch):
    monkeypatch.setenv("KDBENCH_PAIR", "zzz")
    assert NB.choose_pair(_tables()) == ("p2", "_p2")
    assert "KDBENCH_PAIR='zzz' is not in the tables" in notes(shown)[0]


def test_choose_pair_single_pair_has_no_suffix_and_no_note(shown):
    assert NB.choose_pair({"runs": pd.DataFrame({"pair": ["only", "only"]})}) == ("only", "")
    assert shown == []


def test_choose_pair_without_tables_is_none(shown):
    assert NB.choose_pair({"runs": None, "epochs": None}) == (None, "")
    assert shown == []


def test_one_pair_filters_and_gives_none_when_empty():
    df = pd.DataFrame({"pair": ["a", "b", "a"], "x": [1, 2, 3]})
    assert NB.one_pair(df, "a")["x"].tolist() == [1, 3]
    assert NB.one_pair(df, "c") is None
    assert NB.one_pair(None, "a") is None
    no_pair = pd.DataFrame({"x": [1]})
    assert NB.one_pair(no_pair, "a") is no_pair


def test_ablation_names_and_labels():
    ablations = pd.DataFrame({"ablation": ["full", "no_curriculum", "shuffled", "hard_first"],
                              "method": ["cpd", "cpd", "cpd", "cpd"],
                              "variant": ["default", "curriculum-false", "order-shuffle", "order-shuffle"]})
    names = NB.ablation_names(ablations)
    assert names == {("cpd", "default"): ["full"], ("cpd", "curriculum-false"): ["no_curriculum"],
                     ("cpd", "order-shuffle"): ["shuffled", "hard_first"]}
    assert NB.ablation_names(None) == {}
    assert NB.label("cpd", "default", names) == "cpd"
    assert NB.label("cpd", "order-shuffle", names) == "cpd (shuffled/hard_first)"
    assert NB.label("kd", "temperature-2", names) == "kd (temperature-2)"


def test_labelled_puts_rows_in_table_order():
    idx = pd.MultiIndex.from_tuples([("zeta", "default"), ("kd", "b"), ("teacher", "default"),
                                     ("kd", "default"), ("sft", "default")])
    df = pd.DataFrame({"v": [1, 2, 3, 4, 5]}, index=idx)
    out = NB.labelled(df, {("kd", "b"): ["abl"]})
    assert out.index.tolist() == ["teacher", "sft", "kd", "kd (abl)", "zeta"]
    assert out["v"].tolist() == [3, 5, 4, 2, 1]


def test_run_styles_share_a_colour_per_method_and_cycle_line_styles():
    keys = [("kd", "default"), ("kd", "b"), ("kd", "a"), ("sft", "default"), ("kd", "default")]
    looks = NB.run_styles(keys, {})
    assert list(looks) == [("sft", "default"), ("kd", "default"), ("kd", "a"), ("kd", "b")]
    assert [looks[k]["ls"] for k in looks] == ["-", "-", "--", ":"]
    assert looks[("kd", "a")]["color"] == looks[("kd", "b")]["color"] != looks[("sft", "default")]["color"]
    assert looks[("kd", "a")]["label"] == "kd (a)"


def test_figure_notes_user_error_and_falls_back_to_the_dag_copy(tmp_path, shown):
    def fails(out):
        raise UserError("runs.csv is missing; run the DAG's collect step to write it.")

    figures = tmp_path / "figures"
    figures.mkdir()
    assert NB.figure("f", fails, tmp_path, figures, "_p") is None
    assert notes(shown) == ["> **Note.** f: runs.csv is missing; run the DAG's collect step to write it.",
                            "> **Note.** f: nothing to plot in these tables."]
    shown.clear()
    (figures / "f_p.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    NB.figure("f", lambda out: [], tmp_path, figures, "_p")
    assert "could not be redrawn" in notes(shown)[0]
    assert isinstance(shown[-1], NB.Image) and shown[-1].data == b"\x89PNG\r\n\x1a\n"


def test_figure_shows_the_redrawn_png(tmp_path, shown):
    def make(out):
        png = out.with_name(out.name + ".png")
        png.write_bytes(b"\x89PNG\r\n\x1a\nredrawn")
        return [out.with_name(out.name + ".pdf"), png]

    NB.figure("g", make, tmp_path, tmp_path / "figures")
    assert len(shown) == 1 and shown[0].data == b"\x89PNG\r\n\x1a\nredrawn"


def test_scratch_dir_is_a_new_empty_folder():
    a, b = NB.scratch_dir(), NB.scratch_dir()
    assert a != b and a.is_dir() and not any(a.iterdir())
