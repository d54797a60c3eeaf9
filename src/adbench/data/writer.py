"""Write learning histories to HDF5 atomically (temporary name, renamed when complete)."""

import contextlib
import json

import h5py
import numpy as np

from ..atomic import atomic_path
from .schema import DATASETS, OPTIONAL_DATASETS, SCHEMA_VERSION

CHUNK_STEPS = 4096


@contextlib.contextmanager
def atomic_h5(path):
    """Open `path.tmp` for writing and rename it to `path` only if the block completes."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=True) as f:
        yield f


def write_root_attrs(f: h5py.File, attrs: dict) -> None:
    f.attrs["schema_version"] = SCHEMA_VERSION
    for key, value in attrs.items():
        f.attrs[key] = (
            value
            if isinstance(value, (str, int, float, np.integer, np.floating))
            else json.dumps(value, sort_keys=True)
        )


def write_task(f: h5py.File, task_id: str, task: dict, split: str, arrays: dict) -> None:
    """One group `tasks/<task_id>`: task parameters and split as attributes, H histories as datasets."""
    g = f.require_group("tasks").create_group(task_id, track_order=True)
    g.attrs["split"] = split
    g.attrs["task"] = json.dumps(task, sort_keys=True)
    for key, value in task.items():
        g.attrs[f"task.{key}"] = np.asarray(value)
    optional = {name: spec for name, spec in OPTIONAL_DATASETS.items() if name in arrays}
    for name, (dtype, _rank) in {**DATASETS, **optional}.items():
        data = np.asarray(arrays[name], dtype=dtype)
        chunks = (1, min(data.shape[1], CHUNK_STEPS)) + data.shape[2:]
        # track_times=False keeps files byte-identical across runs of the same config.
        g.create_dataset(
            name,
            data=data,
            chunks=chunks,
            compression="gzip",
            compression_opts=4,
            shuffle=True,
            fletcher32=True,  # a checksum per chunk, verified on every read
            track_times=False,
        )
