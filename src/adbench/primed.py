"""The imitation ceiling of a trained AD model: what it does when its context already holds the solution.

The model's context is first filled, token by token, with the last window of a held-out task's own
learning history (its last `context_episodes` episodes at the training stride, where the source has
solved the task), then the model acts on that task for a few episodes. `primed_own` rows: that task's
own history; `primed_other_task` rows: the next held-out task's (cyclically), so that one sees how far
the model follows its context rather than the rewards. A model that returns the source's final
return when primed with its own task, but not from an empty context, imitates the solution and falls
short in the in-context search that should reach it.
"""

import numpy as np
import torch

from . import process
from .data import open_histories, validate_file
from .data.sampler import ARRAYS, make_tokens, read_window, window_span
from .devices import pick_device
from .evaluate import ModelPolicy, check_dims, evaluated_tasks, load_policy, rollout, tidy, write_rows
from .progress import say

SECTIONS = ["evaluate"]
PRIMINGS = {"primed_own": 0, "primed_other_task": 1}  # control -> shift of the task whose history primes


def last_windows(dataset, task_ids: list, context_episodes: int, stride: int) -> dict:
    """{array: (tasks, context_episodes x horizon, ...)}: the last training window of each task's first
    history, the one that ends at its last episode."""
    with open_histories(dataset) as f:
        episodes, horizon = int(f.attrs["episodes"]), int(f.attrs["horizon"])
        span = window_span(context_episodes, stride)
        if span > episodes:
            raise ValueError(
                f"a context of {context_episodes} episodes at stride {stride} spans {span} episodes; "
                f"{dataset} has {episodes}; prime the model with the dataset it was trained on"
            )
        windows = [
            read_window(
                {name: f["tasks"][tid][name] for name in ARRAYS}, 0, episodes - span, context_episodes, stride, horizon
            )
            for tid in task_ids
        ]
    return {name: np.stack([w[name] for w in windows]) for name in ARRAYS}


@torch.no_grad()
def prime(policy: ModelPolicy, windows: dict, horizon: int) -> None:
    """Step the policy's model through the windows' AD tokens (batch = windows), keeping only its state."""
    tokens = make_tokens(windows["observations"], windows["actions"], windows["rewards"], horizon)
    model, device = policy.model, policy.device
    for t in range(tokens["obs"].shape[1]):
        inputs = [tokens[k][:, t].to(device) for k in ("obs", "prev_action", "prev_reward", "episode_start")]
        *_, policy.state = model.step(*inputs, policy.state)


def evaluate_primed(cfg: dict, dataset, model_path, out_path, episodes: int = 4, progress=None) -> None:
    """Returns of `episodes` episodes after each priming, for every (eval seed, held-out task), to `out_path`
    (the evaluation's tidy columns; `control` names the priming)."""
    if episodes < 1:
        raise ValueError(f"episodes to act after the priming must be at least 1, got {episodes}")
    ecfg = cfg["evaluate"]
    process.setup(ecfg["threads"])
    info = validate_file(dataset)
    model, ckpt = load_policy(model_path)
    meta = ckpt.get("meta", {})
    if "episode_stride" not in meta:
        raise ValueError(f"{model_path}: not an AD model (no training stride); prime only AD checkpoints")
    check_dims(model, model_path, info, dataset)
    tasks, seeds = evaluated_tasks(dataset, ecfg["split"]), ecfg["seeds"]
    ids, horizon = [tid for tid, _ in tasks], meta["horizon"]
    windows = last_windows(dataset, ids, meta["context_episodes"], meta["episode_stride"])
    device = pick_device(ecfg["device"], "evaluate.device")
    rows = []
    for control, shift in PRIMINGS.items():
        order = [(j + shift) % len(ids) for _ in seeds for j in range(len(ids))]  # batch: (seeds, tasks)
        policy = ModelPolicy(model, len(order), ecfg["sample_actions"], device)
        prime(policy, {k: v[order] for k, v in windows.items()}, horizon)
        say(f"{control}: {meta['context_episodes']} history episodes in context, {episodes} to act", progress)
        returns = rollout(info["family"], [t for _, t in tasks], horizon, episodes, seeds, policy, progress)
        rows += tidy(
            info["family"], ckpt["arch"], meta["context_episodes"], meta["seed"], seeds, ids, returns, (control,)
        )
    write_rows(out_path, rows)
