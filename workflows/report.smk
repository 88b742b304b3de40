# The profile's tables and figures (committed for the default profile).

TABLES = P.tables
LONG_TABLES = [f"{TABLES}/{n}" for n in ("runs.csv", "examples.csv.gz", "trace.csv.gz", "epochs.csv",
                                         "bin_loss.csv", "ablations.csv")]
# one set of tables per pair, suffixed _<pair> when the profile has several (kdbench.tables.build_all)
_SUFFIXES = [""] if len(PAIRS) == 1 else [f"_{p}" for p in PAIRS]
TABLE_FILES = [f"{TABLES}/{stem}{sfx}.{ext}"
               for stem in ("main", "runtime") + (("ablation",) if CFG["ablations"]["method"] else ())
               for sfx in _SUFFIXES for ext in ("md", "csv", "tex")]
FIGURES_DONE = f"{P.figures}/.done"


report: "report/workflow.rst"


def _in_report(path):
    """A table file flagged for `snakemake --report`: the .md (shown in its caption) and the
    numeric .csv of each table, under "Tables"; the .tex stays out."""
    stem, ext = path.rsplit("/", 1)[-1].split(".", 1)
    kind = next((k for k in ("main", "ablation", "runtime") if stem.startswith(k)), None)
    if ext == "tex" or kind is None:
        return path
    return report(path, caption=f"report/{kind}_table.rst", category="Tables",
                  labels={"table": stem, "format": ext})


rule collect:
    input:
        [P.run_file("metrics.json", pair=p, method=m, variant=v, seed=s) for p, m, v, s in run_dirs()],
    output:
        LONG_TABLES,
    log:
        P.log("collect.log"),
    shell:
        "{KD} collect --config {CONFIG} 2> {log}"


rule tables:
    input:
        LONG_TABLES,
    output:
        [_in_report(f) for f in TABLE_FILES],
    log:
        P.log("tables.log"),
    shell:
        "{KD} tables --config {CONFIG} 2> {log}"


rule figures:
    input:
        LONG_TABLES,
    output:
        # build_all skips a figure whose inputs are absent (e.g. cpd_schedule without cpd), so the
        # rule declares the folder, not the PNGs; the report takes whatever PNGs are in it.
        report(directory(P.figures), patterns=["{name}.png"], caption="report/figures.rst",
               category="Figures", labels={"figure": "{name}"}),
        touch(FIGURES_DONE),
    log:
        P.log("figures.log"),
    shell:
        "{KD} figures --config {CONFIG} 2> {log}"
