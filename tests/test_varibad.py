"""VariBAD: the belief reads rewards, the VAE learns to decode them, the policy gradient leaves the
encoder alone, training resumes, and the trained policy runs through the AD evaluation path."""

import numpy as np
import pandas as pd
import pytest
import torch

from adbench.baselines import BASELINES, policy_from_checkpoint
from adbench.baselines.online import collect_trial, meta_train, run
from adbench.baselines.varibad import VAE_KEYS, VariBADConfig, VariBADPolicy, VariBADTrainer, consecutive_kl
from adbench.evaluate import COLUMNS, evaluate_model
from adbench.models import checkpoint
from adbench.tasks import BatchedTasks, split_tasks


def _policy(seed=0, obs_dim=2, act_dim=2):
    torch.manual_seed(seed)
    return VariBADPolicy(obs_dim, act_dim, hidden=32, latent_dim=3, policy_hidden=16, decoder_hidden=16)


def test_kl_of_consecutive_posteriors_matches_the_closed_form():
    # latent size 1: q_0 = N(1, 1) against the prior N(0, 1) -> 0.5; q_1 = q_0 -> 0;
    # q_2 = N(1, e^2) against q_1 = N(1, 1) -> 0.5 (-2 + e^2 - 1)
    belief = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 2.0]]], dtype=torch.float64)
    expected = [0.5, 0.0, 0.5 * (np.exp(2.0) - 3.0)]
    np.testing.assert_allclose(consecutive_kl(belief)[0].numpy(), expected, rtol=1e-12)


def test_the_belief_and_the_next_episodes_actions_depend_on_the_rewards_seen():
    policy = _policy()
    k, horizon = 2, 5
    rewards = torch.stack([torch.zeros(horizon), torch.full((horizon,), -1.0)])
    h = policy.init_state(k)
    obs, act = torch.zeros(k, 2), torch.full((k, 2), 0.3)
    with torch.no_grad():
        for t in range(horizon):
            _, _, h = policy.step(obs, act, rewards[:, t], torch.full((k,), float(t == 0)), h)
        mean, _, h = policy.step(obs, act, rewards[:, -1], torch.ones(k), h)
        belief = policy.belief(h)
    assert (belief[0] - belief[1]).abs().max() > 1e-3
    assert (mean[0] - mean[1]).abs().max() > 1e-6


def test_the_update_reads_the_same_beliefs_the_rollout_acted_on():
    """PPO recomputes the beliefs of a whole trial in one pass; they must be those of the step-by-step
    rollout, or the probability ratios would start away from 1."""
    tasks, _ = split_tasks("PointNav", 3, 1, 0)
    env = BatchedTasks("PointNav", tasks, 10)
    cfg = VariBADConfig(hidden=16, latent_dim=2, policy_hidden=8, decoder_hidden=8, trial_episodes=2)
    trainer = VariBADTrainer(env.obs_dim, env.act_dim, env.num_tasks, cfg, seed=0)
    buf = collect_trial(env, trainer.policy, cfg.trial_episodes, 0, 0, trainer.generator)
    with torch.no_grad():
        mean, value = trainer.policy.heads(buf["obs"], trainer.beliefs(buf))
        logp = torch.distributions.Normal(mean, trainer.policy.log_std.exp()).log_prob(buf["actions"]).sum(-1)
    torch.testing.assert_close(value, buf["values"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logp, buf["log_probs"], rtol=1e-4, atol=1e-4)


def test_the_policy_gradient_and_the_vae_train_disjoint_parts_that_cover_the_model():
    policy = _policy()
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    rl, encoder, decoder = (
        ids(policy.rl_parameters()),
        ids(policy.encoder_parameters()),
        ids(policy.decoder.parameters()),
    )
    assert not (rl & encoder) and not (rl & decoder) and not (encoder & decoder)
    assert rl | encoder | decoder == ids(policy.parameters())


def test_the_vae_learns_to_decode_the_trials_rewards_from_the_belief():
    """PointNav's reward depends on the goal: after VAE steps on a fixed rollout the reconstruction error
    falls, and it is lower with each trial's own late belief than with another task's."""
    tasks, _ = split_tasks("PointNav", 8, 1, 0)
    env = BatchedTasks("PointNav", tasks, 20)
    cfg = VariBADConfig(
        hidden=32,
        latent_dim=4,
        decoder_hidden=32,
        trial_episodes=3,
        vae_updates=1,
        vae_beliefs=8,
        vae_decode=64,
        vae_learning_rate=3e-3,
    )
    trainer = VariBADTrainer(env.obs_dim, env.act_dim, env.num_tasks, cfg, seed=1)
    buf = collect_trial(env, trainer.policy, cfg.trial_episodes, 0, 0, trainer.generator)
    trainer.observe(buf)
    losses = [trainer.vae_update(buf)[0] for _ in range(200)]
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    policy = trainer.policy
    with torch.no_grad():
        late = trainer.beliefs(buf)[:, -1, : cfg.latent_dim]  # each trial's posterior mean at its end
        executed = buf["actions"].clamp(-1, 1)
        target = policy.normalised_reward(buf["rewards"])

        def error(latent):
            return (
                (policy.decode(buf["obs"], executed, latent[:, None].expand(-1, buf["obs"].shape[1], -1)) - target) ** 2
            ).mean()

        own, other = error(late), error(late.roll(1, 0))
    assert own < 0.5 * other, (own, other)


def test_interrupted_meta_training_resumes_to_the_same_weights(tmp_path):
    tasks, _ = split_tasks("PointNav", 3, 1, 0)
    cfg = VariBADConfig(
        updates=4, trial_episodes=2, hidden=16, latent_dim=2, policy_hidden=8, decoder_hidden=8,
        vae_beliefs=2, vae_decode=8, vae_buffer=2, checkpoint_every=2, update_epochs=1,
    )  # fmt: skip
    whole = meta_train(VariBADTrainer, "PointNav", tasks, 10, cfg, seed=3)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        meta_train(
            VariBADTrainer, "PointNav", tasks, 10, cfg, seed=3, checkpoint=ckpt, settings_digest="x", stop_after=3
        )
    resumed = meta_train(VariBADTrainer, "PointNav", tasks, 10, cfg, seed=3, checkpoint=ckpt, settings_digest="x")
    for a, b in zip(whole.policy.state_dict().values(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.metrics == whole.metrics
    for a, b in zip(
        whole.vae_optimizer.state_dict()["state"].values(), resumed.vae_optimizer.state_dict()["state"].values()
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_the_vae_samples_the_last_rollouts_trials_at_an_annealed_rate():
    tasks, _ = split_tasks("PointNav", 3, 1, 0)
    env = BatchedTasks("PointNav", tasks, 10)
    cfg = VariBADConfig(
        updates=4, trial_episodes=2, hidden=16, latent_dim=2, policy_hidden=8, decoder_hidden=8,
        vae_beliefs=2, vae_decode=8, vae_buffer=2, update_epochs=1, vae_learning_rate=0.01,
    )  # fmt: skip
    trainer = VariBADTrainer(env.obs_dim, env.act_dim, env.num_tasks, cfg, seed=0)
    rollouts = []
    for i in range(3):
        buf = collect_trial(env, trainer.policy, cfg.trial_episodes, 0, i, trainer.generator)
        rollouts.append(buf)
        trainer.update(buf)
        trainer.observe(buf)
        assert trainer.vae_optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - i / 4))
        trainer.update_index += 1
    assert len(trainer.vae_trials) == 2  # the last two rollouts, oldest first
    for kept, rollout in zip(trainer.vae_trials, rollouts[1:]):
        assert all(torch.equal(kept[key], rollout[key]) for key in VAE_KEYS)
    batch = trainer.remember(rollouts[0])  # now the third and the first, as one batch
    assert torch.equal(batch["rewards"], torch.cat([rollouts[2]["rewards"], rollouts[0]["rewards"]]))


@pytest.mark.slow
def test_meta_training_improves_pointnav_trials():
    """A short real run (a few minutes): the trial's mean return over the last updates rises well above
    that of the first ones, once the VAE's belief tells the tasks apart."""
    tasks, _ = split_tasks("PointNav", 16, 1, 0)
    cfg = VariBADConfig(
        updates=30,
        trial_episodes=4,
        hidden=64,
        learning_rate=3e-3,
        vae_learning_rate=3e-3,
        vae_updates=16,
        vae_beliefs=8,
        vae_decode=64,
    )
    trainer = meta_train(VariBADTrainer, "PointNav", tasks, 25, cfg, seed=0)
    mid = [(m["first_return"] + m["last_return"]) / 2 for m in trainer.metrics]
    assert np.mean(mid[-10:]) > np.mean(mid[:3]) + 3.0, mid


def test_varibad_trains_on_the_dataset_and_evaluates_through_the_ad_path(cfg, dataset, tmp_path):
    cfg["varibad"].update(updates=2, trial_episodes=2, hidden=16, vae_beliefs=2, vae_decode=8)
    model = run(BASELINES["varibad"], cfg, dataset, seed=0, out_dir=tmp_path / "vb", progress=False)
    metrics = pd.read_csv(tmp_path / "vb/metrics.csv")
    assert list(metrics["update"]) == [1, 2] and set(metrics["arch"]) == {"varibad"}
    assert metrics[["reward_loss", "kl"]].notna().all().all()
    loaded = policy_from_checkpoint(checkpoint.load(model))
    assert isinstance(loaded, VariBADPolicy) and loaded.hidden == 16
    evaluate_model(cfg, dataset, model, tmp_path / "eval.csv", tmp_path / "cost.csv")
    rows = pd.read_csv(tmp_path / "eval.csv")
    assert list(rows.columns) == COLUMNS
    assert set(rows["arch"]) == {"varibad"} and set(rows["context_episodes"]) == {0}
    assert set(rows["control"]) == {"none", *cfg["evaluate"]["controls"]}
