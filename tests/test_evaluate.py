import numpy as np
import pandas as pd
import pytest
import torch

from adbench import train
from adbench.data import DatasetError
from adbench.evaluate import COLUMNS, ModelPolicy, evaluate_model, evaluate_references, rollout
from adbench.models import build, load_checkpoint


@pytest.fixture(scope="module")
def models(smoke_config, dataset, tmp_path_factory):
    out = {}
    for arch in ("mamba", "transformer"):
        cfg = {**smoke_config, "train": {**smoke_config["train"], "steps": 4, "log_every": 2}}
        out[arch] = train.run(cfg, dataset, arch, 2, 0, tmp_path_factory.mktemp(arch), progress=False)
    return out


@pytest.mark.parametrize("arch", ["mamba", "transformer"])
def test_evaluation_runs_longer_than_the_training_context(cfg, dataset, models, tmp_path, arch):
    cfg["evaluate"].update(episodes=7, seeds=[0, 3])  # the context is 2 episodes
    evaluate_model(cfg, dataset, models[arch], tmp_path / "e.csv", progress=False)
    df = pd.read_csv(tmp_path / "e.csv")
    assert list(df.columns) == COLUMNS
    assert len(df) == 2 * 4 * 7  # eval seeds x test tasks x episodes
    assert set(df["task"]) == {f"test-{i:04d}" for i in range(4)}
    assert (df["arch"] == arch).all() and (df["context_episodes"] == 2).all()
    assert np.isfinite(df["return"]).all() and (df["return"] < 0).all()


def test_evaluation_is_reproducible(cfg, dataset, models, tmp_path):
    for name in ("a.csv", "b.csv"):
        evaluate_model(cfg, dataset, models["mamba"], tmp_path / name, progress=False)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_references_hold_random_and_the_source_curve(cfg, dataset, tmp_path):
    evaluate_references(cfg, dataset, tmp_path / "ref.csv", progress=False)
    df = pd.read_csv(tmp_path / "ref.csv")
    rnd, src = df[df["arch"] == "random"], df[df["arch"] == "source"]
    assert len(rnd) == len(cfg["evaluate"]["seeds"]) * 4 * cfg["evaluate"]["episodes"]
    assert len(src) == (8 + 4) * cfg["source"]["episodes"]  # train and test tasks' histories
    # the source learns on held-out tasks too; random stays near where the source started
    test_src = src[src["task"].str.startswith("test-")]
    last = cfg["source"]["episodes"] - cfg["source"]["episodes"] // 10
    assert test_src[test_src["episode"] >= last]["return"].mean() > rnd["return"].mean() + 5


def test_mamba_cost_per_step_is_flat_in_episodes(dataset):
    """The recurrent state has a fixed size: late steps cost what early steps cost."""
    model = build("mamba", 2, 2, d_model=16)
    tasks = [{"goal": [0.0, 1.0]}] * 4
    policy = ModelPolicy(model, 4, sample=True)
    rollout("PointNav", tasks, 50, 2, [0], policy)
    early = policy.step_seconds / policy.steps
    policy.step_seconds, policy.steps = 0.0, 0
    rollout("PointNav", tasks, 50, 20, [0], policy)
    late = policy.step_seconds / policy.steps
    assert all(s[1].shape == (4, 32, 16) for s in policy.state)
    assert late < 3 * early


def test_model_and_dataset_dims_must_match(cfg, dataset, tmp_path):
    from adbench.models import save_checkpoint
    model = build("mamba", 5, 2, d_model=16)
    save_checkpoint(tmp_path / "m.pt", model, "mamba", {"d_model": 16}, {"meta": {"horizon": 50, "context_episodes": 2, "seed": 0}})
    with pytest.raises(DatasetError, match=r"obs/act dims \(5, 2\).*\(2, 2\)"):
        evaluate_model(cfg, dataset, tmp_path / "m.pt", tmp_path / "e.csv", progress=False)


def test_sampling_uses_the_predicted_std(dataset, models):
    model, _ = load_checkpoint(models["mamba"])
    mean, log_std = torch.zeros(1000, 2), torch.full((1000, 2), np.log(0.3))
    actions = model.act(mean, log_std, sample=True, generator=torch.Generator().manual_seed(0))
    assert actions.std().item() == pytest.approx(0.3, rel=0.1)
    assert torch.equal(model.act(mean, log_std, sample=False), mean)
