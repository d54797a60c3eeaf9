# Every figure (PNG and PDF) and table (CSV and markdown) the figures stage writes, as listed once in
# adbench.outputs, with its report caption (workflow/report/<name>.rst, <name>_table.rst for a table)
from adbench import outputs as adbench_outputs


def stage_outputs():
    out = {}
    for name, category in adbench_outputs.FIGURES.items():
        png = str(adbench_outputs.figure("results", name))
        out[f"{name}_figure"] = report(png, caption=f"../report/{name}.rst", category=category)
        out[f"{name}_pdf"] = png.removesuffix(".png") + ".pdf"
    for name, category in adbench_outputs.TABLES.items():
        csv, md = (str(p) for p in adbench_outputs.table("results", name))
        out[f"{name}_table"] = report(csv, caption=f"../report/{name}_table.rst", category=category)
        out[f"{name}_md"] = md
    return out


rule figures:
    input:
        models=model_tables(),
        references=reference_tables(),
        train_metrics=train_metrics(),
        baseline_metrics=baseline_metrics(),
        inference_costs=inference_costs(),
        task_inference=task_inference_tables(),
        cost_probes=cost_probes(),
    output:
        **stage_outputs(),
    log:
        "results/logs/figures.log",
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("figures", 2000),
        runtime=runtime("figures", 15),
    shell:
        "python -m adbench figures --models {input.models} "
        "--references {input.references} --train-metrics {input.train_metrics} "
        "--inference-costs {input.inference_costs} --task-inference {input.task_inference} "
        "--cost-probes {input.cost_probes} --baseline-metrics {input.baseline_metrics} --out-dir results > {log} 2>&1"
