"""Scheduler requests: estimated from the config and the job's context, fixed values checked before submission."""

import re

import pytest
import yaml

from adbench import resources

from .conftest import REPO, SMOKE, snakemake_cli


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
    with pytest.raises(
        resources.ResourceError,
        match=r"resources.mem_mb.train = 2500 MB is below the ~\d+ MB that train PointNav mamba ctx 512",
    ):
        resources.check_train_requests(cfg, [("PointNav", "mamba", 2), ("PointNav", "mamba", 512)])


def test_workflow_stops_before_submitting_a_job_that_asks_too_little(tmp_path):
    smoke = yaml.safe_load(SMOKE.read_text())
    smoke["resources"] = {"mem_mb": {"train": 100}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(smoke))
    run = snakemake_cli(tmp_path, "--configfile", str(tmp_path / "c.yaml"), "-n", timeout=300)
    assert run.returncode != 0
    line = [x for x in run.stderr.splitlines() if x.startswith("adbench:")]
    assert line and "resources.mem_mb.train = 100 MB is below" in line[0] and "train PointNav" in line[0], run.stderr[
        -2000:
    ]


def test_paper_config_plans_the_full_experiment_with_per_job_requests(tmp_path):
    """`snakemake -n --profile workflow/profiles/slurm --configfile workflow/configs/paper.yaml`."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    profile, paper = str(REPO / "workflow/profiles/slurm"), str(REPO / "workflow/configs/paper.yaml")
    run = snakemake_cli(tmp_path, "--profile", profile, "--configfile", paper, "-n", timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", run.stdout.split("Job stats:")[1], re.M))
    assert {k: int(v) for k, v in stats.items()} == {
        "expert": 3,  # AntGoal's histories steer AntDir's expert
        "histories": 48,  # train and test shards, and the validation tasks' own
        "dataset": 4,
        "reference": 4,
        "rl2_train": 12,
        "train": 120,
        "evaluate": 132,
        "figures": 1,
        "all": 1,
        "total": 325,
    }
    jobs = re.split(r"^\[.*\]$", run.stdout, flags=re.M)  # one block per job, after its timestamp
    train = {
        re.search(r"output: results/train/(\S+)/model.pt", j).group(1): j
        for j in jobs
        if j.lstrip().startswith("rule train:")
    }
    mem = {k: int(re.search(r"mem_mb=(\d+)", j).group(1)) for k, j in train.items()}
    assert all("gpu=1" in j for j in train.values())
    assert mem["HalfCheetahVel/mamba-ctx64-seed0"] > mem["HalfCheetahVel/mamba-ctx4-seed0"]
    rl2 = [j for j in jobs if j.lstrip().startswith("rule rl2_train:")]
    assert rl2 and not any("gpu=1" in j for j in rl2)  # RL^2 steps MuJoCo on the CPU


def test_the_longest_jobs_start_first_when_cores_are_short(tmp_path):
    """The default's training and RL^2 jobs carry their runtime request as priority (makespan on 2 cores)."""
    run = snakemake_cli(tmp_path, "--configfile", str(REPO / "config.yaml"), "-n", timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    jobs = re.split(r"^\[.*\]$", run.stdout, flags=re.M)
    priority = {
        re.search(r"output: results/train/(\S+)/model.pt", j).group(1): int(re.search(r"priority: (\d+)", j).group(1))
        for j in jobs
        if j.lstrip().startswith(("rule train:", "rule rl2_train:"))
    }
    for family in ("PointNav", "HalfCheetahVel"):
        for arch in ("mamba", "transformer"):
            assert priority[f"{family}/{arch}-ctx8-seed0"] > priority[f"{family}/{arch}-ctx4-seed0"] > 0
        assert priority[f"{family}/rl2-seed0"] > priority[f"{family}/mamba-ctx4-seed0"]
    assert not any("priority:" in j for j in jobs if j.lstrip().startswith("rule evaluate:"))
