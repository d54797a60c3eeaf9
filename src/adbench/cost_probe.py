"""The cost of an AD model at a context it is not trained at (`max_context`): measured, not assumed.

In a process of its own (so that its peak memory is the model's): the model built at that context's
window, a few of training's own steps on real windows of the dataset (seconds per step after one warm-up
step, tokens per second, training's peak memory), and batched inference steps with the recurrent state or
the cache filled to the whole context (milliseconds per step over the last steps, and the MiB that state
holds). The cost figure draws these beside the trained models' costs, marked as probes.
"""

import time

import numpy as np
import torch

from . import process
from .atomic import write_csv
from .data import validate_file
from .devices import pick_device
from .models import state_mib
from .progress import say
from .seeding import derive_seed
from .train import peak_memory_mib, setup, train_step

SECTIONS = ["dataset", "model", "train", "evaluate", "tasks"]
COLUMNS = [
    "family",
    "arch",
    "context_episodes",
    "batch",
    "train_seconds_per_step",
    "tokens_per_s",
    "peak_mem_mib",
    "inference_batch",
    "ms_per_step",
    "state_mib",
]
TIMED_STEPS = 3
TIMED_INFERENCE = 200


def probe(cfg: dict, dataset, arch: str, context_episodes: int, out, progress=None) -> dict:
    tcfg = cfg["train"]
    info = validate_file(dataset)
    process.setup(tcfg["threads"])
    device = pick_device(tcfg["device"])
    key = (info["family"], arch, context_episodes)
    sampler, model, optimizer = setup(
        cfg,
        dataset,
        info,
        arch,
        context_episodes,
        derive_seed(0, "cost-probe", *key),
        derive_seed(0, "cost-probe-sampler", *key),
        device,
    )
    window = sampler.tokens_per_window
    seconds = []
    # sampled beforehand: a training run's sampler reads from a warm chunk cache, a probe's would not
    batches = [{k: v.to(device) for k, v in sampler.sample().items()} for _ in range(TIMED_STEPS + 1)]
    for i, batch in enumerate(batches):  # the first step warms up (allocations, kernel builds)
        t0 = time.perf_counter()
        train_step(model, optimizer, batch, tcfg["grad_clip"])  # what a training step computes
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            seconds.append(time.perf_counter() - t0)
        say(
            f"{arch} ctx {context_episodes} ({window} tokens): training step {i} {time.perf_counter() - t0:.2f} s",
            progress,
        )
    per_step = float(np.median(seconds))
    peak_mib = peak_memory_mib(device)  # training's peak, before inference fills its cache
    ecfg = cfg["evaluate"]
    held_out = info["n_val" if ecfg["split"] == "val" else "n_test"]
    inference_batch = (1 + len(ecfg["controls"])) * held_out * len(ecfg["seeds"])  # as evaluate batches the controls
    ms, state = _full_context_inference(model, info, window, inference_batch, device)
    row = {
        "family": info["family"],
        "arch": arch,
        "context_episodes": context_episodes,
        "batch": tcfg["batch_size"],
        "train_seconds_per_step": per_step,
        "tokens_per_s": tcfg["batch_size"] * window / per_step,
        "peak_mem_mib": peak_mib,
        "inference_batch": inference_batch,
        "ms_per_step": ms,
        "state_mib": state_mib(state),
    }
    write_csv(out, [row], COLUMNS)
    say(f"{arch} ctx {context_episodes}: {per_step:.2f} s per training step, {ms:.2f} ms per inference step", progress)
    return row


@torch.no_grad()
def _full_context_inference(model, info: dict, window: int, batch: int, device):
    """Milliseconds per batched recurrent step once the state (or the cache) holds a whole context, and
    that state."""
    model.eval()
    state = model.init_state(batch, device)
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(batch, info["obs_dim"], generator=g), torch.zeros(batch, info["act_dim"])
    reward, start = torch.zeros(batch), torch.zeros(batch)
    obs, act, reward, start = (x.to(device) for x in (obs, act, reward, start))
    timed = min(TIMED_INFERENCE, window)
    for t in range(window):
        if t == window - timed:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        *_, state = model.step(obs, act, reward, start, state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - t0) / timed, state
