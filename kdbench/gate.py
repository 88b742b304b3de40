"""The teacher gate: a check of the teachers' own test answers before anything is distilled.

A teacher whose answers do not end (they run to the generation cap without its end token) or
loop teaches every student to do the same; the typical cause is a prompt format the model was
never tuned on, e.g. an instruction-tuned model given the Alpaca prompt as plain text instead
of its chat template. After the teachers are trained (or loaded) and evaluated, the gate reads
each teacher seed's answers on every test set and every sampling seed:

    capped      share of the answers that ran to the cap without ending (`kdbench.metrics.answer_shape`)
    repetition  mean share of an answer's word trigrams that repeat an earlier one

Either above its threshold (`teacher_gate.max_capped`, `teacher_gate.max_repetition`) for any
teacher seed stops the pair with one sentence that names the share, shows one such answer and
says what to change, unless `teacher_gate.on_failure` is `warn`. The verdict file the distill
jobs depend on is written only when the gate passes or is overridden, so Snakemake trains no
student of a failed pair. The teachers' runs (metrics, answers) are kept either way.
"""
from __future__ import annotations

from kdbench.metrics import repetition, words


def verdict(answers: list[dict], max_capped: float, max_repetition: float) -> dict:
    """The gate's numbers for one teacher seed's answer rows ({"answer", "ended"}, all test
    sets and sampling seeds): n, capped, repetition, passed, and `example`, the answer that
    shows the failure (the first capped one, or the most repetitive one; None if it passed)."""
    recorded = [a for a in answers if a.get("ended") in (True, False)]
    capped = [a for a in recorded if not a["ended"]]
    reps = [repetition(words(a["answer"] or "")) for a in answers]
    share = len(capped) / len(recorded) if recorded else 0.0
    rep = sum(reps) / len(reps) if reps else 0.0
    too_long, loops = share > max_capped, rep > max_repetition
    example = None
    if too_long:
        example = capped[0]["answer"]
    elif loops:
        example = answers[max(range(len(reps)), key=reps.__getitem__)]["answer"]
    return {"n": len(answers), "capped": share, "repetition": rep, "too_long": too_long, "loops": loops,
            "passed": not (too_long or loops), "example": example}


def failure_sentence(pair: str, tseed: int, v: dict, max_capped: float, max_repetition: float,
                     cap_tokens, stops: bool = True) -> str:
    """One sentence: what the teacher did, one answer that shows it, and what to change
    (`stops`: the gate stops the pair; else it warns, `teacher_gate.on_failure: warn`)."""
    what = []
    if v["too_long"]:
        cap = f"the {cap_tokens}-token cap" if cap_tokens else "the length cap"
        what.append(f"{v['capped']:.0%} of its {v['n']} test answers ran to {cap} without ending "
                    f"(the gate allows {max_capped:.0%})")
    if v["loops"]:
        what.append(f"its answers repeat {v['repetition']:.0%} of their word trigrams "
                    f"(the gate allows {max_repetition:.0%})")
    example = v["example"] or ""
    shown = example[:160] + ("…" if len(example) > 160 else "")
    fixes = ("give an instruction-tuned teacher its own chat template (`data.prompt_format: chat`), fine-tune "
             "a base teacher on the data (`finetuned: false`) or end its answers with `evaluation.stop_strings`")
    head = f"pair {pair}, teacher seed {tseed}: {' and '.join(what)}, e.g. {shown!r}"
    if stops:
        return f"{head}, so no student is distilled from it; {fixes}, or set `teacher_gate.on_failure: warn` to distil from it anyway."
    return f"{head}; its students are distilled anyway (`teacher_gate.on_failure: warn`); to fix it, {fixes}."
