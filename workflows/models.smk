# Per pair: the teacher (trained once), the student initialisation of each seed, and what the
# student runs share: cached teacher logits, the teacher's samples (SeqKD), the difficulty profile.


rule train_teacher:
    input:
        tokenizer_inputs(),
        corpus_inputs(),
        train=P.data("train"),
        validation=P.data("validation"),
    output:
        model=directory(P.teacher_model()),
        info=P.run_file("train.json", method="teacher", variant="default", seed=0),
        trace=P.run_file("trace.csv", method="teacher", variant="default", seed=0),
    params:
        fp=lambda wc: fp(CFG["pairs"][wc.pair]["teacher"], CFG["training"]["teacher"], CFG["training"]["teacher_pretrain"],
                         CFG["data"]["max_length"], CFG["evaluation"]),
    threads: workflow.cores
    priority: 10  # the critical path: every distillation waits for the teacher
    resources:
        gpu=GPU,
    log:
        P.log("train_teacher", "{pair}.log"),
    benchmark:
        P.bench("train_teacher", "{pair}.tsv")
    shell:
        "{KD} train_teacher --config {CONFIG} --pair {wildcards.pair} --threads {threads} 2> {log}"


def init_inputs(wc):
    student = CFG["pairs"][wc.pair]["student"]
    extra = [teacher_model(wc.pair)] if student["init"] == "layers_from_teacher" else []
    return tokenizer_inputs() + corpus_inputs() + extra + [P.data("train")]


rule init_student:
    input:
        init_inputs,
    output:
        directory(P.student_init()),
    params:
        fp=lambda wc: fp(CFG["pairs"][wc.pair]["student"], CFG["training"]["pretrain"]),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("init_student", "{pair}", "seed{seed}.log"),
    benchmark:
        P.bench("init_student", "{pair}", "seed{seed}.tsv")
    shell:
        "{KD} init_student --config {CONFIG} --pair {wildcards.pair} --seed {wildcards.seed} --threads {threads} 2> {log}"


rule cache_teacher:
    input:
        teacher=lambda wc: teacher_model(wc.pair),
        train=P.data("train"),
    output:
        directory(P.teacher_cache()),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("cache_teacher", "{pair}.log"),
    benchmark:
        P.bench("cache_teacher", "{pair}.tsv")
    shell:
        "{KD} cache_teacher --config {CONFIG} --pair {wildcards.pair} --threads {threads} 2> {log}"


rule teacher_samples:
    input:
        teacher=lambda wc: teacher_model(wc.pair),
        train=P.data("train"),
    output:
        P.teacher_samples(),
    params:
        fp=fp(CFG["evaluation"]),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("teacher_samples", "{pair}.log"),
    benchmark:
        P.bench("teacher_samples", "{pair}.tsv")
    shell:
        "{KD} teacher_samples --config {CONFIG} --pair {wildcards.pair} --threads {threads} 2> {log}"


def difficulty_inputs(wc):
    extra = [teacher_model(wc.pair)] if CFG["difficulty"]["scorer"] == "teacher_student_kl" else []
    return [P.student_init(wc.pair, 0), P.data("train")] + extra


rule score_difficulty:
    input:
        difficulty_inputs,
    output:
        P.difficulty(),
    params:
        fp=fp(CFG["difficulty"]),
    threads: CFG["threads"]
    resources:
        gpu=GPU,
    log:
        P.log("score_difficulty", "{pair}.log"),
    benchmark:
        P.bench("score_difficulty", "{pair}.tsv")
    shell:
        "{KD} score_difficulty --config {CONFIG} --pair {wildcards.pair} --threads {threads} 2> {log}"
