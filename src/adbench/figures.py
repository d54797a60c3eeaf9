"""Result tables -> the benchmark's figures and summary tables (reads only the tidy CSVs)."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import statistics  # noqa: E402
from .atomic import atomic_path  # noqa: E402

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
    "random_return",
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
]
RUN = ["seed", "eval_seed", "task"]
# Models without an AD context (online meta-RL baselines) carry context_episodes = 0 in the tables.
NO_CONTEXT = 0


def label(arch: str, ctx: int) -> str:
    return arch if ctx == NO_CONTEXT else f"{arch} ctx {ctx}"


def edge(episodes: int) -> int:
    """How many episodes make the first / last 10% of a run (at least one)."""
    return max(1, math.ceil(0.1 * episodes))


def load(paths: list) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    if not np.all(np.isfinite(df["return"])):
        raise ValueError("evaluation tables contain non-finite returns; rerun the evaluate rules")
    return df


def run_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per evaluation run (control, seed, eval_seed, task): mean return of the first and last 10% of episodes."""
    n = int(df["episode"].max()) + 1
    k = edge(n)
    keys = ["family", "arch", "context_episodes", "control", "seed", "eval_seed", "task"]
    first = df[df["episode"] < k].groupby(keys)["return"].mean().rename("first")
    last = df[df["episode"] >= n - k].groupby(keys)["return"].mean().rename("final")
    return pd.concat([first, last], axis=1).reset_index()


def final_episodes(df: pd.DataFrame, by) -> pd.DataFrame:
    """The rows in the last 10% of episodes (at least one) of each group `by`: what "final" means here."""
    n = df.groupby(by)["episode"].transform("max") + 1
    return df[df["episode"] >= n - np.maximum(1, np.ceil(0.1 * n))]


def colours(names) -> dict:
    """One colour per name, the same in every panel of a figure."""
    names = list(names)
    return dict(zip(names, sns.color_palette("colorblind", len(names))))


def held_out(refs: pd.DataFrame) -> pd.DataFrame:
    """Reference rows on test tasks only (the source's train-task curves are for the learning-curve figure)."""
    return refs[refs["task"].str.startswith("test-")]


def source_improvement(refs: pd.DataFrame) -> pd.DataFrame:
    """Per family and split: on how many histories the last 10% of episodes beat the first 10%."""
    src = refs[refs["arch"] == "source"].assign(split=lambda d: d["task"].str.split("-").str[0])
    n = src.groupby("family")["episode"].transform("max") + 1
    k = np.maximum(1, np.ceil(0.1 * n))
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


def plot_source_curves(refs: pd.DataFrame, path: Path) -> None:
    """The source algorithm's learning curves from the datasets: return vs history episode, per family."""
    src = refs[refs["arch"] == "source"].assign(split=lambda d: d["task"].str.split("-").str[0])
    families = sorted(src["family"].unique())
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        sns.lineplot(
            data=src[src["family"] == family],
            x="episode",
            y="return",
            hue="split",
            errorbar=("pi", 50),
            estimator="median",
            ax=ax,
        )
        ax.set(title=f"{family}: source learning histories", xlabel="history episode", ylabel="episode return")
    fig.tight_layout()
    _save(fig, path)


MIN_GAP_FRACTION = 0.1


def task_levels(refs: pd.DataFrame) -> pd.DataFrame:
    """Per held-out task: the random policy's mean return, the source's final (last 10% of its history
    episodes) and the gap the normalised score divides by. A task whose source-random gap is below
    MIN_GAP_FRACTION of the family's median gap (the source barely learned it, or did worse than random)
    is divided by that floor instead, so that it neither explodes nor flips the score's sign."""
    refs = held_out(refs)
    rnd = refs[refs["arch"] == "random"].groupby(["family", "task"])["return"].mean().rename("random")
    src = refs[refs["arch"] == "source"]
    src_final = final_episodes(src, "family").groupby(["family", "task"])["return"].mean().rename("source_final")
    levels = pd.concat([rnd, src_final], axis=1).reset_index()
    gap = levels["source_final"] - levels["random"]
    floor = MIN_GAP_FRACTION * gap.groupby(levels["family"]).transform(lambda g: np.median(np.abs(g)))
    return levels.assign(gap=np.maximum(gap, floor))


def normalized_units(models: pd.DataFrame, refs: pd.DataFrame) -> pd.DataFrame:
    """run_scores with each unit's normalised final return: (final - random) / gap, with its task's levels."""
    levels = task_levels(refs)[["family", "task", "random", "gap"]]
    units = run_scores(models).merge(levels, on=["family", "task"], how="left", validate="many_to_one")
    if units["gap"].isna().any():
        missing = sorted(units.loc[units["gap"].isna(), "task"].unique())
        raise ValueError(f"no random or source reference for tasks {missing}; rerun the reference rule")
    return units.assign(normalized=(units["final"] - units["random"]) / units["gap"]).drop(columns=["random", "gap"])


def _with_ci(name: str, estimate: tuple, ci: str | None = None) -> dict:
    """(point, low, high) -> the summary's columns name, <ci>_ci_low, <ci>_ci_high (ci defaults to name)."""
    ci = ci or name
    return {name: estimate[0], f"{ci}_ci_low": estimate[1], f"{ci}_ci_high": estimate[2]}


def summarize(
    models: pd.DataFrame, refs: pd.DataFrame, seed: int = 0, costs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per (family, arch, context): returns, gains and control gains, the normalised final return's
    IQM and optimality gap, each with a 95% CI (`statistics`), and (given the evaluate stage's cost tables)
    the source and the environment steps each model's training consumed."""
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
    units = normalized_units(models, refs)
    units = units.assign(gain=units["final"] - units["first"])
    refs = held_out(refs)
    rows = []
    for family, fam in units.groupby("family"):
        ref = refs[refs["family"] == family]
        random_level = ref[ref["arch"] == "random"]["return"].mean()
        src = ref[ref["arch"] == "source"]
        src_final = final_episodes(src, "family")["return"].mean()
        for (arch, ctx), runs in fam.groupby(["arch", "context_episodes"]):
            # a row's resamples depend on the row alone, not on which other models are in the table
            row_seed = statistics.row_seed(seed, family, arch, ctx)
            g = runs[runs["control"] == "none"]
            norm = statistics.score_matrix(g, "normalized")
            row = {
                "family": family,
                "arch": arch,
                "context_episodes": ctx,
                "source": sources.get((family, arch, ctx), ""),
                "train_env_steps": budget.get((family, arch, ctx), np.nan),
                "runs": len(g),
                "first_return": g["first"].mean(),
                "final_return": g["final"].mean(),
                "source_final_return": src_final,
                "random_return": random_level,
                **_with_ci("gain", statistics.interval(statistics.score_matrix(g, "gain"), "mean", row_seed)),
                **_with_ci("normalized_final_iqm", statistics.interval(norm, "iqm", row_seed), "normalized"),
                **_with_ci("optimality_gap", statistics.interval(norm, "optimality_gap", row_seed)),
            }
            for control, name in (("zero_reward", "zero_reward_gain"), ("other_task_reward", "other_task_gain")):
                c = runs[runs["control"] == control]
                if len(c):
                    row.update(
                        _with_ci(name, statistics.interval(statistics.score_matrix(c, "gain"), "mean", row_seed))
                    )
            other = runs[runs["control"] == "other_task_reward"]
            if len(other):
                # final return seeing the true rewards minus seeing another task's, run by run
                paired = g.set_index(RUN)["final"] - other.set_index(RUN)["final"]
                driven = paired.dropna().to_numpy()
                ci = statistics.bootstrap_ci(driven, np.mean, np.random.default_rng(row_seed))
                row.update(_with_ci("reward_driven_gain", (driven.mean(), *ci), "reward_driven"))
            rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


COMPARISON_COLUMNS = ["family", "context_episodes", "x", "y", "runs", "tasks", "probability", "ci_low", "ci_high"]
ALL_FAMILIES = "all"


def compare(models: pd.DataFrame, refs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """P(X > Y) on the normalised final return (`statistics.probability_of_improvement`), seeing the true
    rewards: for each family and context, between the AD architectures (alphabetically, so P(mamba >
    transformer)) and of each AD model over each baseline without a context (RL^2); and per context over
    all families together (their tasks side by side), where every family has the same runs per task."""
    units = normalized_units(models, refs)
    units = units[units["control"] == "none"]
    matrices = {
        key: statistics.score_matrix(g, "normalized")
        for key, g in units.groupby(["family", "arch", "context_episodes"])
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
        if len(per_family) > 1 and len({m.shape[0] for _, mx, my in per_family for m in (mx, my)}) == 1:
            groups.append((ALL_FAMILIES, [mx for _, mx, _ in per_family], [my for _, _, my in per_family]))
        for family, xs, ys in groups:
            mx, my = np.hstack(xs), np.hstack(ys)
            estimate = statistics.probability_of_improvement(mx, my, statistics.row_seed(seed, family, x, cx, y, cy))
            rows.append(
                {
                    "family": family,
                    "context_episodes": cx,
                    "x": x,
                    "y": y,
                    "runs": min(mx.shape[0], my.shape[0]),
                    "tasks": mx.shape[1],
                    "probability": estimate[0],
                    "ci_low": estimate[1],
                    "ci_high": estimate[2],
                }
            )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


CONTROL_STYLES = {"none": "-", "other_task_reward": "--", "zero_reward": ":"}


def plot_in_context(models: pd.DataFrame, refs: pd.DataFrame, strides: dict, path: Path) -> None:
    """Return vs in-context episode, a column per family. Top: each arch x context seeing the true
    rewards, with the random policy and the source (history episode / stride). Bottom: the same models
    seeing the true rewards, zero rewards and another task's rewards (the controls)."""
    n = int(models["episode"].max()) + 1
    models = models.assign(label=[label(a, c) for a, c in zip(models["arch"], models["context_episodes"])])
    src = held_out(refs)
    src = src[src["arch"] == "source"].assign(label="source (history episode / stride)")
    src = src.assign(episode=src["episode"] / src["family"].map(strides))
    src = src[src["episode"] <= n - 1]
    rnd = held_out(refs)
    rnd = rnd[rnd["arch"] == "random"].assign(label="random")
    labels = sorted(models["label"].unique())
    palette = {
        **colours(labels),
        "source (history episode / stride)": "black",
        "random": "0.6",
    }
    families = sorted(models["family"].unique())
    fig, axes = plt.subplots(2, len(families), figsize=(4.6 * len(families) + 2, 6.4), squeeze=False, sharex=True)
    for col, family in enumerate(families):
        top, bottom = axes[0, col], axes[1, col]
        fam = models[models["family"] == family]
        true = pd.concat([fam[fam["control"] == "none"], src[src["family"] == family], rnd[rnd["family"] == family]])
        sns.lineplot(
            data=true,
            x="episode",
            y="return",
            hue="label",
            palette=palette,
            errorbar=("ci", 95),
            n_boot=500,
            seed=0,
            ax=top,
            legend=False,
        )
        for (lab, control), g in fam.groupby(["label", "control"]):
            mean = g.groupby("episode")["return"].mean()
            bottom.plot(mean.index, mean.to_numpy(), color=palette[lab], ls=CONTROL_STYLES.get(control, "-"), lw=1.4)
        top.set(title=family, ylabel="episode return (true rewards)" if col == 0 else "")
        bottom.set(xlabel="in-context episode", ylabel="episode return (controls)" if col == 0 else "")
    handles = [plt.Line2D([], [], color=palette[k], lw=2, label=k) for k in palette]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False, fontsize=8, title="model")
    styles = [
        plt.Line2D([], [], color="0.3", ls=ls, label=c.replace("_", " ") if c != "none" else "true rewards")
        for c, ls in CONTROL_STYLES.items()
    ]
    fig.legend(
        handles=styles,
        loc="lower left",
        bbox_to_anchor=(1.0, 0.1),
        frameon=False,
        fontsize=8,
        title="reward seen (bottom)",
    )
    fig.tight_layout()
    _save(fig, path)


def _context_axis(ax, contexts) -> None:
    """A log2 context axis with a tick at each context (in episodes), as the paper's scaling plots."""
    contexts = sorted({int(c) for c in contexts})
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [str(c) for c in contexts])
    ax.minorticks_off()


def plot_context_scaling(summary: pd.DataFrame, path: Path) -> None:
    """(b) Normalised final in-context return vs context length, per family and architecture; a baseline
    without an AD context (RL^2) is a horizontal line with its CI as a band."""
    families = sorted(summary["family"].unique())
    archs = sorted(summary.loc[summary["context_episodes"] != NO_CONTEXT, "arch"].unique())
    arch_colours = colours(archs)
    fig, axes = plt.subplots(1, len(families), figsize=(3.8 * len(families) + 1.5, 3.4), squeeze=False)
    for ax, family in zip(axes[0], families):
        fam = summary[summary["family"] == family]
        for _baseline, g in fam[fam["context_episodes"] == NO_CONTEXT].groupby("arch"):
            ax.axhline(g["normalized_final_iqm"].iloc[0], ls="-.", lw=1.2, color="tab:purple")
            ax.axhspan(g["normalized_ci_low"].iloc[0], g["normalized_ci_high"].iloc[0], color="tab:purple", alpha=0.12)
        ad = fam[fam["context_episodes"] != NO_CONTEXT]
        for arch, g in ad.groupby("arch"):
            g = g.sort_values("context_episodes")
            y = g["normalized_final_iqm"].to_numpy()
            err = np.vstack([y - g["normalized_ci_low"].to_numpy(), g["normalized_ci_high"].to_numpy() - y])
            ax.errorbar(g["context_episodes"], y, yerr=err, marker="o", capsize=3, color=arch_colours[arch])
        ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        if len(ad):
            _context_axis(ax, ad["context_episodes"])
        ax.set(title=family, xlabel="context (episodes, log2)", ylabel="normalised final return (IQM)")
    handles = [plt.Line2D([], [], color=arch_colours[a], marker="o", label=a) for a in archs]
    handles += [
        plt.Line2D([], [], color="tab:purple", ls="-.", label="RL^2 (whole trial)"),
        plt.Line2D([], [], color="grey", ls="--", label="source final (1)"),
        plt.Line2D([], [], color="grey", ls=":", label="random (0)"),
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_cost(metrics: pd.DataFrame, costs: pd.DataFrame, path: Path, probes: pd.DataFrame | None = None) -> None:
    """(c) Training seconds per step and peak memory, and inference ms per batched step, against context
    length: a row per quantity, a column per family, axes from zero. Filled markers: trained models;
    hollow ones: contexts an architecture was not trained at, measured by the cost probe."""
    keys = ["family", "arch", "context_episodes", "seed"]
    trained = (
        metrics[metrics["step"] > metrics.groupby(keys)["step"].transform("min")]
        .groupby(keys)
        .agg(seconds_per_step=("seconds_per_step", "mean"), peak_mem_mib=("peak_mem_mib", "max"))
        .reset_index()
    )
    costs = costs[costs["context_episodes"] != NO_CONTEXT]  # against context length: AD models only
    probes = probes.rename(columns={"train_seconds_per_step": "seconds_per_step"}) if probes is not None else None
    panels = [
        ("trained", "seconds_per_step", "training seconds / step"),
        ("trained", "peak_mem_mib", "training peak memory (MiB)"),
        ("costs", "ms_per_step", "inference ms per batched step"),
    ]
    sources = {"trained": trained, "costs": costs}
    families = sorted(trained["family"].unique())
    archs = sorted(set(trained["arch"]) | set(costs["arch"]) | (set(probes["arch"]) if probes is not None else set()))
    arch_colours = colours(archs)
    fig, axes = plt.subplots(3, len(families), figsize=(3.6 * len(families) + 1.5, 8), squeeze=False)
    for col, family in enumerate(families):
        for row, (source, column, name) in enumerate(panels):
            ax = axes[row, col]
            fam = sources[source][sources[source]["family"] == family]
            contexts = set(fam["context_episodes"])
            for arch, g in fam.groupby("arch"):
                g = g.groupby("context_episodes")[column].mean()
                ax.plot(g.index, g.to_numpy(), marker="o", color=arch_colours[arch])
            if probes is not None:
                for arch, g in probes[probes["family"] == family].groupby("arch"):
                    g = g.groupby("context_episodes")[column].mean()
                    ax.plot(g.index, g.to_numpy(), marker="o", mfc="none", ls="--", color=arch_colours[arch])
                    contexts |= set(g.index)
            if contexts:
                _context_axis(ax, contexts)
            ax.set_ylim(bottom=0)
            ax.set(
                title=family if row == 0 else "",
                ylabel=name if col == 0 else "",
                xlabel="context (episodes, log2)" if row == 2 else "",
            )
    handles = [plt.Line2D([], [], color=arch_colours[a], marker="o", label=a) for a in archs]
    if probes is not None and len(probes):
        handles.append(
            plt.Line2D([], [], color="0.4", marker="o", mfc="none", ls="--", label="not trained: cost probe")
        )
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _intervals(ax, points, lows, highs, names, colors) -> None:
    """One horizontal 95% interval per name, top to bottom, the point estimate as a tick."""
    for i, (p, lo, hi, c) in enumerate(zip(points, lows, highs, colors)):
        ax.plot([lo, hi], [i, i], color=c, lw=6, alpha=0.65, solid_capstyle="butt")
        ax.plot([p], [i], marker="|", ms=12, mew=1.5, color="black")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)


def plot_aggregates(summary: pd.DataFrame, path: Path) -> None:
    """rliable's aggregates of the normalised final return with their 95% CIs, a row per family: the IQM
    (0 the random policy, 1 the source's final episodes) and the optimality gap (distance below 1)."""
    summary = summary.assign(model=[label(a, c) for a, c in zip(summary["arch"], summary["context_episodes"])])
    families = sorted(summary["family"].unique())
    palette = colours(sorted(summary["model"].unique()))
    height = max(1.0, 0.3 * summary.groupby("family").size().max() + 0.6)
    fig, axes = plt.subplots(len(families), 2, figsize=(7, height * len(families) + 0.4), squeeze=False)
    panels = [("normalized_final_iqm", "normalized", "IQM"), ("optimality_gap", "optimality_gap", "optimality gap")]
    for row, family in enumerate(families):
        fam = summary[summary["family"] == family].sort_values("model")
        for col, (column, ci, name) in enumerate(panels):
            ax = axes[row, col]
            names = fam["model"].tolist()
            _intervals(ax, fam[column], fam[f"{ci}_ci_low"], fam[f"{ci}_ci_high"], names, [palette[m] for m in names])
            ax.axvline(0.0 if col == 1 else 1.0, color="grey", ls="--", lw=0.8)
            if col == 1:
                ax.set_yticklabels([])
            ax.set(title=f"{family}: {name}" if col == 0 else name)
            if row == len(families) - 1:
                ax.set_xlabel("normalised final return" if col == 0 else "1 - mean(min(score, 1))")
    fig.tight_layout()
    _save(fig, path)


def plot_improvement(comparison: pd.DataFrame, path: Path) -> None:
    """P(X > Y) on the normalised final return with its 95% CI, per family (and all together) and context."""
    names = [f"{r.family}, ctx {r.context_episodes}: {r.x} > {r.y}" for r in comparison.itertuples()]
    fig, ax = plt.subplots(figsize=(6, 0.3 * max(len(names), 2) + 0.9))
    tone = ["black" if f == ALL_FAMILIES else "tab:blue" for f in comparison["family"]]
    _intervals(ax, comparison["probability"], comparison["ci_low"], comparison["ci_high"], names, tone)
    ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    ax.set(xlim=(0, 1), xlabel="probability of improvement P(X > Y)")
    fig.tight_layout()
    _save(fig, path)


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


def plot_task_inference(inference: pd.DataFrame, path: Path) -> None:
    """Per family: what the final episodes achieved against what the task asked, for every model and the
    source's final history episodes (a scatter where the task sets a target, else the achieved per model).
    Directions are drawn unwrapped to within half a turn of their target, so that on-target is on the diagonal."""
    final = final_inference(inference)
    circular = final["quantity"] == "direction_of_travel"
    offset = (final["achieved"] - final["target"] + np.pi) % (2 * np.pi) - np.pi
    final = final.assign(achieved=np.where(circular, final["target"] + offset, final["achieved"]))
    models = sorted(final["model"].unique(), key=lambda m: (m in ("source", "random"), m))
    learned = [m for m in models if m not in ("source", "random")]
    palette = {**colours(learned), "source": "black", "random": "0.65"}
    families = sorted(final["family"].unique())
    fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families) + 1.5, 3.8), squeeze=False)
    for ax, family in zip(axes[0], families):
        fam = final[final["family"] == family]
        quantity = fam["quantity"].iloc[0].replace("_", " ")
        order = [m for m in models if m in set(fam["model"])]
        if fam["target"].notna().all() and fam["target"].nunique() > 1:
            sns.scatterplot(
                data=fam,
                x="target",
                y="achieved",
                hue="model",
                hue_order=order,
                palette=palette,
                s=22,
                alpha=0.8,
                ax=ax,
                legend=False,
            )
            lo, hi = fam["target"].min(), fam["target"].max()
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
            unit = " (rad)" if quantity == "direction of travel" else ""
            ax.set(title=family, xlabel=f"target {quantity}{unit}", ylabel=f"achieved {quantity}, final episodes")
        else:
            column = "achieved" if fam["error"].isna().all() else "error"
            sns.stripplot(
                data=fam,
                x="model",
                y=column,
                hue="model",
                order=order,
                hue_order=order,
                palette=palette,
                ax=ax,
                size=3,
                legend=False,
            )
            ax.tick_params(axis="x", rotation=30)
            ax.set(title=family, xlabel="", ylabel=f"{quantity}, final episodes")
    handles = [plt.Line2D([], [], ls="", marker="o", color=palette[m], label=m) for m in models]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path) -> None:
    """The figure as PNG at `path` and as PDF beside it (same name, .pdf)."""
    path = Path(path)
    for target in (path, path.with_suffix(".pdf")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight", format=target.suffix.lstrip("."))
    plt.close(fig)


def _cell(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1000:
        return f"{v:,.0f}"  # step counts
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _write_table(df: pd.DataFrame, csv_path: Path, md_path: Path) -> None:
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)
    header = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    body = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in df.itertuples(index=False))
    with atomic_path(md_path) as tmp:
        tmp.write_text(header + body)


def make_all(
    strides: dict,
    model_csvs: list,
    reference_csvs: list,
    out_dir,
    train_metrics=(),
    inference_costs=(),
    inference_csvs=(),
    cost_probes=(),
) -> pd.DataFrame:
    """Every figure and table under out_dir/{figures,tables}/. `strides`: {family: dataset.episode_stride},
    to place the source's history episodes on the in-context x-axis; the cost figure needs the training
    metrics and inference costs (and draws the cost probes' measurements, where given); the
    task-inference figure and table the evaluations' diagnostics."""
    out = Path(out_dir)
    models, refs = load(model_csvs), load(reference_csvs)
    missing = sorted(set(refs["family"]) - set(strides))
    if missing:
        raise ValueError(f"no episode stride given for families {missing}")
    plot_in_context(models, refs, strides, out / "figures/in_context_return.png")
    plot_source_curves(refs, out / "figures/source_learning_curves.png")
    _write_table(source_improvement(refs), out / "tables/source_improvement.csv", out / "tables/source_improvement.md")
    costs = pd.concat([pd.read_csv(p) for p in inference_costs]) if inference_costs else None
    summary = summarize(models, refs, costs=costs)
    _write_table(summary, out / "tables/summary.csv", out / "tables/summary.md")
    comparison = compare(models, refs)
    _write_table(comparison, out / "tables/comparison.csv", out / "tables/comparison.md")
    plot_context_scaling(summary, out / "figures/context_scaling.png")
    plot_aggregates(summary, out / "figures/aggregate_scores.png")
    plot_improvement(comparison, out / "figures/probability_of_improvement.png")
    if inference_csvs:
        inference = pd.concat([pd.read_csv(p) for p in inference_csvs], ignore_index=True)
        _write_table(inference_summary(inference), out / "tables/task_inference.csv", out / "tables/task_inference.md")
        plot_task_inference(inference, out / "figures/task_inference.png")
    if train_metrics and inference_costs:
        probes = pd.concat([pd.read_csv(p) for p in cost_probes]) if cost_probes else None
        plot_cost(pd.concat([pd.read_csv(p) for p in train_metrics]), costs, out / "figures/cost.png", probes)
    return summary
