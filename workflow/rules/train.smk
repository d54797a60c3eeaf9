rule train:
    input:
        dataset="results/datasets/{family}.h5",
    output:
        model="results/train/{family}/{arch}-ctx{ctx}-seed{seed}/model.pt",
        metrics="results/train/{family}/{arch}-ctx{ctx}-seed{seed}/metrics.csv",
    log:
        "results/logs/train/{family}/{arch}-ctx{ctx}-seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{family}/{arch}-ctx{ctx}-seed{seed}.tsv"
    priority: train_runtime
    conda:
        TRAIN_ENV
    threads: family_threads("train")
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        gpu=gpus("train"),
    params:
        settings=settings("dataset", "model", "train"),
        out_dir=lambda wildcards, output: Path(output.model).parent,
    shell:
        "OMP_NUM_THREADS={threads} python -m adbench train --settings {params.settings} --dataset {input.dataset} "
        "--arch {wildcards.arch} --ctx {wildcards.ctx} --seed {wildcards.seed} --out-dir {params.out_dir} 2> {log}"


rule cost_probe:
    """The training and inference cost of a context an architecture is not trained at (max_context)."""
    input:
        dataset="results/datasets/{family}.h5",
    output:
        "results/costs/{family}/{arch}-ctx{ctx}.csv",
    log:
        "results/logs/costs/{family}/{arch}-ctx{ctx}.log",
    conda:
        TRAIN_ENV
    threads: family_threads("train")
    resources:
        mem_mb=train_mem_mb,
        runtime=30,
        gpu=gpus("train"),
    params:
        settings=settings("dataset", "model", "train", "evaluate", "tasks"),
    shell:
        "OMP_NUM_THREADS={threads} python -m adbench cost-probe --settings {params.settings} --dataset {input.dataset} "
        "--arch {wildcards.arch} --ctx {wildcards.ctx} --out {output} 2> {log}"
