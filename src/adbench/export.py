"""A learning-history file as a Minari dataset (Farama's standard format for offline-RL data).

Episodes go in history order: task by task as the file lists them, each history's episodes in turn.
Each episode holds T + 1 observations (its steps' and the one it ended in), T actions, rewards,
terminations and truncations, as Minari defines them; its episode metadata holds the task's
parameters (`task/<key>`), `task_id`, `split`, `history` and `episode` (the index within its
history). The dataset's metadata names the source algorithm and its settings; its environment spec is
the family's registered env (`adbench/<Family>-v0`) with the dataset's horizon.
"""

import contextlib
import dataclasses
import json
import os
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np

from .data import open_histories, validate_file
from .tasks.registry import get_family, register_all


@contextlib.contextmanager
def _minari_root(root):
    """Minari finds its datasets under $MINARI_DATASETS_PATH: point it at `root` for the block."""
    before = os.environ.get("MINARI_DATASETS_PATH")
    if root is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = before


def env_spec(family: str, horizon: int) -> gym.envs.registration.EnvSpec:
    register_all()
    spec = gym.spec(get_family(family).env_id)
    return dataclasses.replace(spec, kwargs={**spec.kwargs, "horizon": horizon}, max_episode_steps=horizon)


def _float32_box(space: gym.spaces.Box) -> gym.spaces.Box:
    """The space with the dtype the histories are stored in."""
    return gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)


def _episodes(f, horizon: int):
    """(EpisodeBuffer, metadata) per episode, in history order."""
    from minari.data_collector import EpisodeBuffer

    index = 0
    for task_id, g in f["tasks"].items():
        task = json.loads(g.attrs["task"])
        obs, act, rew = g["observations"], g["actions"], g["rewards"]
        term, trunc, final = g["terminated"], g["truncated"], g["final_observations"]
        for h in range(rew.shape[0]):
            arrays = {name: d[h] for name, d in (("o", obs), ("a", act), ("r", rew), ("te", term), ("tr", trunc))}
            ends = final[h]
            for e in range(ends.shape[0]):
                steps = slice(e * horizon, (e + 1) * horizon)
                buffer = EpisodeBuffer(
                    id=index,
                    observations=np.concatenate([arrays["o"][steps], ends[e][None]]),
                    actions=arrays["a"][steps],
                    rewards=arrays["r"][steps],
                    terminations=arrays["te"][steps],
                    truncations=arrays["tr"][steps],
                )
                meta = {"task_id": task_id, "split": str(g.attrs["split"]), "history": h, "episode": e}
                meta.update({f"task/{k}": np.asarray(v) for k, v in task.items()})
                yield buffer, meta
                index += 1


def export_minari(dataset_path, name: str, root=None):
    """Write the history file at `dataset_path` as the Minari dataset `name` (under `root`, or Minari's
    default folder); returns the MinariDataset. Refuses a name that already exists there."""
    import minari

    info = validate_file(dataset_path)
    with _minari_root(root), open_histories(dataset_path) as f:
        if name in minari.list_local_datasets():
            raise ValueError(f"a Minari dataset {name!r} exists already; delete it or choose another --name")
        spec = env_spec(info["family"], info["horizon"])
        env = gym.make(spec)
        buffers, metadata = zip(*_episodes(f, info["horizon"]))
        with warnings.catch_warnings():  # Minari warns of each optional field left out (e-mail, eval env)
            warnings.simplefilter("ignore", UserWarning)
            dataset = minari.create_dataset_from_buffers(
                dataset_id=name,
                buffer=list(buffers),
                env=spec,
                observation_space=_float32_box(env.observation_space),
                action_space=_float32_box(env.action_space),
                algorithm_name=info["source"],
                author="adbench",
                code_permalink=str(f.attrs.get("git_revision", "unknown")),
                description=(
                    f"{info['family']} learning histories ({info['source']}): {info['n_train']} train and "
                    f"{info['n_test']} held-out tasks x {info['H']} histories x {info['E']} episodes of "
                    f"{info['horizon']} steps, in history order; episode metadata: task, split, history, episode"
                ),
            )
        env.close()
        dataset.storage.update_episode_metadata(list(metadata))
        dataset.storage.update_metadata(
            {
                "adbench_family": info["family"],
                "adbench_source": info["source"],
                "adbench_source_settings": str(f.attrs["source_settings"]),
                "adbench_horizon": info["horizon"],
                "adbench_schema_version": int(f.attrs["schema_version"]),
            }
        )
    return dataset
