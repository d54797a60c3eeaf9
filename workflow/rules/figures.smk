# Every figure is written as PNG and as PDF (figures._save)
FIGURES = [
    "in_context_return",
    "context_scaling",
    "cost",
    "task_inference",
    "source_learning_curves",
    "aggregate_scores",
    "probability_of_improvement",
    "claims",
    "baseline_convergence",
]


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
        in_context=report(
            "results/figures/in_context_return.png",
            caption="../report/in_context_return.rst",
            category="In-context RL",
        ),
        scaling=report(
            "results/figures/context_scaling.png",
            caption="../report/context_scaling.rst",
            category="In-context RL",
        ),
        cost=report(
            "results/figures/cost.png",
            caption="../report/cost.rst",
            category="Cost",
        ),
        task_inference=report(
            "results/figures/task_inference.png",
            caption="../report/task_inference.rst",
            category="In-context RL",
        ),
        aggregates=report(
            "results/figures/aggregate_scores.png",
            caption="../report/aggregate_scores.rst",
            category="Statistics",
        ),
        improvement=report(
            "results/figures/probability_of_improvement.png",
            caption="../report/probability_of_improvement.rst",
            category="Statistics",
        ),
        claims_figure=report(
            "results/figures/claims.png",
            caption="../report/claims.rst",
            category="Claims",
        ),
        pdfs=expand("results/figures/{name}.pdf", name=FIGURES),
        claims=report(
            "results/tables/claims.csv",
            caption="../report/claims_table.rst",
            category="Claims",
        ),
        claims_md="results/tables/claims.md",
        convergence_figure=report(
            "results/figures/baseline_convergence.png",
            caption="../report/baseline_convergence.rst",
            category="Claims",
        ),
        convergence="results/tables/baseline_convergence.csv",
        convergence_md="results/tables/baseline_convergence.md",
        comparison=report(
            "results/tables/comparison.csv",
            caption="../report/comparison.rst",
            category="Tables",
        ),
        comparison_md="results/tables/comparison.md",
        task_inference_table="results/tables/task_inference.csv",
        task_inference_md="results/tables/task_inference.md",
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
        context_scaling=report(
            "results/tables/context_scaling.csv",
            caption="../report/context_scaling_table.rst",
            category="Tables",
        ),
        context_scaling_md="results/tables/context_scaling.md",
        source_improvement=report(
            "results/tables/source_improvement.csv",
            caption="../report/source_improvement.rst",
            category="Tables",
        ),
        source_improvement_md="results/tables/source_improvement.md",
    log:
        "results/logs/figures.log",
    conda:
        "../../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("figures", 2000),
        runtime=runtime("figures", 15),
    params:
        strides=episode_strides(),
    shell:
        "python -m adbench figures --episode-strides {params.strides} --models {input.models} "
        "--references {input.references} --train-metrics {input.train_metrics} "
        "--inference-costs {input.inference_costs} --task-inference {input.task_inference} "
        "--cost-probes {input.cost_probes} --baseline-metrics {input.baseline_metrics} --out-dir results > {log} 2>&1"
