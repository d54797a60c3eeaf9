rule expert:
    output:
        "results/experts/{family}.pt",
    log:
        "results/logs/experts/{family}.log",
    benchmark:
        "results/benchmarks/experts/{family}.tsv"
    conda:
        "../../envs/sim.yaml"
    threads: family_threads("source")
    resources:
        mem_mb=mem_mb("expert", 2000),
        runtime=runtime("expert", 120),
    params:
        settings=settings("tasks", "source"),
    shell:
        "OMP_NUM_THREADS={threads} python -m adbench expert --settings {params.settings} "
        "--family {wildcards.family} --out {output} 2> {log}"


rule histories:
    input:
        expert=expert_input,
    output:
        "results/histories/{family}/shard-{shard}.h5",
    log:
        "results/logs/histories/{family}-shard-{shard}.log",
    benchmark:
        "results/benchmarks/histories/{family}-shard-{shard}.tsv"
    conda:
        "../../envs/sim.yaml"
    threads: family_threads("source")
    resources:
        mem_mb=mem_mb("histories", 2000),
        runtime=runtime("histories", 120),
    params:
        settings=settings("tasks", "source"),
        expert=lambda wildcards, input: f"--expert {input.expert}" if input.expert else "",
    shell:
        "OMP_NUM_THREADS={threads} python -m adbench histories --settings {params.settings} "
        "--family {wildcards.family} --shard {wildcards.shard} --out {output} {params.expert} 2> {log}"
