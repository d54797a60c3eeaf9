"""The hierarchical bootstrap behind every CI, recomputed from its definition, and the properties that make
it the right one: training-seed spread and task-level effects widen the CIs."""

import numpy as np
import pandas as pd
import pytest
from rliable import metrics
from scipy import stats

from adbench.statistics import (
    BOOTSTRAP,
    difference,
    interval,
    probability_of_improvement,
    row_seed,
    runs_by_tasks,
    unit_array,
)


def _by_definition(array, stat, seed):
    """Resample by loops, in the module's order of draws: B task draws, then per resample the seeds, then
    the evaluation runs of every (seed, task) cell; stat of each resample's (runs x tasks) matrix."""
    s, t, e = array.shape
    rng = np.random.default_rng(seed)
    tasks = rng.integers(t, size=(BOOTSTRAP, t))
    seeds = rng.integers(s, size=(BOOTSTRAP, s))
    evals = rng.integers(e, size=(BOOTSTRAP, s, t, e))
    values = []
    for b in range(BOOTSTRAP):
        cube = np.empty_like(array)
        for i in range(s):
            for j in range(t):
                for k in range(e):
                    cube[i, j, k] = array[seeds[b, i], tasks[b, j], evals[b, i, j, k]]
        matrix = np.array([[cube[i, j, k] for j in range(t)] for i in range(s) for k in range(e)])
        values.append(stat(matrix))
    return np.percentile(values, [2.5, 97.5])


@pytest.mark.parametrize(
    "name, stat",
    [
        ("mean", np.mean),
        ("iqm", lambda m: stats.trim_mean(m.ravel(), 0.25)),
        ("optimality_gap", lambda m: 1 - np.minimum(m, 1).mean()),
    ],
)
def test_aggregate_cis_are_the_hierarchical_bootstrap_over_seeds_tasks_and_runs(name, stat):
    rng = np.random.default_rng(3)
    array = rng.gamma(2.0, 0.3, size=(3, 7, 2)) * rng.normal(size=(1, 7, 1))  # tasks of very different levels
    point, low, high = interval(array, name, 11)
    assert point == pytest.approx(stat(array.reshape(-1)[None]))
    assert (low, high) == pytest.approx(tuple(_by_definition(array, stat, 11)))
    assert low < point < high


def test_runs_by_tasks_puts_a_seeds_evaluation_runs_in_rows():
    array = np.arange(2 * 3 * 2).reshape(2, 3, 2)  # seed, task, eval
    assert runs_by_tasks(array).tolist() == [[0, 2, 4], [1, 3, 5], [6, 8, 10], [7, 9, 11]]


def test_training_seed_spread_widens_the_ci_by_the_seeds_own_spread():
    """Three training seeds whose models differ by 0 / 10 / 20 on every task, with little else varying:
    the CI of the mean is the bootstrap of three seed means (each of 0, 10, 20 is drawn three times with
    probability 1/27 > 2.5%, so the CI runs from about 0 to about 20), not the narrow band around 10 that
    resampling runs within each task apart, as if the seeds were evaluation runs, gives."""
    rng = np.random.default_rng(0)
    array = np.array([0.0, 10.0, 20.0])[:, None, None] + rng.normal(0, 0.1, size=(3, 16, 3))
    _, low, high = interval(array, "mean", 1)
    assert low == pytest.approx(0, abs=0.2) and high == pytest.approx(20, abs=0.2)
    pooled = interval(array.reshape(1, 16, 9), "mean", 1)  # the seeds as nine runs of one seed
    assert pooled[2] - pooled[1] < 0.5 * (high - low)


def test_a_task_level_effect_widens_the_ci_more_than_run_noise():
    """A difference that is +4 on half the tasks and -4 on the others is a task effect: its CI spans zero."""
    rng = np.random.default_rng(1)
    effect = np.where(np.arange(16) < 8, 4.0, -4.0)
    array = effect[None, :, None] + rng.normal(0, 0.5, size=(2, 16, 3)) + 0.5
    _, low, high = interval(array, "mean", 2)
    assert low < 0 < high


def test_probability_of_improvement_by_hand():
    # task 0: x runs (1, 3) vs y runs (2, 2): x wins 2 of 4 pairs; task 1: (5, 5) vs (5, 9): two ties of 4, no win
    # task 2: (4, 6) vs (0, 1): x wins all 4. Runs are (seed, eval) pairs: two seeds of one run each.
    x = np.array([[1.0, 5.0, 4.0], [3.0, 5.0, 6.0]])[:, :, None]
    y = np.array([[2.0, 5.0, 0.0], [2.0, 9.0, 1.0]])[:, :, None]
    point, low, high = probability_of_improvement(x, y, 0)
    assert point == pytest.approx((2 / 4 + 0.5 * 2 / 4 + 1.0) / 3)
    assert low <= point <= high
    assert probability_of_improvement(y, x, 0)[0] == pytest.approx(1 - point)
    rng = np.random.default_rng(0)
    for _ in range(20):  # the vectorised statistic is rliable's own, ties and unequal run counts included
        a = rng.integers(0, 4, size=(rng.integers(1, 4), 5, 2)).astype(float)
        b = rng.integers(0, 4, size=(rng.integers(1, 4), 5, 1)).astype(float)
        got = probability_of_improvement(a, b, 0)[0]
        assert got == pytest.approx(metrics.probability_of_improvement(runs_by_tasks(a), runs_by_tasks(b)))
    with pytest.raises(ValueError, match="two models compared need the same tasks: 5 vs 4"):
        probability_of_improvement(a, b[:, :4], 0)


def test_a_difference_shares_the_task_draw_and_resamples_each_models_seeds():
    """Two models that differ by exactly 1 on every task and run: the tasks' spread cancels (one draw of
    tasks for both), and with one seed and no run noise the CI is the point."""
    levels = np.random.default_rng(5).normal(0, 10, size=(1, 12, 1))
    x, y = levels + 1.0, levels.copy()
    assert difference(x, y, "mean", 3) == pytest.approx((1.0, 1.0, 1.0))
    assert difference(x, y, "iqm", 3) == pytest.approx((1.0, 1.0, 1.0))
    seeds = np.array([0.0, 6.0])[:, None, None]  # x's two training seeds differ: the CI must show it
    _, low, high = difference(levels + 1.0 + seeds, y, "mean", 3)
    assert low < 2 and high > 6


def test_unit_array_orders_levels_and_refuses_a_missing_cell():
    units = pd.DataFrame(
        [(s, f"test-{t:04d}", e, 100 * s + 10 * t + e) for s in (1, 0) for t in (2, 0, 1) for e in (1, 0)],
        columns=["seed", "task", "eval_seed", "v"],
    )
    array = unit_array(units, "v")
    assert array.shape == (2, 3, 2) and array[1, 2, 0] == 120 and array[0, 1, 1] == 11
    with pytest.raises(ValueError, match=r"tasks \['test-0001'\] lack some \(seed, eval_seed\) runs"):
        unit_array(units.drop(index=units.index[(units["task"] == "test-0001") & (units["seed"] == 1)][:1]), "v")


def test_statistics_leave_numpys_global_generator_as_they_found_it():
    np.random.seed(5)
    expected = np.random.rand(3)
    np.random.seed(5)
    interval(np.arange(12.0).reshape(1, 3, 4), "mean", 1)
    probability_of_improvement(np.ones((2, 3, 1)), np.zeros((2, 3, 1)), 1)
    assert np.random.rand(3).tolist() == expected.tolist()


def test_a_rows_bootstrap_seed_is_fixed_by_the_config_seed_and_the_row():
    assert row_seed(0, "HalfCheetahVel", "mamba", 4) == row_seed(0, "HalfCheetahVel", "mamba", 4)
    others = {
        row_seed(1, "HalfCheetahVel", "mamba", 4),
        row_seed(0, "HalfCheetahVel", "mamba", 8),
        row_seed(0, "AntDir", "mamba", 4),
    }
    assert row_seed(0, "HalfCheetahVel", "mamba", 4) not in others and len(others) == 3
    array = np.random.default_rng(2).normal(size=(2, 9, 2))
    assert interval(array, "iqm", row_seed(0, "F", "mamba", 4)) == interval(array, "iqm", row_seed(0, "F", "mamba", 4))
