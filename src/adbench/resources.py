"""What each job asks a scheduler for: memory, runtime and GPUs, estimated from the config and the
job's wildcards (the context length drives a training job's memory and time), or fixed by the user
in `resources` and then checked against the estimate before anything is submitted.

The estimates are deliberately generous upper bounds fitted to measured peaks (benchmarks/backbones.py
on CPU): a job that asks for too little is killed by the scheduler hours in; one that asks for twice
what it needs only waits a little longer in the queue.
"""

import math

from . import config as cfglib

# Bytes of activations per (sequence, token, d_model, layer) in training, fp32, with some margin over
# what benchmarks/backbones.py measured at d_model 128, 4 layers, batch 8, layers checkpointed:
# Mamba ~17 per unit of `expand` (34 at expand 2), transformer ~18. Training without checkpointing
# keeps more; SAFETY covers it at the default sizes.
ACTIVATION_BYTES = {"mamba": 24.0, "transformer": 20.0}  # mamba: per unit of `expand`
BASE_MB = 1500  # interpreter, torch, MuJoCo, the HDF5 reader
SAFETY = 2.0


class ResourceError(ValueError):
    """A fixed resource request that cannot be right for a job."""


def window_tokens(cfg: dict, family: str, ctx: int) -> int:
    return cfglib.window_tokens(ctx, cfglib.horizon(cfg, family))


def train_mem_mb(cfg: dict, family: str, arch: str, ctx: int) -> int:
    """Estimated peak memory (MB) of one AD training job, host or GPU, whichever holds the activations."""
    fam = cfglib.for_family(cfg, family)
    m, t = fam["model"], fam["train"]
    per = ACTIVATION_BYTES[arch] * (m["expand"] if arch == "mamba" else 1)
    activations = t["batch_size"] * window_tokens(fam, family, ctx) * m["d_model"] * m["n_layers"] * per
    return _round_up(BASE_MB + SAFETY * activations / 1e6)


def train_runtime_min(cfg: dict, family: str, arch: str, ctx: int) -> int:
    """Estimated wall time (minutes) of one AD training job from the assumed training throughput."""
    fam = cfglib.for_family(cfg, family)
    t = fam["train"]
    tokens = t["steps"] * t["batch_size"] * window_tokens(fam, family, ctx)
    rate = cfg["resources"]["train_tokens_per_s"]["cuda" if t["device"] == "cuda" else "cpu"]
    return max(10, math.ceil(SAFETY * tokens / rate / 60))


def gpus(cfg: dict, section: str) -> int:
    """1 for a stage whose config asks for CUDA, else 0 (`auto` runs where it lands and asks for none)."""
    return 1 if cfg[section].get("device") == "cuda" else 0


def requested(cfg: dict, rule: str, key: str, estimate: int) -> int:
    """The user's fixed request (resources.<key>.<rule>) if set, else the estimate."""
    return int(cfg["resources"][key].get(rule, estimate))


def check_train_requests(cfg: dict, runs: list) -> None:
    """Raise ResourceError (one line) if a fixed memory request is below a training job's estimate.

    `runs`: (family, arch, ctx) of every training job the workflow will run."""
    fixed = cfg["resources"]["mem_mb"].get("train")
    if fixed is None:
        return
    for family, arch, ctx in runs:
        need = train_mem_mb(cfg, family, arch, ctx)
        if fixed < need:
            raise ResourceError(
                f"resources.mem_mb.train = {fixed} MB is below the ~{need} MB that train {family} {arch} "
                f"ctx {ctx} ({window_tokens(cfg, family, ctx)} tokens x batch "
                f"{cfglib.for_family(cfg, family)['train']['batch_size']}) needs; raise it, or remove it "
                f"to request each job's own estimate"
            )


def _round_up(mb: float, step: int = 500) -> int:
    return int(math.ceil(mb / step) * step)
