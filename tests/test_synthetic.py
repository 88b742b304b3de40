"""The embedded synthetic benchmark: schema, splits, determinism, difficulty, references.

Reference answers are recomputed here from the rendered data text with solvers written
independently of kdbench.synthetic (only the category word lists are shared).
"""
import collections
import json
import re

import numpy as np
import pytest

from kdbench import synthetic as S
from kdbench.errors import UserError

SMALL = {"train": 150, "validation": 40, "id": 40, "paraphrase": 40, "hard": 40, "broad": 60}


def n_words(text: str) -> int:
    """Words as Rouge-L sees them (lowercase alphanumeric runs)."""
    return len(re.findall(r"[a-z0-9]+", text.lower()))


# --- independent solvers ----------------------------------------------------------------

_SMALL_NUMS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
               "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy",
         8: "eighty", 9: "ninety"}


def spell(n: int) -> str:
    """0..9999 in words, built digit group by digit group (no recursion, unlike the module)."""
    thousands, rest = divmod(n, 1000)
    hundreds, tail = divmod(rest, 100)
    parts = []
    if thousands:
        parts += [_SMALL_NUMS[thousands], "thousand"]
    if hundreds:
        parts += [_SMALL_NUMS[hundreds], "hundred"]
    if tail >= 20:
        parts.append(_TENS[tail // 10])
        if tail % 10:
            parts.append(_SMALL_NUMS[tail % 10])
    elif tail or not parts:
        parts.append(_SMALL_NUMS[tail])
    return " ".join(parts)


def items_of(data):
    return data.split(", ")


def solve_arithmetic(data, slots):
    ops = data.split(", ")
    cur = int(re.fullmatch(r"start with (\d+)", ops[0]).group(1))
    steps = []
    for op in ops[1:]:
        verb, k = re.fullmatch(r"(add|subtract|multiply by) (\d+)", op).groups()
        k = int(k)
        new = {"add": cur + k, "subtract": cur - k, "multiply by": cur * k}[verb]
        assert 0 <= new <= 20
        word = {"add": "plus", "subtract": "minus", "multiply by": "times"}[verb]
        steps.append(f"{spell(cur)} {word} {spell(k)} is {spell(new)}")
        cur = new
    return ", ".join(steps)


def solve_count(data, slots):
    c = collections.Counter(items_of(data))
    seen = []
    for w in items_of(data):
        if w not in seen:
            seen.append(w)
    return ", ".join(f"{w} {spell(c[w])}" for w in seen)


def solve_dedupe(data, slots):
    out = []
    for w in items_of(data):
        if w not in out:
            out.append(w)
    return ", ".join(out)


def solve_passage(data, slots):
    facts = re.findall(r"(\w+) has a (\w+) (\w+)\.", data)
    assert len(facts) == data.count(".")
    mine = [f"a {c} {t}" for who, c, t in facts if who == slots["name"]]
    return mine[0] if len(mine) == 1 else ", ".join(mine[:-1]) + " and " + mine[-1]


def solve_compare(data, slots):
    pick = max if slots["which"] == "larger" else min
    pairs = [tuple(map(int, p.split(" or "))) for p in data.split("; ")]
    return ", ".join(str(pick(p)) for p in pairs)


def in_kind(data, slots):
    return [w for w in items_of(data) if w in S.CATEGORIES[slots["kind"]]]


def numbered(items):
    return " ".join(f"{spell(i + 1)} {w}" for i, w in enumerate(items))


SOLVERS = {
    "reverse": lambda d, s: ", ".join(items_of(d)[::-1]),
    "sort": lambda d, s: ", ".join(sorted(items_of(d))),
    "dedupe": solve_dedupe,
    "arithmetic": solve_arithmetic,
    "count": solve_count,
    "extract": lambda d, s: ", ".join(in_kind(d, s)),
    "format_then": lambda d, s: " then ".join(items_of(d)),
    "format_numbered": lambda d, s: numbered(items_of(d)),
    "passage_qa": solve_passage,
    "spell_number": lambda d, s: ", ".join(spell(int(x)) for x in items_of(d)),
    "compare": solve_compare,
    "sort_reverse": lambda d, s: ", ".join(sorted(items_of(d))[::-1]),
    "extract_count": lambda d, s: spell(len(in_kind(d, s))),
    "reverse_numbered": lambda d, s: numbered(items_of(d)[::-1]),
    "extract_sort": lambda d, s: ", ".join(sorted(in_kind(d, s))),
}


# --- registry ---------------------------------------------------------------------------

def test_registry_has_enough_families_and_phrasings():
    assert len(S.FAMILIES) >= 10
    assert set(SOLVERS) == set(S.FAMILIES), "a new family needs a solver in this test"
    assert sum(f.composition for f in S.FAMILIES.values()) >= 2
    for name, fam in S.FAMILIES.items():
        assert fam.name == name
        assert len(fam.phrasings) >= 4 and len(set(fam.phrasings)) == len(fam.phrasings), name
        assert len(fam.heldout) >= 2 and len(set(fam.heldout)) == len(fam.heldout), name
        assert not set(fam.phrasings) & set(fam.heldout), name
        sample = fam.make(np.random.default_rng(0), 3)
        for phrasing in fam.phrasings + fam.heldout:   # every placeholder can be filled
            instruction, inp = fam.render(sample, phrasing)
            assert "{" not in instruction
            assert sample.data in instruction + inp


# --- references -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(S.FAMILIES))
def test_reference_outputs_match_independent_solver(name):
    fam = S.FAMILIES[name]
    for level in S.LEVELS:
        for seed in range(6):
            sample = fam.make(np.random.default_rng([seed, level]), level)
            assert sample.outputs[0] == SOLVERS[name](sample.data, dict(sample.slots)), \
                (name, level, sample)


def test_alternative_references_are_the_digit_spellings():
    rng = np.random.default_rng(5)
    for level in S.LEVELS:
        s = S.FAMILIES["extract_count"].make(rng, level)
        assert s.outputs[1] == str(len(in_kind(s.data, s.slots)))
        s = S.FAMILIES["count"].make(rng, level)
        c = collections.Counter(items_of(s.data))
        assert s.outputs[1] == ", ".join(f"{w} {c[w]}" for w in dict.fromkeys(items_of(s.data)))
        s = S.FAMILIES["reverse_numbered"].make(rng, level)
        assert s.outputs[1] == " ".join(f"{i} {w}" for i, w in
                                        enumerate(items_of(s.data)[::-1], 1))


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (40, "forty"), (47, "forty seven"),
    (100, "one hundred"), (305, "three hundred five"), (1000, "one thousand"),
    (4071, "four thousand seventy one"), (9999, "nine thousand nine hundred ninety nine")])
def test_number_words_pinned(n, words):
    assert S.number_words(n) == words == spell(n)


def test_number_words_agrees_with_independent_speller_everywhere():
    assert all(S.number_words(n) == spell(n) for n in range(10000))
    with pytest.raises(ValueError):
        S.number_words(10000)


def test_hand_checked_arithmetic_and_passage():
    assert solve_arithmetic("start with 5, add 3, subtract 2, multiply by 3", {}) == \
        "five plus three is eight, eight minus two is six, six times three is eighteen"
    assert solve_passage("Anna has a red fox. Ben has a blue saw. Anna has a pink plum.",
                         {"name": "Anna"}) == "a red fox and a pink plum"


# --- difficulty -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(S.FAMILIES))
def test_difficulty_increases_task_size(name):
    """Mean words of data + reference rise strictly with the level (40 samples per level)."""
    fam = S.FAMILIES[name]
    rng = np.random.default_rng(11)
    means = []
    for level in S.LEVELS:
        sizes = []
        for _ in range(40):
            s = fam.make(rng, level)
            sizes.append(n_words(s.data) + n_words(s.outputs[0]))
        means.append(np.mean(sizes))
    assert all(a < b for a, b in zip(means, means[1:])), (name, means)


def test_difficulty_knobs_of_structured_families():
    rng = np.random.default_rng(3)
    for level in S.LEVELS:
        s = S.FAMILIES["arithmetic"].make(rng, level)
        assert len(s.data.split(", ")) - 1 == level            # number of operations
        assert s.outputs[0].count(" is ") == level
        s = S.FAMILIES["passage_qa"].make(rng, level)
        assert s.data.count(".") == (2, 3, 5, 6, 8)[level - 1]  # sentences incl. distractors
        s = S.FAMILIES["compare"].make(rng, level)
        assert len(s.data.split("; ")) == level                 # pairs


# --- splits -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def suite():
    return {split: S.generate_split(split, n, seed=0) for split, n in SMALL.items()}


def test_record_schema(suite):
    for split, records in suite.items():
        assert len(records) == SMALL[split]
        assert [r["id"] for r in records] == [f"{split}-{i:05d}" for i in range(1, len(records) + 1)]
        for r in records:
            assert tuple(r) == S.FIELDS
            assert isinstance(r["instruction"], str) and r["instruction"]
            assert isinstance(r["input"], str)
            assert isinstance(r["output"], list) and r["output"]
            assert all(isinstance(o, str) and o for o in r["output"])
            assert r["task"] in S.FAMILIES
            assert type(r["difficulty"]) is int and r["difficulty"] in S.LEVELS
            assert n_words(r["input"]) <= 40 and n_words(r["output"][0]) <= 25


def _template_regex(template):
    return "^" + re.sub(r"\\\{\w+\\\}", "(.+)", re.escape(template)) + "$"


def _matches(record, pool):
    return any(re.match(_template_regex(t), record["instruction"], re.S) for t in pool)


def test_paraphrase_uses_only_heldout_phrasings(suite):
    for split, records in suite.items():
        for r in records:
            fam = S.FAMILIES[r["task"]]
            if split == "paraphrase":
                assert _matches(r, fam.heldout) and not _matches(r, fam.phrasings), r
            else:
                assert _matches(r, fam.phrasings) and not _matches(r, fam.heldout), r
            assert S.phrasing_of(r)[1] == (split == "paraphrase")


def test_train_is_balanced_over_families_and_levels():
    records = S.generate_split("train", 2 * len(S.FAMILIES) * 5, seed=1)  # two full rounds
    assert collections.Counter(r["task"] for r in records) == {f: 10 for f in S.FAMILIES}
    assert collections.Counter(r["difficulty"] for r in records) == {lv: 2 * len(S.FAMILIES)
                                                                      for lv in S.LEVELS}
    cells = collections.Counter((r["task"], r["difficulty"]) for r in records)
    assert set(cells.values()) == {2}


def test_hard_is_levels_4_5_with_many_compositions():
    records = S.generate_split("hard", 120, seed=0)
    assert {r["difficulty"] for r in records} == {4, 5}
    comp = np.mean([S.FAMILIES[r["task"]].composition for r in records])
    assert 0.4 <= comp <= 0.6
    assert {r["task"] for r in records} == set(S.FAMILIES)


def test_eval_splits_never_repeat_a_train_pair():
    train = {S.pair_key(r) for r in S.generate_split("train", 1500, seed=0)}
    for split in ("validation",) + S.TEST_BENCHMARKS:
        ev = S.generate_split(split, 150, seed=0)
        assert not train & {S.pair_key(r) for r in ev}, split
        assert all(S.bucket(r) >= 80 for r in ev)


def test_determinism_and_seed_dependence(tmp_path):
    a = S.build_suite(tmp_path / "a", seed=3, sizes=SMALL)
    b = S.build_suite(tmp_path / "b", seed=3, sizes=SMALL)
    c = S.build_suite(tmp_path / "c", seed=4, sizes=SMALL)
    assert set(a) == set(S.SPLITS)
    for split in S.SPLITS:
        assert a[split] == tmp_path / "a" / f"{split}.jsonl"
        assert a[split].read_bytes() == b[split].read_bytes()
        assert a[split].read_bytes() != c[split].read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == \
        sorted(f"{s}.jsonl" for s in S.SPLITS)                 # no temp files left behind


def test_streams_are_per_split_and_prefix_stable():
    assert S.generate_split("id", 30, 0)[:10] == S.generate_split("id", 10, 0)
    val = [(r["instruction"], r["input"]) for r in S.generate_split("validation", 30, 0)]
    tst = [(r["instruction"], r["input"]) for r in S.generate_split("id", 30, 0)]
    assert val != tst


def test_written_files_load_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    paths = S.build_suite(tmp_path / "data", seed=0, sizes=SMALL)
    ds = datasets.load_dataset("json", data_files={k: str(v) for k, v in paths.items()},
                               cache_dir=str(tmp_path / "cache"))
    for split in S.SPLITS:
        assert ds[split].num_rows == SMALL[split]
        assert ds[split].column_names == list(S.FIELDS)
    assert ds["train"].features["difficulty"].dtype == "int64"
    assert ds["paraphrase"][0]["output"] == json.loads(
        paths["paraphrase"].read_text().splitlines()[0])["output"]


def test_user_errors():
    with pytest.raises(UserError, match="unknown split"):
        S.generate_split("test", 5, 0)
    with pytest.raises(UserError, match="n must be"):
        S.generate_split("train", -1, 0)
    with pytest.raises(UserError, match="unknown split"):
        S.build_suite("/nonexistent-never-written", sizes={"tset": 5})


# --- several right answers, one drawn reference, slips -----------------------------------

def test_list_answers_have_an_and_form():
    s = S.FAMILIES["reverse"].make(np.random.default_rng(0), 1)
    items = s.data.split(", ")
    assert s.outputs == (", ".join(items[::-1]), ", ".join(items[::-1][:-1]) + " and " + items[0])


def test_british_number_words():
    assert S.number_words(4071) == "four thousand seventy one"
    assert S.number_words(4071, british=True) == "four thousand and seventy one"
    assert S.number_words(105, british=True) == "one hundred and five"
    assert S.number_words(1234, british=True) == "one thousand two hundred and thirty four"
    assert S.number_words(1200, british=True) == "one thousand two hundred"


def test_training_splits_keep_one_drawn_reference_and_eval_splits_all():
    train = S.generate_split("train", 300, seed=0)
    assert all(len(r["output"]) == 1 for r in train)
    evals = S.generate_split("id", 300, seed=0)
    assert any(len(r["output"]) > 1 for r in evals)
    # the drawn reference is not always the first form: count train references that use "and"
    # in families whose first form never does
    lists = [r for r in train if r["task"] in ("reverse", "sort", "sort_reverse") and r["difficulty"] >= 2]
    with_and = sum(" and " in r["output"][0] for r in lists)
    assert 0.25 < with_and / len(lists) < 0.75


def test_noise_slips_only_training_references():
    clean = S.generate_split("train", 400, seed=0)
    noisy = S.generate_split("train", 400, seed=0, noise=0.5)
    assert [S.pair_key(r) for r in clean] != [] and len(noisy) == 400
    checked = [r for r in noisy if r["task"] in ("reverse", "sort", "sort_reverse", "dedupe")]
    slipped = [r["output"][0] not in _forms_of(r) for r in checked]  # none of the right answers
    assert len(checked) > 60 and 0.35 < np.mean(slipped) < 0.65
    assert S.generate_split("id", 50, seed=0, noise=0.5) == S.generate_split("id", 50, seed=0)


def _forms_of(record):
    """Every right answer of a training record, recomputed from its data (independent of the
    generator's reference draw): regenerate the id split's forms by solving the task again."""
    task, inp = record["task"], record["input"] or record["instruction"].split(": ", 1)[-1]
    items = inp.split(", ")
    simple = {"reverse": items[::-1], "sort": sorted(items), "sort_reverse": sorted(items, reverse=True),
              "dedupe": list(dict.fromkeys(items))}
    if task in simple:
        return S._list_forms(simple[task])
    raise ValueError(task)


def test_slip_changes_the_answer():
    outs = {S._slip(np.random.default_rng(i), "red, blue, green") for i in range(30)}
    assert "red, blue, green" not in outs and len(outs) > 3
