rule dataset:
    input:
        shards=shard_paths,
    output:
        "results/datasets/{family}.h5",
    log:
        "results/logs/datasets/{family}.log",
    params:
        settings=settings("tasks", "source"),
    conda:
        "../../envs/sim.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("dataset", 2000),
        runtime=runtime("dataset", 30),
    shell:
        "python -m adbench dataset --settings {params.settings} --family {wildcards.family} "
        "--out {output} {input.shards} > {log} 2>&1"
