import csv
import math
import shutil

import h5py
import pytest
import torch

from adbench import train
from adbench.data import DatasetError, validate_file
from adbench.models import load_checkpoint


@pytest.fixture
def tiny(cfg):
    cfg["train"].update(steps=12, checkpoint_every=4, log_every=4, warmup_steps=2, batch_size=4)
    cfg["model"].update(d_model=16, n_layers=1)
    return cfg


@pytest.mark.parametrize("arch", ["mamba", "transformer"])
def test_interrupted_run_resumes_to_identical_weights(tiny, dataset, tmp_path, arch):
    train.run(tiny, dataset, arch, 2, 0, tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny, dataset, arch, 2, 0, tmp_path / "cut", progress=False, stop_after=6)
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "model.pt").exists()
    train.run(tiny, dataset, arch, 2, 0, tmp_path / "cut", progress=False)
    a, _ = load_checkpoint(tmp_path / "whole" / "model.pt")
    b, _ = load_checkpoint(tmp_path / "cut" / "model.pt")
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()


def test_metrics_and_checkpoint_metadata(tiny, dataset, tmp_path):
    train.run(tiny, dataset, "mamba", 2, 3, tmp_path, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [4, 8, 12]
    assert all(float(r["tokens_per_s"]) > 0 and float(r["peak_mem_mib"]) > 0 for r in rows)
    assert {(r["family"], r["arch"], r["context_episodes"], r["seed"]) for r in rows} == {
        ("PointNav", "mamba", "2", "3")
    }
    _, ckpt = load_checkpoint(tmp_path / "model.pt", expect_arch="mamba")
    assert ckpt["meta"]["context_episodes"] == 2 and ckpt["meta"]["seed"] == 3 and ckpt["meta"]["horizon"] == 50
    assert ckpt["model_config"]["window"] == 100


def test_the_heldout_loss_is_logged_without_changing_the_training(tiny, dataset, tmp_path):
    """val_loss: the loss on windows of the validation tasks, every heldout_every steps; drawn from their own seed, so
    that the same run on a dataset without validation tasks ends with the same weights (and NaNs there)."""
    no_val = tmp_path / "no-val.h5"
    shutil.copy(dataset, no_val)
    with h5py.File(no_val, "r+") as f:
        for g in f["tasks"].values():
            if g.attrs["split"] == "val":
                g.attrs["split"] = "test"
    tiny["train"]["heldout_every"] = 8  # at steps 8 and 12 (the last) of the logs at 4, 8, 12
    train.run(tiny, dataset, "transformer", 2, 0, tmp_path / "with", progress=False)
    train.run(tiny, no_val, "transformer", 2, 0, tmp_path / "without", progress=False)
    with_val = list(csv.DictReader(open(tmp_path / "with" / "metrics.csv")))
    without = list(csv.DictReader(open(tmp_path / "without" / "metrics.csv")))
    assert [math.isfinite(float(r["val_loss"])) for r in with_val] == [False, True, True]
    assert all(math.isnan(float(r["val_loss"])) for r in without)
    assert [r["loss"] for r in with_val] == [r["loss"] for r in without]
    a, _ = load_checkpoint(tmp_path / "with" / "model.pt")
    b, _ = load_checkpoint(tmp_path / "without" / "model.pt")
    assert all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), b.state_dict().values()))
    # the logged value is the model's loss on those windows: the final model's, recomputed
    windows = train.heldout_windows(
        tiny,
        dataset,
        validate_file(dataset),
        2,
        train.derive_seed(0, "heldout-windows", "PointNav", "transformer", 2, 0),
    )
    assert len(windows) * tiny["train"]["batch_size"] >= train.HELDOUT_WINDOWS
    val_loss, reliance = train.heldout_losses(a, windows, torch.device("cpu"))
    assert val_loss == pytest.approx(float(with_val[-1]["val_loss"]), rel=1e-5)
    assert math.isnan(reliance) and math.isnan(float(with_val[-1]["val_reward_reliance"]))  # recorded target


def test_training_lowers_the_loss(cfg, dataset, tmp_path):
    cfg["train"].update(steps=60, log_every=10)
    train.run(cfg, dataset, "transformer", 2, 0, tmp_path, progress=False)
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "metrics.csv"))]
    assert losses[-1] < losses[0] - 0.2


def test_context_longer_than_any_history_fails_before_training(tiny, dataset, tmp_path):
    with pytest.raises(DatasetError, match="context of 50 episodes"):
        train.run(tiny, dataset, "mamba", 50, 0, tmp_path, progress=False)
    assert not (tmp_path / "model.pt").exists()


def test_cuda_request_without_cuda_is_a_clear_error(tiny, dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    tiny["train"]["device"] = "cuda"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        train.run(tiny, dataset, "mamba", 2, 0, tmp_path, progress=False)
