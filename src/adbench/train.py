"""One AD training run: a history dataset and a model config -> checkpoint and metrics.

AdamW with linear warmup and cosine decay (to 10%), gradient clipping, periodic checkpoints that
hold everything needed for an exact resume (weights, optimizer, step, sampler and torch RNG
states, metrics so far), so an interrupted CPU run finishes with the same weights as an
uninterrupted one.
"""

import math
import resource
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import config as cfglib
from . import process
from .atomic import atomic_path, write_csv
from .data import WindowSampler, input_statistics, validate_file
from .devices import pick_device
from .models import build, count_parameters, save_checkpoint
from .progress import say
from .provenance import git_revision
from .resume import load_progress, save_progress
from .seeding import derive_seed

SECTIONS = ["dataset", "model", "train"]
METRICS = [
    "family",
    "arch",
    "context_episodes",
    "seed",
    "step",
    "loss",
    "lr",
    "tokens_per_s",
    "seconds_per_step",
    "peak_mem_mib",
    "val_loss",
    "val_reward_reliance",
]
HELDOUT_WINDOWS = 64  # validation windows the held-out loss is measured on, the same ones every time


def lr_at(step: int, cfg: dict) -> float:
    warm = cfg["warmup_steps"]
    if step < warm:
        return cfg["learning_rate"] * (step + 1) / warm
    progress = (step - warm) / max(1, cfg["steps"] - warm)
    return cfg["learning_rate"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def mixed_precision(device: torch.device):
    """bfloat16 autocast on CUDA; full precision elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(model, optimizer, batch: dict, grad_clip: float) -> tuple:
    """One optimiser step on a batch of windows on the model's device (bfloat16 autocast on CUDA):
    (loss, tokens)."""
    with mixed_precision(batch["action"].device):
        loss = model.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss, batch["action"].shape[0] * batch["action"].shape[1]


def heldout_windows(cfg: dict, dataset, info: dict, context_episodes: int, seed: int) -> list:
    """HELDOUT_WINDOWS windows of the validation tasks, with the training target, in batches of the
    training's size, each beside the same windows with another task's rewards where the target is
    counterfactual (else None); [] where the dataset has no validation tasks. Drawn once from their own
    seed, so that the training's random streams do not change. `info`: the dataset's `validate_file`."""
    tcfg = cfg["train"]
    if not info["n_val"]:
        return []
    sampler = WindowSampler(
        dataset, context_episodes, cfg["dataset"]["episode_stride"], tcfg["batch_size"], seed, tcfg["target"], "val"
    )
    paired = tcfg["target"] == "counterfactual"
    return [
        sampler.sample_with_other_rewards() if paired else (sampler.sample(), None)
        for _ in range(math.ceil(HELDOUT_WINDOWS / tcfg["batch_size"]))
    ]


def heldout_losses(model, windows: list, device) -> tuple[float, float]:
    """(val_loss, val_reward_reliance): the training loss on the held-out windows, whose gap to the
    training loss is what the model learnt of its training tasks that does not carry over to new ones;
    and how much that loss rises when the windows carry another task's rewards, which is how much the
    model reads the task it must act for from the rewards (NaN where not measured)."""

    def loss(batch):
        with torch.no_grad(), mixed_precision(device):
            return model.loss({k: v.to(device) for k, v in batch.items()}).item()

    if not windows:
        return math.nan, math.nan
    own = sum(loss(batch) for batch, _ in windows) / len(windows)
    if windows[0][1] is None:
        return own, math.nan
    return own, sum(loss(other) for _, other in windows) / len(windows) - own


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def setup(cfg: dict, dataset, info: dict, arch: str, context_episodes: int, init_seed: int, sampler_seed: int, device):
    """What a training step needs, as training builds it: the window sampler, the model (seeded by
    `init_seed`, with the dataset's input statistics, on `device`) and AdamW with weight decay on the
    weight matrices only (not norms, biases or Mamba's A_log). The cost probe builds the same."""
    tcfg = cfg["train"]
    torch.manual_seed(init_seed)
    sampler = WindowSampler(
        dataset, context_episodes, cfg["dataset"]["episode_stride"], tcfg["batch_size"], sampler_seed, tcfg["target"]
    )
    model = build(arch, info["obs_dim"], info["act_dim"], **{**cfg["model"], "window": sampler.tokens_per_window})
    model.set_input_statistics(input_statistics(dataset))
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "A_log" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "A_log" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tcfg["learning_rate"],
    )
    return sampler, model, optimizer


def run(
    cfg: dict,
    dataset,
    arch: str,
    context_episodes: int,
    seed: int,
    out_dir,
    progress=None,
    stop_after: int | None = None,
) -> Path:
    """Train; write out_dir/model.pt and out_dir/metrics.csv. `stop_after` simulates an interruption."""
    tcfg, out_dir = cfg["train"], Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = validate_file(dataset)
    process.setup(tcfg["threads"])
    device = pick_device(tcfg["device"])
    run_key = (info["family"], arch, context_episodes, seed)
    sampler, model, optimizer = setup(
        cfg,
        dataset,
        info,
        arch,
        context_episodes,
        derive_seed(seed, "train-init", *run_key),
        derive_seed(seed, "train-sampler", *run_key),
        device,
    )
    window = sampler.tokens_per_window
    heldout = heldout_windows(cfg, dataset, info, context_episodes, derive_seed(seed, "heldout-windows", *run_key))
    settings_digest = cfglib.digest({"cfg": {s: cfg[s] for s in SECTIONS}, "run": list(run_key)})
    ckpt_path, step, rows = out_dir / "checkpoint.pt", 0, []
    saved = load_progress(ckpt_path, settings_digest, progress)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.rng.bit_generator.state = saved["sampler_rng"]
        torch.set_rng_state(saved["torch_rng"])
        step, rows = saved["step"], saved["metrics"]
        say(f"resuming from {ckpt_path} at step {step}", progress)
    say(
        f"{arch}: {count_parameters(model)} parameters, context {context_episodes} episodes = {window} tokens, "
        f"device {device}",
        progress,
    )
    bar = tqdm(
        total=tcfg["steps"],
        initial=step,
        desc=f"train {arch} ctx{context_episodes}",
        file=progress,
        mininterval=10,
        disable=not progress,
    )
    tokens, steps, t0 = 0, 0, time.perf_counter()
    while step < tcfg["steps"]:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, tcfg)
        batch = {k: v.to(device) for k, v in sampler.sample().items()}
        loss, batch_tokens = train_step(model, optimizer, batch, tcfg["grad_clip"])
        step += 1
        tokens, steps = tokens + batch_tokens, steps + 1
        bar.update(1)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}; lower train.learning_rate")
        if step % tcfg["log_every"] == 0 or step == tcfg["steps"]:
            elapsed = time.perf_counter() - t0
            measured = step % tcfg["heldout_every"] == 0 or step == tcfg["steps"]
            val_loss, reliance = heldout_losses(model, heldout if measured else [], device)
            rows.append(
                {
                    "family": info["family"],
                    "arch": arch,
                    "context_episodes": context_episodes,
                    "seed": seed,
                    "step": step,
                    "loss": loss.item(),
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens_per_s": tokens / elapsed,
                    "seconds_per_step": elapsed / steps,
                    "peak_mem_mib": peak_memory_mib(device),
                    "val_loss": val_loss,
                    "val_reward_reliance": reliance,
                }
            )
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            tokens, steps, t0 = 0, 0, time.perf_counter()
        if step % tcfg["checkpoint_every"] == 0 and step < tcfg["steps"]:
            save_progress(
                ckpt_path,
                settings_digest,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "sampler_rng": sampler.rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "metrics": rows,
                },
            )
        if stop_after is not None and step >= stop_after:
            raise KeyboardInterrupt(f"stopped after step {step} (stop_after)")
    bar.close()
    model.cpu()
    meta = {
        "family": info["family"],
        "context_episodes": context_episodes,
        "seed": seed,
        "horizon": sampler.horizon,
        "episode_stride": sampler.stride,
        "parameters": count_parameters(model),
        "steps": tcfg["steps"],
        "commit": git_revision(),
    }
    final = out_dir / "model.pt"
    with atomic_path(final) as tmp:
        save_checkpoint(tmp, model, arch, {**cfg["model"], "window": window}, {"meta": meta})
    write_csv(out_dir / "metrics.csv", rows, METRICS)
    ckpt_path.unlink(missing_ok=True)
    return final
