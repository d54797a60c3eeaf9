rule evaluate:
    input:
        dataset="results/datasets/{family}.h5",
        model="results/train/{family}/{run}/model.pt",
    output:
        returns="results/eval/{family}/{run}.csv",
        cost="results/eval/{family}/{run}.cost.csv",
        inference="results/eval/{family}/{run}.inference.csv",
    log:
        "results/logs/evaluate/{family}/{run}.log",
    benchmark:
        "results/benchmarks/evaluate/{family}/{run}.tsv"
    conda:
        TRAIN_ENV
    threads: family_threads("evaluate")
    resources:
        mem_mb=mem_mb("evaluate", 2000),
        runtime=runtime("evaluate", 60),
        gpu=gpus("evaluate"),
    params:
        settings=settings("evaluate"),
    shell:
        "OMP_NUM_THREADS={threads} python -m adbench evaluate --settings {params.settings} --dataset {input.dataset} "
        "--model {input.model} --out {output.returns} --cost-out {output.cost} --inference-out {output.inference} 2> {log}"


rule reference:
    input:
        dataset="results/datasets/{family}.h5",
        expert=expert_input,
    output:
        returns="results/eval/{family}/reference.csv",
        inference="results/eval/{family}/reference.inference.csv",
    log:
        "results/logs/evaluate/{family}/reference.log",
    conda:
        "../../envs/sim.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("reference", 2000),
        runtime=runtime("reference", 30),
    params:
        settings=settings("tasks", "source", "evaluate"),
        expert=lambda wildcards, input: f"--expert {input.expert}" if input.expert else "",
    shell:
        "OMP_NUM_THREADS={threads} python -m adbench reference --settings {params.settings} --dataset {input.dataset} "
        "--out {output.returns} --inference-out {output.inference} {params.expert} 2> {log}"
