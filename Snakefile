# kdbench: the whole benchmark as one DAG.
#   snakemake --cores all                                   # the embedded default profile
#   snakemake --cores all --configfile config/<name>.yaml   # any other profile
# Rules live in workflows/*.smk; the logic lives in the kdbench package.
from snakemake.utils import min_version

min_version("8.0")


configfile: "config/default.yaml"


include: "workflows/common.smk"
include: "workflows/data.smk"
include: "workflows/models.smk"
include: "workflows/runs.smk"
include: "workflows/report.smk"


rule all:
    default_target: True
    input:
        TABLE_FILES,
        FIGURES_DONE,
