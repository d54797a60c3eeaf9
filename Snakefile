# adbench: learning histories -> HDF5 datasets -> AD training -> in-context evaluation -> figures.
# Run `snakemake --cores N`; override the experiment with `--configfile workflow/configs/smoke.yaml`.
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# The default experiment sits beside this file, wherever the working directory (--directory) is.
configfile: Path(workflow.basedir) / "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/histories.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        # every figure and table (listed once, as the figures rule's outputs), and the datasets, which
        # users share and which, when deleted, are rebuilt
        rules.figures.output,
        expand("results/datasets/{family}.h5", family=config["families"]),
