import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from adbench import cli, primed, train
from adbench.data import DatasetError
from adbench.data.sampler import make_tokens
from adbench.evaluate import COLUMNS, ModelPolicy
from adbench.evaluate import evaluated_tasks as held_out_tasks
from adbench.models import build, checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def mamba_model(smoke_config, dataset, tmp_path_factory):
    cfg = {**smoke_config, "train": {**smoke_config["train"], "steps": 4, "log_every": 2}}
    return train.run(cfg, dataset, "mamba", 2, 0, tmp_path_factory.mktemp("mamba"), progress=False)


def test_last_windows_are_each_tasks_last_episodes_at_the_stride(dataset):
    ids = [tid for tid, _ in held_out_tasks(dataset)]
    windows = primed.last_windows(dataset, ids[::-1], context_episodes=3, stride=5)
    with h5py.File(dataset) as f:
        episodes, horizon = int(f.attrs["episodes"]), int(f.attrs["horizon"])
        for i, tid in enumerate(ids[::-1]):
            for j, e in enumerate([episodes - 11, episodes - 6, episodes - 1]):
                got = windows["actions"][i, j * horizon : (j + 1) * horizon]
                np.testing.assert_array_equal(got, f["tasks"][tid]["actions"][0, e * horizon : (e + 1) * horizon])
            np.testing.assert_array_equal(windows["rewards"][i, -horizon:], f["tasks"][tid]["rewards"][0, -horizon:])
    assert windows["observations"].shape[:2] == (len(ids), 3 * horizon)


def test_a_window_longer_than_the_histories_is_refused(dataset):
    with pytest.raises(ValueError, match="spans 397 episodes"):
        primed.last_windows(dataset, ["test-0000"], context_episodes=5, stride=99)


def test_priming_steps_the_model_through_the_window_as_a_forward_pass_reads_it(dataset):
    """After priming, the next action is what the model predicts at the end of the whole sequence
    (window, then the new token) read in one forward pass."""
    torch.manual_seed(0)
    ids = [tid for tid, _ in held_out_tasks(dataset)][:2]
    windows = primed.last_windows(dataset, ids, context_episodes=2, stride=4)
    horizon = windows["rewards"].shape[1] // 2
    model = build("mamba", windows["observations"].shape[-1], windows["actions"].shape[-1], d_model=8).eval()
    policy = ModelPolicy(model, 2, sample=False)
    primed.prime(policy, windows, horizon)
    rng = np.random.default_rng(0)
    new = [rng.normal(size=s).astype(np.float32) for s in ((2, model.obs_dim), (2, model.act_dim), (2,))]
    action = policy(*new, np.ones(2, np.float32), None)
    tokens = make_tokens(windows["observations"], windows["actions"], windows["rewards"], horizon)
    seq = [torch.cat([tokens[k], torch.from_numpy(x)[:, None]], 1) for k, x in zip(("obs", "prev_action"), new[:2])]
    seq.append(torch.cat([tokens["prev_reward"], torch.from_numpy(new[2])[:, None]], 1))
    seq.append(torch.cat([tokens["episode_start"], torch.ones(2, 1)], 1))
    with torch.no_grad():
        mean, _ = model(*seq)
    np.testing.assert_allclose(action, mean[:, -1].numpy(), rtol=1e-4, atol=1e-5)
    unprimed = ModelPolicy(model, 2, sample=False)(*new, np.ones(2, np.float32), None)
    assert np.abs(action - unprimed).max() > 1e-3  # the window is in the state


def test_primed_evaluation_rows_and_the_other_tasks_window(cfg, dataset, mamba_model, tmp_path, monkeypatch):
    cfg["evaluate"].update(seeds=[0, 5])
    ids = [tid for tid, _ in held_out_tasks(dataset)]
    seen = []
    real_prime = primed.prime
    monkeypatch.setattr(primed, "prime", lambda p, w, h: (seen.append(w), real_prime(p, w, h)))
    primed.evaluate_primed(cfg, dataset, mamba_model, tmp_path / "p.csv", episodes=3)
    df = pd.read_csv(tmp_path / "p.csv")
    assert list(df.columns) == COLUMNS and len(df) == 2 * 2 * len(ids) * 3  # primings x seeds x tasks x episodes
    assert list(df["control"].unique()) == ["primed_own", "primed_other_task"]
    assert (df["context_episodes"] == 2).all() and np.isfinite(df["return"]).all()
    windows = primed.last_windows(dataset, ids, context_episodes=2, stride=cfg["dataset"]["episode_stride"])
    own, other = seen  # batch order: (eval seeds, tasks); the other task is the next one, cyclically
    n = len(ids)
    np.testing.assert_array_equal(own["observations"], np.concatenate([windows["observations"]] * 2))
    np.testing.assert_array_equal(other["actions"][:n], np.roll(windows["actions"], -1, axis=0))
    by = df.pivot_table(index=["eval_seed", "task", "episode"], columns="control", values="return")
    assert not np.allclose(by["primed_own"], by["primed_other_task"])  # the same episodes, another context


def test_cli_writes_the_primed_returns_and_refuses_a_checkpoint_without_a_stride(
    cfg, dataset, mamba_model, tmp_path, capsys
):
    settings = json.dumps({"evaluate": cfg["evaluate"]})
    args = ["primed", "--settings", settings, "--dataset", str(dataset), "--episodes", "2"]
    assert cli.main([*args, "--model", str(mamba_model), "--out", str(tmp_path / "p.csv")]) == 0
    df = pd.read_csv(tmp_path / "p.csv")
    assert len(df) == 2 * len(cfg["evaluate"]["seeds"]) * len(held_out_tasks(dataset)) * 2
    ckpt = checkpoint.load(mamba_model)
    del ckpt["meta"]["episode_stride"]
    checkpoint.save(tmp_path / "old.pt", ckpt)
    assert cli.main([*args, "--model", str(tmp_path / "old.pt"), "--out", str(tmp_path / "q.csv")]) == 2
    assert "not an AD model (no training stride)" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "q.csv").exists()


def test_a_model_of_other_dims_is_refused_before_priming(cfg, dataset, tmp_path):
    meta = {"horizon": 50, "context_episodes": 2, "seed": 0, "episode_stride": 4}
    save_checkpoint(tmp_path / "m.pt", build("mamba", 5, 2, d_model=16), "mamba", {"d_model": 16}, {"meta": meta})
    with pytest.raises(DatasetError, match=r"obs/act dims \(5, 2\).*\(2, 2\)"):
        primed.evaluate_primed(cfg, dataset, tmp_path / "m.pt", tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()


def test_acting_for_no_episodes_is_refused(cfg, dataset, mamba_model, tmp_path):
    with pytest.raises(ValueError, match="at least 1, got 0"):
        primed.evaluate_primed(cfg, dataset, mamba_model, tmp_path / "p.csv", episodes=0)
