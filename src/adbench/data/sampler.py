"""AD training windows: C consecutive episodes (every k-th, AD's subsampling) of one learning history.

A window is turned into AD tokens: at step t the model sees (observation_t, action_{t-1},
reward_{t-1}, episode-start flag) and predicts action_t. The previous action and reward are those of
the window's own previous step (zeros at the window's first step), exactly as in-context
evaluation feeds them, so training and evaluation see the same kind of sequence.
"""

import numpy as np
import torch

from ..config import window_span, window_tokens
from .reader import open_histories, task_table
from .schema import DatasetError


def make_tokens(
    obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, horizon: int, targets: np.ndarray | None = None
) -> dict:
    """(B, L, ...) arrays of consecutive steps -> model inputs and targets: the recorded actions, or
    `targets` in their place (the previous-action input is always the recorded, executed action)."""
    b, length = rewards.shape
    prev_action = np.zeros_like(actions)
    prev_action[:, 1:] = actions[:, :-1]
    prev_reward = np.zeros_like(rewards)
    prev_reward[:, 1:] = rewards[:, :-1]
    start = np.zeros((b, length), np.float32)
    start[:, ::horizon] = 1.0
    return {
        k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in {
            "obs": obs,
            "prev_action": prev_action,
            "prev_reward": prev_reward,
            "episode_start": start,
            "action": actions if targets is None else targets,
        }.items()
    }


def read_window(arrays: dict, history: int, first: int, context_episodes: int, stride: int, horizon: int) -> dict:
    """{name: (context_episodes x horizon, ...)}: episodes first, first + stride, ... of one history, read
    from per-task arrays (open HDF5 datasets or numpy) of shape (H, T, ...)."""
    c, k, h = context_episodes, stride, horizon
    if k == 1:
        return {name: a[history, first * h : (first + c) * h] for name, a in arrays.items()}
    return {
        name: np.concatenate([a[history, (first + j * k) * h : (first + j * k + 1) * h] for j in range(c)])
        for name, a in arrays.items()
    }


ARRAYS = ("observations", "actions", "rewards")
# train.target -> the arrays a window reads beyond ARRAYS, and how to make a dataset that has them
TARGETS = {
    "recorded": ((), ""),
    "expert": (("expert_actions",), "its source has no expert; use source.algorithm noise_distill"),
    "counterfactual": (
        ("expert_actions", "counterfactual_rewards", "counterfactual_actions"),
        "set source.noise_distill.counterfactuals above 0 and regenerate the histories",
    ),
}
CHUNK_CACHE_BYTES = 2**30  # decompressed chunks kept by all of a sampler's arrays together (at most)


class WindowSampler:
    """Samples batches of windows lazily from one split of a history file (one handle per process): the
    train split for training; the validation split for the held-out loss.

    The arrays stay open, each with its own chunk cache (a share of CHUNK_CACHE_BYTES): a window
    reads one episode per stride from a compressed chunk that holds many, so a chunk decompressed once
    serves many windows; a freshly opened array would decompress it again for every episode read."""

    def __init__(
        self,
        path,
        context_episodes: int,
        stride: int,
        batch_size: int,
        seed: int,
        target: str = "recorded",
        split: str = "train",
    ):
        self.path, self.context_episodes, self.stride, self.batch_size = path, context_episodes, stride, batch_size
        if target not in TARGETS:
            raise ValueError(f"unknown training target {target!r}; train.target is one of {list(TARGETS)}")
        self.target, self.names = target, (*ARRAYS, *TARGETS[target][0])
        self.rng = np.random.default_rng(seed)
        self._file, self._arrays = None, None
        with open_histories(path) as f:
            self.horizon, self.episodes = int(f.attrs["horizon"]), int(f.attrs["episodes"])
            self.task_ids = [tid for tid, task_split, _ in task_table(f) if task_split == split]
            if not self.task_ids:
                raise DatasetError(f"{path}: no {split} tasks to sample windows from")
            self.histories = f["tasks"][self.task_ids[0]]["rewards"].shape[0]
            missing = [name for name in self.names if name not in f["tasks"][self.task_ids[0]]]
            if missing:
                raise DatasetError(
                    f"{path} has no {missing[0]} for train.target '{target}': {TARGETS[target][1]}, or use "
                    f"train.target 'recorded'"
                )
        span = window_span(context_episodes, stride)
        if span > self.episodes:
            raise DatasetError(
                f"context of {context_episodes} episodes at stride {stride} spans {span} episodes, "
                f"but histories in {path} "
                f"have {self.episodes}; lower context_episodes or dataset.episode_stride, or generate longer histories"
            )

    @property
    def arrays(self) -> list:
        """[{name: open dataset}] per task of the split, opened once with their share of the chunk cache."""
        if self._arrays is None:
            share = max(2**20, CHUNK_CACHE_BYTES // (len(self.task_ids) * len(self.names)))
            self._file = open_histories(self.path, chunk_cache_bytes=share)
            self._arrays = [{name: self._file["tasks"][tid][name] for name in self.names} for tid in self.task_ids]
        return self._arrays

    def __getstate__(self):  # a worker opens its own handles
        return {**self.__dict__, "_file": None, "_arrays": None}

    @property
    def tokens_per_window(self) -> int:
        return window_tokens(self.context_episodes, self.horizon)

    def sample(self) -> dict:
        arrays = self._windows()
        rewards, targets = arrays["rewards"], arrays.get("expert_actions")
        if self.target == "counterfactual":
            told = self.rng.integers(arrays["counterfactual_rewards"].shape[-1] + 1, size=self.batch_size)
            rewards, targets = _told(arrays, told, "rewards"), _told(arrays, told, "actions")
        return make_tokens(arrays["observations"], arrays["actions"], rewards, self.horizon, targets)

    def sample_with_other_rewards(self) -> tuple[dict, dict]:
        """train.target counterfactual: a batch as `sample` makes it, and the same windows with the rewards
        of another of their C + 1 tasks (the targets unchanged): the loss rises between them as much as
        the model reads the task it must act for from the rewards."""
        if self.target != "counterfactual":
            raise ValueError("windows with another task's rewards need train.target 'counterfactual'")
        arrays = self._windows()
        tasks = arrays["counterfactual_rewards"].shape[-1] + 1
        told = self.rng.integers(tasks, size=self.batch_size)
        other = (told + self.rng.integers(1, tasks, size=self.batch_size)) % tasks
        targets = _told(arrays, told, "actions")
        return tuple(
            make_tokens(arrays["observations"], arrays["actions"], _told(arrays, t, "rewards"), self.horizon, targets)
            for t in (told, other)
        )

    def _windows(self) -> dict:
        """{name: (batch, window steps, ...)}: a batch of windows, at uniformly drawn tasks, histories and
        first episodes."""
        b, c, k, h = self.batch_size, self.context_episodes, self.stride, self.horizon
        tasks = self.rng.integers(len(self.task_ids), size=b)
        hists = self.rng.integers(self.histories, size=b)
        starts = self.rng.integers(self.episodes - window_span(c, k) + 1, size=b)
        windows = [read_window(self.arrays[task], hist, e0, c, k, h) for task, hist, e0 in zip(tasks, hists, starts)]
        return {name: np.stack([w[name] for w in windows]) for name in self.names}


def _told(arrays: dict, told: np.ndarray, what: str) -> np.ndarray:
    """train.target counterfactual: each window's rewards (`what` 'rewards') or targets ('actions') for
    the task it is told, one of its C + 1: 0 the true one (its rewards, the expert's actions for it), k a
    counterfactual one (the rewards the same steps earn under it, the expert's actions for it). The
    executed actions stay the model's input: in C of C + 1 windows they pursue the history's own task,
    not the one the rewards and targets are for, so only the rewards tell the model which task to act
    for."""
    true, other = (
        ("rewards", "counterfactual_rewards") if what == "rewards" else ("expert_actions", "counterfactual_actions")
    )
    out = arrays[true].copy()
    for b in np.flatnonzero(told):
        out[b] = arrays[other][b, :, told[b] - 1]
    return out


def input_statistics(path) -> dict:
    """Mean and std of observations and rewards over the train split, read one task at a time."""
    with open_histories(path) as f:
        n, obs_sum, obs_sq, rew_sum, rew_sq = 0, 0.0, 0.0, 0.0, 0.0
        for tid, split, _ in task_table(f):
            if split != "train":
                continue
            g = f["tasks"][tid]
            obs = g["observations"][...].reshape(-1, g["observations"].shape[-1]).astype(np.float64)
            rew = g["rewards"][...].reshape(-1).astype(np.float64)
            n += len(rew)
            obs_sum, obs_sq = obs_sum + obs.sum(0), obs_sq + (obs**2).sum(0)
            rew_sum, rew_sq = rew_sum + rew.sum(), rew_sq + (rew**2).sum()
    obs_mean, rew_mean = obs_sum / n, rew_sum / n
    obs_std = np.sqrt(np.maximum(obs_sq / n - obs_mean**2, 0.0)) + 1e-6
    rew_std = float(np.sqrt(max(rew_sq / n - rew_mean**2, 0.0)) + 1e-6)
    return {
        "obs_mean": obs_mean.tolist(),
        "obs_std": obs_std.tolist(),
        "reward_mean": float(rew_mean),
        "reward_std": rew_std,
    }
