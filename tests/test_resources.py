"""Scheduler requests: estimated from the config and the job's context, fixed values checked before submission."""

import subprocess
import sys

import pytest
import yaml

from adbench import resources

from .conftest import REPO


def test_training_memory_and_time_grow_with_the_context(cfg):
    for arch in ("mamba", "transformer"):
        mems = [resources.train_mem_mb(cfg, "PointNav", arch, c) for c in (2, 64, 512)]
        times = [resources.train_runtime_min(cfg, "PointNav", arch, c) for c in (2, 64, 512)]
        assert mems == sorted(mems) and mems[-1] > mems[0] and all(m % 500 == 0 for m in mems)
        assert times == sorted(times) and times[-1] > times[0]
    # a 512-episode PointNav window is 25,600 tokens x batch 16 x d_model 32 x 2 layers: gigabytes
    assert resources.train_mem_mb(cfg, "PointNav", "mamba", 512) > 4000


def test_gpu_is_requested_only_for_cuda(cfg):
    assert resources.gpus(cfg, "train") == 0
    cfg["train"]["device"] = "cuda"
    assert resources.gpus(cfg, "train") == 1 and resources.gpus(cfg, "evaluate") == 0


def test_a_fixed_memory_below_a_jobs_need_is_an_error_naming_the_job(cfg):
    cfg["resources"]["mem_mb"]["train"] = 2500  # enough for a short context, not for 512 episodes
    resources.check_train_requests(cfg, [("PointNav", "mamba", 2)])
    with pytest.raises(resources.ResourceError, match=r"resources.mem_mb.train = 2500 MB is below the ~\d+ MB that train PointNav mamba ctx 512"):
        resources.check_train_requests(cfg, [("PointNav", "mamba", 2), ("PointNav", "mamba", 512)])


def test_workflow_stops_before_submitting_a_job_that_asks_too_little(tmp_path):
    smoke = yaml.safe_load((REPO / "workflow/configs/smoke.yaml").read_text())
    smoke["resources"] = {"mem_mb": {"train": 100}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(smoke))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                          "--configfile", str(tmp_path / "c.yaml"), "-n"], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    line = [x for x in run.stderr.splitlines() if x.startswith("adbench:")]
    assert line and "resources.mem_mb.train = 100 MB is below" in line[0] and "train PointNav" in line[0], run.stderr[-2000:]
