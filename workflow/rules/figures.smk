rule figures:
    input:
        models=model_tables(),
        references=reference_tables(),
    output:
        figure=report(
            "results/figures/in_context_return.png",
            caption="../report/in_context_return.rst",
            category="In-context RL",
        ),
        summary_csv=report(
            "results/tables/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        summary_md="results/tables/summary.md",
    log:
        "results/logs/figures.log",
    params:
        settings=settings("dataset"),
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    shell:
        "python -m adbench figures --settings {params.settings} --models {input.models} --references {input.references} "
        "--figure {output.figure} --summary-csv {output.summary_csv} --summary-md {output.summary_md} > {log} 2>&1"
