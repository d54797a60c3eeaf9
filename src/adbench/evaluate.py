"""In-context evaluation on held-out tasks with frozen weights, and the reference curves (random, source).

All test tasks x evaluation seeds run as one batch: one model step per environment step. Mamba
carries its recurrent state across all episodes; the transformer slides its KV cache over the
last `window` tokens. Output: a tidy table, one row per (family, arch, context, seed, eval_seed,
task, episode) with the return.
"""

import itertools
import time

import numpy as np
import torch
from tqdm import tqdm

from . import process
from .atomic import write_csv
from .baselines import BASELINES, policy_from_checkpoint
from .data import DatasetError, open_histories, task_table, validate_file
from .devices import pick_device
from .floors import random_policy, task_blind_policy, zero_policy
from .measures import CONTROLS, switch_episode
from .models import from_checkpoint, read_checkpoint, state_mib
from .progress import say
from .provenance import git_revision
from .seeding import derive_seed
from .tasks import BatchedTasks
from .tasks.inference import diagnose

SECTIONS = ["evaluate"]
REFERENCE_SECTIONS = ["tasks", "source", "evaluate"]  # the task-blind floor loads the source's expert
COLUMNS = ["family", "arch", "context_episodes", "seed", "eval_seed", "control", "task", "episode", "return"]


def evaluated_tasks(dataset, split: str = "test") -> list:
    """[(task_id, task)] of a held-out split (`test`, or `val` for tuning), exactly as stored in the dataset."""
    with open_histories(dataset) as f:
        tasks = [(tid, task) for tid, s, task in task_table(f) if s == split]
    if not tasks:
        raise DatasetError(
            f"{dataset}: no {split} tasks to evaluate on; set tasks.n_{split} >= 1 and regenerate the dataset"
        )
    return tasks


def rollout(
    family: str,
    tasks: list,
    horizon: int,
    episodes: int,
    eval_seeds: list,
    policy,
    progress=None,
    controls: tuple = ("none",),
    threads: int = 1,
    with_observations: bool = False,
):
    """Run `policy` over `episodes` consecutive episodes of every (control, eval_seed, task), all in one
    batch; returns the true returns, (controls, seeds, tasks, episodes), and with `with_observations`
    also the mean and the last of each episode's observations, (controls, seeds, tasks, episodes, obs_dim)
    (what the task-inference diagnostic reads, see `tasks.inference`).

    `policy(obs, prev_action, prev_reward, episode_start, generator) -> actions` sees the AD token of
    each step; the previous action and reward carry across episode boundaries (zeros at the start).
    Controls (`controls`) change what the policy experiences; returns are always scored on the true task:
    'zero_reward' shows zeros as rewards; 'other_task_reward' shows what the same step would have earned
    under another test task (a fixed derangement: task j gets task j+1's, cyclically), or, for a family
    whose tasks change the dynamics, the reward of that other task's own rollout at the same step;
    'task_switch' makes task j+1 the true task from episode `switch_episode(episodes)` on.
    """
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"unknown evaluation control {unknown[0]!r}; controls: {list(CONTROLS)}")
    n_c, n_s, n_t = len(controls), len(eval_seeds), len(tasks)
    for control in ("other_task_reward", "task_switch"):
        if control in controls and n_t < 2:
            raise DatasetError(
                f"the {control} control needs at least 2 test tasks; raise tasks.n_test or drop the control"
            )
    env = BatchedTasks(family, [task for _ in controls for _ in eval_seeds for task in tasks], horizon, threads)
    k = env.num_tasks
    rows = np.arange(k).reshape(n_c, n_s, n_t)
    deranged = np.roll(rows, -1, axis=2)  # row of (control, seed, task j+1)
    generator = torch.Generator().manual_seed(derive_seed(eval_seeds[0], "evaluate", family, len(eval_seeds)))
    returns = np.zeros((k, episodes))
    obs_mean, obs_last = np.zeros((k, episodes, env.obs_dim)), np.zeros((k, episodes, env.obs_dim))
    prev_action = np.zeros((k, env.act_dim), np.float32)
    prev_reward = np.zeros(k, np.float32)
    for ep in tqdm(range(episodes), desc=f"evaluate {family}", file=progress, mininterval=10, disable=not progress):
        # the same initial state for a (seed, task) under every control
        seeds = [
            derive_seed(eval_seeds[s], "reset", ep, j) % 2**31 for _ in controls for s in range(n_s) for j in range(n_t)
        ]
        if "task_switch" in controls and ep == switch_episode(episodes):
            block = rows[controls.index("task_switch")].ravel()
            switched = deranged[controls.index("task_switch")].ravel()
            env.set_tasks(block, [env.tasks[i] for i in switched])
        obs = env.reset(seeds=seeds)
        for t in range(env.horizon):
            start = np.full(k, 1.0 if t == 0 else 0.0, np.float32)
            action = np.clip(policy(obs, prev_action, prev_reward, start, generator), -1.0, 1.0).astype(np.float32)
            obs_mean[:, ep] += obs / env.horizon
            obs_last[:, ep] = obs
            obs, reward, _, _ = env.step(action)
            returns[:, ep] += reward
            seen = reward.copy()
            for c, control in enumerate(controls):
                block = rows[c].ravel()
                if control == "zero_reward":
                    seen[block] = 0.0
                elif control == "other_task_reward" and env.reward_varies:
                    seen[block] = env.rewards_under([env.tasks[i] for i in deranged[c].ravel()], block)
                elif control == "other_task_reward":
                    seen[block] = reward[deranged[c].ravel()]
            prev_action, prev_reward = action, seen
    returns = returns.reshape(n_c, n_s, n_t, episodes)
    if with_observations:
        return returns, obs_mean.reshape(n_c, n_s, n_t, episodes, -1), obs_last.reshape(n_c, n_s, n_t, episodes, -1)
    return returns


class ModelPolicy:
    """Adapts an AD policy (or a baseline with the same interface) to `rollout`: one batched recurrent
    step per call, on `device`; the action noise is drawn on the CPU so that it does not depend on it.

    With `window_episodes` = C (`evaluate.mamba_context: sliding`), the recurrent state holds no more
    than the last C episodes, as the transformer's cache holds the last C episodes' tokens: at the start
    of every episode past the C-th the state is rebuilt from zero over the previous C - 1 episodes'
    tokens (their cost counted as the model's)."""

    def __init__(
        self, model, batch: int, sample: bool, device: torch.device | None = None, window_episodes: int | None = None
    ):
        device = torch.device("cpu") if device is None else device
        self.model, self.sample, self.device = model.eval().to(device), sample, device
        self.batch, self.window, self.episodes, self.seen = batch, window_episodes, [], 0
        self.state = model.init_state(batch, device)
        self.step_seconds, self.steps = 0.0, 0
        self.episode_seconds: list = []  # per in-context episode: the model's seconds over its steps

    @torch.no_grad()
    def __call__(self, obs, prev_action, prev_reward, start, generator):
        t0 = time.perf_counter()
        inputs = [torch.from_numpy(x).to(self.device) for x in (obs, prev_action, prev_reward, start)]
        if self.window is not None:
            self._slide(inputs, bool(start[0]))
        *head, self.state = self.model.step(*inputs, self.state)
        head = tuple(None if x is None else x.float().cpu() for x in head)
        action = self.model.act(head, self.sample, generator).numpy()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        if start[0]:
            self.episode_seconds.append(0.0)
        self.episode_seconds[-1] += seconds
        self.step_seconds += seconds
        self.steps += 1
        return action

    def _slide(self, inputs: list, episode_start: bool) -> None:
        """Keep the tokens of the last `window` episodes; once one leaves, restart the state on the rest."""
        if episode_start:
            self.seen += 1
            self.episodes = [*self.episodes, []][-self.window :]
            if self.seen > self.window:
                self.state = self.model.init_state(self.batch, self.device)
                for token in (t for episode in self.episodes[:-1] for t in episode):
                    *_, self.state = self.model.step(*token, self.state)
        self.episodes[-1].append(inputs)

    def ms_per_step_in_episode(self, episode: int, horizon: int) -> float:
        """Milliseconds per batched step over one in-context episode (Mamba's are flat; a transformer's
        grow until its cache holds a whole context)."""
        return self.episode_seconds[episode] / horizon * 1e3


def write_rows(path, rows: list, columns: list = COLUMNS) -> None:
    write_csv(path, rows, columns)


def _row(family, arch, ctx, seed, eval_seed, control, task, episode, values: dict) -> dict:
    """One row of a tidy table: the keys every table shares, then its own values."""
    return {
        "family": family,
        "arch": arch,
        "context_episodes": ctx,
        "seed": seed,
        "eval_seed": eval_seed,
        "control": control,
        "task": task,
        "episode": episode,
        **values,
    }


def _runs(controls, eval_seeds, task_ids, episodes):
    """(control, eval_seed, task, episode) in the order of an array (controls, seeds, tasks, episodes)."""
    return itertools.product(controls, eval_seeds, task_ids, range(episodes))


def tidy(family, arch, ctx, seed, eval_seeds, task_ids, returns, controls=("none",)) -> list:
    """Rows of the result table from returns (controls, seeds, tasks, episodes)."""
    return [
        _row(family, arch, ctx, seed, s, control, tid, e, {"return": float(r)})
        for (control, s, tid, e), r in zip(_runs(controls, eval_seeds, task_ids, returns.shape[3]), returns.ravel())
    ]


INFERENCE_COLUMNS = [*COLUMNS[:-1], "quantity", "target", "achieved", "error"]


def _diagnosed(d, i: int) -> dict:
    return {"quantity": d.quantity, "target": d.target[i], "achieved": d.achieved[i], "error": d.error[i]}


def inference_rows(family, arch, ctx, seed, eval_seeds, tasks, obs_mean, obs_last, controls=("none",)) -> list:
    """Rows of the task-inference table (see `tasks.inference`) from the episodes' observation means and
    last observations, (controls, seeds, tasks, episodes, obs_dim)."""
    n_e = obs_mean.shape[3]
    runs = list(_runs(controls, eval_seeds, tasks, n_e))
    d = diagnose(
        family, [task for _, _, (_, task), _ in runs], obs_mean.reshape(len(runs), -1), obs_last.reshape(len(runs), -1)
    )
    return [
        _row(family, arch, ctx, seed, s, control, tid, e, _diagnosed(d, i))
        for i, (control, s, (tid, _), e) in enumerate(runs)
    ]


COST_COLUMNS = [
    "family",
    "arch",
    "context_episodes",
    "seed",
    "batch",
    "ms_per_step",
    "ms_per_step_first_episode",
    "ms_per_step_last_episode",
    "state_mib",
    "train_env_steps",
    "source",
    "episode_stride",
    "dataset_commit",
    "model_commit",
    "evaluate_commit",
]


def load_policy(path):
    """An AD policy or a baseline from its checkpoint; both have `init_state`, `step` and `act`."""
    ckpt = read_checkpoint(path)
    return (policy_from_checkpoint if ckpt["arch"] in BASELINES else from_checkpoint)(ckpt), ckpt


def check_dims(model, model_path, info: dict, dataset) -> None:
    """A model runs only on the observation and action sizes of the dataset it was trained on."""
    if (model.obs_dim, model.act_dim) != (info["obs_dim"], info["act_dim"]):
        raise DatasetError(
            f"{model_path} expects obs/act dims {(model.obs_dim, model.act_dim)} but {dataset} has "
            f"{(info['obs_dim'], info['act_dim'])}; evaluate it on the dataset it was trained on"
        )


def train_env_steps(info: dict, ckpt: dict) -> int:
    """Environment steps behind a model: a baseline's own interaction; for AD, the source algorithm's
    steps over every training-task history it learned from, and those that trained the source's expert."""
    if ckpt["arch"] in BASELINES:
        return int(ckpt["meta"]["train_env_steps"])
    return info["n_train"] * info["H"] * info["T"] + info["expert_env_steps"]


def evaluate_model(
    cfg: dict, dataset, model_path, out_path, cost_path=None, progress=None, inference_path=None
) -> None:
    """In-context returns to `out_path`; the model's inference cost (ms per batched step) to `cost_path`; the
    task-inference diagnostic of every episode to `inference_path`."""
    ecfg = cfg["evaluate"]
    process.setup(ecfg["threads"])
    info = validate_file(dataset)
    model, ckpt = load_policy(model_path)
    meta = ckpt["meta"]
    check_dims(model, model_path, info, dataset)
    tasks = evaluated_tasks(dataset, ecfg["split"])
    seeds, controls = ecfg["seeds"], ("none", *ecfg["controls"])
    batch = len(controls) * len(tasks) * len(seeds)
    device = pick_device(ecfg["device"], "evaluate.device")
    say(f"{ckpt['arch']} on {device}", progress)
    sliding = ckpt["arch"] == "mamba" and ecfg["mamba_context"] == "sliding"
    window = meta["context_episodes"] if sliding else None
    policy = ModelPolicy(model, batch, ecfg["sample_actions"], device, window_episodes=window)
    returns, obs_mean, obs_last = rollout(
        info["family"],
        [t for _, t in tasks],
        meta["horizon"],
        ecfg["episodes"],
        seeds,
        policy,
        progress,
        controls,
        ecfg["threads"],
        with_observations=True,
    )
    ms = policy.step_seconds / policy.steps * 1e3
    say(
        f"{ms:.3f} ms per batched step of {batch} sequences ({len(controls)} controls x {len(seeds)} seeds x "
        f"{len(tasks)} tasks)",
        progress,
    )
    write_rows(
        out_path,
        tidy(
            info["family"],
            ckpt["arch"],
            meta["context_episodes"],
            meta["seed"],
            seeds,
            [tid for tid, _ in tasks],
            returns,
            controls,
        ),
    )
    if inference_path is not None:
        write_rows(
            inference_path,
            inference_rows(
                info["family"],
                ckpt["arch"],
                meta["context_episodes"],
                meta["seed"],
                seeds,
                tasks,
                obs_mean,
                obs_last,
                controls,
            ),
            INFERENCE_COLUMNS,
        )
    if cost_path is not None:
        write_rows(
            cost_path,
            [
                {
                    "family": info["family"],
                    "arch": ckpt["arch"],
                    "context_episodes": meta["context_episodes"],
                    "seed": meta["seed"],
                    "batch": batch,
                    "ms_per_step": ms,
                    "ms_per_step_first_episode": policy.ms_per_step_in_episode(0, meta["horizon"]),
                    "ms_per_step_last_episode": policy.ms_per_step_in_episode(-1, meta["horizon"]),
                    "state_mib": state_mib(policy.state),
                    "train_env_steps": train_env_steps(info, ckpt),
                    "source": "online" if ckpt["arch"] in BASELINES else info["source"],
                    "episode_stride": meta.get("episode_stride", ""),  # AD's windows; none for a baseline
                    "dataset_commit": info["commit"],
                    "model_commit": meta.get("commit", "unknown"),
                    "evaluate_commit": git_revision(),
                }
            ],
            COST_COLUMNS,
        )


def evaluate_references(cfg: dict, dataset, out_path, progress=None, inference_path=None, expert=None) -> None:
    """The floors (`floors`: random, zero-action and, where the family has an oracle or the source an
    expert (`expert`, a `TaskExpert`), task-blind) on the evaluated tasks and seeds, and the source
    algorithm's learning curves.

    Source rows hold every history episode of every task (seed = history index, eval_seed = -1); the
    in-context figure uses the evaluated tasks' and places history episode e at in-context episode
    e / episode_stride; the learning-curve figure uses all.
    """
    ecfg = cfg["evaluate"]
    info = validate_file(dataset)
    tasks = evaluated_tasks(dataset, ecfg["split"])
    with open_histories(dataset) as f:
        horizon = int(f.attrs["horizon"])
        source = {tid: g["episode_returns"][...] for tid, g in f["tasks"].items()}
        train = [task for _, split, task in task_table(f) if split == "train"]
    floors = {
        "random": random_policy,
        "zero": zero_policy,
        "task_blind": task_blind_policy(info["family"], train, expert),
    }
    rows, diag = [], []
    for name, policy in floors.items():
        if policy is None:
            say(f"no task-blind floor for {info['family']}: no oracle and no task-conditioned expert", progress)
            continue
        returns, obs_mean, obs_last = rollout(
            info["family"],
            [t for _, t in tasks],
            horizon,
            ecfg["episodes"],
            ecfg["seeds"],
            policy,
            progress,
            with_observations=True,
        )
        rows += tidy(info["family"], name, 0, 0, ecfg["seeds"], [tid for tid, _ in tasks], returns)
        if name == "random":
            diag = inference_rows(info["family"], "random", 0, 0, ecfg["seeds"], tasks, obs_mean, obs_last)
    for tid, curves in source.items():
        for h, curve in enumerate(curves):
            rows += [
                _row(info["family"], "source", 0, h, -1, "none", tid, e, {"return": float(r)})
                for e, r in enumerate(curve)
            ]
    write_rows(out_path, rows)
    if inference_path is not None:
        write_rows(
            inference_path, diag + source_inference_rows(dataset, info["family"], tasks, horizon), INFERENCE_COLUMNS
        )


def source_inference_rows(dataset, family: str, tasks: list, horizon: int) -> list:
    """The task-inference diagnostic of every history episode of the held-out tasks (seed = history index)."""
    rows = []
    with open_histories(dataset) as f:
        for tid, task in tasks:
            obs = f["tasks"][tid]["observations"]
            for h in range(obs.shape[0]):
                episodes = obs[h].reshape(-1, horizon, obs.shape[-1])
                d = diagnose(family, [task] * len(episodes), episodes.mean(1, dtype=np.float64), episodes[:, -1])
                rows += [
                    _row(family, "source", 0, h, -1, "none", tid, e, _diagnosed(d, e)) for e in range(len(episodes))
                ]
    return rows
