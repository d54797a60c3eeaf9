"""The real Snakefile end to end on workflow/configs/smoke.yaml, in a temporary working directory."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from adbench import outputs
from adbench.data import validate_file
from adbench.models import load_checkpoint
from adbench.tables import SUMMARY_COLUMNS

from .conftest import REPO, SMOKE, snakemake_cli

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args, check=True) -> subprocess.CompletedProcess:
    run = snakemake_cli(workdir, "--configfile", str(SMOKE), *args)
    if check and run.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return run


def planned_jobs(workdir: Path, *args) -> dict:
    """{rule: count} from a dry run's job table."""
    out = snakemake(workdir, "-n", *args).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def test_smoke_outputs_exist_and_are_valid(smoke_run):
    results = smoke_run / "results"
    info = validate_file(results / "datasets/PointNav.h5")
    assert info["n_train"] == 8 and info["n_test"] == 4 and info["source"] == "ppo"
    info = validate_file(results / "datasets/HalfCheetahVel.h5")
    assert info["source"] == "noise_distill(task_ppo, search)" and info["horizon"] == 20
    assert info["expert_env_steps"] == 8 * 4 * 20  # training tasks x expert episodes x horizon
    for name in (
        "in_context_return",
        "source_learning_curves",
        "context_scaling",
        "cost",
        "task_inference",
        "aggregate_scores",
        "probability_of_improvement",
        "claims",
        "baseline_convergence",
    ):
        image = Image.open(results / f"figures/{name}.png")
        image.load()
        assert image.size[0] > 300
        assert (results / f"figures/{name}.pdf").read_bytes().startswith(b"%PDF")
    comparison = pd.read_csv(results / "tables/comparison.csv")
    ad_vs_ad = comparison[comparison["y"] == "transformer"]
    assert ad_vs_ad[["family", "context_episodes", "x"]].values.tolist() == [
        ["HalfCheetahVel", 2, "mamba"],
        ["PointNav", 2, "mamba"],
        ["all", 2, "mamba"],
    ]
    assert comparison["probability"].between(0, 1).all()
    improvement = pd.read_csv(results / "tables/source_improvement.csv").set_index(["family", "split"])
    assert improvement.loc[("PointNav", "train"), "histories"] == 8
    assert improvement.loc[("PointNav", "test"), "histories"] == 4
    summary = pd.read_csv(results / "tables/summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    # scores run from the strongest floor, which every row names; one training seed in the smoke config
    floors = summary[["random_return", "zero_return", "task_blind_return"]].max(axis=1)
    assert np.allclose(summary["floor_return"], floors) and (summary["training_seeds"] == 1).all()
    assert summary["switch_recovery_ci_low"].notna().all()
    verdicts = pd.read_csv(results / "tables/claims.csv")
    assert set(verdicts["claim"]) == {"mamba_beats_transformer", "longer_context_helps", "competitive_with_online"}
    # one training seed: no verdict; a family whose smoke-sized source does not beat its floor: no scale
    scaled = (
        summary.groupby("family")["source_final_return"].first() > summary.groupby("family")["floor_return"].first()
    )
    expected = np.where(verdicts["family"].map(scaled), "inconclusive", "undefined")
    assert verdicts["verdict"].tolist() == expected.tolist()
    assert summary["normalized_final_iqm"].isna().tolist() == (~summary["family"].map(scaled)).tolist()
    convergence = pd.read_csv(results / "tables/baseline_convergence.csv")
    assert set(convergence["family"]) == {"PointNav", "HalfCheetahVel"}
    assert set(convergence["baseline"]) == {"rl2", "varibad"}
    assert set(summary["arch"]) == {"mamba", "transformer", "rl2", "varibad"}
    online = verdicts[verdicts["claim"] == "competitive_with_online"]["comparison"]
    assert online.str.endswith("- rl2").any() and online.str.endswith("- varibad").any()
    assert set(summary["family"]) == {"PointNav", "HalfCheetahVel"}
    assert (summary["train_env_steps"] > 0).all()
    sources = summary[summary["context_episodes"] != 3].set_index(["family", "arch"])["source"]
    assert (
        sources[("PointNav", "mamba")] == "ppo"
        and sources[("HalfCheetahVel", "mamba")] == "noise_distill(task_ppo, search)"
    )
    assert sources[("HalfCheetahVel", "rl2")] == sources[("HalfCheetahVel", "varibad")] == "online"
    hcv = summary[(summary["family"] == "HalfCheetahVel") & (summary["context_episodes"] != 3)].set_index("arch")
    assert hcv.loc["mamba", "train_env_steps"] == 8 * 16 * 20 + 8 * 4 * 20  # histories + the expert's training
    inference = pd.read_csv(results / "tables/task_inference.csv")
    assert set(inference[inference["family"] == "HalfCheetahVel"]["model"]) == {
        "mamba ctx 2",
        "mamba ctx 3",
        "transformer ctx 2",
        "rl2",
        "varibad",
        "source",
        "random",
    }
    assert inference[inference["family"] == "HalfCheetahVel"]["target_correlation"].notna().all()
    summary = summary[summary["family"] == "PointNav"]
    rl2 = summary.set_index("arch").loc["rl2"]
    assert rl2["context_episodes"] == 0 and rl2["train_env_steps"] == 4 * 8 * 6 * 50  # updates x tasks x trial
    rl2_returns = pd.read_csv(results / "eval/PointNav/rl2-seed0.csv")
    assert set(rl2_returns["control"]) == {"none", "zero_reward", "other_task_reward", "task_switch"}
    assert rl2_returns["episode"].max() == 5
    for baseline in ("rl2", "varibad"):
        assert "env-steps/s" in (results / f"logs/train/PointNav/{baseline}-seed0.log").read_text()
    varibad = pd.read_csv(results / "train/PointNav/varibad-seed0/metrics.csv")
    assert len(varibad) == 4 and varibad[["reward_loss", "kl"]].notna().all().all()
    returns = pd.read_csv(results / "eval/PointNav/mamba-ctx2-seed0.csv")
    assert set(returns["control"]) == {"none", "zero_reward", "other_task_reward", "task_switch"}
    numeric = summary.select_dtypes("number").to_numpy()
    assert np.isfinite(numeric).all()
    for family, head in (("PointNav", "gaussian_mixture"), ("HalfCheetahVel", "clipped_gaussian")):  # the override's
        model, _ = load_checkpoint(results / f"train/{family}/mamba-ctx2-seed0/model.pt")
        assert model.head_kind == head
    for arch in ("mamba", "transformer"):
        assert (results / f"train/PointNav/{arch}-ctx2-seed0/metrics.csv").exists()
        assert (results / f"benchmarks/train/PointNav/{arch}-ctx2-seed0.tsv").exists()
        log = (results / f"logs/train/PointNav/{arch}-ctx2-seed0.log").read_text()
        assert "parameters" in log and "60/60" in log
        cost = pd.read_csv(results / f"eval/PointNav/{arch}-ctx2-seed0.cost.csv")
        assert cost["ms_per_step"].iloc[0] > 0
        assert cost["ms_per_step_first_episode"].iloc[0] > 0 and cost["ms_per_step_last_episode"].iloc[0] > 0
    assert not (results / "train/PointNav/transformer-ctx3-seed0").exists()  # beyond max_context: probed
    probe = pd.read_csv(results / "costs/PointNav/transformer-ctx3.csv").iloc[0]
    assert probe["context_episodes"] == 3 and probe["train_seconds_per_step"] > 0 and probe["ms_per_step"] > 0
    assert probe["tokens_per_s"] == pytest.approx(probe["batch"] * 3 * 50 / probe["train_seconds_per_step"])
    # the inference state at a full context: a KV cache grows with the context, Mamba's state does not
    transformer = pd.read_csv(results / "eval/PointNav/transformer-ctx2-seed0.cost.csv").iloc[0]
    assert probe["inference_batch"] == transformer["batch"]
    assert probe["state_mib"] == pytest.approx(1.5 * transformer["state_mib"])
    mamba = [pd.read_csv(results / f"eval/PointNav/mamba-ctx{c}-seed0.cost.csv")["state_mib"].iloc[0] for c in (2, 3)]
    assert mamba[0] == mamba[1] > 0
    assert summary[summary["arch"] == "transformer"]["context_episodes"].tolist() == [2]
    scaling = pd.read_csv(results / "tables/context_scaling.csv")
    pointnav = scaling[scaling["family"] == "PointNav"]
    assert pointnav[["arch", "context_episodes", "measured_by"]].values.tolist() == [
        ["mamba", 2, "training"],
        ["mamba", 3, "training"],
        ["transformer", 2, "training"],
        ["transformer", 3, "cost probe"],
    ]
    assert (scaling["train_seconds_per_step"] > 0).all() and (scaling["peak_mem_mib"] > 0).all()
    assert (scaling["inference_ms_per_step"] > 0).all() and (scaling["inference_state_mib"] > 0).all()
    trained = scaling[scaling["measured_by"] == "training"]
    assert (trained["train_minutes"] > 0).all() and trained["reward_driven_gain"].notna().all()


# what follows one family's dataset in the smoke config (either family): Mamba at 2 contexts, the transformer
# at one (its second is probed), RL^2 and VariBAD, their evaluations, the reference curves and the figures
DOWNSTREAM_OF_A_DATASET = {
    "train": 3,
    "cost_probe": 1,
    "rl2_train": 1,
    "varibad_train": 1,
    "evaluate": 5,
    "reference": 1,
    "figures": 1,
    "all": 1,
}


def test_rerun_after_success_does_nothing(smoke_run):
    assert planned_jobs(smoke_run) == {}


# every table but the one of measured times: a second run of the same config writes them byte for byte
RESULT_TABLES = [f"{name}.csv" for name in outputs.TABLES if name != "context_scaling"]


def test_deleting_a_dataset_reruns_only_what_depends_on_it_and_reproduces_the_tables(smoke_run):
    tables = smoke_run / "results/tables"
    before = {name: (tables / name).read_bytes() for name in RESULT_TABLES}
    evaluations = sorted((smoke_run / "results/eval/PointNav").glob("*-seed0.csv"))
    scores = {path.name: path.read_bytes() for path in evaluations}
    (smoke_run / "results/datasets/PointNav.h5").unlink()
    try:
        jobs = planned_jobs(smoke_run)
        assert jobs == {"dataset": 1, **DOWNSTREAM_OF_A_DATASET}
    finally:
        snakemake(smoke_run, "--cores", "2")
    assert planned_jobs(smoke_run) == {}
    # the dataset rebuilt from its histories, every model retrained and re-evaluated: the same numbers
    assert scores and {path.name: path.read_bytes() for path in evaluations} == scores
    for name in RESULT_TABLES:
        assert (tables / name).read_bytes() == before[name], f"{name} differs between two runs of one config"


def test_a_retrained_expert_reruns_its_familys_histories_and_what_follows(smoke_run):
    jobs = planned_jobs(smoke_run, "--forcerun", "expert")
    # HalfCheetahVel's histories: one shard of train and test tasks, one of validation tasks
    assert jobs == {"expert": 1, "histories": 2, "dataset": 1, **DOWNSTREAM_OF_A_DATASET}


def test_figures_regenerate_from_tables_alone(smoke_run):
    assert planned_jobs(smoke_run, "--forcerun", "figures") == {"figures": 1, "all": 1}


def _descendant(pid: int, marker: str) -> int | None:
    """A python process below `pid` whose command line contains `marker` (not the bash -c wrapper)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in map(int, children):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"python" in argv[0] and marker.encode() in b" ".join(argv):
            return child
        found = _descendant(child, marker)
        if found:
            return found
    return None


def test_killed_histories_job_resumes_to_the_same_dataset(tmp_path, dataset):
    """SIGKILL a running `histories` job; --rerun-incomplete finishes; the dataset equals an uninterrupted one."""
    import signal
    import time

    import h5py

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(SMOKE),
        "--cores",
        "1",
        "results/datasets/PointNav.h5",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline:
        victim = _descendant(proc.pid, " -m adbench histories")
        time.sleep(0.2)
    assert victim is not None, "no histories job started"
    time.sleep(1.0)  # let it get into the PPO loop
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=300) != 0  # Snakemake reports the killed job
    snakemake(tmp_path, "--cores", "2", "--rerun-incomplete", "results/datasets/PointNav.h5")
    with h5py.File(tmp_path / "results/datasets/PointNav.h5") as resumed, h5py.File(dataset) as reference:
        assert list(resumed["tasks"]) == list(reference["tasks"])
        for tid in reference["tasks"]:
            for name, data in reference["tasks"][tid].items():
                np.testing.assert_array_equal(resumed["tasks"][tid][name][...], data[...])
    assert not list((tmp_path / "results").rglob("*.tmp"))
