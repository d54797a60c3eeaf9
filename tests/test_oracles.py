"""Independent computations of what the benchmark's numbers rest on: each quantity recomputed from its
definition, on data with spread (unsorted, unequal, with episode ends in the middle)."""

import math

import h5py
import numpy as np
import pytest
import torch

from adbench.data import WindowSampler
from adbench.models import build
from adbench.sources.batched_nets import RunningMeanStd
from adbench.sources.ppo import RewardScaler, clipped_losses, gae, next_values


def test_gae_by_hand_with_a_time_limit_cut_and_a_termination():
    """Two learners, 5 steps. Learner 0: an episode cut by the time limit after step 1 (bootstrap from
    V(final obs) = 10), then one that runs on past the rollout (bootstrap from the last value 4).
    Learner 1: terminates after step 2 (no bootstrap), then a new episode."""
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 2.0, 0.5, -1.0, 3.0], [0.0, 1.0, 2.0, 1.0, -2.0]])
    values = torch.tensor([[0.5, 1.0, 2.0, 1.5, 0.0], [1.0, 0.0, 3.0, 2.0, 1.0]])
    end = torch.tensor([[False, True, False, False, False], [False, False, True, False, False]])
    last_value = torch.tensor([4.0, -1.0])
    final_values = {1: torch.tensor([10.0, 0.0])}  # learner 0 was cut at step 1; learner 1 terminated at 2
    nxt = next_values(values, end, last_value, final_values)
    expected_next = [[1.0, 10.0, 1.5, 0.0, 4.0], [0.0, 3.0, 0.0, 1.0, -1.0]]
    torch.testing.assert_close(nxt, torch.tensor(expected_next))
    adv = gae(rewards, values, nxt, end, gamma, lam)
    for k in range(2):
        expected, running = [0.0] * 5, 0.0
        for t in reversed(range(5)):
            delta = rewards[k, t].item() + gamma * expected_next[k][t] - values[k, t].item()
            running = delta + (0.0 if end[k, t] else gamma * lam * running)
            expected[t] = running
        torch.testing.assert_close(adv[k], torch.tensor(expected))
    # the advantage before an episode end does not see past it
    assert adv[0, 1].item() == pytest.approx(2.0 + 0.9 * 10.0 - 1.0)
    assert adv[1, 2].item() == pytest.approx(2.0 - 3.0)


def test_running_mean_std_equals_numpy_over_the_concatenated_stream():
    rng = np.random.default_rng(2)
    rms = RunningMeanStd(3, 4)
    chunks = [rng.normal(loc=k, scale=1 + k, size=(3, n, 4)) for k, n in enumerate((1, 7, 2, 30, 5))]
    for c in chunks:
        rms.update(c)
    stream = np.concatenate(chunks, axis=1)
    np.testing.assert_allclose(rms.mean, stream.mean(1), rtol=1e-4, atol=1e-6)  # up to the 1e-4 prior count
    np.testing.assert_allclose(rms.var, stream.var(1), rtol=1e-4)
    w = 1e-4 + stream.shape[1]  # exactly, with the prior (weight 1e-4, mean 0, variance 1) as one more point
    np.testing.assert_allclose(rms.var, (1e-4 + (stream**2).sum(1)) / w - (stream.sum(1) / w) ** 2, rtol=1e-9)


def test_reward_scaler_divides_by_the_std_of_the_discounted_return_so_far():
    rng = np.random.default_rng(3)
    gamma, steps = 0.9, 12
    scaler = RewardScaler(2, gamma, clip=100.0)
    rewards = rng.normal(size=(steps, 2)) * 3
    ends = np.zeros((steps, 2), bool)
    ends[4, 0] = ends[7, 1] = True
    returns, discounted = [], np.zeros(2)
    for t in range(steps):
        discounted = discounted * gamma + rewards[t]
        returns.append(discounted.copy())
        got = scaler(rewards[t], ends[t])
        seen = np.array(returns)  # every discounted return so far, per learner
        # their variance, with the running statistic's prior (weight 1e-4, mean 0, variance 1) as one more point
        w = 1e-4 + len(seen)
        var = (1e-4 + (seen**2).sum(0)) / w - (seen.sum(0) / w) ** 2
        np.testing.assert_allclose(got, np.clip(rewards[t] / np.sqrt(var + 1e-8), -100, 100), rtol=1e-6)
        discounted[ends[t]] = 0.0


@pytest.mark.parametrize("n", range(2, 12))
def test_other_task_derangement_has_no_fixed_point(n):
    rows = np.arange(3 * 2 * n).reshape(3, 2, n)
    deranged = np.roll(rows, -1, axis=2)  # as evaluate.rollout pairs tasks
    assert not np.any(deranged == rows)
    assert sorted(deranged.ravel()) == sorted(rows.ravel())  # a permutation: every task's rewards shown once


@pytest.mark.parametrize("k, c", [(4, 3), (1, 3), (2, 4), (2, None)])  # None: a window spanning every episode
def test_ad_window_is_every_kth_episode_with_previous_step_inputs(dataset, k, c):
    with h5py.File(dataset) as f:
        train = [tid for tid, g in f["tasks"].items() if g.attrs["split"] == "train"]
        histories, episodes = f["tasks"][train[0]]["rewards"].shape[0], int(f.attrs["episodes"])
    c = c or (episodes - 1) // k + 1
    sampler = WindowSampler(dataset, c, k, batch_size=6, seed=11)
    state = sampler.rng.bit_generator.state
    batch = sampler.sample()
    rng = np.random.default_rng()
    rng.bit_generator.state = state  # replay the sampler's draws
    tasks = rng.integers(len(train), size=6)
    hists = rng.integers(histories, size=6)
    starts = rng.integers(episodes - (c - 1) * k, size=6)
    h = sampler.horizon
    with h5py.File(dataset) as f:
        for b, (task, hist, e0) in enumerate(zip(tasks, hists, starts)):
            g = f["tasks"][train[task]]
            episodes = [e0 + j * k for j in range(c)]  # history episode e0 + j k is window episode j
            obs = np.concatenate([g["observations"][hist, e * h : (e + 1) * h] for e in episodes])
            act = np.concatenate([g["actions"][hist, e * h : (e + 1) * h] for e in episodes])
            rew = np.concatenate([g["rewards"][hist, e * h : (e + 1) * h] for e in episodes])
            np.testing.assert_array_equal(batch["obs"][b].numpy(), obs)
            np.testing.assert_array_equal(batch["action"][b].numpy(), act)
            # the token at step t carries the previous step's action and reward (zeros at the start):
            # never the reward of the action it is asked to predict
            np.testing.assert_array_equal(batch["prev_reward"][b, 1:].numpy(), rew[:-1])
            np.testing.assert_array_equal(batch["prev_action"][b, 1:].numpy(), act[:-1])
            assert batch["prev_reward"][b, 0] == 0 and not batch["prev_action"][b, 0].any()
            assert batch["episode_start"][b].nonzero().ravel().tolist() == [j * h for j in range(c)]
            assert batch["episode_start"][b].unique().tolist() == [0.0, 1.0]  # the flag evaluation feeds


def _loss_batch(length: int) -> dict:
    """Random AD tokens for a model with 3 observation and 2 action dimensions, two sequences."""
    return {
        "obs": torch.randn(2, length, 3),
        "prev_action": torch.randn(2, length, 2),
        "prev_reward": torch.randn(2, length),
        "episode_start": torch.zeros(2, length),
        "action": torch.rand(2, length, 2) * 2 - 1,
    }


def test_gaussian_loss_is_the_mean_negative_log_likelihood_per_action_dimension():
    torch.manual_seed(0)
    model = build("mamba", 3, 2, d_model=16, n_layers=1)
    batch = _loss_batch(7)
    mean, log_std = model(batch["obs"], batch["prev_action"], batch["prev_reward"], batch["episode_start"])
    nll = -torch.distributions.Normal(mean, log_std.exp()).log_prob(batch["action"])
    # the same up to the constant 0.5 log(2 pi) per dimension
    torch.testing.assert_close(model.loss(batch), nll.mean() - 0.5 * math.log(2 * math.pi))


def test_deterministic_head_loss_is_the_mean_squared_error():
    torch.manual_seed(0)
    model = build("transformer", 3, 2, d_model=16, n_layers=1, head="mse")
    batch = _loss_batch(5)
    mean, log_std = model(batch["obs"], batch["prev_action"], batch["prev_reward"], batch["episode_start"])
    assert log_std is None
    torch.testing.assert_close(model.loss(batch), ((mean - batch["action"]) ** 2).mean())


def test_scaled_rewards_are_clipped_on_both_sides():
    scaler = RewardScaler(2, 0.99, clip=0.5)
    for r in ([0.1, -0.1], [0.2, -0.2], [0.1, -0.1]):  # a small return std
        scaler(np.array(r), np.array([False, False]))
    out = scaler(np.array([1e4, -1e4]), np.array([False, False]))  # about +-2 return stds
    assert out.tolist() == [0.5, -0.5]


def test_ppo_clipped_losses_element_by_element():
    """The clipped surrogate and the clipped value loss written out per sample, in plain Python: the
    advantages normalised per learner (unbiased std), the ratio outside the clip range on both sides and
    for both signs of the advantage, the value moved beyond the clip both ways."""
    clip = 0.2
    logp = torch.tensor([[0.5, -0.4, 0.05, 0.3, -0.3, 0.0], [0.1, 0.2, -0.6, 0.4, 0.0, -0.1]], dtype=torch.float64)
    old = torch.zeros_like(logp)
    adv = torch.tensor([[1.0, 2.0, -1.5, -0.5, 3.0, 0.2], [-2.0, 0.5, 1.0, -1.0, 4.0, 0.7]], dtype=torch.float64)
    v_old = torch.tensor([[0.0, 1.0, -1.0, 2.0, 0.5, 0.0], [1.0, 0.0, 0.0, -2.0, 1.0, 3.0]], dtype=torch.float64)
    v = v_old + torch.tensor([[0.5, -0.5, 0.1, -0.1, 0.3, -0.3], [0.0, 0.25, -0.25, 1.0, -1.0, 0.15]])
    returns = torch.tensor([[1.0, 0.0, -2.0, 3.0, 0.0, 0.5], [2.0, -1.0, 1.0, -1.0, 0.0, 2.0]], dtype=torch.float64)
    pg, vl = clipped_losses(logp, old, adv, v, v_old, returns, clip, dims=(1,))
    for k in range(2):
        a = adv[k].tolist()
        mean = sum(a) / len(a)
        std = math.sqrt(sum((x - mean) ** 2 for x in a) / (len(a) - 1))
        pg_terms, v_terms = [], []
        for i in range(len(a)):
            norm_adv = (a[i] - mean) / (std + 1e-8)
            ratio = math.exp(logp[k, i].item() - old[k, i].item())
            clipped_ratio = min(max(ratio, 1 - clip), 1 + clip)
            pg_terms.append(-min(ratio * norm_adv, clipped_ratio * norm_adv))
            dv = min(max(v[k, i].item() - v_old[k, i].item(), -clip), clip)
            r = returns[k, i].item()
            v_terms.append(0.5 * max((v[k, i].item() - r) ** 2, (v_old[k, i].item() + dv - r) ** 2))
        assert pg[k].item() == pytest.approx(sum(pg_terms) / len(a), rel=1e-9)
        assert vl[k].item() == pytest.approx(sum(v_terms) / len(a), rel=1e-9)
    assert pg.shape == vl.shape == (2,)


def test_policy_tokens_are_the_normalised_inputs_embedded():
    """A token is embed((obs - mean) / std, previous action, (reward - mean) / std, episode start), with
    the training data's statistics; before they are set, the raw inputs."""
    torch.manual_seed(0)
    model = build("mamba", 3, 2, d_model=8, n_layers=1)
    assert (model.embed.in_features, model.embed.out_features) == (3 + 2 + 2, 8)
    obs, act = torch.randn(2, 4, 3), torch.randn(2, 4, 2)
    rew, start = torch.randn(2, 4), torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    w, b = model.embed.weight.detach(), model.embed.bias.detach()

    def embedded(o, r):
        return torch.cat([o, act, r[..., None], start[..., None]], -1) @ w.T + b

    torch.testing.assert_close(model.tokens(obs, act, rew, start), embedded(obs, rew))
    stats = {"obs_mean": [1.0, -2.0, 0.5], "obs_std": [2.0, 0.5, 4.0], "reward_mean": -3.0, "reward_std": 1.5}
    model.set_input_statistics(stats)
    o = (obs - torch.tensor(stats["obs_mean"])) / torch.tensor(stats["obs_std"])
    torch.testing.assert_close(model.tokens(obs, act, rew, start), embedded(o, (rew + 3.0) / 1.5))


def test_gaussian_head_squashes_the_log_std_into_its_bounds():
    from adbench.models.policy import LOG_STD_MAX, LOG_STD_MIN

    model = build("mamba", 3, 3, d_model=8, n_layers=1)
    assert (LOG_STD_MIN, LOG_STD_MAX) == (-5.0, 1.0)
    assert (model.head.in_features, model.head.out_features) == (8, 6)  # a mean and a log-std per action
    h = torch.randn(5, 8) * torch.tensor([0.1, 1.0, 100.0, 100.0, 100.0])[:, None]
    raw = model.head(h).detach()
    mean, log_std = model._head(h)
    torch.testing.assert_close(mean, raw[:, :3])
    # -5 + 3 (tanh(u) + 1): -2 at u = 0, tending to -5 and 1 at the extremes
    expected = torch.tensor([[-5.0 + 3.0 * (math.tanh(u) + 1.0) for u in row] for row in raw[:, 3:].tolist()])
    torch.testing.assert_close(log_std, expected)
    assert (log_std >= LOG_STD_MIN).all() and (log_std <= LOG_STD_MAX).all()
    deterministic = build("transformer", 3, 2, d_model=8, n_layers=1, head="mse")
    assert deterministic.head.out_features == 2 and deterministic._head(h)[1] is None
    from adbench.models.policy import ADPolicy

    assert ADPolicy(3, 2, torch.nn.Identity(), 8).head_kind == "gaussian"  # the default head
    with pytest.raises(ValueError, match="model.head"):
        build("mamba", 3, 2, d_model=8, n_layers=1, head="beta")
