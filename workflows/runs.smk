# Per run (pair, method, variant, seed): distil, sample answers on every benchmark, score them.
# The teacher's run is teacher/default/seed0 and shares the generate and score rules.

RUN = P.run_dir()


def distill_inputs(wc):
    cls = method_cls(wc)
    out = {"init": P.student_init(wc.pair, wc.seed), "train": P.data("train"), "validation": P.data("validation"),
           "method_file": f"{CFG['methods_dir']}/{wc.method}.py"}
    if cls.needs_teacher:
        out["teacher"] = P.teacher_cache(wc.pair) if CFG["distill"]["cache_teacher"] else teacher_model(wc.pair)
    if cls.uses_difficulty:
        out["difficulty"] = P.difficulty(wc.pair)
    if cls.train_on == "teacher_samples":
        out["samples"] = P.teacher_samples(wc.pair)
    return out


def run_params(wc):
    r = RUN_INDEX[(wc.pair, wc.method, wc.variant, int(wc.seed))]
    return fp(r.params, CFG["training"]["student"], CFG["distill"], CFG["data"]["max_length"], CFG["evaluation"])


rule distill:
    input:
        unpack(distill_inputs),
    output:
        model=directory(f"{RUN}/model"),
        info=f"{RUN}/train.json",
        trace=f"{RUN}/trace.csv",
        epochs=f"{RUN}/epochs.csv",
        bin_loss=f"{RUN}/bin_loss.csv",
    params:
        fp=run_params,
        key=run_key,
    wildcard_constraints:
        method="|".join(METHODS),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("distill", "{pair}", "{method}", "{variant}", "seed{seed}.log"),
    benchmark:
        P.bench("distill", "{pair}", "{method}", "{variant}", "seed{seed}.tsv")
    shell:
        "{KD} distill --config {CONFIG} {params.key} --threads {threads} 2> {log}"


rule generate:
    input:
        model=f"{RUN}/model",
        benchmarks=[P.data(b) for b in BENCHMARKS],
    output:
        answers=[f"{RUN}/answers/{b}.jsonl" for b in BENCHMARKS],
        stats=[f"{RUN}/answers/{b}.json" for b in BENCHMARKS],
    params:
        fp=fp(CFG["evaluation"], CFG["data"]["max_length"]),
        key=run_key,
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("generate", "{pair}", "{method}", "{variant}", "seed{seed}.log"),
    benchmark:
        P.bench("generate", "{pair}", "{method}", "{variant}", "seed{seed}.tsv")
    shell:
        "{KD} generate --config {CONFIG} {params.key} --threads {threads} 2> {log}"


rule score:
    input:
        answers=[f"{RUN}/answers/{b}.jsonl" for b in BENCHMARKS],
        info=f"{RUN}/train.json",
    output:
        scores=f"{RUN}/scores.csv",
        metrics=f"{RUN}/metrics.json",
    params:
        key=run_key,
    log:
        P.log("score", "{pair}", "{method}", "{variant}", "seed{seed}.log"),
    shell:
        "{KD} score --config {CONFIG} {params.key} 2> {log}"
