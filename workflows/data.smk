# Data and tokenizer: built once per profile and shared by every pair and run.


rule prepare_data:
    output:
        train=P.data("train"),
        validation=P.data("validation"),
        benchmarks=[P.data(b) for b in BENCHMARKS],
        corpus=corpus_inputs(),
        report=P.data_report,
    params:
        fp=fp(CFG["data"], CFG["seed"]),
    log:
        P.log("prepare_data.log"),
    shell:
        "{KD} prepare_data --config {CONFIG} 2> {log}"


rule train_tokenizer:
    input:
        P.data("train"),
    output:
        directory(P.tokenizer),
    params:
        fp=fp(CFG["tokenizer"]),
    log:
        P.log("train_tokenizer.log"),
    shell:
        "{KD} train_tokenizer --config {CONFIG} 2> {log}"
