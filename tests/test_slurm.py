"""The smoke workflow through a real single-node SLURM (tests/slurm/local_slurm.sh), with the
cluster profile: one SLURM job per rule instance, the same outputs as a local run.

Skipped, with the reason, where SLURM cannot be installed or started (no root, no apt, no plugin)."""

import importlib.util
import re
import subprocess
import time

import h5py
import numpy as np
import pandas as pd
import pytest

from adbench.tables import SUMMARY_COLUMNS

from .conftest import REPO
from .test_workflow import planned_jobs, snakemake

pytestmark = pytest.mark.slow
SCRIPT = REPO / "tests/slurm/local_slurm.sh"
JOBCOMP = "/tmp/adbench-slurm/jobcomp.log"


@pytest.fixture(scope="module")
def local_slurm():
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    try:
        start = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=660)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"local SLURM cannot start here: {e}")
    if start.returncode != 0:
        pytest.skip(f"local SLURM cannot start here: {(start.stdout + start.stderr).strip()[-300:]}")
    yield
    subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=60)


def test_smoke_workflow_through_slurm_matches_a_local_run(local_slurm, tmp_path, dataset):
    workdir = tmp_path / "slurm"
    planned = planned_jobs(workdir)
    jobs = sum(n for rule, n in planned.items() if rule != "all")  # `all` has no action: nothing to submit
    done_before = len(open(JOBCOMP).read().splitlines()) if __import__("os").path.exists(JOBCOMP) else 0
    t0 = time.perf_counter()
    run = snakemake(
        workdir,
        "--profile",
        str(REPO / "workflow/profiles/slurm"),
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--slurm-no-account",
        "--latency-wait",
        "5",
        "--jobs",
        "4",
    )
    wall = time.perf_counter() - t0
    log = run.stdout + run.stderr
    slurm_ids = set(re.findall(r"submitted with SLURM jobid (\d+)", log))
    finished = open(JOBCOMP).read().splitlines()[done_before:]
    print(f"{jobs} jobs through SLURM in {wall:.0f} s; jobcomp records:\n" + "\n".join(finished))
    assert len(slurm_ids) == jobs, f"expected one SLURM job per rule instance ({jobs}), saw {sorted(slurm_ids)}"
    assert len(finished) == jobs and all("JobState=COMPLETED" in line for line in finished)
    assert {re.search(r"JobId=(\d+)", line).group(1) for line in finished} == slurm_ids

    results = workdir / "results"
    # the dataset equals one built in-process from the same config (tests/conftest.py)
    with h5py.File(results / "datasets/PointNav.h5") as a, h5py.File(dataset) as b:
        assert sorted(a["tasks"]) == sorted(b["tasks"])
        for tid in a["tasks"]:
            for key in ("observations", "actions", "rewards", "episode_returns"):
                np.testing.assert_array_equal(a["tasks"][tid][key][...], b["tasks"][tid][key][...])
    summary = pd.read_csv(results / "tables/summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS and set(summary["arch"]) == {
        "mamba",
        "transformer",
        "rl2",
        "varibad",
    }
    for name in ("in_context_return", "source_learning_curves", "context_scaling", "cost"):
        assert (results / f"figures/{name}.png").stat().st_size > 0
    assert planned_jobs(workdir) == {}
