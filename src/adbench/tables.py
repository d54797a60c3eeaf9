"""Result tables -> the benchmark's summary tables: per-model returns, gains and controls with the
normalised score (`scores`), the comparisons between models, the task-inference summary, costs and the
baselines' convergence (reads only the tidy CSVs)."""

from pathlib import Path

import numpy as np
import pandas as pd

from . import statistics
from .atomic import atomic_path
from .measures import edge
from .scores import FLOORS, RUN, final_episodes, held_out, normalized_units, run_scores, task_levels

SUMMARY_COLUMNS = [
    "family",
    "arch",
    "context_episodes",
    "source",
    "train_env_steps",
    "runs",
    "first_return",
    "final_return",
    "source_final_return",
    "source_kind",
    "random_return",
    "zero_return",
    "task_blind_return",
    "floor",
    "floor_return",
    "training_seeds",
    "gain",
    "gain_ci_low",
    "gain_ci_high",
    "normalized_final_iqm",
    "normalized_ci_low",
    "normalized_ci_high",
    "optimality_gap",
    "optimality_gap_ci_low",
    "optimality_gap_ci_high",
    "zero_reward_gain",
    "zero_reward_gain_ci_low",
    "zero_reward_gain_ci_high",
    "other_task_gain",
    "other_task_gain_ci_low",
    "other_task_gain_ci_high",
    "reward_driven_gain",
    "reward_driven_ci_low",
    "reward_driven_ci_high",
    "switch_recovery",
    "switch_recovery_ci_low",
    "switch_recovery_ci_high",
    "in_context_rl",
]


# Models without an AD context (online meta-RL baselines) carry context_episodes = 0 in the tables.
NO_CONTEXT = 0


def label(arch: str, ctx: int) -> str:
    return arch if ctx == NO_CONTEXT else f"{arch} ctx {ctx}"


def load(paths: list) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    if not np.all(np.isfinite(df["return"])):
        raise ValueError("evaluation tables contain non-finite returns; rerun the evaluate rules")
    return df


def source_improvement(refs: pd.DataFrame) -> pd.DataFrame:
    """Per family and split: on how many histories the last 10% of episodes beat the first 10%."""
    src = refs[refs["arch"] == "source"].assign(split=lambda d: d["task"].str.split("-").str[0])
    n = src.groupby("family")["episode"].transform("max") + 1
    k = n.map(edge)
    first = src[src["episode"] < k].groupby(["family", "split", "task", "seed"])["return"].mean()
    last = src[src["episode"] >= n - k].groupby(["family", "split", "task", "seed"])["return"].mean()
    both = pd.concat([first.rename("first"), last.rename("last")], axis=1).reset_index()
    return (
        both.assign(improved=both["last"] > both["first"])
        .groupby(["family", "split"])
        .agg(
            histories=("improved", "size"),
            improved=("improved", "sum"),
            first_return=("first", "mean"),
            last_return=("last", "mean"),
        )
        .reset_index()
    )


def _with_ci(name: str, estimate: tuple, ci: str | None = None) -> dict:
    """(point, low, high) -> the summary's columns name, <ci>_ci_low, <ci>_ci_high (ci defaults to name)."""
    ci = ci or name
    return {name: estimate[0], f"{ci}_ci_low": estimate[1], f"{ci}_ci_high": estimate[2]}


def source_kind(source: str) -> str:
    """What a source's final return means: a source told each task (an oracle for AD, which is not told),
    or one that found the task from rewards, as AD must (a learner, or an expert searching the tasks)."""
    if not source:
        return ""
    if str(source).startswith("noise_distill") and "search" not in str(source):
        return "told the task"
    return "found the task from rewards"


def unit_interval(units: pd.DataFrame, value: str, aggregate: str, seed: int) -> tuple[float, float, float]:
    """(point, CI low, CI high) of an aggregate of `value` over the units, by the hierarchical bootstrap;
    NaN where `value` is (the normalised score of a family without a scale, `scores.task_levels`)."""
    if units[value].isna().all():
        return (np.nan, np.nan, np.nan)
    return statistics.interval(statistics.unit_array(units, value), aggregate, seed)


def paired(units: pd.DataFrame, a: str, b: str, value: str) -> pd.DataFrame:
    """Per unit (training seed, evaluation seed, task): `value` under control a minus under control b."""
    left = units[units["control"] == a].set_index(RUN)[value]
    right = units[units["control"] == b].set_index(RUN)[value]
    return (left - right).dropna().rename("difference").reset_index()


def is_in_context_rl(row: dict) -> bool:
    """In-context RL: the in-context gain and its reward-driven part both have CIs above zero."""
    return bool(row.get("gain_ci_low", np.nan) > 0 and row.get("reward_driven_ci_low", np.nan) > 0)


def summarize(
    models: pd.DataFrame, refs: pd.DataFrame, seed: int = 0, costs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per (family, arch, context): returns, the floors and the source, gains and control gains,
    the normalised final return's IQM and optimality gap, each with a 95% CI over training seeds, tasks
    and evaluation runs (`statistics`), whether the row shows in-context RL, and (given the evaluate
    stage's cost tables) the source and the environment steps each model's training consumed."""
    budget = (
        {}
        if costs is None or "train_env_steps" not in costs
        else (costs.groupby(["family", "arch", "context_episodes"])["train_env_steps"].mean().to_dict())
    )
    sources = (
        {}
        if costs is None or "source" not in costs
        else (costs.groupby(["family", "arch", "context_episodes"])["source"].first().to_dict())
    )
    # the source of a family's histories, whose final return is the score's 1
    histories = {f: s for (f, _, _), s in sources.items() if s != "online"}
    units = normalized_units(models, refs)
    units = units.assign(gain=units["final"] - units["first"])
    levels = task_levels(refs)
    rows = []
    for family, fam in units.groupby("family"):
        lv = levels[levels["family"] == family]
        for (arch, ctx), runs in fam.groupby(["arch", "context_episodes"]):
            # a row's resamples depend on the row alone, not on which other models are in the table
            row_seed = statistics.row_seed(seed, family, arch, ctx)
            g = runs[runs["control"] == "none"]
            row = {
                "family": family,
                "arch": arch,
                "context_episodes": ctx,
                "source": sources.get((family, arch, ctx), ""),
                "train_env_steps": budget.get((family, arch, ctx), np.nan),
                "runs": len(g),
                "first_return": g["first"].mean(),
                "final_return": g["final"].mean(),
                "source_final_return": lv["source_final"].mean(),
                "source_kind": source_kind(histories.get(family, "")),
                **{f"{f}_return": lv[f].mean() if f in lv else np.nan for f in FLOORS},
                "floor": lv["floor_name"].iloc[0],
                "floor_return": lv["floor"].mean(),
                "training_seeds": g["seed"].nunique(),
                **_with_ci("gain", unit_interval(g, "gain", "mean", row_seed)),
                **_with_ci("normalized_final_iqm", unit_interval(g, "normalized", "iqm", row_seed), "normalized"),
                **_with_ci("optimality_gap", unit_interval(g, "normalized", "optimality_gap", row_seed)),
            }
            for control, name in (("zero_reward", "zero_reward_gain"), ("other_task_reward", "other_task_gain")):
                c = runs[runs["control"] == control]
                if len(c):
                    row.update(_with_ci(name, unit_interval(c, "gain", "mean", row_seed)))
            if (runs["control"] == "other_task_reward").any():
                # final return seeing the true rewards minus seeing another task's, run by run
                driven = paired(runs, "none", "other_task_reward", "final")
                row.update(
                    _with_ci(
                        "reward_driven_gain", unit_interval(driven, "difference", "mean", row_seed), "reward_driven"
                    )
                )
            switched = runs[runs["control"] == "task_switch"]
            if len(switched):
                row.update(_with_ci("switch_recovery", unit_interval(switched, "gain", "mean", row_seed)))
            row["in_context_rl"] = is_in_context_rl(row)
            rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


COMPARISON_COLUMNS = [
    "family",
    "context_episodes",
    "x",
    "y",
    "training_seeds",
    "runs",
    "tasks",
    "probability",
    "ci_low",
    "ci_high",
]


ALL_FAMILIES = "all"


def compare(models: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """P(X > Y) on the final return (`statistics.probability_of_improvement`), seeing the true rewards: for
    each family and context, between the AD architectures (alphabetically, so P(mamba > transformer)) and
    of each AD model over each baseline without a context (RL^2); and per context over all families
    together (their tasks side by side), where every family has the same runs per task. P(X > Y) compares
    runs task by task, so it is the same on the normalised score (an increasing map per task), and it is
    defined on a family without a scale too."""
    units = run_scores(models)
    units = units[units["control"] == "none"]
    matrices = {
        key: statistics.unit_array(g, "final") for key, g in units.groupby(["family", "arch", "context_episodes"])
    }
    families = sorted(units["family"].unique())
    contexts = sorted(c for c in units["context_episodes"].unique() if c != NO_CONTEXT)
    ad = sorted(units.loc[units["context_episodes"] != NO_CONTEXT, "arch"].unique())
    baselines = sorted(units.loc[units["context_episodes"] == NO_CONTEXT, "arch"].unique())
    pairs = [((x, c), (y, c)) for c in contexts for i, x in enumerate(ad) for y in ad[i + 1 :]]
    pairs += [((x, c), (b, NO_CONTEXT)) for c in contexts for x in ad for b in baselines]
    rows = []
    for (x, cx), (y, cy) in pairs:
        per_family = [(f, matrices.get((f, x, cx)), matrices.get((f, y, cy))) for f in families]
        per_family = [(f, mx, my) for f, mx, my in per_family if mx is not None and my is not None]
        groups = [(f, [mx], [my]) for f, mx, my in per_family]
        if len(per_family) > 1 and len({(m.shape[0], m.shape[2]) for _, mx, my in per_family for m in (mx, my)}) == 1:
            groups.append((ALL_FAMILIES, [mx for _, mx, _ in per_family], [my for _, _, my in per_family]))
        for family, xs, ys in groups:
            mx, my = np.concatenate(xs, axis=1), np.concatenate(ys, axis=1)
            estimate = statistics.probability_of_improvement(mx, my, statistics.row_seed(seed, family, x, cx, y, cy))
            rows.append(
                {
                    "family": family,
                    "context_episodes": cx,
                    "x": x,
                    "y": y,
                    "training_seeds": min(mx.shape[0], my.shape[0]),
                    "runs": min(mx.shape[0] * mx.shape[2], my.shape[0] * my.shape[2]),
                    "tasks": mx.shape[1],
                    "probability": estimate[0],
                    "ci_low": estimate[1],
                    "ci_high": estimate[2],
                }
            )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


INFERENCE_SUMMARY_COLUMNS = [
    "family",
    "model",
    "quantity",
    "units",
    "final_achieved",
    "final_error",
    "target_correlation",
]


def _circular_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Jammalamadaka and SenGupta's correlation of two angles (radians)."""
    da = np.sin(a - np.angle(np.exp(1j * a).mean()))
    db = np.sin(b - np.angle(np.exp(1j * b).mean()))
    return float((da * db).sum() / np.sqrt((da**2).sum() * (db**2).sum()))


def final_inference(inference: pd.DataFrame) -> pd.DataFrame:
    """Per unit (model, seed, eval_seed, task) on the held-out tasks: target and the mean achieved and error
    over the last 10% of its episodes (the source's: of its history), seeing the true rewards."""
    df = held_out(inference)
    df = df[df["control"] == "none"]
    df = df.assign(model=[label(a, c) for a, c in zip(df["arch"], df["context_episodes"])])
    final = final_episodes(df, ["family", "model"])
    keys = ["family", "model", "quantity", "seed", "eval_seed", "task"]
    circular = final["quantity"] == "direction_of_travel"
    final = final.assign(
        achieved_x=np.where(circular, np.cos(final["achieved"]), final["achieved"]),
        achieved_y=np.where(circular, np.sin(final["achieved"]), 0.0),
    )
    out = (
        final.groupby(keys)
        .agg(target=("target", "first"), x=("achieved_x", "mean"), y=("achieved_y", "mean"), error=("error", "mean"))
        .reset_index()
    )
    achieved = np.where(
        out["quantity"] == "direction_of_travel", np.arctan2(out["y"], out["x"]) % (2 * np.pi), out["x"]
    )
    return out.assign(achieved=achieved).drop(columns=["x", "y"])


def inference_summary(inference: pd.DataFrame) -> pd.DataFrame:
    """Per family and model: the final episodes' mean achieved and error, and how closely the achieved
    tracks the target across held-out tasks (Pearson r; circular r for directions)."""
    rows = []
    for (family, model, quantity), g in final_inference(inference).groupby(["family", "model", "quantity"]):
        corr = np.nan
        if g["target"].notna().all() and g["target"].nunique() > 1:
            corr = (
                _circular_correlation(g["target"].to_numpy(), g["achieved"].to_numpy())
                if quantity == "direction_of_travel"
                else float(np.corrcoef(g["target"], g["achieved"])[0, 1])
            )
        # a mean of angles says nothing: directions are summarised by their error and correlation only
        achieved = np.nan if quantity == "direction_of_travel" else g["achieved"].mean()
        rows.append(
            {
                "family": family,
                "model": model,
                "quantity": quantity,
                "units": len(g),
                "final_achieved": achieved,
                "final_error": g["error"].mean(),
                "target_correlation": corr,
            }
        )
    return pd.DataFrame(rows, columns=INFERENCE_SUMMARY_COLUMNS)


SCALING_COLUMNS = [
    "family",
    "arch",
    "context_episodes",
    "measured_by",
    "reward_driven_gain",
    "reward_driven_ci_low",
    "reward_driven_ci_high",
    "normalized_final_iqm",
    "normalized_ci_low",
    "normalized_ci_high",
    "train_minutes",
    "train_seconds_per_step",
    "seconds_per_step_vs_mamba",
    "peak_mem_mib",
    "inference_ms_per_step",
    "inference_state_mib",
]
TRAINED, PROBED = "training", "cost probe"
INFERENCE_COSTS = {"ms_per_step": "inference_ms_per_step", "state_mib": "inference_state_mib"}


def inference_costs(costs: pd.DataFrame | None = None, probes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per family x AD architecture x context, once the recurrent state (Mamba) or the KV cache (the
    transformer) holds a whole context: milliseconds per batched inference step and the MiB that state
    holds. From the evaluations (their last in-context episode, past the context when the evaluation is
    longer than it; mean over training seeds) and from the cost probes, whose columns have the same
    meaning; a column that older files lack is left empty."""
    keys = ["family", "arch", "context_episodes"]
    parts = []
    if costs is not None and len(costs):
        costs = costs[costs["context_episodes"] != NO_CONTEXT]
        evaluated = costs.drop(columns="ms_per_step").rename(columns={"ms_per_step_last_episode": "ms_per_step"})
        parts.append(evaluated.assign(measured_by=TRAINED))
    if probes is not None and len(probes):
        parts.append(probes.assign(measured_by=PROBED))
    columns = [*keys, "measured_by", *INFERENCE_COSTS.values()]
    if not parts:
        return pd.DataFrame(columns=columns)
    rows = pd.concat(parts).rename(columns=INFERENCE_COSTS).reindex(columns=columns)
    return rows.groupby([*keys, "measured_by"]).mean().reset_index()


def training_costs(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per AD training run: wall minutes (the logged intervals' seconds per step times their steps), mean
    seconds per step after the first interval (allocations, warm-up) and peak memory."""
    keys = ["family", "arch", "context_episodes", "seed"]
    m = metrics.sort_values([*keys, "step"])
    steps = m["step"] - m.groupby(keys)["step"].shift(fill_value=0)
    m = m.assign(seconds=m["seconds_per_step"] * steps, warm=m["step"] > m.groupby(keys)["step"].transform("min"))
    runs = m.groupby(keys).agg(train_minutes=("seconds", "sum"), peak_mem_mib=("peak_mem_mib", "max"))
    runs["train_minutes"] /= 60
    runs["train_seconds_per_step"] = m[m["warm"]].groupby(keys)["seconds_per_step"].mean()
    return runs.reset_index()


def context_scaling(
    summary: pd.DataFrame,
    metrics: pd.DataFrame,
    probes: pd.DataFrame | None = None,
    costs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Family x AD architecture x context: the reward-driven gain and normalised final return (from the
    summary, with their CIs), the training's wall minutes, seconds per step (also as a multiple of Mamba's
    at the same context) and peak memory, and the inference costs at a full context (`inference_costs`,
    from the evaluations' `costs`); contexts an architecture was not trained at come from the cost probe
    (costs only)."""
    keys = ["family", "arch", "context_episodes"]
    trained = training_costs(metrics).drop(columns="seed").groupby(keys).mean().reset_index()
    rows = summary[summary["context_episodes"] != NO_CONTEXT].merge(trained, on=keys, how="left")
    rows["measured_by"] = TRAINED
    if probes is not None and len(probes):
        probed = probes[[*keys, "train_seconds_per_step", "peak_mem_mib"]].assign(measured_by=PROBED)
        rows = pd.concat([rows, probed])
    rows = rows.merge(inference_costs(costs, probes), on=[*keys, "measured_by"], how="left")
    mamba = rows[rows["arch"] == "mamba"].set_index(["family", "context_episodes"])["train_seconds_per_step"]
    at = pd.MultiIndex.from_frame(rows[["family", "context_episodes"]])
    rows["seconds_per_step_vs_mamba"] = rows["train_seconds_per_step"].to_numpy() / mamba.reindex(at).to_numpy()
    return rows.sort_values(keys).reindex(columns=SCALING_COLUMNS).reset_index(drop=True)


CONVERGENCE_COLUMNS = [
    "family",
    "baseline",
    "seeds",
    "env_steps",
    "curve_final_return",
    "curve_last_fifth_gain",
    "converged",
    "baseline_final_return",
    "model",
    "model_env_steps",
    "model_final_return",
    "baseline_reaches_model_at",
]
CONVERGED_FRACTION = 0.02  # of the floor-to-source range: a last fifth that gains less has converged


def curve_by_env_steps(metrics: pd.DataFrame) -> pd.DataFrame:
    """A baseline's training curve per family: the return of the last 10% of its trials' episodes (on the
    training tasks) against env steps, averaged over its seeds."""
    keys = ["family", "arch", "env_steps"]
    return metrics.groupby(keys)["last_return"].mean().reset_index()


def baseline_convergence(metrics: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per family x baseline x AD model: the baseline's env steps and the end of its training curve, how
    much its last fifth of updates gained (as a fraction of the family's floor-to-source range; below
    CONVERGED_FRACTION: converged), its held-out final return beside each AD model's (and their env
    steps), and the first env step at which the baseline's training curve reaches that model's held-out
    final return (empty: it never does)."""
    rows = []
    curves = curve_by_env_steps(metrics)
    for (family, baseline), curve in curves.groupby(["family", "arch"]):
        fam = summary[summary["family"] == family]
        base = fam[fam["arch"] == baseline]
        span = float((fam["source_final_return"] - fam["floor_return"]).iloc[0]) if len(fam) else np.nan
        ret = curve.sort_values("env_steps")["last_return"].to_numpy()
        steps = curve.sort_values("env_steps")["env_steps"].to_numpy()
        fifth = max(1, len(ret) // 5)
        gain = ret[-fifth:].mean() - ret[-2 * fifth : -fifth].mean() if len(ret) >= 2 * fifth else np.nan
        smooth = pd.Series(ret).rolling(fifth, min_periods=1).mean().to_numpy()  # a running mean over a fifth
        for _, model in fam[fam["context_episodes"] != NO_CONTEXT].iterrows():
            reached = np.nonzero(smooth >= model["final_return"])[0]
            rows.append(
                {
                    "family": family,
                    "baseline": baseline,
                    "seeds": int(
                        metrics.loc[(metrics["family"] == family) & (metrics["arch"] == baseline), "seed"].nunique()
                    ),
                    "env_steps": int(steps[-1]),
                    "curve_final_return": float(ret[-fifth:].mean()),
                    "curve_last_fifth_gain": float(gain / span) if span > 0 else np.nan,
                    "converged": bool(span > 0 and gain / span < CONVERGED_FRACTION),
                    "baseline_final_return": float(base["final_return"].iloc[0]) if len(base) else np.nan,
                    "model": label(model["arch"], model["context_episodes"]),
                    "model_env_steps": model["train_env_steps"],
                    "model_final_return": model["final_return"],
                    "baseline_reaches_model_at": float(steps[reached[0]]) if len(reached) else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=CONVERGENCE_COLUMNS)


MODEL_KEYS = ["family", "arch", "context_episodes", "seed"]
COMMITS = ["dataset_commit", "model_commit", "evaluate_commit"]  # the evaluate stage's cost-table columns


def provenance(costs: pd.DataFrame, tables_commit: str) -> pd.DataFrame:
    """The commits behind each model's rows, from the evaluate stage's cost tables: its dataset's (the
    histories), its training's and its evaluation's, beside the commit that made these tables;
    `unknown` where a file made before they were recorded does not say."""
    out = costs.reindex(columns=MODEL_KEYS + COMMITS)
    out[COMMITS] = out[COMMITS].astype(object).fillna("unknown")
    out["tables_commit"] = tables_commit
    return out.sort_values(MODEL_KEYS).reset_index(drop=True)


def episode_strides(costs: pd.DataFrame | None) -> dict:
    """{family: the AD models' dataset.episode_stride}, from the evaluate stage's cost tables: where the
    in-context figure places the source's history episode e (at e / stride)."""
    if costs is None or "episode_stride" not in costs:
        raise ValueError("the evaluate stage's cost tables (with episode_stride) are needed; rerun the evaluate rules")
    ad = costs[costs["context_episodes"] != NO_CONTEXT].dropna(subset=["episode_stride"])
    return {family: int(g["episode_stride"].iloc[0]) for family, g in ad.groupby("family")}


def _cell(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1000:
        return f"{v:,.0f}"  # step counts
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_table(df: pd.DataFrame, csv_path: Path, md_path: Path) -> None:
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    header = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    body = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in df.itertuples(index=False))
    with atomic_path(md_path) as tmp:
        tmp.write_text(header + body)
