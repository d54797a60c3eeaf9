# The one place that knows the config: validation, per-rule settings, target lists, wildcards.
import json
import shlex
import sys
from pathlib import Path

SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))  # the rules run this checkout's adbench, installed or not

from adbench import config as adbench_config  # noqa: E402
from adbench import resources as adbench_resources  # noqa: E402

try:
    config.update(adbench_config.coerce_numbers(config))  # --config list items arrive as strings
    adbench_config.validate(config)
    # a fixed memory request below what a training job needs stops here, before any submission
    adbench_resources.check_train_requests(
        config,
        [
            (f, a, c)
            for f in config["families"]
            for a in config["architectures"]
            for c in adbench_config.trained_contexts(config, a)
        ],
    )
except adbench_config.ConfigError as error:
    sys.exit(f"adbench: invalid config: {error}")
except adbench_resources.ResourceError as error:
    sys.exit(f"adbench: resource request too small: {error}")

# Training and evaluation on CUDA run in the env that pins a CUDA torch and mamba-ssm.
TRAIN_ENV = (
    "../../envs/train-cuda.yaml"
    if "cuda" in (config["train"]["device"], config["evaluate"]["device"])
    else "../../envs/train.yaml"
)

# Rules call the package through its CLI (`python -m adbench`) with this checkout's src/ first on the
# path, in whichever environment runs them (the project venv or an envs/ conda env). Snakemake formats
# the prefix as it formats shell commands: the quadrupled braces reach bash as ${PYTHONPATH:+...}.
shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(str(SRC))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


# the families run, and those whose experts they steer (AntGoal's histories use AntDir's expert)
EXPERT_FAMILIES = sorted(
    {adbench_config.expert_family(adbench_config.for_family(config, f), f) for f in config["families"]} - {None}
)


wildcard_constraints:
    family="|".join(sorted(set(config["families"]) | set(EXPERT_FAMILIES))),
    arch="|".join(config["architectures"]),
    run=r"[a-z0-9]+(-ctx\d+)?-seed\d+",
    ctx=r"\d+",
    seed=r"\d+",
    shard=r"\d+",


def settings(*sections):
    """A params function: the config sections a rule depends on, for the job's family (with its
    overrides), as a shell-quoted JSON argument. Also the rule's rerun trigger."""

    def for_job(wildcards):
        cfg = adbench_config.for_family(config, wildcards.family) if "family" in wildcards.keys() else config
        return shlex.quote(json.dumps({s: cfg[s] for s in sections}, sort_keys=True))

    return for_job


def family_threads(section):
    """A threads function: `<section>.threads` for the job's family, with its overrides (so that a
    family given more cores for its stage is scheduled with them)."""

    def for_job(wildcards):
        return adbench_config.for_family(config, wildcards.family)[section]["threads"]

    return for_job


def num_shards(family):
    return len(adbench_config.shard_sizes(adbench_config.for_family(config, family)))


def expert_input(wildcards):
    """The trained expert a family's histories are rolled out by (its own, or the one it steers), if any."""
    owner = adbench_config.expert_family(adbench_config.for_family(config, wildcards.family), wildcards.family)
    return f"results/experts/{owner}.pt" if owner else []


def shard_paths(wildcards):
    return expand(
        "results/histories/{family}/shard-{shard}.h5",
        family=wildcards.family,
        shard=range(num_shards(wildcards.family)),
    )


def ad_runs():
    """{family}/{arch}-ctx{ctx}-seed{seed} of every AD training run (each arch up to its max_context)."""
    return [
        f"{family}/{arch}-ctx{ctx}-seed{seed}"
        for family in config["families"]
        for arch in config["architectures"]
        for ctx in adbench_config.trained_contexts(config, arch)
        for seed in adbench_config.training_seeds(config, arch)
    ]


def cost_probes():
    """The cost measurements of the contexts an architecture is not trained at (beyond max_context)."""
    return [
        f"results/costs/{family}/{arch}-ctx{ctx}.csv"
        for family in config["families"]
        for arch in config["architectures"]
        for ctx in adbench_config.probed_contexts(config, arch)
    ]


def model_runs():
    """Every trained model: the AD runs, then each baseline's {family}/{baseline}-seed{seed}."""
    return ad_runs() + [
        f"{family}/{baseline}-seed{seed}"
        for family in config["families"]
        for baseline in config["baselines"]
        for seed in adbench_config.training_seeds(config, baseline)
    ]


def model_tables():
    return [f"results/eval/{run}.csv" for run in model_runs()]


def inference_costs():
    return [f"results/eval/{run}.cost.csv" for run in model_runs()]


def train_metrics():
    """AD training metrics (the cost figure's)."""
    return [f"results/train/{run}/metrics.csv" for run in ad_runs()]


def baseline_metrics():
    """The baselines' training curves (the convergence figure's)."""
    return [f"results/train/{run}/metrics.csv" for run in model_runs() if run not in ad_runs()]


def task_inference_tables():
    """The task-inference diagnostic of every model and of the references (random, source)."""
    return [f"results/eval/{run}.inference.csv" for run in model_runs()] + expand(
        "results/eval/{family}/reference.inference.csv", family=config["families"]
    )


def reference_tables():
    return expand("results/eval/{family}/reference.csv", family=config["families"])


def mem_mb(rule, estimate):
    """A rule's memory request: resources.mem_mb.<rule> if the config fixes it, else `estimate`."""
    return adbench_resources.requested(config, rule, "mem_mb", estimate)


def runtime(rule, estimate):
    """A rule's wall-time request in minutes: resources.runtime.<rule>, else `estimate`."""
    return adbench_resources.requested(config, rule, "runtime", estimate)


def train_mem_mb(wildcards):
    """Training memory grows with the context (tokens per window): estimated per job."""
    return mem_mb("train", adbench_resources.train_mem_mb(config, wildcards.family, wildcards.arch, int(wildcards.ctx)))


def train_runtime(wildcards):
    """Training's wall-time request, estimated per job; also its priority: when fewer cores than ready jobs,
    the longest start first, so the run ends sooner (its makespan is not left to one long job at the end)."""
    return runtime(
        "train", adbench_resources.train_runtime_min(config, wildcards.family, wildcards.arch, int(wildcards.ctx))
    )


def gpus(section):
    """`gpu: 1` for the SLURM executor where the config asks for CUDA."""
    return adbench_resources.gpus(config, section)
