"""Shared fixtures: the repository's configs and one small real dataset built once per session."""

import copy
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import pytest
from tqdm import tqdm

from adbench import config as cfglib
from adbench.config import shard_sizes
from adbench.histories import merge_shards, run_shard

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "workflow/configs/smoke.yaml"


def snakemake_cli(workdir, *args, timeout=1200) -> subprocess.CompletedProcess:
    """`python -m snakemake` on this repository's Snakefile in `workdir`, this interpreter's tools on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One run of the smoke workflow (`--cores 2`), shared by the modules that read it (test_envs,
    test_workflow); a test that deletes an output runs the workflow again to put it back."""
    workdir = tmp_path_factory.mktemp("smoke")
    run = snakemake_cli(workdir, "--configfile", str(SMOKE), "--cores", "2")
    assert run.returncode == 0, f"the smoke workflow failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return workdir


@pytest.fixture(scope="session", autouse=True)
def process_local_progress_lock():
    """tqdm's default lock is a semaphore shared by every process forked from this one: a test process
    killed while holding it (a mutation-testing timeout) would block all that come after. One per process."""
    tqdm.set_lock(threading.RLock())


@pytest.fixture(scope="session")
def smoke_config() -> dict:
    return cfglib.load([REPO / "config.yaml", SMOKE])


@pytest.fixture
def cfg(smoke_config) -> dict:
    return copy.deepcopy(smoke_config)


@pytest.fixture(scope="session")
def dataset(smoke_config, tmp_path_factory) -> Path:
    """A real PointNav dataset at smoke scale (PPO histories of 8 train + 4 test tasks). Mutation runs
    may name a copy built once in ADBENCH_TEST_DATASET (docs/testing.md); tests get a copy of it."""
    out = tmp_path_factory.mktemp("data")
    if prebuilt := os.environ.get("ADBENCH_TEST_DATASET"):
        shutil.copy(prebuilt, out / "PointNav.h5")
        return out / "PointNav.h5"
    shards = []
    for i in range(len(shard_sizes(smoke_config))):
        shards.append(out / f"shard-{i}.h5")
        run_shard(smoke_config, "PointNav", i, shards[-1], progress=False)
    merge_shards(smoke_config, "PointNav", shards, out / "PointNav.h5")
    return out / "PointNav.h5"


def with_every_task_in(split: str, dataset: Path, out: Path) -> Path:
    """A copy of `dataset` whose tasks are all labelled `split` (a dataset without the other split)."""
    shutil.copy(dataset, out)
    with h5py.File(out, "r+") as f:
        for g in f["tasks"].values():
            g.attrs["split"] = split
    return out
