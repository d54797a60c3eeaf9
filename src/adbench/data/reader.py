"""Read and validate learning-history files without loading them whole."""

import json
from pathlib import Path

import h5py
import numpy as np

from .schema import DATASETS, OPTIONAL_DATASETS, ROOT_ATTRS, SCHEMA_VERSION, SPLITS, DatasetError


def open_histories(path, chunk_cache_bytes: int = 64 * 2**20) -> h5py.File:
    """Open a history file read-only; each dataset opened from it keeps up to `chunk_cache_bytes` of
    decompressed chunks while its handle is open."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such history file; run the workflow's `dataset` rule to create it")
    try:
        return h5py.File(path, "r", rdcc_nbytes=chunk_cache_bytes, rdcc_nslots=10007)
    except OSError as e:
        raise DatasetError(
            f"{path}: not a readable HDF5 file ({e.__class__.__name__}); delete it and rerun the workflow"
        ) from None


def task_table(f: h5py.File) -> list:
    """[(task_id, split, task dict)] in file order."""
    return [(tid, g.attrs["split"], json.loads(g.attrs["task"])) for tid, g in f["tasks"].items()]


def validate_file(path) -> dict:
    """Check a history file against the contract; raise DatasetError with a one-line reason.

    Returns a summary: family, number of train/test tasks, H, T, E, obs_dim, act_dim.
    """
    path = Path(path)
    try:
        with open_histories(path) as f:
            return _validate(f, path)
    except DatasetError:
        raise
    # h5py reports truncated data and failed checksums as OSError on read; damaged metadata can surface as
    # almost any error from its object layer (a group that reads as None, a bad type)
    except (OSError, KeyError, RuntimeError, AttributeError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: corrupt or truncated HDF5 ({e}); delete it and rerun the workflow") from None


def _validate_optional(g: h5py.Group, where: str) -> None:
    """The expert's arrays, where present: shapes that match the recorded ones, and both counterfactual
    arrays or neither, over the same number of other tasks."""
    (h, t, act), cf = g["actions"].shape, g.get("counterfactual_rewards")
    if ("counterfactual_actions" in g) != (cf is not None):
        raise DatasetError(f"{where}: one counterfactual array without the other; regenerate the dataset")
    n_cf = cf.shape[-1] if cf is not None and cf.ndim == 3 else 0
    expected = {
        "expert_actions": (h, t, act),
        "counterfactual_rewards": (h, t, n_cf),
        "counterfactual_actions": (h, t, n_cf, act),
    }
    for name in OPTIONAL_DATASETS:
        if name in g and (g[name].dtype != np.dtype("float32") or g[name].shape != expected[name]):
            raise DatasetError(f"{where}/{name}: {g[name].dtype} {g[name].shape}, expected float32 {expected[name]}")


def _validate(f: h5py.File, path: Path) -> dict:
    missing = [a for a in ROOT_ATTRS if a not in f.attrs]
    if missing:
        raise DatasetError(f"{path}: not an adbench history file (missing root attribute {missing[0]!r})")
    if int(f.attrs["schema_version"]) != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema_version {int(f.attrs['schema_version'])}, this adbench reads {SCHEMA_VERSION}; "
            "regenerate the dataset"
        )
    if "tasks" not in f or len(f["tasks"]) == 0:
        raise DatasetError(f"{path}: no task groups under /tasks")
    horizon, episodes = int(f.attrs["horizon"]), int(f.attrs["episodes"])
    shape, counts = None, {s: 0 for s in SPLITS}
    for tid, g in f["tasks"].items():
        where = f"{path}: tasks/{tid}"
        split = g.attrs.get("split")
        if split not in SPLITS:
            raise DatasetError(f"{where}: split attribute {split!r}, expected one of {list(SPLITS)}")
        counts[split] += 1
        for name, (dtype, rank) in DATASETS.items():
            if name not in g:
                raise DatasetError(f"{where}: missing dataset {name!r}")
            d = g[name]
            if d.dtype != np.dtype(dtype) or d.ndim != rank:
                raise DatasetError(f"{where}/{name}: dtype {d.dtype} rank {d.ndim}, expected {dtype} rank {rank}")
        h, t = g["rewards"].shape
        this = (h, t, g["observations"].shape[2], g["actions"].shape[2])
        if shape is None:
            shape = this
        for name in ("observations", "actions", "terminated", "truncated"):
            if g[name].shape[:2] != (h, t):
                raise DatasetError(f"{where}/{name}: shape {g[name].shape[:2]} does not match rewards {(h, t)}")
        if this != shape:
            raise DatasetError(f"{where}: shape (H, T, obs, act) {this} differs from other tasks' {shape}")
        if t != horizon * episodes or g["episode_returns"].shape != (h, episodes):
            raise DatasetError(
                f"{where}: T={t} and episode_returns {g['episode_returns'].shape} do not match horizon {horizon} "
                f"x episodes {episodes}"
            )
        _validate_optional(g, where)
        if g["final_observations"].shape != (h, episodes, this[2]):
            raise DatasetError(
                f"{where}/final_observations: shape {g['final_observations'].shape}, expected {(h, episodes, this[2])}"
            )
        for name in ("observations", "actions", "rewards", "episode_returns", "final_observations"):
            data = g[name][...]
            if not np.all(np.isfinite(data)):
                raise DatasetError(f"{where}/{name}: contains NaN or inf")
        trunc = g["truncated"][...]
        ends = np.zeros(t, bool)
        ends[horizon - 1 :: horizon] = True
        if not np.array_equal(trunc | g["terminated"][...], np.broadcast_to(ends, (h, t))):
            raise DatasetError(f"{where}: episode boundaries are not every {horizon} steps")
        sums = g["rewards"][...].reshape(h, episodes, horizon).sum(-1)
        if not np.allclose(sums, g["episode_returns"][...], rtol=1e-4, atol=1e-3 * horizon):
            raise DatasetError(f"{where}: episode_returns do not equal the summed rewards")
    if counts["train"] == 0:
        raise DatasetError(f"{path}: no train tasks")
    return {
        "family": str(f.attrs["family"]),
        "n_train": counts["train"],
        "n_test": counts["test"],
        "n_val": counts["val"],
        "H": shape[0],
        "T": shape[1],
        "E": episodes,
        "horizon": horizon,
        "obs_dim": shape[2],
        "act_dim": shape[3],
        "source": source_label(f),
        "expert_env_steps": int(f.attrs.get("expert_env_steps", 0)),
        "commit": str(f.attrs.get("git_revision", "unknown")),
    }


def source_label(f: h5py.File) -> str:
    """The source algorithm as results name it: `ppo`, `noise_distill(<expert>)`, or
    `noise_distill(<expert>, search)` for an expert whose told task searches from the returns."""
    algorithm = str(f.attrs.get("source_algorithm", "unknown"))
    if algorithm == "noise_distill" and "source_settings" in f.attrs:
        settings = json.loads(f.attrs["source_settings"])["noise_distill"]
        return f"{algorithm}({settings['expert']}{', search' if settings.get('search') else ''})"
    return algorithm
