# Data and tokenizer: built once per profile and shared by every pair and run.


def data_settings():
    # hub data: prompts are counted with the first pair's teacher tokenizer
    teacher = CFG["pairs"][PAIRS[0]]["teacher"] if CFG["data"]["source"] == "hub" else None
    return fp(CFG["data"], CFG["seed"], teacher)


rule prepare_data:
    input:
        C.local_data_files(CFG),  # an edited data file reruns prepare_data and what depends on it
    output:
        train=P.data("train"),
        validation=P.data("validation"),
        test_sets=TEST_SET_FILES,
        broad=broad_inputs(),
        report=P.data_report,
        timing=P.timing("prepare_data.tsv"),
    params:
        fp=data_settings(),
    log:
        P.log("prepare_data.log"),
    shell:
        "{KD} prepare_data {STAGE_ARGS} --timing {output.timing:q} 2> {log:q}"


rule train_tokenizer:
    input:
        P.data("train"),
    output:
        directory(P.tokenizer),
        timing=P.timing("train_tokenizer.tsv"),
    params:
        fp=fp(CFG["tokenizer"]),
    log:
        P.log("train_tokenizer.log"),
    shell:
        "{KD} train_tokenizer {STAGE_ARGS} --timing {output.timing:q} 2> {log:q}"
