"""RL^2: recurrence across episodes, reset between trials, training == acting, resume, evaluation path."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from adbench import cli
from adbench.baselines.online import collect_trial, meta_train, run
from adbench.baselines.rl2 import RL2Config, RL2Policy, RL2Trainer
from adbench.evaluate import COLUMNS, COST_COLUMNS, evaluate_model
from adbench.tasks import BatchedTasks, split_tasks


def _policy(seed=0, obs_dim=2, act_dim=2):
    torch.manual_seed(seed)
    return RL2Policy(obs_dim, act_dim, hidden=32)


def _feed(policy, rewards, horizon=5):
    """Step one episode of identical observations and actions with the given rewards, then the first
    token of the next episode; returns that token's action mean (one row per reward sequence)."""
    k = rewards.shape[0]
    h = policy.init_state(k)
    obs, act = torch.zeros(k, 2), torch.full((k, 2), 0.3)
    with torch.no_grad():
        for t in range(horizon):
            start = torch.full((k,), float(t == 0))
            _, _, h = policy.step(obs, act, rewards[:, t], start, h)
        mean, _, h = policy.step(obs, act, rewards[:, -1], torch.ones(k), h)
    return mean, h


def test_episode_one_rewards_change_episode_two_actions():
    policy = _policy()
    rewards = torch.stack([torch.zeros(5), torch.full((5,), -1.0)])
    mean, h = _feed(policy, rewards)
    assert (h[0] - h[1]).abs().max() > 1e-2  # the memory differs by the rewards alone...
    assert (mean[0] - mean[1]).abs().max() > 1e-5  # ...and so do episode 2's actions (small at init: gain 0.01)
    same, h = _feed(policy, torch.stack([torch.zeros(5), torch.zeros(5)]))
    torch.testing.assert_close(same[0], same[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(h[0], h[1], rtol=0, atol=1e-6)


def test_hidden_state_is_reset_only_at_trial_start():
    family, horizon, episodes = "PointNav", 10, 3
    tasks, _ = split_tasks(family, 3, 1, 0)
    env = BatchedTasks(family, tasks, horizon)
    policy = _policy(1)
    gen = torch.Generator().manual_seed(0)
    first = collect_trial(env, policy, episodes, seed=0, update=0, generator=gen)
    second = collect_trial(env, policy, episodes, seed=0, update=1, generator=gen)
    for buf in (first, second):
        assert torch.count_nonzero(buf["hidden"][:, 0]) == 0  # a trial starts from zeros...
        for ep in range(1, episodes):
            assert torch.count_nonzero(buf["hidden"][:, ep * horizon]) > 0  # ...and carries across episodes
        assert torch.equal(buf["episode_start"][:, ::horizon], torch.ones(3, episodes))
        # the token's previous reward at an episode start is the previous episode's last reward
        assert torch.equal(buf["prev_reward"][:, horizon], buf["rewards"][:, horizon - 1])
    # a new trial does not see the previous one: its first step is the same function of the same input
    assert torch.equal(first["hidden"][:, 0], second["hidden"][:, 0])


def test_training_forward_equals_acting_steps():
    policy = _policy(2).double()
    b, n = 3, 7
    g = torch.Generator().manual_seed(0)
    obs, act = (
        torch.randn(b, n, 2, generator=g, dtype=torch.float64),
        torch.rand(b, n, 2, generator=g, dtype=torch.float64),
    )
    rew, start = torch.randn(b, n, generator=g, dtype=torch.float64), (torch.arange(n) % 3 == 0).double().expand(b, n)
    h0 = torch.randn(b, 32, generator=g, dtype=torch.float64)
    mean, value, h_seq = policy(obs, act, rew, start, h0)
    h = h0
    for t in range(n):
        m, v, h = policy.recurrent_step(obs[:, t], act[:, t], rew[:, t], start[:, t], h)
        torch.testing.assert_close(m, mean[:, t])
        torch.testing.assert_close(v, value[:, t])
    torch.testing.assert_close(h, h_seq)


def test_update_changes_the_policy_and_keeps_it_finite():
    tasks, _ = split_tasks("PointNav", 4, 1, 0)
    env = BatchedTasks("PointNav", tasks, 10)
    cfg = RL2Config(updates=2, trial_episodes=2, hidden=16, bptt_steps=5, minibatches=2, update_epochs=2)
    trainer = RL2Trainer(env.obs_dim, env.act_dim, env.num_tasks, cfg, seed=0)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    buf = collect_trial(env, trainer.policy, cfg.trial_episodes, 0, 0, trainer.generator)
    stats = trainer.update(buf)
    assert all(np.isfinite(v) for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


def test_meta_training_improves_pointnav_trials():
    """A short real run: the trial's mean return rises well above that of the untrained policy."""
    tasks, _ = split_tasks("PointNav", 16, 1, 0)
    cfg = RL2Config(
        updates=30, trial_episodes=4, hidden=64, learning_rate=3e-3, bptt_steps=25, update_epochs=4, minibatches=4
    )
    trainer = meta_train(RL2Trainer, "PointNav", tasks, 25, cfg, seed=0)
    first = np.mean([(m["first_return"] + m["last_return"]) / 2 for m in trainer.metrics[:3]])
    last = np.mean([(m["first_return"] + m["last_return"]) / 2 for m in trainer.metrics[-3:]])
    assert last > first + 3.0, (first, last)


def test_interrupted_meta_training_resumes_to_the_same_weights(tmp_path):
    tasks, _ = split_tasks("PointNav", 3, 1, 0)
    cfg = RL2Config(
        updates=4, trial_episodes=2, hidden=16, bptt_steps=10, minibatches=2, update_epochs=1, checkpoint_every=2
    )
    whole = meta_train(RL2Trainer, "PointNav", tasks, 10, cfg, seed=3)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        meta_train(RL2Trainer, "PointNav", tasks, 10, cfg, seed=3, checkpoint=ckpt, settings_digest="x", stop_after=3)
    assert ckpt.exists()
    resumed = meta_train(RL2Trainer, "PointNav", tasks, 10, cfg, seed=3, checkpoint=ckpt, settings_digest="x")
    for a, b in zip(whole.policy.state_dict().values(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.metrics == whole.metrics and resumed.env_steps == whole.env_steps


def test_rl2_trains_on_the_dataset_and_evaluates_through_the_ad_path(cfg, dataset, tmp_path):
    cfg["rl2"].update(updates=2, trial_episodes=2, hidden=16, bptt_steps=50)
    model = run(RL2Trainer, cfg, dataset, seed=0, out_dir=tmp_path / "rl2", progress=False)
    metrics = pd.read_csv(tmp_path / "rl2/metrics.csv")
    assert list(metrics["update"]) == [1, 2] and metrics["env_steps"].iloc[-1] == 2 * 8 * 2 * 50
    assert not (tmp_path / "rl2/checkpoint.pt").exists()
    evaluate_model(cfg, dataset, model, tmp_path / "eval.csv", tmp_path / "cost.csv")
    rows = pd.read_csv(tmp_path / "eval.csv")
    assert list(rows.columns) == COLUMNS
    assert set(rows["arch"]) == {"rl2"} and set(rows["context_episodes"]) == {0}
    assert rows["episode"].max() == cfg["evaluate"]["episodes"] - 1
    assert set(rows["control"]) == {"none", *cfg["evaluate"]["controls"]}
    cost = pd.read_csv(tmp_path / "cost.csv")
    assert list(cost.columns) == COST_COLUMNS and cost["train_env_steps"].iloc[0] == 2 * 8 * 2 * 50
    assert cost["source"].iloc[0] == "online"  # its own interaction, not the dataset's source


def test_bptt_segment_must_divide_the_trial(cfg, dataset, tmp_path, capsys):
    cfg["rl2"].update(updates=1, trial_episodes=1, bptt_steps=7)
    code = cli.main(
        [
            "baseline-train",
            "--baseline",
            "rl2",
            "--settings",
            json.dumps({"rl2": cfg["rl2"]}),
            "--dataset",
            str(dataset),
            "--seed",
            "0",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "rl2.bptt_steps (7) must divide" in err


def test_rl2_advantages_run_across_the_episodes_of_a_trial_and_stop_at_its_end():
    """Two trials of two 200-step episodes: GAE written as a plain loop with no cut at the episode
    boundary (step 199 bootstraps from step 200's value) and none after the trial's last step."""
    from adbench.baselines.online import trial_advantages, trial_ends

    gamma, lam = 0.9, 0.8
    rng = np.random.default_rng(3)
    rewards = torch.from_numpy(rng.normal(size=(2, 400)).astype(np.float32))
    values = torch.from_numpy(rng.normal(size=(2, 400)).astype(np.float32))
    expected = np.zeros((2, 400))
    for i in range(2):
        running = 0.0
        for t in reversed(range(400)):
            next_value = values[i, t + 1].item() if t + 1 < 400 else 0.0
            delta = rewards[i, t].item() + gamma * next_value - values[i, t].item()
            running = delta + (gamma * lam * running if t + 1 < 400 else 0.0)
            expected[i, t] = running
    np.testing.assert_allclose(trial_advantages(rewards, values, gamma, lam).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert trial_ends(2, 400).nonzero().tolist() == [[0, 399], [1, 399]]
