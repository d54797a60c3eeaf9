rule figures:
    input:
        models=model_tables(),
        references=reference_tables(),
    output:
        in_context=report(
            "results/figures/in_context_return.png",
            caption="../report/in_context_return.rst",
            category="In-context RL",
        ),
        source_curves=report(
            "results/figures/source_learning_curves.png",
            caption="../report/source_learning_curves.rst",
            category="Learning histories",
        ),
        summary=report(
            "results/tables/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        summary_md="results/tables/summary.md",
        source_improvement=report(
            "results/tables/source_improvement.csv",
            caption="../report/source_improvement.rst",
            category="Tables",
        ),
        source_improvement_md="results/tables/source_improvement.md",
    log:
        "results/logs/figures.log",
    params:
        strides=episode_strides(),
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    shell:
        "python -m adbench figures --episode-strides {params.strides} --models {input.models} "
        "--references {input.references} --out-dir results > {log} 2>&1"
