rule histories:
    output:
        "results/histories/{family}/shard-{shard}.h5",
    log:
        "results/logs/histories/{family}-shard-{shard}.log",
    benchmark:
        "results/benchmarks/histories/{family}-shard-{shard}.tsv"
    params:
        settings=settings("tasks", "source"),
    conda:
        "../../envs/sim.yaml"
    threads: config["source"]["threads"]
    resources:
        mem_mb=mem_mb("histories", 2000),
        runtime=runtime("histories", 120),
    shell:
        "OMP_NUM_THREADS={threads} python -m adbench histories --settings {params.settings} "
        "--family {wildcards.family} --shard {wildcards.shard} --out {output} 2> {log}"
