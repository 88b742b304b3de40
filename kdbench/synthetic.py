"""The embedded synthetic instruction benchmark: small, offline, graded by Rouge-L.

Fifteen task families (eleven base tasks and four two-step compositions) over a closed
vocabulary of about 100 words, phrased in natural language. Each family is one decorated
function `make(rng, level) -> Sample` that draws the task data for a difficulty level 1-5
and computes the reference answer; the family's phrasings turn a sample into a record.

Why the tasks look like this: the suite's default pair is a ~4M-parameter teacher and a
~0.2M-parameter student trained on a 2-core CPU, scored by `rouge_score` Rouge-L (which
lowercases, drops punctuation and measures the word-level longest common subsequence). So
answers are mostly several words whose ORDER matters (reversed, sorted, filtered or
numbered lists, arithmetic worked step by step in words, spelled numbers), which gives
partial credit and rewards capacity; single-number answers (`extract_count`, one-pair
`compare`) are a small minority.

Records (one JSON object per line of `{split}.jsonl`), fields in this order:
    id          str, "<split>-00001", unique within a split
    instruction str, a phrasing of the family, data inlined for phrasings with "{data}"
    input       str, the data (list, passage, ...) or "" when inlined / none
    output      list[str], the references. Evaluation splits hold every right answer
                ("3" beside "three", "a, b and c" beside "a, b, c", "is" or "equals" in
                worked arithmetic); `train` and `broad` hold ONE, drawn uniformly among
                them, as a person writing training data would pick one (and, with
                `noise`, sometimes slip). Training uses output[0].
    task        str, the family name
    difficulty  int, the level 1-5 the family's knob was set to

Splits: `train` and `validation` and the test benchmark `id` draw every family at levels
1-5 (uniformly, stratified) with the family's training phrasings; `paraphrase` draws the
same cells with the HELD-OUT phrasings only; `hard` draws levels 4-5 only, about half of
it from the composition families. Eval examples never repeat a train (instruction, input)
pair: every pair is hashed into 100 buckets, train keeps buckets 0-79, validation 80-89,
the test benchmarks 90-99 (so the guarantee holds for any sizes and seeds).
`broad` (empty unless sized) is the teacher's broader collection: another draw of every
family and level from the training buckets, training phrasings, one clean reference each.
The embedded default pre-trains and fine-tunes the teacher on it, so the teacher knows more
than the noisy `train` references can teach (README, "The embedded default").
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from kdbench import io
from kdbench.errors import UserError

SPLITS = ("train", "validation", "id", "paraphrase", "hard", "broad")
TEST_BENCHMARKS = ("id", "paraphrase", "hard")
LEVELS = (1, 2, 3, 4, 5)
DEFAULT_SIZES = {"train": 3000, "validation": 200, "id": 200, "paraphrase": 200, "hard": 200, "broad": 0}
SINGLE_REFERENCE = ("train", "broad")  # splits whose records keep one drawn reference
FIELDS = ("id", "instruction", "input", "output", "task", "difficulty")

# --- closed vocabulary ----------------------------------------------------------------
# No word belongs to two categories (no "orange"), so extraction has one right answer.
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")
ANIMALS = ("cat", "dog", "fox", "horse", "mouse", "bird", "goat", "sheep", "lion", "frog")
FRUITS = ("apple", "pear", "plum", "grape", "lemon", "mango", "peach", "cherry", "melon", "banana")
TOOLS = ("hammer", "saw", "drill", "wrench", "rake", "shovel", "knife", "brush")
NAMES = ("Anna", "Ben", "Carl", "Dora", "Emma", "Finn", "Gina", "Hugo")
CATEGORIES: dict[str, tuple[str, ...]] = {
    "colours": COLOURS, "animals": ANIMALS, "fruits": FRUITS, "tools": TOOLS}
ITEMS = COLOURS + ANIMALS + FRUITS + TOOLS          # 36 list words
THINGS = ANIMALS + FRUITS + TOOLS                   # what people own in passages

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int, british: bool = False) -> str:
    """English words of 0 <= n <= 9999, no hyphens: 4071 -> "four thousand seventy one";
    british=True puts "and" before the last two digits: "four thousand and seventy one"."""
    if not 0 <= n <= 9999:
        raise ValueError(f"number_words covers 0..9999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    big, unit = (1000, "thousand") if n >= 1000 else (100, "hundred")
    head, rest = divmod(n, big)
    if rest == 0:
        return f"{_ONES[head]} {unit}"
    joiner = " and " if british and rest < 100 else " "
    return f"{_ONES[head]} {unit}{joiner}" + number_words(rest, british)


# --- families --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Sample:
    """One drawn task instance, before phrasing.

    data:    the task's data as text; goes into `input`, or into the instruction where the
             phrasing has a "{data}" placeholder ("" for none).
    outputs: the references, canonical first.
    slots:   other placeholders the phrasings use ({kind}, {name}, {which}).
    """

    data: str
    outputs: tuple[str, ...]
    slots: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Family:
    """A task family: a generator plus its phrasings.

    make(rng, level) -> Sample draws data for difficulty `level` (1-5) and computes the answer.
    phrasings: used by train/validation/id/hard; heldout: used by `paraphrase` only.
    composition: True for two-step compositions of base tasks (weighted up in `hard`).
    """

    name: str
    make: Callable[[np.random.Generator, int], Sample]
    phrasings: tuple[str, ...]
    heldout: tuple[str, ...]
    composition: bool = False
    description: str = ""

    def render(self, sample: Sample, phrasing: str) -> tuple[str, str]:
        """(instruction, input): the data goes inline if the phrasing has "{data}"."""
        if "{data}" in phrasing:
            return phrasing.format(data=sample.data, **sample.slots), ""
        return phrasing.format(**sample.slots), sample.data

    def example(self, rng: np.random.Generator, level: int, heldout: bool = False,
                single: bool = False, noise: float = 0.0) -> dict:
        """A record without `id`: draw a sample, pick a phrasing uniformly, render.

        single=True keeps one reference, drawn uniformly among the right answers, as a
        person writing the training data would (the test splits keep them all); with
        probability `noise` that reference then carries one slip (`_slip`)."""
        sample = self.make(rng, level)
        pool = self.heldout if heldout else self.phrasings
        instruction, inp = self.render(sample, pool[int(rng.integers(len(pool)))])
        output = list(sample.outputs)
        if single:
            output = [output[int(rng.integers(len(output)))]]
            if noise > 0 and rng.random() < noise:
                output = [_slip(rng, output[0])]
        return {"instruction": instruction, "input": inp, "output": output,
                "task": self.name, "difficulty": int(level)}


FAMILIES: dict[str, Family] = {}


def family(name: str, phrasings: list[str], heldout: list[str], composition: bool = False):
    """Register `make(rng, level) -> Sample` as a family; the docstring becomes its description."""
    if len(phrasings) < 4 or len(heldout) < 2 or set(phrasings) & set(heldout):
        raise ValueError(f"family {name}: need >= 4 train and >= 2 distinct held-out phrasings")

    def register(make):
        FAMILIES[name] = Family(name, make, tuple(phrasings), tuple(heldout), composition,
                                (make.__doc__ or "").strip())
        return make
    return register


# small rng helpers: plain Python values out, so records serialise identically everywhere
def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _draw(rng, seq, k):
    """k distinct elements of seq in random order."""
    return [seq[int(i)] for i in rng.choice(len(seq), size=k, replace=False)]


def _between(rng, lo, hi):
    """Uniform int in [lo, hi]."""
    return int(rng.integers(lo, hi + 1))


def _join(items) -> str:
    return ", ".join(items)


def _knob(table, level):
    if level not in LEVELS:
        raise ValueError(f"difficulty level must be one of {LEVELS}, got {level}")
    return table[level - 1]


def _mixed(rng, kind: str, n: int, n_target: int) -> list[str]:
    """A shuffled list of n distinct words, exactly n_target of them from category `kind`."""
    others = [w for w in ITEMS if w not in CATEGORIES[kind]]
    words = _draw(rng, CATEGORIES[kind], n_target) + _draw(rng, others, n - n_target)
    return [words[int(i)] for i in rng.permutation(n)]


def _list_forms(items) -> tuple[str, ...]:
    """The equally right spellings of a list answer: "a, b, c" and "a, b and c" (Rouge-L drops
    the commas, so the two differ by the word "and")."""
    items = list(items)
    if len(items) < 2:
        return (_join(items),)
    return (_join(items), _join(items[:-1]) + " and " + items[-1])


def _slip(rng, answer: str) -> str:
    """One mistake of the kind people make writing a reference: a word left out, two
    neighbouring words swapped, a word replaced by another word of the closed vocabulary, or
    an answer that stops early (after a uniformly drawn word, never the last)."""
    words = answer.split(" ")
    if len(words) < 2:
        return _pick(rng, ITEMS)
    i = int(rng.integers(len(words) - 1))
    kind = int(rng.integers(4))
    if kind == 0:
        del words[i]
    elif kind == 1:
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == 2:
        words[i] = _pick(rng, ITEMS + _ONES[1:11])
    else:
        words = words[:i + 1]
    return " ".join(words)


def _numbered(items) -> str:
    return " ".join(f"{_ONES[i]} {w}" for i, w in enumerate(items, 1))


def _numbered_digits(items) -> str:
    return " ".join(f"{i} {w}" for i, w in enumerate(items, 1))


# Knob tables are indexed by level - 1.

@family("reverse",
        ["Reverse the order of the words in the list.",
         "Write the list backwards, last item first.",
         "Give these items in reverse order: {data}",
         "List the words from last to first."],
        ["Flip the sequence so that the final word comes first and the first word comes last.",
         "Read this list from the end to the start and write it out: {data}"])
def _reverse(rng, level):
    """Reverse a list of distinct words. Knob: list length 3, 4, 6, 8, 10."""
    items = _draw(rng, ITEMS, _knob((3, 4, 6, 8, 10), level))
    return Sample(_join(items), _list_forms(items[::-1]))


@family("sort",
        ["Sort the words in alphabetical order.",
         "Put these words in alphabetical order: {data}",
         "Arrange the list from A to Z.",
         "Order the items alphabetically."],
        ["Rearrange the words so that they follow dictionary order.",
         "Write the following words as they would appear in a dictionary: {data}"])
def _sort(rng, level):
    """Sort distinct words alphabetically. Knob: list length 3, 4, 5, 7, 9."""
    items = _draw(rng, ITEMS, _knob((3, 4, 5, 7, 9), level))
    return Sample(_join(items), _list_forms(sorted(items)))


@family("dedupe",
        ["Remove the duplicate words from the list.",
         "Write each word only once, keeping the order of first appearance.",
         "Delete repeated items from this list: {data}",
         "Keep the first occurrence of every word and drop the repeats."],
        ["Give the distinct words of the list in the order they first show up.",
         "Strip out any word that already appeared earlier: {data}"])
def _dedupe(rng, level):
    """Drop repeats, keep first occurrences. Knob: distinct words 2..6, list length 3, 5, 7, 9, 11."""
    k = _knob((2, 3, 4, 5, 6), level)
    n = _knob((3, 5, 7, 9, 11), level)
    words = _draw(rng, ITEMS, k)
    seq = words + [_pick(rng, words) for _ in range(n - k)]
    seq = [seq[int(i)] for i in rng.permutation(n)]
    return Sample(_join(seq), _list_forms(list(dict.fromkeys(seq))))


@family("arithmetic",
        ["Follow the steps and give every intermediate result in words.",
         "Work it out step by step, writing each result in words: {data}",
         "Compute the result one step at a time. Write the numbers as words.",
         "Do the calculation below step by step and spell out each number."],
        ["Carry out these operations in order and say each partial result in words: {data}",
         "Solve the sum one operation at a time, spelling every number."])
def _arithmetic(rng, level):
    """Chain of + - x on numbers 0..20, answered step by step in words.

    Knob: number of operations = level. Start 1..9; add/subtract 1..9 and multiply by 2 or 3,
    drawn among those that keep every result within 0..20.
    Example: "start with 5, add 3, subtract 2" -> "five plus three is eight, eight minus two is six".
    """
    cur = _between(rng, 1, 9)
    ops, steps = [f"start with {cur}"], []
    for _ in range(_knob(LEVELS, level)):
        choices = []
        if cur < 20:
            choices.append("add")
        if cur > 0:
            choices.append("subtract")
        if 2 <= cur <= 10:
            choices.append("multiply")
        op = _pick(rng, choices)
        if op == "add":
            k = _between(rng, 1, min(9, 20 - cur))
            ops.append(f"add {k}")
            new, word = cur + k, "plus"
        elif op == "subtract":
            k = _between(rng, 1, min(9, cur))
            ops.append(f"subtract {k}")
            new, word = cur - k, "minus"
        else:
            k = _pick(rng, (2, 3) if cur <= 6 else (2,))
            ops.append(f"multiply by {k}")
            new, word = cur * k, "times"
        steps.append(f"{number_words(cur)} {word} {number_words(k)} is {number_words(new)}")
        cur = new
    return Sample(_join(ops), tuple(_join(s.replace(" is ", f" {verb} ") for s in steps)
                                    for verb in ("is", "equals", "makes")))


@family("count",
        ["Count how many times each word appears in the list.",
         "For every word, say how often it occurs: {data}",
         "Give the number of times each item appears, in order of first appearance.",
         "Tally the words in the list."],
        ["Report the frequency of every distinct word in this list: {data}",
         "How often does each word show up? Answer word by word."])
def _count(rng, level):
    """Word frequencies in order of first appearance: "red two, cat one".

    Knob: distinct words 2, 3, 3, 4, 5 in a list of length 3, 4, 6, 8, 10.
    """
    k = _knob((2, 3, 3, 4, 5), level)
    n = _knob((3, 4, 6, 8, 10), level)
    words = _draw(rng, ITEMS, k)
    seq = words + [_pick(rng, words) for _ in range(n - k)]
    seq = [seq[int(i)] for i in rng.permutation(n)]
    order = list(dict.fromkeys(seq))
    return Sample(_join(seq), (_join(f"{w} {number_words(seq.count(w))}" for w in order),
                               _join(f"{w} {seq.count(w)}" for w in order)))


@family("extract",
        ["List the {kind} in the input, in the order they appear.",
         "Pick out the {kind} from this list: {data}",
         "Write only the words that are {kind}.",
         "Keep the {kind} and drop everything else."],
        ["Which of these items are {kind}? Keep their original order.",
         "Filter the following list down to the {kind}: {data}"])
def _extract(rng, level):
    """Keep the words of one category, in order. Knob: list length 4, 5, 7, 9, 11 with 1, 2, 3, 3, 4 targets."""
    kind = _pick(rng, tuple(CATEGORIES))
    items = _mixed(rng, kind, _knob((4, 5, 7, 9, 11), level), _knob((1, 2, 3, 3, 4), level))
    return Sample(_join(items), _list_forms([w for w in items if w in CATEGORIES[kind]]),
                  {"kind": kind})


@family("format_then",
        ["Join the items with the word then.",
         "Rewrite the list as a sequence using then: {data}",
         "Connect the words in order with then between them.",
         "Write the list as one phrase, putting then between neighbouring items."],
        ["Link every item to the next one with the word then.",
         "Express this list as a chain of thens, keeping the order: {data}"])
def _format_then(rng, level):
    """List -> "x then y then z". Knob: list length 2, 3, 4, 6, 8."""
    items = _draw(rng, ITEMS, _knob((2, 3, 4, 6, 8), level))
    return Sample(_join(items), (" then ".join(items), " and then ".join(items)))


@family("format_numbered",
        ["Number the items, writing each number in words before its item.",
         "Put a number word in front of each item: {data}",
         "Write the list as a numbered list, spelling the numbers.",
         "Prefix every item with its position in words."],
        ["Count through the list aloud, saying each position before its word.",
         "Label the following items with their spelled-out positions: {data}"])
def _format_numbered(rng, level):
    """List -> "one apple two pear". Knob: list length 2, 3, 4, 6, 8."""
    items = _draw(rng, ITEMS, _knob((2, 3, 4, 6, 8), level))
    return Sample(_join(items), (_numbered(items), _numbered_digits(items)))


@family("passage_qa",
        ["What does {name} have?",
         "Read the passage. What does {name} own?",
         "List everything that belongs to {name}.",
         "According to the text, what does {name} have?"],
        ["Which things in the passage are {name}'s?",
         "Name all the possessions of {name} mentioned in the passage."])
def _passage_qa(rng, level):
    """What does a person own, from a passage of "Name has a colour thing." sentences.

    Knob: sentences 2, 3, 5, 6, 8, of which 1, 1, 2, 2, 3 about the asked person (the rest
    are distractors about other people). Answer in passage order: "a red fox and a blue saw".
    """
    n = _knob((2, 3, 5, 6, 8), level)
    owned = _knob((1, 1, 2, 2, 3), level)
    name = _pick(rng, NAMES)
    others = [p for p in NAMES if p != name]
    pairs = [(COLOURS[int(i) // len(THINGS)], THINGS[int(i) % len(THINGS)])
             for i in rng.choice(len(COLOURS) * len(THINGS), size=n, replace=False)]
    mine = set(int(i) for i in rng.choice(n, size=owned, replace=False))
    owners = [name if i in mine else _pick(rng, others) for i in range(n)]
    passage = " ".join(f"{p} has a {c} {t}." for p, (c, t) in zip(owners, pairs))
    things = [f"a {c} {t}" for p, (c, t) in zip(owners, pairs) if p == name]
    forms = (things[0],) if len(things) == 1 else (", ".join(things[:-1]) + " and " + things[-1],
                                                   " and ".join(things))
    return Sample(passage, tuple(dict.fromkeys(forms)), {"name": name})


@family("spell_number",
        ["Write each number in words.",
         "Spell out these numbers: {data}",
         "Convert the digits to English words.",
         "Write the following numbers as words: {data}"],
        ["Say each of these numbers the way you would read it aloud.",
         "Express every numeral below in written-out form: {data}"])
def _spell_number(rng, level):
    """Digits -> words. Knob (count, range): 2 in 0-19, 2 in 20-99, 3 in 0-99, 2 in 100-999, 3 in 1000-9999."""
    count, lo, hi = _knob(((2, 0, 19), (2, 20, 99), (3, 0, 99), (2, 100, 999), (3, 1000, 9999)),
                          level)
    nums = [_between(rng, lo, hi) for _ in range(count)]
    forms = (_join(number_words(x) for x in nums), _join(number_words(x, british=True) for x in nums))
    return Sample(_join(str(x) for x in nums), tuple(dict.fromkeys(forms)))


@family("compare",
        ["For each pair, write the {which} number.",
         "Pick the {which} number from every pair: {data}",
         "Give the {which} of each pair of numbers.",
         "Which number is {which} in each pair?"],
        ["Look at every pair and keep only the {which} value.",
         "From each pair below, report the {which} one: {data}"])
def _compare(rng, level):
    """The larger (or smaller) number of each pair: "12 or 7; 3 or 9" -> "12, 9".

    Knob (pairs, numbers up to): (1, 20), (2, 50), (3, 99), (4, 99), (5, 99).
    """
    pairs, top = _knob(((1, 20), (2, 50), (3, 99), (4, 99), (5, 99)), level)
    which = _pick(rng, ("larger", "smaller"))
    drawn = [_draw(rng, range(1, top + 1), 2) for _ in range(pairs)]
    best = max if which == "larger" else min
    return Sample("; ".join(f"{a} or {b}" for a, b in drawn),
                  (_join(str(best(a, b)) for a, b in drawn), _join(number_words(best(a, b)) for a, b in drawn)),
                  {"which": which})


# --- two-step compositions -------------------------------------------------------------

@family("sort_reverse",
        ["Sort the words alphabetically, then reverse the result.",
         "Put the words in alphabetical order and then write that order backwards.",
         "Arrange these words from Z to A: {data}",
         "Order the items in reverse alphabetical order."],
        ["Alphabetize the list, then flip it so the last word comes first.",
         "Write these words in descending dictionary order: {data}"],
        composition=True)
def _sort_reverse(rng, level):
    """Sort, then reverse (Z to A). Knob: list length 3, 4, 5, 7, 9."""
    items = _draw(rng, ITEMS, _knob((3, 4, 5, 7, 9), level))
    return Sample(_join(items), _list_forms(sorted(items, reverse=True)))


@family("extract_count",
        ["How many {kind} are in the list?",
         "Count the {kind} in this list: {data}",
         "Find the {kind}, then say how many there are.",
         "Give the number of {kind} in the input."],
        ["Pick out the {kind} and report their total count.",
         "What is the number of items that are {kind} here? {data}"],
        composition=True)
def _extract_count(rng, level):
    """Extract a category, then count it (one-number answer, "three" or "3").

    Knob: list length 4, 6, 8, 10, 12 with 1..2, 1..3, 1..4, 1..5, 1..6 targets.
    """
    kind = _pick(rng, tuple(CATEGORIES))
    n = _knob((4, 6, 8, 10, 12), level)
    k = _between(rng, 1, min(level + 1, len(CATEGORIES[kind])))
    items = _mixed(rng, kind, n, k)
    return Sample(_join(items), (number_words(k), str(k)), {"kind": kind})


@family("reverse_numbered",
        ["Reverse the list, then number the items in words.",
         "Write the items from last to first, with a number word before each.",
         "Turn this list around and label each item with its position in words: {data}",
         "Reverse the order, then put one, two, three and so on in front of the items."],
        ["Read the list backwards and count aloud as you go.",
         "Flip the order of these words and prefix each with its spelled-out position: {data}"],
        composition=True)
def _reverse_numbered(rng, level):
    """Reverse, then number in words: "cat, dog" -> "one dog two cat". Knob: length 2, 3, 4, 6, 8."""
    items = _draw(rng, ITEMS, _knob((2, 3, 4, 6, 8), level))
    return Sample(_join(items), (_numbered(items[::-1]), _numbered_digits(items[::-1])))


@family("extract_sort",
        ["Pick out the {kind}, then sort them alphabetically.",
         "List the {kind} in this list in alphabetical order: {data}",
         "Keep only the {kind} and arrange them from A to Z.",
         "Find every word that is one of the {kind} and sort those words."],
        ["Filter the list to the {kind} and put them in dictionary order.",
         "Which items are {kind}? Give them alphabetized: {data}"],
        composition=True)
def _extract_sort(rng, level):
    """Extract a category, then sort it. Knob: list length 4, 5, 7, 9, 11 with 2, 2, 3, 3, 4 targets."""
    kind = _pick(rng, tuple(CATEGORIES))
    items = _mixed(rng, kind, _knob((4, 5, 7, 9, 11), level), _knob((2, 2, 3, 3, 4), level))
    return Sample(_join(items), _list_forms(sorted(w for w in items if w in CATEGORIES[kind])),
                  {"kind": kind})


# --- splits ----------------------------------------------------------------------------

_BUCKETS = {"train": (0, 80), "broad": (0, 80), "validation": (80, 90),
            "id": (90, 100), "paraphrase": (90, 100), "hard": (90, 100)}
_FRESH_TRIES = 50       # draws spent looking for a pair not yet in the split before a repeat
_MAX_TRIES = 5000       # draws before giving up on a (family, level) cell: a generator bug


def pair_key(record: Mapping) -> str:
    """The (instruction, input) identity used for de-duplication."""
    return f"{record['instruction']}\n### Input:\n{record['input']}"


def bucket(record: Mapping) -> int:
    """Stable bucket 0..99 of a record's (instruction, input); assigns it to train or eval."""
    digest = hashlib.sha256(pair_key(record).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _cells(split: str) -> list[tuple[str, int]]:
    """The (family, level) cells a split cycles through; repeats weight a cell up."""
    if split != "hard":
        return [(f, lv) for f in FAMILIES for lv in LEVELS]
    base = [(f, lv) for f, fam in FAMILIES.items() if not fam.composition for lv in (4, 5)]
    comp = [(f, lv) for f, fam in FAMILIES.items() if fam.composition for lv in (4, 5)]
    return base + comp * max(1, round(len(base) / max(1, len(comp))))


def _check_split(split):
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")


def _check_int(what, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{what} must be an integer >= {minimum}, got {value!r}; fix the value.")


def generate_split(split: str, n: int, seed: int, noise: float = 0.0) -> list[dict]:
    """n records of `split`, deterministic in (split, n, seed).

    Each split has its own RNG stream numpy.random.default_rng([seed, split index]). The
    (family, level) cells are visited in shuffled rounds, so families and levels are
    balanced to within one round (75 cells; 46 for `hard`). Draws whose (instruction, input)
    hashes outside the split's buckets are rejected, which keeps eval splits disjoint from
    train; a pair already in the split is redrawn up to 50 times before it is allowed to repeat.
    `train` and `broad` records keep one reference drawn among the right answers; `noise`
    is the share of `train` references with one slip (`broad` stays clean).
    """
    _check_split(split)
    _check_int("n", n)
    _check_int("seed", seed)
    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    lo, hi = _BUCKETS[split]
    cells = _cells(split)
    records, seen = [], set()
    while len(records) < n:
        for j in rng.permutation(len(cells)):
            if len(records) >= n:
                break
            fam, level = FAMILIES[cells[j][0]], cells[j][1]
            for attempt in range(_MAX_TRIES):
                rec = fam.example(rng, level, heldout=(split == "paraphrase"),
                                  single=split in SINGLE_REFERENCE, noise=noise if split == "train" else 0.0)
                if lo <= bucket(rec) < hi and (pair_key(rec) not in seen
                                               or attempt >= _FRESH_TRIES):
                    break
            else:
                raise RuntimeError(f"family {fam.name} level {level}: no pair in buckets "
                                   f"[{lo}, {hi}) after {_MAX_TRIES} draws")
            seen.add(pair_key(rec))
            records.append({"id": f"{split}-{len(records) + 1:05d}", **rec})
    return records


def build_suite(out_dir, seed: int = 0, sizes: dict | None = None, noise: float = 0.0) -> dict[str, Path]:
    """Write out_dir/{split}.jsonl for the five splits; {split: path}.

    sizes overrides DEFAULT_SIZES per split (missing splits keep their default). Same seed
    and sizes give byte-identical files.
    """
    sizes = dict(DEFAULT_SIZES, **(sizes or {}))
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise UserError(f"unknown split(s) {unknown} in sizes; use {', '.join(SPLITS)}.")
    for split, n in sizes.items():
        _check_int(f"size of split {split!r}", n)
    _check_int("seed", seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        paths[split] = out / f"{split}.jsonl"
        io.write_jsonl(paths[split], generate_split(split, sizes[split], seed, noise))
    return paths


def phrasing_of(record: Mapping) -> tuple[str, bool] | None:
    """(template, is_heldout) that produced a record's instruction, or None (for analysis)."""
    fam = FAMILIES[record["task"]]
    for heldout, pool in ((False, fam.phrasings), (True, fam.heldout)):
        for template in pool:
            pattern = re.sub(r"\\\{\w+\\\}", "(.+?)", re.escape(template))
            if re.fullmatch(pattern, record["instruction"], flags=re.S):
                return template, heldout
    return None


def main(argv=None) -> None:
    """python -m kdbench.synthetic OUT_DIR [--seed S] [--train N ...]: write the suite."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    for split in SPLITS:
        ap.add_argument(f"--{split}", type=int, default=DEFAULT_SIZES[split])
    args = ap.parse_args(argv)
    paths = build_suite(args.out_dir, args.seed, {s: getattr(args, s) for s in SPLITS})
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
