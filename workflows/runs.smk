# Per run (pair, method, variant, seed): distil, sample answers on every test set, score them.
# The teachers' runs (teacher/default/seed<t>) share the generate and score rules.


def distill_inputs(wc):
    cls, meth, tseed = METHODS[wc.method], method_of(wc), P.teacher_seed(wc.seed)
    out = {"init": P.student_init(wc.pair, wc.seed), "train": P.data("train"), "validation": P.data("validation"),
           "method_file": f"{CFG['methods_dir']}/{wc.method}.py"}
    if cls.needs_teacher:
        out["teacher"] = (P.teacher_cache(wc.pair, tseed) if C.uses_teacher_cache(CFG, cls)
                          else P.teacher_model(wc.pair, tseed))
    if cls.train_on == "mixed":  # student samples are scored by the teacher model online
        out["teacher_model"] = P.teacher_model(wc.pair, tseed)
    if meth.uses_difficulty:
        out["difficulty"] = P.difficulty(wc.pair)
    if cls.train_on == "teacher_samples":
        out["samples"] = P.teacher_samples(wc.pair, tseed)
    return out


def run_settings(wc):
    # distill.fused only picks how the same losses are evaluated (equal up to float rounding,
    # tests/test_fused.py), like the thread count: not a reason to rerun a finished run
    distill = {k: v for k, v in CFG["distill"].items() if k != "fused"}
    return fp(run_of(wc).params, C.student_budget(CFG, wc.method), distill, CFG["data"]["max_length"],
              CFG["evaluation"], CFG["seed"])


rule distill:
    input:
        unpack(distill_inputs),
    output:
        directory(P.run_file("model")),
        *[P.run_file(name) for name in TRAIN_FILES[1:]],
    params:
        fp=run_settings,
        key=run_key,
    wildcard_constraints:
        method="|".join(METHODS),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("distill", "{pair}", "{method}", "{variant}", "seed{seed}.log"),
    benchmark:
        P.timing("distill", "{pair}", "{method}", "{variant}", "seed{seed}.tsv")
    shell:
        "{KD} distill {STAGE_ARGS} {params.key} --threads {threads} 2> {log:q}"


rule generate:
    input:
        model=P.run_file("model"),
        test_sets=[P.data(b) for b in TEST_SETS],
    output:
        answers=[P.answers(b) for b in TEST_SETS],
        stats=[P.answer_stats(b) for b in TEST_SETS],
    params:
        fp=fp(CFG["evaluation"], CFG["data"]["max_length"]),
        key=run_key,
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("generate", "{pair}", "{method}", "{variant}", "seed{seed}.log"),
    benchmark:
        P.timing("generate", "{pair}", "{method}", "{variant}", "seed{seed}.tsv")
    shell:
        "{KD} generate {STAGE_ARGS} {params.key} --threads {threads} 2> {log:q}"


rule score:
    input:
        answers=[P.answers(b) for b in TEST_SETS],
        info=P.run_file("train"),
    output:
        P.run_file("scores"),
        P.run_file("metrics"),
    params:
        key=run_key,
    log:
        P.log("score", "{pair}", "{method}", "{variant}", "seed{seed}.log"),
    shell:
        "{KD} score {STAGE_ARGS} {params.key} 2> {log:q}"
