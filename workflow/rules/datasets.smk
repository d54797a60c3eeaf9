rule dataset:
    input:
        shards=shard_paths,
    output:
        "results/datasets/{family}.h5",
    log:
        "results/logs/datasets/{family}.log",
    conda:
        "../../envs/sim.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("dataset", 2000),
        runtime=runtime("dataset", 30),
    params:
        settings=settings("tasks", "source"),
    shell:
        "python -m adbench dataset --settings {params.settings} --family {wildcards.family} "
        "--out {output} {input.shards} > {log} 2>&1"


rule minari:
    """Every family's history file as a Minari dataset, adbench/<family>/histories-v0 under results/minari
    (a target of its own: snakemake --cores 2 minari)."""
    input:
        expand("results/datasets/{family}.h5", family=config["families"]),
    output:
        directory("results/minari"),
    log:
        "results/logs/minari.log",
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("minari", 4000),
        runtime=runtime("minari", 30),
    params:
        families=config["families"],
    shell:
        "for family in {params.families}; do python -m adbench export-minari results/datasets/$family.h5 "
        "--name adbench/$family/histories-v0 --root {output}; done > {log} 2>&1"
