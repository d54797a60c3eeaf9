import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from adbench.claims import claims, verdict
from adbench.figures import make_all
from adbench.measures import edge
from adbench.scores import best_floor, floor_levels, task_levels
from adbench.tables import (
    PROBED,
    SCALING_COLUMNS,
    SUMMARY_COLUMNS,
    TRAINED,
    baseline_convergence,
    compare,
    context_scaling,
    inference_costs,
    inference_summary,
    source_improvement,
    summarize,
)

from .conftest import REPO


def _table(arch, ctx, slope, episodes=10, tasks=6, seeds=(0, 1), level=-50.0, control="none"):
    rows = []
    for s in seeds:
        for t in range(tasks):
            for e in range(episodes):
                rows.append(
                    {
                        "family": "PointNav",
                        "arch": arch,
                        "context_episodes": ctx,
                        "seed": s,
                        "eval_seed": 0,
                        "control": control,
                        "task": f"test-{t:04d}",
                        "episode": e,
                        "return": level + slope * e + 0.1 * t,
                    }
                )
    return pd.DataFrame(rows)


def _refs():
    rnd = _table("random", 0, 0.0).assign(context_episodes=0)
    src = _table("source", 0, 1.0, episodes=40, seeds=(0,)).assign(eval_seed=-1)
    return pd.concat([rnd, src])


def test_edges_are_a_tenth_of_the_episodes_at_least_one():
    assert edge(24) == 3 and edge(5) == 1 and edge(10) == 1 and edge(11) == 2


def test_summary_gain_and_normalisation():
    models = pd.concat([_table("mamba", 4, 2.0), _table("transformer", 4, 0.0)])
    s = summarize(models, _refs()).set_index("arch")
    assert s.loc["mamba", "gain"] == pytest.approx(18.0)  # last episode minus first, slope 2
    assert s.loc["mamba", "gain_ci_low"] > 0
    assert s.loc["transformer", "gain"] == pytest.approx(0.0)
    # random = -50 (+ task offsets), source final = its last 4 episodes: normalised 0 and 1 anchor the scale
    rnd_level = -50 + 0.25
    src_final = -50 + 37.5 + 0.25
    assert s.loc["transformer", "normalized_final_iqm"] == pytest.approx(
        (-50 + 0.25 - rnd_level) / (src_final - rnd_level), abs=0.02
    )


def test_reward_driven_gain_is_true_minus_other_task_final_return():
    models = pd.concat(
        [
            _table("mamba", 4, 2.0),
            _table("mamba", 4, 2.0, control="zero_reward"),
            _table("mamba", 4, 0.5, control="other_task_reward"),
        ]
    )
    s = summarize(models, _refs()).set_index("arch")
    assert s.loc["mamba", "gain"] == pytest.approx(18.0)
    assert s.loc["mamba", "zero_reward_gain"] == pytest.approx(18.0)
    assert s.loc["mamba", "other_task_gain"] == pytest.approx(4.5)
    assert s.loc["mamba", "reward_driven_gain"] == pytest.approx(2.0 * 9 - 0.5 * 9)  # final episode is 9
    assert s.loc["mamba", "reward_driven_ci_low"] > 0


def test_make_all_writes_a_figure_and_tables(tmp_path):
    pd.concat([_table("mamba", 4, 1.0), _table("rl2", 0, 0.5)]).to_csv(tmp_path / "m.csv", index=False)
    _refs().to_csv(tmp_path / "r.csv", index=False)
    metrics = pd.DataFrame(
        [
            {
                "family": "PointNav",
                "arch": a,
                "context_episodes": c,
                "seed": 0,
                "step": s,
                "loss": 0.1,
                "lr": 1e-3,
                "tokens_per_s": 1000.0 / c,
                "seconds_per_step": 0.01 * c,
                "peak_mem_mib": 300.0 * c,
            }
            for a in ("mamba", "transformer")
            for c in (2, 4)
            for s in (10, 20)
        ]
    )
    costs = pd.DataFrame(
        [
            {
                "family": "PointNav",
                "arch": a,
                "context_episodes": c,
                "seed": 0,
                "batch": 8,
                "ms_per_step": c * 0.5,
                "train_env_steps": 1000,
                "source": "ppo",
                "episode_stride": 4,
            }
            for a in ("mamba", "transformer")
            for c in (2, 4)
        ]
        + [
            {
                "family": "PointNav",
                "arch": "rl2",
                "context_episodes": 0,
                "seed": 0,
                "batch": 8,
                "ms_per_step": 0.2,
                "train_env_steps": 5_000_000,
                "source": "online",
            }
        ]
    )
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    costs.to_csv(tmp_path / "costs.csv", index=False)
    make_all(
        [tmp_path / "m.csv"],
        [tmp_path / "r.csv"],
        tmp_path,
        [tmp_path / "metrics.csv"],
        [tmp_path / "costs.csv"],
    )
    for name in (
        "in_context_return",
        "source_learning_curves",
        "context_scaling",
        "cost",
        "aggregate_scores",
        "probability_of_improvement",
        "baseline_convergence",  # no baseline's training metrics given: AD's points alone
    ):
        assert Image.open(tmp_path / f"figures/{name}.png").size[0] > 100
        assert (tmp_path / f"figures/{name}.pdf").read_bytes().startswith(b"%PDF")
    assert pd.read_csv(tmp_path / "tables/baseline_convergence.csv").empty
    comparison = pd.read_csv(tmp_path / "tables/comparison.csv")
    assert comparison[["x", "y"]].values.tolist() == [["mamba", "rl2"]]  # the one AD model against the baseline
    summary = pd.read_csv(tmp_path / "tables/summary.csv")
    assert list(summary.columns)[:5] == ["family", "arch", "context_episodes", "source", "train_env_steps"]
    summary = summary.set_index("arch")
    assert summary.loc["mamba", "train_env_steps"] == 1000 and summary.loc["rl2", "train_env_steps"] == 5_000_000
    assert summary.loc["mamba", "source"] == "ppo" and summary.loc["rl2", "source"] == "online"
    refs = _refs()
    assert summary.loc["mamba", "random_return"] == pytest.approx(refs[refs["arch"] == "random"]["return"].mean())
    assert summary.loc["rl2", "gain"] == pytest.approx(0.5 * 9)  # last episode minus first (one-episode edges)
    md = (tmp_path / "tables/summary.md").read_text()
    assert md.startswith("| family |") and "5,000,000" in md
    scaling = pd.read_csv(tmp_path / "tables/context_scaling.csv")
    assert scaling[["arch", "context_episodes"]].values.tolist() == [["mamba", 4]]  # the one AD model evaluated
    assert scaling["train_minutes"].iloc[0] == pytest.approx(20 * 0.04 / 60)


def test_source_improvement_counts_histories_that_rose():
    refs = pd.concat(
        [
            _table("source", 0, 1.0, episodes=20, tasks=3, seeds=(0,)),
            _table("source", 0, -1.0, episodes=20, tasks=2, seeds=(0,)).assign(
                task=lambda d: d["task"].str.replace("test", "train")
            ),
        ]
    )
    table = source_improvement(refs).set_index("split")
    assert table.loc["test", "histories"] == 3 and table.loc["test", "improved"] == 3
    assert table.loc["train", "histories"] == 2 and table.loc["train", "improved"] == 0


def test_source_improvement_against_the_first_and_last_tenth_of_each_history():
    rng = np.random.default_rng(3)
    # two families of different history lengths: 25 episodes (a tenth is 3) and 7 (a tenth rounds up to 1)
    histories = {("HalfCheetahVel", 25): ["test-0000", "test-0001", "train-0000"], ("PointNav", 7): ["test-0000"]}
    returns, rows = {}, []
    for (family, n), tasks in histories.items():
        for task in tasks:
            for seed in (0, 1):
                r = rng.normal(0.0, 10.0, n) + np.linspace(0.0, 15.0, n)
                if (family, task, seed) == ("HalfCheetahVel", "test-0001", 1):
                    r[:] = 4.0  # a flat history: its last tenth equals its first, so it did not improve
                returns[family, task, seed] = r
                rows += [
                    {"family": family, "arch": "source", "context_episodes": 0, "seed": seed, "eval_seed": 0}
                    | {"control": "none", "task": task, "episode": e, "return": r[e]}
                    for e in range(n)
                ]
    table = source_improvement(pd.DataFrame(rows).sample(frac=1.0, random_state=1)).set_index(["family", "split"])
    assert set(table.columns) >= {"histories", "improved", "first_return", "last_return"}
    for family, n in histories:
        k = max(1, int(np.ceil(0.1 * n)))
        for split in ("test", "train"):
            runs = [r for (f, t, _), r in returns.items() if f == family and t.startswith(split)]
            if not runs:
                continue
            first, last = np.array([r[:k].mean() for r in runs]), np.array([r[n - k :].mean() for r in runs])
            row = table.loc[(family, split)]
            assert row["histories"] == len(runs) and row["improved"] == (last > first).sum()
            assert row["first_return"] == pytest.approx(first.mean())
            assert row["last_return"] == pytest.approx(last.mean())
    assert table.loc[("HalfCheetahVel", "test"), "improved"] < table.loc[("HalfCheetahVel", "test"), "histories"]


def _inference_rows(model_arch, ctx, targets, achieved_of, episodes=10, quantity="forward_velocity"):
    return pd.DataFrame(
        [
            {
                "family": "HalfCheetahVel",
                "arch": model_arch,
                "context_episodes": ctx,
                "seed": 0,
                "eval_seed": 0,
                "control": control,
                "task": f"test-{j:04d}",
                "episode": e,
                "quantity": quantity,
                "target": t,
                "achieved": achieved_of(t, e, control),
                "error": abs(achieved_of(t, e, control) - t),
            }
            for control in ("none", "other_task_reward")
            for j, t in enumerate(targets)
            for e in range(episodes)
        ]
    )


def test_task_inference_summary_reads_the_final_episodes_of_true_reward_runs():
    targets = [0.3, 2.1, 1.2, 2.8, 0.9]  # not sorted
    # achieved approaches 0.8 * target over the episodes; the control runs do something else entirely
    achieved = lambda t, e, control: 0.8 * t * e / 9 if control == "none" else 1.0  # noqa: E731
    df = pd.concat(
        [
            _inference_rows("mamba", 4, targets, achieved),
            _inference_rows("source", 0, targets, lambda t, e, c: t + 0.1, episodes=50),
        ]
    )
    table = inference_summary(df).set_index("model")
    # final 10%: episode 9 of 10 (achieved 0.8 t), episodes 45..49 of the source's 50 (t + 0.1)
    assert table.loc["mamba ctx 4", "final_error"] == pytest.approx(np.mean([0.2 * t for t in targets]))
    assert table.loc["mamba ctx 4", "target_correlation"] == pytest.approx(1.0)
    assert table.loc["source", "final_error"] == pytest.approx(0.1)
    assert table.loc["mamba ctx 4", "units"] == 5


def test_task_inference_correlation_is_circular_for_directions():
    targets = [0.2, 6.1, 3.0, 4.5]
    df = _inference_rows("mamba", 4, targets, lambda t, e, c: (t + 0.3) % (2 * np.pi), quantity="direction_of_travel")
    table = inference_summary(df)
    # a constant rotation keeps the circular correlation at 1 across the 0 / 2 pi wrap
    assert table["target_correlation"].iloc[0] == pytest.approx(1.0)
    assert np.isnan(table["final_achieved"].iloc[0])  # a mean of angles is meaningless


def _levels_refs(random_by_task: dict, source_by_task: dict, episodes=20) -> pd.DataFrame:
    rows = [
        {
            "family": "F",
            "arch": "random",
            "context_episodes": 0,
            "seed": 0,
            "eval_seed": s,
            "control": "none",
            "task": t,
            "episode": e,
            "return": r + (1 if e % 2 else -1),
        }  # spread around the level
        for t, r in random_by_task.items()
        for s in (0, 1)
        for e in range(4)
    ]
    rows += [
        {
            "family": "F",
            "arch": "source",
            "context_episodes": 0,
            "seed": 0,
            "eval_seed": -1,
            "control": "none",
            "task": t,
            "episode": e,
            "return": r if e >= episodes - 2 else r - 500,
        }  # only the last 10% count
        for t, r in source_by_task.items()
        for e in range(episodes)
    ]
    return pd.DataFrame(rows)


def test_normalised_score_uses_each_tasks_own_random_and_source_levels():
    # an easy task (source far above random) and a hard one: one family-wide level would misplace both
    refs = _levels_refs(
        {"test-0000": -300.0, "test-0001": -100.0, "test-0002": -200.0},
        {"test-0000": -20.0, "test-0001": -80.0, "test-0002": -100.0},
    )
    finals = {"test-0000": -160.0, "test-0001": -80.0, "test-0002": -150.0}
    models = pd.DataFrame(
        [
            {
                "family": "F",
                "arch": "mamba",
                "context_episodes": 4,
                "seed": 0,
                "eval_seed": 0,
                "control": "none",
                "task": t,
                "episode": e,
                "return": f,
            }
            for t, f in finals.items()
            for e in range(10)
        ]
    )
    s = summarize(models, refs).iloc[0]
    scores = np.array([(-160 + 300) / 280, (-80 + 100) / 20, (-150 + 200) / 100])  # 0.5, 1.0, 0.5
    assert s["normalized_final_iqm"] == pytest.approx(stats.trim_mean(scores, 0.25))
    assert s["optimality_gap"] == pytest.approx(1 - np.minimum(scores, 1).mean())
    assert s["random_return"] == pytest.approx(-200.0) and s["source_final_return"] == pytest.approx(
        np.mean([-20, -80, -100])
    )


def test_a_task_the_source_did_not_learn_is_divided_by_the_floor():
    from adbench.scores import MIN_GAP_FRACTION

    refs = _levels_refs(
        {"test-0000": -300.0, "test-0001": -100.0, "test-0002": -200.0},
        {"test-0000": -100.0, "test-0001": -110.0, "test-0002": -100.0},
    )
    levels = task_levels(refs).set_index("task")
    median_gap = np.median([200.0, 10.0, 100.0])  # |source - random| per task
    assert levels.loc["test-0000", "gap"] == pytest.approx(200.0)
    assert levels.loc["test-0001", "gap"] == pytest.approx(MIN_GAP_FRACTION * median_gap)  # source below random
    assert levels.loc["test-0002", "gap"] == pytest.approx(100.0)


def test_a_rows_confidence_intervals_do_not_depend_on_the_other_rows():
    alone = summarize(_table("mamba", 4, 2.0), _refs()).set_index("arch")
    together = summarize(pd.concat([_table("mamba", 4, 2.0), _table("transformer", 4, 0.5)]), _refs()).set_index("arch")
    cols = ["gain_ci_low", "gain_ci_high", "normalized_ci_low", "normalized_ci_high"]
    assert alone.loc["mamba", cols].tolist() == together.loc["mamba", cols].tolist()


def _two_family_models(mamba_final, transformer_final):
    """PointNav and a copy named F2: mamba and transformer at context 4, flat curves at the given finals."""
    frames = []
    for family in ("PointNav", "F2"):
        for arch, final in (("mamba", mamba_final), ("transformer", transformer_final)):
            frames.append(_table(arch, 4, 0.0, level=final).assign(family=family))
    return pd.concat(frames)


def test_compare_gives_p_mamba_beats_transformer_per_family_and_over_families():
    table = compare(_two_family_models(-10.0, -40.0)).set_index("family")
    assert sorted(table.index) == ["F2", "PointNav", "all"]
    assert (table["x"] == "mamba").all() and (table["y"] == "transformer").all()
    assert (table["context_episodes"] == 4).all()
    assert table.loc["all", "tasks"] == 12 and table.loc["PointNav", "tasks"] == 6 and table.loc["all", "runs"] == 2
    assert table["probability"].tolist() == [1.0, 1.0, 1.0]  # every mamba run above every transformer run
    even = compare(_two_family_models(-25.0, -25.0))
    assert even["probability"].tolist() == [0.5, 0.5, 0.5] and (even["ci_low"] == 0.5).all()


def test_compare_pools_only_the_families_that_have_both_models():
    models = _two_family_models(-10.0, -40.0)
    models = models[~((models["family"] == "F2") & (models["arch"] == "transformer"))]  # F2 has mamba alone
    table = compare(models)
    assert table[["family", "x", "y"]].values.tolist() == [["PointNav", "mamba", "transformer"]]  # no F2, no "all"
    assert table["probability"].tolist() == [1.0]


def test_compare_against_a_direct_mann_whitney_count_on_overlapping_runs():
    """Runs of both models overlap task by task: P(mamba > transformer) is the share of (mamba run,
    transformer run) pairs where mamba's final return is higher, averaged over tasks (the normalised
    score is an increasing map of the final return per task, so the order is the same)."""
    rng = np.random.default_rng(11)
    seeds, tasks, episodes = (0, 1, 2, 3), 3, 10  # more runs than tasks
    shifts = {"mamba": 3.0, "transformer": 0.0}
    finals = {arch: rng.normal(shift, 8.0, (len(seeds), tasks)) for arch, shift in shifts.items()}
    models = pd.DataFrame(
        [
            {"family": "PointNav", "arch": arch, "context_episodes": 4, "seed": s, "eval_seed": 0}
            | {"control": "none", "task": f"test-{t:04d}", "episode": e, "return": finals[arch][i, t] - 5.0 * (e < 9)}
            for arch in finals
            for i, s in enumerate(seeds)
            for t in range(tasks)
            for e in range(episodes)
        ]
    ).sample(frac=1.0, random_state=2)
    row = compare(models).iloc[0]
    x, y = finals["mamba"], finals["transformer"]
    direct = np.mean([(x[:, t, None] > y[None, :, t]).mean() for t in range(tasks)])
    assert 0.55 < direct < 0.95  # overlapping, not separated
    assert row["probability"] == pytest.approx(direct)
    assert row["ci_low"] < row["probability"] < row["ci_high"]
    assert (row["runs"], row["tasks"], row["context_episodes"]) == (4, 3, 4)
    assert compare(models[models["arch"] == "mamba"]).empty  # nothing to compare, columns kept
    assert list(compare(models[models["arch"] == "mamba"]).columns) == list(row.index)


def test_compare_needs_every_task_to_have_every_run():
    models = _two_family_models(-10.0, -40.0)
    models = models[~((models["task"] == "test-0003") & (models["seed"] == 1) & (models["arch"] == "mamba"))]
    with pytest.raises(ValueError, match=r"tasks \['test-0003'\] lack some"):
        compare(models)


def test_task_inference_numbers_against_a_direct_computation():
    """Achieved values with spread: Pearson r, the mean achieved and the error of the final episodes
    computed directly; the circular r by Jammalamadaka and SenGupta's formula, written out here."""
    rng = np.random.default_rng(5)
    targets = [0.3, 2.1, 1.2, 2.8, 0.9, 1.7]
    noise = {t: rng.normal(0, 0.4) for t in targets}
    df = _inference_rows("mamba", 4, targets, lambda t, e, c: 0.7 * t + noise[t] + 0.01 * e)
    row = inference_summary(df).iloc[0]
    achieved = np.array([0.7 * t + noise[t] + 0.09 for t in targets])  # episode 9, the final 10% of 10
    assert row["target_correlation"] == pytest.approx(np.corrcoef(targets, achieved)[0, 1])
    assert 0.3 < row["target_correlation"] < 0.99
    assert row["final_achieved"] == pytest.approx(achieved.mean())
    assert row["final_error"] == pytest.approx(np.abs(achieved - np.array(targets)).mean())
    angles = [0.2, 6.1, 3.0, 4.5, 1.4]
    offsets = {a: rng.normal(0, 0.5) for a in angles}
    df = _inference_rows(
        "mamba", 4, angles, lambda t, e, c: (t + offsets[t]) % (2 * np.pi), quantity="direction_of_travel"
    )
    got = inference_summary(df)["target_correlation"].iloc[0]
    a, b = np.array(angles), np.array([(t + offsets[t]) % (2 * np.pi) for t in angles])
    sa = np.sin(a - np.arctan2(np.sin(a).mean(), np.cos(a).mean()))
    sb = np.sin(b - np.arctan2(np.sin(b).mean(), np.cos(b).mean()))
    assert got == pytest.approx((sa * sb).sum() / np.sqrt((sa**2).sum() * (sb**2).sum()))
    assert 0.3 < got < 0.999
    constant = inference_summary(_inference_rows("mamba", 4, [1.0, 1.0], lambda t, e, c: t + e))
    assert np.isnan(constant["target_correlation"].iloc[0])  # one target: no correlation to speak of
    two = inference_summary(_inference_rows("mamba", 4, [1.0, 2.0], lambda t, e, c: 3 - t)).iloc[0]
    assert two["target_correlation"] == pytest.approx(-1.0)  # two targets are enough for a correlation
    assert (two["family"], two["model"], two["quantity"]) == ("HalfCheetahVel", "mamba ctx 4", "forward_velocity")


def test_a_task_without_references_is_named():
    models = _table("mamba", 4, 1.0)
    refs = _refs()
    refs = refs[refs["task"] != "test-0002"]
    with pytest.raises(ValueError, match=r"no floor or source reference for tasks \['test-0002'\]"):
        summarize(models, refs)


def _metrics(arch, ctx, seed, seconds_per_step, peak=(500.0, 700.0, 600.0)):
    return pd.DataFrame(
        {
            "family": "HalfCheetahVel",
            "arch": arch,
            "context_episodes": ctx,
            "seed": seed,
            "step": [50, 100, 150],
            "seconds_per_step": seconds_per_step,
            "peak_mem_mib": list(peak),
        }
    )


def test_context_scaling_table_sums_training_time_and_compares_with_mamba():
    metrics = pd.concat(
        [
            _metrics("mamba", 4, 0, [2.0, 1.0, 1.2]),
            _metrics("mamba", 4, 1, [2.0, 1.4, 1.2]),
            _metrics("transformer", 4, 0, [5.0, 3.0, 3.4], peak=(900.0, 800.0, 100.0)),
            _metrics("mamba", 8, 0, [3.0, 2.0, 2.0]),
        ]
    ).sample(frac=1.0, random_state=0)  # rows in no order
    summary = pd.DataFrame(
        {
            "family": "HalfCheetahVel",
            "arch": ["transformer", "mamba", "mamba", "rl2", "mamba"],
            "context_episodes": [4, 8, 4, 0, 16],
            "reward_driven_gain": [10.0, 20.0, 30.0, 40.0, 50.0],
            "normalized_final_iqm": [0.1, 0.2, 0.3, 0.4, 0.5],
        }
    )
    probes = pd.DataFrame(
        {
            "family": ["HalfCheetahVel"],
            "arch": ["transformer"],
            "context_episodes": [8],
            "train_seconds_per_step": [9.0],
            "peak_mem_mib": [2048.0],
            "tokens_per_s": [1.0],
            "inference_batch": [144],
            "ms_per_step": [40.0],
            "state_mib": [96.0],
        }
    )
    costs = pd.DataFrame(
        {
            "family": "HalfCheetahVel",
            "arch": ["mamba", "rl2", "mamba", "transformer"],
            "context_episodes": [4, 0, 4, 4],
            "seed": [1, 0, 0, 0],
            "ms_per_step": [9.0, 9.0, 9.0, 9.0],  # over the whole evaluation: not what the table reports
            "ms_per_step_first_episode": [3.0, 1.0, 3.0, 5.0],
            "ms_per_step_last_episode": [3.5, 1.0, 2.5, 20.0],
            "state_mib": [1.5, 0.1, 1.5, 48.0],
            "source": ["ppo", "online", "ppo", "ppo"],
        }
    )
    t = context_scaling(summary, metrics, probes, costs)
    assert list(t.columns) == SCALING_COLUMNS
    assert list(zip(t["arch"], t["context_episodes"], t["measured_by"])) == [
        ("mamba", 4, TRAINED),
        ("mamba", 8, TRAINED),
        ("mamba", 16, TRAINED),
        ("transformer", 4, TRAINED),
        ("transformer", 8, PROBED),
    ]  # the baseline without a context is not a point on the context axis
    assert t["reward_driven_gain"].iloc[2] == 50.0 and np.isnan(t["train_minutes"].iloc[2])  # no metrics given
    unprobed = context_scaling(summary, metrics)
    assert list(unprobed.columns) == SCALING_COLUMNS and (unprobed["measured_by"] == TRAINED).all()
    assert len(unprobed) == 4
    t = t.set_index(["arch", "context_episodes"])
    # wall minutes: each logged interval's seconds per step times its 50 steps, averaged over seeds
    assert t.loc[("mamba", 4), "train_minutes"] == pytest.approx((50 * (2 + 1 + 1.2) + 50 * (2 + 1.4 + 1.2)) / 2 / 60)
    # seconds per step after the first (warm-up) interval
    assert t.loc[("mamba", 4), "train_seconds_per_step"] == pytest.approx((1.0 + 1.2 + 1.4 + 1.2) / 4)
    assert t.loc[("transformer", 4), "seconds_per_step_vs_mamba"] == pytest.approx(3.2 / 1.2)
    assert t.loc[("transformer", 4), "peak_mem_mib"] == 900.0
    # inference at a full context: the evaluations' last episode (mean over seeds), the probe's own
    assert t.loc[("mamba", 4), "inference_ms_per_step"] == pytest.approx(3.0)
    assert t.loc[("mamba", 4), "inference_state_mib"] == 1.5
    assert t.loc[("transformer", 4), ["inference_ms_per_step", "inference_state_mib"]].tolist() == [20.0, 48.0]
    assert t.loc[("transformer", 8), ["inference_ms_per_step", "inference_state_mib"]].tolist() == [40.0, 96.0]
    assert t.loc[[("mamba", 8), ("mamba", 16)], "inference_ms_per_step"].isna().all()  # not evaluated
    assert unprobed["inference_state_mib"].isna().all()  # no costs given
    assert t.loc[("transformer", 4), "reward_driven_gain"] == 10.0
    assert t.loc[("transformer", 8), "seconds_per_step_vs_mamba"] == pytest.approx(9.0 / 2.0)
    assert np.isnan(t.loc[("transformer", 8), "reward_driven_gain"])
    assert np.isnan(t.loc[("transformer", 8), "train_minutes"])


def test_inference_costs_leave_a_column_empty_where_older_files_lack_it():
    costs = pd.DataFrame(
        {
            "family": "PointNav",
            "arch": ["mamba", "mamba"],
            "context_episodes": [4, 8],
            "seed": 0,
            "ms_per_step": [1.0, 1.0],
            "ms_per_step_first_episode": [1.0, 1.0],
            "ms_per_step_last_episode": [2.0, 3.0],
        }
    )
    t = inference_costs(costs)
    assert t["inference_ms_per_step"].tolist() == [2.0, 3.0] and t["inference_state_mib"].isna().all()
    assert (t["measured_by"] == TRAINED).all()
    assert inference_costs().empty and "inference_state_mib" in inference_costs().columns


def _noisy_models(rng, families=("PointNav",), archs=("mamba",), contexts=(4,), controls=("none",), episodes=10):
    """Returns with spread across tasks, seeds and episodes (no two runs alike)."""
    rows = []
    runs = itertools.product(families, archs, contexts, controls, (0, 1), (0, 1, 2), range(6))
    for family, arch, ctx, control, seed, eval_seed, t in runs:
        slope, level = rng.normal(1.0, 1.0), rng.normal(-50.0, 5.0)
        keys = {"family": family, "arch": arch, "context_episodes": ctx, "seed": seed, "eval_seed": eval_seed}
        for e in range(episodes):
            ret = level + slope * e + rng.normal(0.0, 2.0)
            rows.append({**keys, "control": control, "task": f"test-{t:04d}", "episode": e, "return": ret})
    return pd.DataFrame(rows)


def _noisy_refs(families=("PointNav",)):
    return pd.concat([_refs().assign(family=f) for f in families], ignore_index=True)


def test_summary_columns_against_a_direct_computation():
    rng = np.random.default_rng(11)
    models = _noisy_models(rng, archs=("mamba", "transformer"), controls=("none", "other_task_reward"))
    costs = pd.DataFrame(
        [
            {
                "family": "PointNav",
                "arch": "mamba",
                "context_episodes": 4,
                "seed": s,
                "train_env_steps": n,
                "source": "ppo",
            }
            for s, n in ((0, 1000), (1, 3000))
        ]
    )
    s = summarize(models, _noisy_refs(), costs=costs).set_index("arch")
    for arch in ("mamba", "transformer"):
        true = models[(models["arch"] == arch) & (models["control"] == "none")]
        by_run = true.pivot_table(index=["seed", "eval_seed", "task"], columns="episode", values="return")
        first, final = by_run[0], by_run[9]  # the first and last tenth of 10 episodes
        assert s.loc[arch, "runs"] == 36
        assert s.loc[arch, "first_return"] == pytest.approx(first.mean())
        assert s.loc[arch, "final_return"] == pytest.approx(final.mean())
        assert s.loc[arch, "gain"] == pytest.approx((final - first).mean())
    assert s.loc["mamba", "source"] == "ppo" and s.loc["mamba", "train_env_steps"] == pytest.approx(2000.0)
    assert s.loc["transformer", "source"] == "" and np.isnan(s.loc["transformer", "train_env_steps"])


def test_summary_confidence_intervals_are_seeded_per_row():
    rng = np.random.default_rng(12)
    one = _noisy_models(rng, controls=("none", "zero_reward", "other_task_reward"))
    # the same runs under another family, architecture and context: each row draws its own resamples
    models = pd.concat(
        [
            one,
            one.assign(arch="transformer"),
            one.assign(context_episodes=8),
            one.assign(family="F2"),
        ]
    )
    refs = _noisy_refs(("PointNav", "F2"))
    # every CI but the task switch's (these models ran without that control)
    ci_columns = [c for c in SUMMARY_COLUMNS if c.endswith(("_ci_low", "_ci_high")) and "switch" not in c]
    first = summarize(models, refs, seed=3)
    again = summarize(models, refs, seed=3)
    other_seed = summarize(models, refs, seed=4)
    assert first[ci_columns].notna().all().all()
    pd.testing.assert_frame_equal(first, again)  # reproducible from the seed
    for column in ci_columns:
        assert first[column].nunique() == 4, column  # four rows, four independent draws
        assert not np.allclose(first[column], other_seed[column]), column  # the seed is used
    assert (first["gain_ci_low"] < first["gain"]).all() and (first["gain"] < first["gain_ci_high"]).all()
    # a default seed: the same table as seed 0
    pd.testing.assert_frame_equal(summarize(models, refs), summarize(models, refs, seed=0))


def test_final_episodes_are_the_last_tenth_of_each_group_at_least_one():
    from adbench.scores import final_episodes

    lengths = {"a": 40, "b": 25, "c": 11, "d": 10, "e": 3}  # last 4, 3, 2, 1 and 1 episodes
    df = pd.DataFrame([{"task": t, "episode": e} for t, n in lengths.items() for e in range(n)]).sample(
        frac=1.0, random_state=0
    )
    kept = final_episodes(df, "task").groupby("task")["episode"].apply(sorted).to_dict()
    assert kept == {"a": [36, 37, 38, 39], "b": [22, 23, 24], "c": [9, 10], "d": [9], "e": [2]}


def test_write_table_writes_the_csv_and_a_markdown_table(tmp_path):
    from adbench.tables import write_table

    df = pd.DataFrame(
        {
            "arch": ["mamba", "transformer", "rl2"],
            "steps": [2_560_000.0, 999.0, 1000.0],
            "gain": [1.23456, -0.5, 2.0],
            "runs": [48, 3, 1],
        }
    )
    write_table(df, tmp_path / "t.csv", tmp_path / "t.md")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), df)
    assert (tmp_path / "t.md").read_text() == (
        "| arch | steps | gain | runs |\n|---|---|---|---|\n"
        "| mamba | 2,560,000 | 1.235 | 48 |\n"
        "| transformer | 999.000 | -0.500 | 3 |\n"
        "| rl2 | 1,000 | 2.000 | 1 |\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md"]  # nothing half-written left beside


def test_load_concatenates_result_files_and_refuses_non_finite_returns(tmp_path):
    from adbench.tables import load

    a, b = _table("mamba", 4, 1.0, tasks=2), _table("transformer", 4, 0.5, tasks=3)
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    pd.testing.assert_frame_equal(load([tmp_path / "a.csv", tmp_path / "b.csv"]), pd.concat([a, b], ignore_index=True))
    a.assign(**{"return": np.where(a.index == 3, np.nan, a["return"])}).to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(ValueError, match="^evaluation tables contain non-finite returns; rerun the evaluate rules$"):
        load([tmp_path / "b.csv", tmp_path / "nan.csv"])


def test_comparison_confidence_intervals_are_seeded_per_row():
    """The same runs under two families, two contexts and three models: each comparison row resamples
    with its own seed (reproducible from the config's), so no two rows share their CI by construction."""
    rng = np.random.default_rng(13)
    one = _noisy_models(rng)
    models = pd.concat(
        [
            one.assign(family=f, arch=a, context_episodes=c)
            for f in ("PointNav", "F2")
            for a, c in (("mamba", 4), ("mamba", 8), ("transformer", 4), ("transformer", 8), ("rl2", 0))
        ]
    )
    first, again = compare(models, seed=3), compare(models, seed=3)
    pd.testing.assert_frame_equal(first, again)
    rows = first[first["family"] != "all"]
    assert len(rows) == 2 * 2 * 3  # per family and context: mamba-transformer, mamba-rl2, transformer-rl2
    assert (rows["probability"] == 0.5).all()  # identical runs
    # bootstrap CIs of a probability over 6 tasks take few values: one coincidence may happen; a seed shared
    # by the rows of two families, contexts or models would give four or more
    assert len(rows) - len(set(zip(rows["ci_low"], rows["ci_high"]))) <= 1
    assert not np.allclose(first["ci_low"], compare(models, seed=4)["ci_low"])
    pd.testing.assert_frame_equal(compare(models), compare(models, seed=0))


def test_scores_run_from_the_strongest_floor_which_the_summary_names():
    """Floors at -50 (random), -30 (zero actions) and -40 (task-blind): the zero-action floor is the 0 of
    the normalised score, and a model that ends at the zero-action level scores 0, not above it."""
    floors = [_table(name, 0, 0.0, level=lv).assign(context_episodes=0) for name, lv in FLOOR_LEVELS.items()]
    src = _table("source", 0, 1.0, episodes=40, seeds=(0,)).assign(eval_seed=-1)
    refs = pd.concat([*floors, src])
    s = summarize(_table("mamba", 4, 0.0, level=-30.0), refs).iloc[0]
    assert s["floor"] == "zero" and s["floor_return"] == pytest.approx(-30 + 0.25)
    assert (s["random_return"], s["zero_return"], s["task_blind_return"]) == pytest.approx((-49.75, -29.75, -39.75))
    assert s["normalized_final_iqm"] == pytest.approx(0.0, abs=1e-9)
    levels = task_levels(refs)
    assert (levels["floor_name"] == "zero").all()
    src_final = -50 + 37.5 + 0.1 * levels["task"].str[-1].astype(int)  # its last 4 of 40 episodes, slope 1
    np.testing.assert_allclose(levels["gap"], src_final - levels["floor"])
    # without the zero-action floor the task-blind one is the strongest
    assert best_floor(floor_levels(refs[refs["arch"] != "zero"])).tolist() == ["task_blind"]


FLOOR_LEVELS = {"random": -50.0, "zero": -30.0, "task_blind": -40.0}


def test_in_context_rl_needs_both_the_gain_and_the_reward_driven_gain_above_zero():
    improving = _table("mamba", 4, 2.0)
    rows = {
        "reward-driven": [improving, _table("mamba", 4, 0.5, control="other_task_reward")],
        "schedule": [improving, _table("mamba", 4, 2.0, control="other_task_reward")],  # rewards do not matter
        "no gain": [_table("mamba", 4, 0.0), _table("mamba", 4, -1.0, control="other_task_reward")],
    }
    verdicts = {name: summarize(pd.concat(parts), _refs()).iloc[0]["in_context_rl"] for name, parts in rows.items()}
    assert verdicts == {"reward-driven": True, "schedule": False, "no gain": False}


def test_switch_recovery_is_the_gain_over_the_episodes_after_the_switch():
    """Under task_switch (10 episodes, switched at 5): the last minus the first tenth (one episode) of
    episodes 5-9; the returns before the switch do not enter it."""
    before = _table("mamba", 4, 0.0, control="task_switch")
    after = before.assign(
        **{"return": before["return"] + np.where(before["episode"] >= 5, 3.0 * (before["episode"] - 5), 100.0)}
    )
    s = summarize(pd.concat([_table("mamba", 4, 1.0), after]), _refs()).iloc[0]
    assert s["switch_recovery"] == pytest.approx(12.0)  # episode 9 minus episode 5
    assert s["switch_recovery_ci_low"] == pytest.approx(12.0) and s["gain"] == pytest.approx(9.0)


def _model(arch, ctx, level, seeds=(0, 1, 2), seed_spread=0.0):
    """Returns flat over 10 episodes at `level` (+ task offsets), training seed s shifted by s x seed_spread."""
    return pd.concat([_table(arch, ctx, 0.0, seeds=(s,), level=level + s * seed_spread).assign(seed=s) for s in seeds])


def test_claims_of_a_hand_built_table_get_known_verdicts():
    """Normalised scale: floor -50 (random), source final -12.5: 37.5 return per unit of score; every
    model's three training seeds sit at +0, +0.05 and +0.1. Mamba at 8 beats the transformer at 8 by 0.45
    (supported); at 4 they tie (inconclusive); longer context helps Mamba (+0.2, supported) and hurts the
    transformer (-0.25, contradicted); against RL^2, Mamba at 8 is ahead (supported), the transformer at 8
    is 0.25 behind (contradicted, beyond the 0.1 margin); with two seeds, inconclusive whatever the CI."""
    unit = 37.5
    levels = {("mamba", 4): 0.5, ("mamba", 8): 0.7, ("transformer", 4): 0.5, ("transformer", 8): 0.25, ("rl2", 0): 0.5}
    models = pd.concat([_model(a, c, -50 + v * unit, seed_spread=0.05 * unit) for (a, c), v in levels.items()])
    table = claims(models, _refs()).set_index(["claim", "comparison"])
    expected = {
        ("mamba_beats_transformer", "mamba ctx 4 - transformer ctx 4"): (0.0, "inconclusive"),
        ("mamba_beats_transformer", "mamba ctx 8 - transformer ctx 8"): (0.45, "supported"),
        ("longer_context_helps", "mamba ctx 8 - mamba ctx 4"): (0.2, "supported"),
        ("longer_context_helps", "transformer ctx 8 - transformer ctx 4"): (-0.25, "contradicted"),
        ("competitive_with_online", "mamba ctx 8 - rl2"): (0.2, "supported"),
        ("competitive_with_online", "transformer ctx 8 - rl2"): (-0.25, "contradicted"),
    }
    assert set(table.index) == set(expected)
    for key, (effect, judged) in expected.items():
        assert table.loc[key, "effect"] == pytest.approx(effect, abs=1e-6), key
        assert table.loc[key, "verdict"] == judged, key
        assert table.loc[key, "ci_low"] <= table.loc[key, "effect"] <= table.loc[key, "ci_high"]
    tie = table.loc[("mamba_beats_transformer", "mamba ctx 4 - transformer ctx 4")]
    assert tie["ci_low"] < -0.03 and tie["ci_high"] > 0.03  # the seeds' spread is in the CI
    assert table.loc[("competitive_with_online", "mamba ctx 8 - rl2"), "threshold"] == -0.1
    two_seeds = claims(models[models["seed"] < 2], _refs())
    assert (two_seeds["verdict"] == "inconclusive").all() and (two_seeds["training_seeds"] == 2).all()


def test_a_family_whose_source_does_not_beat_its_floor_has_no_scale():
    """F2's source falls (its final -87.5 below the random floor at -50): its normalised scores, their
    aggregates and its claims are empty (`undefined`), its returns and P(X > Y) are still read; PointNav,
    beside it in the same tables, is scored as alone."""
    falling = _table("source", 0, -1.0, episodes=40, seeds=(0,)).assign(eval_seed=-1, family="F2")
    refs = pd.concat([_refs(), _table("random", 0, 0.0).assign(context_episodes=0, family="F2"), falling])
    levels = task_levels(refs).groupby("family")
    assert levels["scaled"].all().to_dict() == {"F2": False, "PointNav": True}
    assert levels["gap"].apply(lambda g: g.isna().all()).to_dict() == {"F2": True, "PointNav": False}
    pointnav = pd.concat([_model("mamba", 4, -40.0), _model("transformer", 4, -30.0)])
    models = pd.concat([pointnav, pointnav.assign(family="F2")])
    s = summarize(models, refs).set_index(["family", "arch"])
    assert s.loc["F2", ["normalized_final_iqm", "normalized_ci_low", "optimality_gap"]].isna().all().all()
    assert s.loc[("F2", "mamba"), "final_return"] == pytest.approx(-40 + 0.25)
    alone = summarize(pointnav, _refs()).set_index(["family", "arch"])
    pd.testing.assert_frame_equal(s.loc[["PointNav"]], alone)
    table = claims(models, refs).set_index("family")  # one claim each: Mamba against the transformer at 4
    assert table.loc["F2", "verdict"] == "undefined" and np.isnan(table.loc["F2", "effect"])
    assert table.loc["PointNav", "verdict"] == "contradicted"
    assert table.loc["PointNav", "effect"] == pytest.approx(-10 / 37.5, abs=1e-6)
    p = compare(models).set_index("family")["probability"]
    assert p["F2"] == p["PointNav"] == 0.0  # every transformer run ends above every Mamba run


def test_claim_verdict_rule():
    assert verdict(0.01, 0.5, 0.0, 3) == "supported" and verdict(-0.5, -0.01, 0.0, 5) == "contradicted"
    assert verdict(-0.01, 0.5, 0.0, 3) == "inconclusive" and verdict(0.2, 0.5, 0.0, 2) == "inconclusive"
    assert verdict(-0.09, 0.1, -0.1, 3) == "supported" and verdict(-0.3, -0.11, -0.1, 3) == "contradicted"
    assert verdict(np.nan, np.nan, 0.0, 3) == "undefined"


def _rl2_metrics(returns, seeds=(0, 1), steps_per_update=1000):
    return pd.DataFrame(
        [
            {
                "family": "PointNav",
                "arch": "rl2",
                "seed": s,
                "update": u + 1,
                "env_steps": (u + 1) * steps_per_update,
                "last_return": r + s,
            }
            for s in seeds
            for u, r in enumerate(returns)
        ]
    )


def test_baseline_convergence_reads_the_curve_against_each_ad_models_final():
    """A baseline curve rising 0, 10, ..., 90 over ten updates (two seeds, +0 and +1: mean +0.5): its last
    fifth (80.5, 90.5) gained 20 over the fifth before, a fifth of a 100-wide floor-to-source range: not
    converged. A model ending at 45 is reached when the running mean over two updates first reaches 45
    (updates 5 and 6: (40.5 + 50.5) / 2 = 45.5, at 6000 steps); one at 200, never."""
    summary = pd.DataFrame(
        [
            {
                "family": "PointNav",
                "arch": a,
                "context_episodes": c,
                "final_return": f,
                "train_env_steps": n,
                "source_final_return": 100.0,
                "floor_return": 0.0,
            }
            for a, c, f, n in (("mamba", 4, 45.0, 500.0), ("transformer", 4, 200.0, 500.0), ("rl2", 0, 70.0, 10000.0))
        ]
    )
    table = baseline_convergence(_rl2_metrics([10.0 * u for u in range(10)]), summary).set_index("model")
    assert list(table.index) == ["mamba ctx 4", "transformer ctx 4"]
    row = table.loc["mamba ctx 4"]
    assert row["seeds"] == 2 and row["env_steps"] == 10000 and row["curve_final_return"] == pytest.approx(85.5)
    assert row["curve_last_fifth_gain"] == pytest.approx(0.2) and not row["converged"]
    assert row["baseline_reaches_model_at"] == 6000 and row["baseline_final_return"] == 70.0
    assert np.isnan(table.loc["transformer ctx 4", "baseline_reaches_model_at"])
    flat = baseline_convergence(_rl2_metrics([50.0] * 5 + [51.0] * 5), summary)
    assert flat["converged"].all()  # its last fifth gained 0 of the range


def test_every_figure_and_table_has_its_report_caption():
    from adbench import outputs

    report = REPO / "workflow/report"
    missing = [n for n in outputs.FIGURES if not (report / f"{n}.rst").exists()]
    missing += [f"{n}_table" for n in outputs.TABLES if not (report / f"{n}_table.rst").exists()]
    assert missing == []
    assert outputs.figure("results", "claims").as_posix() == "results/figures/claims.png"
    with pytest.raises(KeyError, match="'claim' is not a table of outputs.TABLES"):
        outputs.table("results", "claim")


def test_the_in_context_figure_reads_the_training_stride_from_the_cost_tables():
    from adbench.tables import episode_strides

    costs = pd.DataFrame(
        [
            {"family": "A", "arch": "mamba", "context_episodes": 4, "episode_stride": 8},
            {"family": "A", "arch": "rl2", "context_episodes": 0, "episode_stride": np.nan},
            {"family": "B", "arch": "transformer", "context_episodes": 2, "episode_stride": 3},
        ]
    )
    assert episode_strides(costs) == {"A": 8, "B": 3}
    with pytest.raises(ValueError, match="cost tables \\(with episode_stride\\) are needed; rerun the evaluate rules"):
        episode_strides(costs.drop(columns="episode_stride"))


def test_the_provenance_table_names_the_commits_behind_every_model():
    from adbench.tables import provenance

    row = {"family": "A", "context_episodes": 4, "seed": 0}
    costs = pd.DataFrame(
        [
            {**row, "arch": "transformer", "dataset_commit": "d1", "model_commit": "m2", "evaluate_commit": "e3"},
            {**row, "arch": "mamba", "dataset_commit": "d1", "model_commit": "m1-dirty", "evaluate_commit": "e3"},
            {**row, "arch": "rl2", "context_episodes": 0, "dataset_commit": "d1"},  # an older file: no model commit
        ]
    )
    table = provenance(costs, "t9")
    assert table["arch"].tolist() == ["mamba", "rl2", "transformer"]
    assert table["model_commit"].tolist() == ["m1-dirty", "unknown", "m2"]
    assert table["evaluate_commit"].tolist() == ["e3", "unknown", "e3"]
    assert set(table["dataset_commit"]) == {"d1"} and set(table["tables_commit"]) == {"t9"}
    older = provenance(costs.drop(columns=["dataset_commit", "model_commit", "evaluate_commit"]), "t9")
    assert older["dataset_commit"].tolist() == ["unknown"] * 3
