rule rl2_train:
    input:
        dataset="results/datasets/{family}.h5",
    output:
        model="results/train/{family}/rl2-seed{seed}/model.pt",
        metrics="results/train/{family}/rl2-seed{seed}/metrics.csv",
    log:
        "results/logs/train/{family}/rl2-seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{family}/rl2-seed{seed}.tsv"
    priority: runtime("rl2_train", 240)
    conda:
        "../../envs/train.yaml"
    threads: family_threads("rl2")
    resources:
        mem_mb=mem_mb("rl2_train", 3000),
        runtime=runtime("rl2_train", 240),
    params:
        settings=settings("rl2"),
        out_dir=lambda wildcards, output: Path(output.model).parent,
    shell:
        "OMP_NUM_THREADS={threads} python -m adbench rl2-train --settings {params.settings} --dataset {input.dataset} "
        "--seed {wildcards.seed} --out-dir {params.out_dir} 2> {log}"
