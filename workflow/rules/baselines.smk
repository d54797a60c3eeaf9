# One meta-training rule per online baseline of the config: `<baseline>_train` (its name keys
# resources.mem_mb / resources.runtime), writing results/train/{family}/<baseline>-seed{seed}/.
for baseline in config["baselines"]:

    rule:
        name:
            f"{baseline}_train"
        input:
            dataset="results/datasets/{family}.h5",
        output:
            model=f"results/train/{{family}}/{baseline}-seed{{seed}}/model.pt",
            metrics=f"results/train/{{family}}/{baseline}-seed{{seed}}/metrics.csv",
        log:
            f"results/logs/train/{{family}}/{baseline}-seed{{seed}}.log",
        benchmark:
            f"results/benchmarks/train/{{family}}/{baseline}-seed{{seed}}.tsv"
        priority: runtime(f"{baseline}_train", 240)
        conda:
            "../../envs/train.yaml"
        threads: family_threads(baseline)
        resources:
            mem_mb=mem_mb(f"{baseline}_train", 3000),
            runtime=runtime(f"{baseline}_train", 240),
        params:
            baseline=baseline,
            settings=settings(baseline),
            out_dir=lambda wildcards, output: Path(output.model).parent,
        shell:
            "OMP_NUM_THREADS={threads} python -m adbench baseline-train --baseline {params.baseline} "
            "--settings {params.settings} --dataset {input.dataset} --seed {wildcards.seed} "
            "--out-dir {params.out_dir} 2> {log}"
