"""The batched PPO source: K learners that share nothing, and the pieces its speed rests on."""

import math

import numpy as np
import pytest
import torch

from adbench.sources.batched_nets import BatchedMLP, tanh
from adbench.sources.ppo import BatchedPPO, PPOConfig, next_values

from .conftest import REPO


def test_numpy_tanh_matches_torch_in_value_and_gradient():
    x = torch.randn(3, 40, 64, generator=torch.Generator().manual_seed(0)) * 3
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = tanh(a)
    torch.testing.assert_close(y, torch.tanh(b), rtol=0, atol=2e-7)
    g = torch.randn_like(x)
    y.backward(g)
    torch.tanh(b).backward(g)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6)


def test_padded_output_layer_computes_the_unpadded_network():
    net = BatchedMLP(2, [5, 8, 8, 3], out_gain=0.01, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 7, 5)
    ref = x
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        w, b = (w[..., :3], b[..., :3]) if i == 2 else (w, b)
        ref = torch.baddbmm(b, ref, w)
        ref = torch.tanh(ref) if i < 2 else ref
    assert net(x).shape == (2, 7, 3)
    torch.testing.assert_close(net(x), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(net.forward_numpy(x.numpy()), ref.detach().numpy(), atol=1e-6)
    assert net.weights[2].shape[-1] == BatchedMLP.OUT_PAD and not net.weights[2][..., 3:].any()


def _batch(k, n, obs_dim, act_dim, seed):
    g = torch.Generator().manual_seed(seed)
    end = torch.zeros(k, n, dtype=torch.bool)
    end[:, n // 2 - 1 :: n // 2] = True
    values = torch.randn(k, n, generator=g)
    return {
        "obs": torch.randn(k, n, obs_dim, generator=g).numpy(),
        "actions": torch.randn(k, n, act_dim, generator=g),
        "log_probs": torch.randn(k, n, generator=g) - 3,
        "values": values,
        "rewards": torch.randn(k, n, generator=g),
        "episode_end": end,
        "next_values": next_values(values, end, torch.zeros(k), {}),
    }


def test_learners_share_nothing_in_an_update():
    """Learner 0's update is the same whatever learner 1's data, and the padding stays zero."""
    cfg = PPOConfig(update_epochs=2, minibatches=4)
    results = []
    for other_seed in (1, 2):
        agent = BatchedPPO(2, 4, 3, cfg, seed=0)
        agent.obs_rms.update(np.zeros((2, 1, 4)))
        mine, other = _batch(1, 40, 4, 3, seed=0), _batch(1, 40, 4, 3, seed=other_seed)
        batch = {key: (np.concatenate if key == "obs" else torch.cat)([mine[key], other[key]]) for key in mine}
        agent.update(batch, lr_frac=1.0)
        results.append([p.detach().clone() for p in agent.params])
    for a, b in zip(*results):
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        assert not torch.equal(a[1], b[1])
    for net in (agent.actor, agent.critic):
        assert not net.weights[-1][..., net.out_dim :].any() and not net.biases[-1][..., net.out_dim :].any()


def test_log_prob_and_entropy_are_the_gaussian_ones():
    agent = BatchedPPO(2, 4, 3, PPOConfig(init_log_std=-0.3), seed=0)
    x, a = torch.randn(2, 5, 4), torch.randn(2, 5, 3)
    ref = torch.distributions.Normal(agent.actor(x), agent.log_std.exp())
    torch.testing.assert_close(agent.log_prob(x, a), ref.log_prob(a).sum(-1))
    torch.testing.assert_close(agent.entropy(), ref.entropy().sum(-1)[:, 0])


def test_act_returns_a_gaussian_sample_with_its_log_prob_and_the_critics_value():
    agent = BatchedPPO(2, 4, 3, PPOConfig(init_log_std=-0.3), seed=0)
    with torch.no_grad():
        agent.log_std[1] = 0.4  # the learners' stds differ
    obs = np.random.default_rng(1).normal(0.0, 2.0, (2, 4))
    action, log_prob, value = agent.act(obs)  # updates the normaliser first, then acts on it
    x = torch.from_numpy(agent._normalized(obs[:, None]))
    with torch.no_grad():
        ref = torch.distributions.Normal(agent.actor(x)[:, 0], agent.log_std.exp()[:, 0])
        expected_value = agent.critic(x)[:, 0, 0]
        np.testing.assert_allclose(log_prob, ref.log_prob(torch.from_numpy(action)).sum(-1), rtol=1e-5)
        np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-6)
    assert action.shape == (2, 3) and action.dtype == np.float32
    # many draws from one observation: the sample's mean and spread are the policy's
    agent.obs_rms.update = lambda x: None  # hold the normaliser still
    draws = np.stack([agent.act(obs)[0] for _ in range(4000)])
    np.testing.assert_allclose(draws.mean(0), ref.mean.numpy(), atol=0.06)
    np.testing.assert_allclose(draws.std(0), ref.stddev.numpy(), rtol=0.05)
    assert abs(np.corrcoef(draws[:, 0, 0], draws[:, 0, 1])[0, 1]) < 0.1  # independent noise per dimension
    assert abs(np.corrcoef(draws[:, 0, 0], draws[:, 1, 0])[0, 1]) < 0.1  # and per learner


def test_optimize_fits_the_critic_to_advantage_plus_value_and_anneals_the_step_size():
    # equal advantages normalise to zero (no policy gradient); a wide clip leaves the value loss unclipped
    cfg = PPOConfig(learning_rate=0.01, clip_coef=100.0, update_epochs=20, minibatches=2)
    agent = BatchedPPO(1, 3, 2, cfg, seed=0)
    obs = np.random.default_rng(0).normal(0.0, 1.0, (1, 64, 3))
    actions = torch.zeros(1, 64, 2)
    x = agent.normalize_obs(obs)
    old_log_probs = agent.log_prob(x, actions).detach()
    adv, values = torch.full((1, 64), 3.0), torch.full((1, 64), 2.0)
    for _ in range(5):
        stats = agent.optimize(obs, actions, old_log_probs, adv, values, lr_frac=1.0)
    assert agent.critic(x).detach().mean().item() == pytest.approx(5.0, abs=0.3)  # the return: adv + V
    assert stats["v_loss"] < 0.5 * 3.0**2 and stats["pg_loss"] == pytest.approx(0.0, abs=1e-6)
    agent.optimize(obs, actions, old_log_probs, adv, values, lr_frac=0.25)
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * cfg.learning_rate)
    # an entropy bonus, with nothing else to learn, widens the policy
    explorer = BatchedPPO(1, 3, 2, PPOConfig(learning_rate=0.01, ent_coef=0.1, vf_coef=0.0), seed=0)
    before = explorer.log_std.detach().clone()
    explorer.optimize(obs, actions, explorer.log_prob(x, actions).detach(), adv, values, lr_frac=1.0)
    assert (explorer.log_std.detach() > before).all()


def test_mean_action_is_the_actor_on_normalised_observations_and_leaves_the_normaliser():
    agent = BatchedPPO(2, 4, 3, PPOConfig(clip_obs=1.5), seed=0)
    rng = np.random.default_rng(0)
    agent.obs_rms.update(rng.normal(3.0, 2.0, (2, 50, 4)))
    mean, var = agent.obs_rms.mean.copy(), agent.obs_rms.var.copy()
    obs = rng.normal(3.0, 4.0, (2, 4))
    x = np.clip((obs - mean) / np.sqrt(var + 1e-8), -1.5, 1.5).astype(np.float32)
    expected = agent.actor(torch.from_numpy(x)[:, None]).detach().numpy()[:, 0]
    np.testing.assert_allclose(agent.mean_action(obs), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(agent.obs_rms.mean, mean)
    np.testing.assert_array_equal(agent.obs_rms.var, var)


@pytest.mark.parametrize("threads", [1, 2])
def test_ppo_histories_do_not_depend_on_physics_threads(threads):
    from adbench.sources import run_ppo
    from adbench.tasks import sample_tasks

    cfg = PPOConfig(rollout_episodes=1, update_epochs=1, minibatches=2)
    tasks = sample_tasks("HalfCheetahVel", 3, 0)
    ref = run_ppo("HalfCheetahVel", tasks, 20, 2, cfg, seed=0, threads=1)
    got = run_ppo("HalfCheetahVel", tasks, 20, 2, cfg, seed=0, threads=threads)
    assert ref["rewards"].shape == (3, 2 * 20) and ref["episode_returns"].shape == (3, 2)  # 20-step episodes
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key])


@pytest.fixture(scope="module")
def pointnav_expert():
    from adbench.sources import train_task_expert
    from adbench.tasks import sample_tasks

    cfg = PPOConfig(learning_rate=3e-3, rollout_episodes=2, minibatches=2, update_epochs=10)
    return train_task_expert("PointNav", sample_tasks("PointNav", 8, 0), 50, 60, cfg, seed=0)


def test_task_expert_learns_all_its_tasks_at_once(pointnav_expert):
    _, returns = pointnav_expert
    assert returns.shape == (8, 60)
    first, last = returns[:, :6].mean(1), returns[:, -6:].mean(1)
    assert (last > first).mean() >= 0.75 and last.mean() > first.mean() + 10


def test_task_expert_acts_on_the_task_it_is_told(pointnav_expert):
    """The same observation under two goals gives actions towards each goal: the features are used."""
    expert, _ = pointnav_expert
    obs = np.zeros((2, 2), np.float32)
    left, right = np.array([[-1.0, 0.0]], np.float32), np.array([[1.0, 0.0]], np.float32)
    action = expert.mean_action(obs, np.concatenate([left, right]))
    assert action[0, 0] < 0 < action[1, 0]


def test_task_expert_round_trips_through_its_state_dict(pointnav_expert):
    from adbench.sources import TaskExpert

    expert, _ = pointnav_expert
    copy = TaskExpert.from_state_dict(expert.state_dict())
    obs, feats = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32), np.ones((5, 2), np.float32)
    np.testing.assert_array_equal(copy.mean_action(obs, feats), expert.mean_action(obs, feats))


def test_a_fresh_task_expert_trains_on_a_new_draw_of_tasks_each_rollout(monkeypatch):
    """With fresh tasks every rollout after the first is on tasks the expert has not seen, the features it
    is told follow them, and the draw is seeded: the same call trains the same expert."""
    from adbench.sources import train_task_expert
    from adbench.tasks import BatchedTasks, sample_tasks

    told = []
    original = BatchedTasks.set_tasks

    def spy(self, rows, tasks):
        told.append([tuple(t["goal"]) for t in tasks])
        original(self, rows, tasks)

    monkeypatch.setattr(BatchedTasks, "set_tasks", spy)
    cfg = PPOConfig(learning_rate=3e-3, rollout_episodes=2, minibatches=2, update_epochs=2)
    given = sample_tasks("PointNav", 3, 0)
    runs = [train_task_expert("PointNav", given, 10, 8, cfg, seed=0, fresh_tasks=True) for _ in range(2)]
    draws, again = told[:3], told[3:]
    assert len(draws) == 3 and draws == again  # 4 rollouts: the first on the given tasks, then 3 draws
    seen = {tuple(t["goal"]) for t in given} | {g for d in draws for g in d}
    assert len(seen) == 12  # every draw is new
    (a, ra), (b, rb) = runs
    np.testing.assert_array_equal(ra, rb)
    obs, feats = np.zeros((2, 2), np.float32), np.array([[-1.0, 0.0], [1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(a.mean_action(obs, feats), b.mean_action(obs, feats))
    told.clear()
    fixed, _ = train_task_expert("PointNav", given, 10, 8, cfg, seed=0)
    assert not told and not np.array_equal(fixed.mean_action(obs, feats), a.mean_action(obs, feats))


def test_noise_distillation_with_a_task_expert_needs_the_expert():
    from adbench.sources import NoiseDistillConfig, run_noise_distill
    from adbench.tasks import sample_tasks

    with pytest.raises(ValueError, match="needs the trained PointNav expert"):
        run_noise_distill(
            "PointNav", sample_tasks("PointNav", 2, 0), 50, 4, NoiseDistillConfig(expert="task_ppo"), 0, PPOConfig()
        )


def test_noise_distillation_rolls_out_the_task_expert_with_annealed_noise(pointnav_expert):
    """Clean episodes at the end of a history are the expert's own actions; early ones are mostly noise."""
    from adbench.sources import NoiseDistillConfig, run_noise_distill
    from adbench.tasks import sample_tasks
    from adbench.tasks.inference import task_features

    expert, _ = pointnav_expert
    tasks = sample_tasks("PointNav", 3, 7)
    hist = run_noise_distill(
        "PointNav",
        tasks,
        50,
        10,
        NoiseDistillConfig(expert="task_ppo", clean_fraction=0.2),
        0,
        PPOConfig(),
        task_expert=expert,
    )
    obs, actions = hist["observations"].reshape(3, 10, 50, 2), hist["actions"].reshape(3, 10, 50, 2)
    feats = np.stack([task_features("PointNav", t) for t in tasks]).astype(np.float32)
    for i in range(3):
        clean = np.clip(expert.mean_action(obs[i, -1], np.repeat(feats[i : i + 1], 50, 0)), -1, 1)
        np.testing.assert_allclose(actions[i, -1], clean, atol=1e-6)
    returns = hist["episode_returns"]
    assert returns[:, -2:].mean() > returns[:, :2].mean()


def test_gaussian_noise_is_added_to_the_expert_action_with_the_annealed_scale():
    """Gaussian noise distillation: action = clip(expert + epsilon * noise_std * N(0, 1)); the spread around
    the expert falls with epsilon and is gone in the clean episodes."""
    from adbench.sources import NoiseDistillConfig, run_noise_distill
    from adbench.sources.noise_distill import epsilon
    from adbench.tasks import get_family, sample_tasks

    tasks = sample_tasks("PointNav", 4, 2)
    cfg = NoiseDistillConfig(expert="oracle", clean_fraction=0.2, noise="gaussian", noise_std=0.3)
    hist = run_noise_distill("PointNav", tasks, 50, 10, cfg, 0, PPOConfig())
    obs, actions = hist["observations"].reshape(4, 10, 50, 2), hist["actions"].reshape(4, 10, 50, 2)
    oracle = get_family("PointNav").oracle
    expert = np.stack([[oracle(tasks[i], o) for o in obs[i, e]] for i in range(4) for e in range(10)]).reshape(
        actions.shape
    )
    deviation = actions - np.clip(expert, -1, 1)
    inside = np.abs(actions) < 0.999  # where clipping did not cut the noise
    for e in range(10):
        d = deviation[:, e][inside[:, e]]
        scale = epsilon(e, 10, 0.2) * 0.3
        if scale == 0:
            assert np.abs(deviation[:, e]).max() < 1e-6
        else:
            assert 0.6 * scale < d.std() < 1.4 * scale and abs(d.mean()) < 0.3 * scale


def test_task_noise_tells_the_expert_other_tasks_early_and_the_true_task_late(pointnav_expert):
    """With task_noise, early episodes follow a mix of the true and a drawn task; clean episodes the true one."""
    from adbench.sources import NoiseDistillConfig, run_noise_distill
    from adbench.tasks import sample_tasks
    from adbench.tasks.inference import task_features

    expert, _ = pointnav_expert
    tasks = sample_tasks("PointNav", 3, 7)
    cfg = NoiseDistillConfig(expert="task_ppo", clean_fraction=0.2, noise="gaussian", noise_std=1e-9, task_noise=1.0)
    hist = run_noise_distill("PointNav", tasks, 50, 10, cfg, 0, PPOConfig(), task_expert=expert)
    obs, actions = hist["observations"].reshape(3, 10, 50, 2), hist["actions"].reshape(3, 10, 50, 2)
    feats = np.stack([task_features("PointNav", t) for t in tasks]).astype(np.float32)
    true_first = np.stack(
        [np.clip(expert.mean_action(obs[i, 0], np.repeat(feats[i : i + 1], 50, 0)), -1, 1) for i in range(3)]
    )
    true_last = np.stack(
        [np.clip(expert.mean_action(obs[i, -1], np.repeat(feats[i : i + 1], 50, 0)), -1, 1) for i in range(3)]
    )
    np.testing.assert_allclose(actions[:, -1], true_last, atol=1e-6)  # clean: the true task
    assert np.abs(actions[:, 0] - true_first).max() > 0.05  # first episode: another (drawn) task
    plain = run_noise_distill(
        "PointNav",
        tasks,
        50,
        10,
        NoiseDistillConfig(expert="task_ppo", noise="gaussian"),
        0,
        PPOConfig(),
        task_expert=expert,
    )
    again = run_noise_distill(
        "PointNav",
        tasks,
        50,
        10,
        NoiseDistillConfig(expert="task_ppo", noise="gaussian", task_noise=0.0),
        0,
        PPOConfig(),
        task_expert=expert,
    )
    np.testing.assert_array_equal(plain["actions"], again["actions"])  # 0 draws nothing: histories unchanged


class ToldDirection:
    """Stands in for AntDir's expert: acts out the direction it was told (its task features, cos and sin)
    on its first two action dimensions, and records the observation it saw."""

    family = "AntDir"

    def mean_action(self, obs, features):
        self.obs = obs
        return np.concatenate([features, np.zeros((len(obs), 6))], axis=1)


def test_the_steering_expert_tells_antdirs_expert_the_direction_to_the_goal():
    """AntGoal's observation is x, y followed by AntDir's; the steered expert sees AntDir's part and the
    direction from x, y to the goal, as AntDir's task features (cos, sin)."""
    from adbench.sources.noise_distill import steering

    walker = ToldDirection()
    goals = np.array([[3.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    obs = np.concatenate([np.array([[1.0, 0.0], [0.0, 3.0], [0.0, 0.0]]), np.arange(81.0).reshape(3, 27)], axis=1)
    action = steering(walker, goals)(obs)
    np.testing.assert_allclose(action[:, :2], [[1.0, 0.0], [0.0, -1.0], [-(0.5**0.5), -(0.5**0.5)]], atol=1e-6)
    np.testing.assert_array_equal(walker.obs, obs[:, 2:])


def test_networks_start_as_cleanrls_ppo():
    """Orthogonal layers: hidden gain sqrt(2), the critic's output gain 1 and the actor's 0.01, so that a
    fresh policy's mean is near zero and its first actions are the Gaussian's noise."""
    agent = BatchedPPO(2, 5, 3, PPOConfig(hidden=64), seed=0)
    for net, out_gain in ((agent.actor, 0.01), (agent.critic, 1.0)):
        for i, w in enumerate(net.weights):
            gain = out_gain if i == len(net.weights) - 1 else math.sqrt(2)
            for k in range(2):
                q = w[k, :, : (net.out_dim if i == len(net.weights) - 1 else w.shape[-1])].detach().double()
                # orthogonal: the shorter side's vectors are orthonormal, scaled by the gain
                gram = q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T
                torch.testing.assert_close(
                    gram, gain**2 * torch.eye(min(q.shape), dtype=torch.float64), atol=1e-5, rtol=0
                )
        assert not any(b.any() for b in net.biases)
    assert agent.critic.out_dim == 1 and agent.actor.out_dim == 3
    x = torch.randn(2, 100, 5, generator=torch.Generator().manual_seed(1))
    assert agent.actor(x).abs().max() < 0.05


def test_a_constant_observation_normalises_to_zero():
    agent = BatchedPPO(1, 2, 1, PPOConfig(), seed=0)
    # a coordinate that never moves (a locked joint): its running variance falls below the 1e-8 guard
    stream = np.stack([np.zeros(100_000), np.random.default_rng(0).normal(size=100_000)], -1)[None]
    for chunk in np.split(stream, 10, axis=1):
        agent.obs_rms.update(chunk)
    assert agent.obs_rms.var[0, 0] < 1e-8
    x = agent._normalized(stream[:, :5])
    assert np.isfinite(x).all() and np.all(x[..., 0] == 0.0)


def test_without_annealing_the_first_adam_step_is_the_configured_learning_rate():
    cfg = PPOConfig(learning_rate=0.002, anneal_lr=False, update_epochs=1, minibatches=1)
    agent = BatchedPPO(1, 3, 2, cfg, seed=0)
    obs = np.random.default_rng(0).normal(size=(1, 32, 3))
    actions = torch.randn(1, 32, 2, generator=torch.Generator().manual_seed(0))
    x = agent.normalize_obs(obs)
    old = agent.log_prob(x, actions).detach() + 0.01
    adv = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    values = torch.randn(1, 32, generator=torch.Generator().manual_seed(2))
    before = [p.detach().clone() for p in agent.params]
    agent.optimize(obs, actions, old, adv, values, lr_frac=0.1)  # ignored without annealing
    steps = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(agent.params, before)])
    # Adam's first step moves each parameter with a gradient by lr * g / (|g| + eps), at most lr
    assert steps.max().item() == pytest.approx(cfg.learning_rate, rel=1e-3)
    assert (steps <= cfg.learning_rate * (1 + 1e-5)).all()


def test_train_ppo_records_its_rollouts_and_updates_on_them_as_taken(monkeypatch):
    """What each PPO update receives is the rollout the history records: the same observations, the
    sampled actions whose clipped values were executed, the rewards scaled as a RewardScaler fed the
    same stream scales them, episode ends at every time limit, next values that chain inside an
    episode; one update per rollout, the step size annealed linearly."""
    from adbench.sources.ppo import RewardScaler, train_ppo
    from adbench.tasks import sample_tasks

    updates = []
    original = BatchedPPO.update

    def spy(self, batch, lr_frac):
        updates.append(({k: (v.copy() if isinstance(v, np.ndarray) else v.clone()) for k, v in batch.items()}, lr_frac))
        return original(self, batch, lr_frac)

    monkeypatch.setattr(BatchedPPO, "update", spy)
    cfg = PPOConfig(rollout_episodes=2, update_epochs=1, minibatches=2)
    tasks = sample_tasks("PointNav", 3, seed=0)
    horizon, episodes = 5, 6
    hist, _ = train_ppo("PointNav", tasks, horizon, episodes, cfg, seed=0)
    assert [lr for _, lr in updates] == pytest.approx([1.0, 2 / 3, 1 / 3])
    scaler, steps = RewardScaler(3, cfg.gamma, cfg.clip_reward), 2 * horizon
    for u, (batch, _) in enumerate(updates):
        window = slice(u * steps, (u + 1) * steps)
        np.testing.assert_array_equal(batch["obs"], hist["observations"][:, window])
        np.testing.assert_array_equal(np.clip(batch["actions"].numpy(), -1, 1), hist["actions"][:, window])
        ends = np.zeros((3, steps), bool)
        ends[:, horizon - 1 :: horizon] = True
        np.testing.assert_array_equal(batch["episode_end"].numpy(), ends)
        expected = np.stack(
            [scaler(hist["rewards"][:, u * steps + i].astype(np.float64), ends[:, i]) for i in range(steps)],
            1,
        )
        np.testing.assert_allclose(batch["rewards"].numpy(), expected, rtol=1e-5, atol=1e-6)
        inside = ~ends[:, :-1]
        np.testing.assert_array_equal(batch["next_values"][:, :-1][inside], batch["values"][:, 1:][inside])
        assert (batch["next_values"][ends] != 0).all()  # a time limit, not a termination: V(final observation)
    # PPO learns from the sampled actions, some outside the box; the environment got them clipped
    assert any((batch["actions"].abs() > 1).any() for batch, _ in updates)
    assert hist["episode_returns"].shape == (3, episodes)
    np.testing.assert_allclose(hist["episode_returns"], hist["rewards"].reshape(3, episodes, horizon).sum(-1))
    # the stored flags: every episode cut by the time limit at its last step, none terminated
    np.testing.assert_array_equal(hist["truncated"], np.tile(ends[:, :horizon], (1, episodes)))
    assert not hist["terminated"].any()


def test_ppo_logs_its_progress_and_steps_the_physics_on_the_threads_it_is_given(monkeypatch):
    """The histories job's log gets a bar named for the family and learner count that ends on the last
    episode's mean return; the batched physics gets the job's threads (one unless told)."""
    import io

    from adbench.sources import ppo
    from adbench.tasks import sample_tasks

    threads, original = [], ppo.BatchedTasks

    def spy(family, tasks, horizon, threads_given=1):
        threads.append(threads_given)
        return original(family, tasks, horizon, threads_given)

    monkeypatch.setattr(ppo, "BatchedTasks", spy)
    cfg, tasks, log = PPOConfig(rollout_episodes=2, update_epochs=1), sample_tasks("PointNav", 3, seed=0), io.StringIO()
    hist = ppo.run_ppo("PointNav", tasks, 5, 4, cfg, seed=0, progress=log)
    ppo.run_ppo("PointNav", tasks, 5, 2, cfg, seed=0, threads=2)
    ppo.train_ppo("PointNav", tasks, 5, 2, cfg, seed=0)
    assert threads == [1, 2, 1]
    assert "ppo PointNav x3" in log.getvalue()
    assert f"last_return={hist['episode_returns'][:, -1].mean():.1f}" in log.getvalue()


def test_each_epoch_takes_one_adam_step_per_minibatch():
    cfg = PPOConfig(update_epochs=3, minibatches=4)
    agent = BatchedPPO(2, 3, 2, cfg, seed=0)
    obs = np.random.default_rng(0).normal(size=(2, 40, 3))
    actions = torch.randn(2, 40, 2, generator=torch.Generator().manual_seed(0))
    old = agent.log_prob(agent.normalize_obs(obs), actions).detach()
    adv, values = torch.randn(2, 40, generator=torch.Generator().manual_seed(1)), torch.zeros(2, 40)
    agent.optimize(obs, actions, old, adv, values, lr_frac=1.0)
    assert {int(agent.optimizer.state[p]["step"]) for p in agent.params} == {3 * 4}


def test_each_epoch_visits_every_sample_once_in_its_minibatches(monkeypatch):
    from adbench.sources import ppo

    seen = []
    original = ppo.clipped_losses

    def spy(logp, old_logp, adv, *rest, **kwargs):
        seen.append(adv.detach().clone())
        return original(logp, old_logp, adv, *rest, **kwargs)

    monkeypatch.setattr(ppo, "clipped_losses", spy)
    cfg = PPOConfig(update_epochs=2, minibatches=4)
    agent = BatchedPPO(2, 3, 2, cfg, seed=0)
    obs = np.random.default_rng(0).normal(size=(2, 40, 3))
    actions = torch.randn(2, 40, 2, generator=torch.Generator().manual_seed(0))
    old = agent.log_prob(agent.normalize_obs(obs), actions).detach()
    adv = torch.arange(80.0).reshape(2, 40)  # every sample told apart by its advantage
    agent.optimize(obs, actions, old, adv, torch.zeros(2, 40), lr_frac=1.0)
    assert len(seen) == 2 * 4
    for epoch in (seen[:4], seen[4:]):
        assert torch.equal(torch.cat(epoch, 1).sort(1).values, adv)


def test_an_entropy_bonus_widens_the_policy_where_nothing_else_moves_it():
    """With zero advantages and a critic already exact, the only gradient is the entropy bonus's."""
    cfg = PPOConfig(update_epochs=1, minibatches=1, ent_coef=0.1, vf_coef=0.0)
    agent = BatchedPPO(2, 3, 2, cfg, seed=0)
    obs = np.random.default_rng(0).normal(size=(2, 8, 3))
    actions = torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(0))
    old = agent.log_prob(agent.normalize_obs(obs), actions).detach()
    before = agent.log_std.detach().clone()
    agent.optimize(obs, actions, old, torch.zeros(2, 8), torch.zeros(2, 8), lr_frac=1.0)
    assert (agent.log_std.detach() > before).all()


def test_a_history_length_that_is_not_whole_rollouts_is_refused():
    from adbench.sources.ppo import train_ppo
    from adbench.tasks import sample_tasks

    message = r"^source.episodes \(5\) must be a multiple of source.ppo.rollout_episodes \(2\)$"
    with pytest.raises(ValueError, match=message):
        train_ppo("PointNav", sample_tasks("PointNav", 2, 0), 5, 5, PPOConfig(rollout_episodes=2), seed=0)


def test_ppo_bootstraps_each_time_limit_cut_from_the_value_of_the_observation_the_episode_ended_in(monkeypatch):
    """train_ppo's rollouts, captured before each update (the critic and the observation normaliser held
    fixed, so that V can be recomputed): inside an episode the bootstrap target is V of the next step's
    observation; where the time limit cut the episode it is V of the episode's final observation (the
    one `step` returned, stored as final_observations), not of the step's own observation or the next
    episode's first."""
    from adbench.sources import ppo
    from adbench.sources.batched_nets import RunningMeanStd
    from adbench.tasks import sample_tasks

    batches = []
    monkeypatch.setattr(RunningMeanStd, "update", lambda self, x: None)
    monkeypatch.setattr(ppo.BatchedPPO, "update", lambda self, batch, lr_frac: batches.append(batch) or {})
    horizon, rollout = 10, 2
    cfg = PPOConfig(rollout_episodes=rollout, hidden=16)
    hist, agent = ppo.train_ppo("PointNav", sample_tasks("PointNav", 3, 1), horizon, 4, cfg, seed=5)
    assert len(batches) == 2
    for u, batch in enumerate(batches):
        steps = slice(u * rollout * horizon, (u + 1) * rollout * horizon)
        obs = hist["observations"][:, steps]
        values = np.stack([agent.value(obs[:, t]) for t in range(obs.shape[1])], 1)
        np.testing.assert_allclose(batch["values"].numpy(), values, rtol=1e-6)
        for t in range(rollout * horizon):
            got = batch["next_values"][:, t].numpy()
            if (t + 1) % horizon:
                np.testing.assert_allclose(got, values[:, t + 1], rtol=1e-6)
            else:  # the time limit: V(final observation)
                final = hist["final_observations"][:, u * rollout + t // horizon]
                np.testing.assert_allclose(got, agent.value(final), rtol=1e-6)
                assert not np.allclose(got, values[:, t])


class GoalExpert:
    """A stand-in task-conditioned expert on PointNav (its task features are the goal): heads for the goal
    it is told, and records what it was told (each step: the acting call, then the clean call for the
    true goal that `expert_actions` stores)."""

    family = "PointNav"

    def __init__(self):
        self.told = []

    def mean_action(self, obs, features):
        self.told.append(np.array(features))
        return np.clip((features - obs) / 0.1, -1.0, 1.0).astype(np.float32)


def _searching_histories(search: bool, expert=None):
    from adbench.sources.noise_distill import NoiseDistillConfig, run_noise_distill
    from adbench.tasks import sample_tasks

    tasks = sample_tasks("PointNav", 6, 2)
    cfg = NoiseDistillConfig(expert="task_ppo", noise="gaussian", noise_std=0.3, task_noise=1.0, search=search)
    hist = run_noise_distill(
        "PointNav", tasks, 20, 40, cfg, seed=3, ppo=PPOConfig(), task_expert=expert or GoalExpert()
    )
    return tasks, hist


def test_a_searching_source_finds_the_task_from_its_returns_without_being_told_it():
    """search: the told goal starts as a draw and moves to the best-returning one; by the clean tail the
    expert heads for a goal near the true one, and the return has risen from the first episodes'."""
    expert = GoalExpert()
    tasks, hist = _searching_histories(True, expert)
    goals = np.array([t["goal"] for t in tasks])
    acting = expert.told[0::2]
    first_told, last_told = acting[0], acting[-1]  # (tasks, 2) at the first and the last step
    assert np.linalg.norm(first_told - goals, axis=1).min() > 1e-3  # the true goal is not what it starts from
    assert np.median(np.linalg.norm(last_told - goals, axis=1)) < 0.25
    returns = hist["episode_returns"]
    assert returns[:, -4:].mean() > returns[:, :4].mean() + 3.0


def test_a_searching_source_keeps_what_earned_most():
    """The told goal of the clean tail (no draw mixed in) is the told goal of the best-returning episode
    before it, for every task."""
    expert = GoalExpert()
    _, hist = _searching_histories(True, expert)
    steps = 20
    told = np.stack(expert.told[0::2][::steps])  # (episodes, tasks, 2): each episode's told goal
    tail = told[-1]
    best = hist["episode_returns"][:, :-4].argmax(1)  # epsilon reaches 0 at episode 36 of 40
    np.testing.assert_allclose(tail, told[best, np.arange(len(best))], atol=1e-6)


def test_antdir_blends_stay_directions():
    from adbench.tasks.inference import project_features

    blend = 0.5 * np.array([[1.0, 0.0], [0.0, 1.0]]) + 0.5 * np.array([[0.0, 1.0], [0.0, -1.0]])
    out = project_features("AntDir", blend)
    np.testing.assert_allclose(out, [[np.sqrt(0.5), np.sqrt(0.5)], [0.0, 0.0]])  # the opposite pair stays 0
    np.testing.assert_array_equal(project_features("HalfCheetahVel", blend), blend)


def goal_from_rewards(next_positions: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """The PointNav goal g that rewards -|p' - g| imply (least squares on |p'|^2 - r^2 = 2 p'.g - |g|^2)."""
    design = np.column_stack([2 * next_positions, -np.ones(len(rewards))])
    solution = np.linalg.lstsq(design, (next_positions**2).sum(1) - rewards.astype(np.float64) ** 2, rcond=None)[0]
    return solution[:2]


def next_positions(hist: dict, learner: int, horizon: int) -> np.ndarray:
    """The x, y after each step of one history: the observation's first two entries (PointNav's whole
    observation; AntGoal's x, y)."""
    obs = hist["observations"][learner].reshape(-1, horizon, hist["observations"].shape[-1])
    after = np.concatenate([obs[:, 1:, :2], hist["final_observations"][learner][:, None, :2]], 1)
    return after.reshape(-1, 2).astype(np.float64)


@pytest.mark.parametrize("expert", ["oracle", "task_ppo"])
def test_counterfactuals_store_each_steps_reward_and_the_experts_action_under_other_tasks(expert):
    """counterfactuals: C: the recorded history is the one without them; for each of C other goals (one
    per history, the same at every step) the stored rewards are what each executed step earns under that
    goal, and the stored actions are the expert's for that goal at the recorded observation."""
    from adbench.sources.noise_distill import NoiseDistillConfig, run_noise_distill
    from adbench.tasks import get_family, sample_tasks

    tasks, horizon = sample_tasks("PointNav", 3, 5), 10
    settings = dict(expert=expert, noise="gaussian", noise_std=0.3)
    if expert == "task_ppo":
        settings["task_noise"] = 1.0
    plain, with_cf = (
        run_noise_distill(
            "PointNav",
            tasks,
            horizon,
            6,
            NoiseDistillConfig(**settings, counterfactuals=c),
            seed=2,
            ppo=PPOConfig(),
            task_expert=GoalExpert(),
        )
        for c in (0, 2)
    )
    for name, array in plain.items():
        np.testing.assert_array_equal(with_cf[name], array, err_msg=name)
    assert set(with_cf) - set(plain) == {"counterfactual_rewards", "counterfactual_actions"}
    assert with_cf["counterfactual_rewards"].shape == (3, 60, 2)
    assert with_cf["counterfactual_actions"].shape == (3, 60, 2, 2)
    act = (
        get_family("PointNav").oracle
        if expert == "oracle"
        else lambda task, o: GoalExpert().mean_action(o, np.array(task["goal"], np.float32))
    )
    goals = []
    for i, task in enumerate(tasks):
        after = next_positions(with_cf, i, horizon)
        for k in range(2):
            rewards = with_cf["counterfactual_rewards"][i, :, k]
            goal = goal_from_rewards(after, rewards)
            np.testing.assert_allclose(rewards, -np.linalg.norm(after - goal, axis=1), atol=1e-4)
            assert np.linalg.norm(goal - task["goal"]) > 0.05  # another task than the history's
            expected = np.stack([np.clip(act({"goal": goal.tolist()}, o), -1, 1) for o in with_cf["observations"][i]])
            np.testing.assert_allclose(with_cf["counterfactual_actions"][i, :, k], expected, atol=2e-3)
            goals.append(goal)
    assert min(np.linalg.norm(a - b) for j, a in enumerate(goals) for b in goals[j + 1 :]) > 0.05


def point_on_heading(start: np.ndarray, heading: np.ndarray, seen_from: np.ndarray, l1: float) -> np.ndarray:
    """The point start + s heading (s >= 0) at L1 distance `l1` from `seen_from`."""
    from scipy.optimize import brentq

    s = brentq(lambda s: np.abs(seen_from - (start + s * heading)).sum() - l1, 0.0, 12.0)
    return start + s * heading


def test_antgoals_counterfactuals_steer_towards_another_goal_and_pay_its_distance():
    """AntGoal's steered expert with counterfactuals: each stored counterfactual action heads from the ant's
    recorded x, y towards one other goal, the same at every step of a history, and each counterfactual
    reward is the executed step's under that goal: 1 - 0.1 |a|^2 - L1(x, y after the step, goal)."""
    from adbench.sources.noise_distill import NoiseDistillConfig, run_noise_distill
    from adbench.tasks import sample_tasks

    tasks, horizon = sample_tasks("AntGoal", 2, 4), 6
    cfg = NoiseDistillConfig(expert="steer", noise="gaussian", task_noise=1.0, counterfactuals=2)
    hist = run_noise_distill("AntGoal", tasks, horizon, 2, cfg, seed=1, ppo=PPOConfig(), task_expert=ToldDirection())
    goals = []
    for i, task in enumerate(tasks):
        after = next_positions(hist, i, horizon)
        before = hist["observations"][i][:, :2].astype(np.float64)
        actions = hist["actions"][i].astype(np.float64)
        for k in range(2):
            heading = hist["counterfactual_actions"][i, :, k, :2].astype(np.float64)
            distance = 1.0 - 0.1 * (actions**2).sum(1) - hist["counterfactual_rewards"][i, :, k]
            # the goal on the first step's heading at the first step's distance, then every step checked against it
            goal = point_on_heading(before[0], heading[0], after[0], distance[0])
            assert np.linalg.norm(goal) <= 3.0 + 1e-3 and np.linalg.norm(goal - task["goal"]) > 0.05
            np.testing.assert_allclose(distance, np.abs(after - goal).sum(1), atol=1e-3)
            to_goal = goal - before
            np.testing.assert_allclose(heading, to_goal / np.linalg.norm(to_goal, axis=1, keepdims=True), atol=1e-3)
            goals.append(goal)
    assert min(np.linalg.norm(a - b) for j, a in enumerate(goals) for b in goals[j + 1 :]) > 0.05


def test_counterfactuals_need_a_reward_that_the_task_changes_and_an_expert_told_any_task():
    from adbench.sources.noise_distill import NoiseDistillConfig, run_noise_distill
    from adbench.tasks import sample_tasks

    for family, expert in (("PointNav", "ppo"), ("Walker2dParams", "task_ppo")):
        with pytest.raises(
            ValueError, match=f"counterfactuals needs a family whose task .* got {family} and '{expert}'"
        ):
            run_noise_distill(
                family,
                sample_tasks(family, 2, 0),
                5,
                2,
                NoiseDistillConfig(expert=expert, counterfactuals=1),
                seed=0,
                ppo=PPOConfig(),
            )


def test_an_expert_is_defined_by_what_it_trains_on_not_by_how_its_histories_are_rolled_out():
    from adbench import config as cfglib
    from adbench.histories import expert_digest

    base = cfglib.load([REPO / "config.yaml"])
    digest = lambda override: expert_digest(cfglib.deep_merge(base, override))  # noqa: E731
    assert digest({"source": {"noise_distill": {"expert_tasks": "fresh"}}}) != expert_digest(base)
    assert digest({"tasks": {"n_train": 7}}) != expert_digest(base)
    assert digest({"source": {"noise_distill": {"noise_std": 2.0}}}) == expert_digest(base)
    assert digest({"tasks": {"n_val": 3}}) == expert_digest(base)
