"""Result tables -> the benchmark's figures, and `make_all`, which writes every figure and table."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .atomic import atomic_path  # noqa: E402
from .claims import CLAIMS, VERDICTS, claims  # noqa: E402
from .outputs import figure, table  # noqa: E402
from .provenance import git_revision  # noqa: E402
from .scores import FLOORS, held_out  # noqa: E402
from .tables import (  # noqa: E402
    ALL_FAMILIES,
    NO_CONTEXT,
    PROBED,
    TRAINED,
    baseline_convergence,
    compare,
    context_scaling,
    curve_by_env_steps,
    episode_strides,
    final_inference,
    inference_costs,
    inference_summary,
    label,
    load,
    provenance,
    source_improvement,
    summarize,
    training_costs,
    write_table,
)


def colours(names) -> dict:
    """One colour per name, the same in every panel of a figure."""
    names = list(names)
    return dict(zip(names, sns.color_palette("colorblind", len(names))))


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


CONTROL_STYLES = {"none": "-", "other_task_reward": "--", "zero_reward": ":", "task_switch": "-."}


def plot_in_context(models: pd.DataFrame, refs: pd.DataFrame, strides: dict, path: Path) -> None:
    """Return vs in-context episode, a column per family. Top: each arch x context seeing the true
    rewards, with the floors (random, zero-action, task-blind) and the source (history episode / stride).
    Bottom: the same models under every control (zero rewards, another task's rewards, the task switched
    half way)."""
    n = int(models["episode"].max()) + 1
    models = models.assign(label=[label(a, c) for a, c in zip(models["arch"], models["context_episodes"])])
    src = held_out(refs)
    src = src[src["arch"] == "source"].assign(label="source (history episode / stride)")
    src = src.assign(episode=src["episode"] / src["family"].map(strides))
    src = src[src["episode"] <= n - 1]
    rnd = held_out(refs)
    rnd = rnd[rnd["arch"].isin(FLOORS)].assign(label=lambda d: "floor: " + d["arch"])
    labels = sorted(models["label"].unique())
    palette = {
        **colours(labels),
        "source (history episode / stride)": "black",
        **dict(zip(sorted(rnd["label"].unique()), ["0.45", "0.6", "0.75"])),
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


SCALING_PANELS = [
    ("normalized_final_iqm", "normalized_ci_low", "normalized_ci_high", "normalised final return (IQM)"),
    ("reward_driven_gain", "reward_driven_ci_low", "reward_driven_ci_high", "reward-driven gain"),
]


def plot_context_scaling(summary: pd.DataFrame, path: Path) -> None:
    """(b) Normalised final in-context return (top) and reward-driven gain (bottom) vs context length, a
    column per family, a line per AD architecture with 95% CIs; a baseline without an AD context (RL^2) is
    a horizontal line with its CI as a band."""
    families = sorted(summary["family"].unique())
    archs = sorted(summary.loc[summary["context_episodes"] != NO_CONTEXT, "arch"].unique())
    arch_colours = colours(archs)
    fig, axes = plt.subplots(
        len(SCALING_PANELS), len(families), figsize=(3.8 * len(families) + 1.5, 6.4), squeeze=False
    )
    for col, family in enumerate(families):
        fam = summary[summary["family"] == family]
        ad = fam[fam["context_episodes"] != NO_CONTEXT]
        for row, (value, low, high, name) in enumerate(SCALING_PANELS):
            ax = axes[row, col]
            for _baseline, g in fam[fam["context_episodes"] == NO_CONTEXT].groupby("arch"):
                ax.axhline(g[value].iloc[0], ls="-.", lw=1.2, color="tab:purple")
                ax.axhspan(g[low].iloc[0], g[high].iloc[0], color="tab:purple", alpha=0.12)
            for i, (arch, g) in enumerate(ad.groupby("arch")):
                g = g.sort_values("context_episodes")
                y = g[value].to_numpy()
                err = np.vstack([y - g[low].to_numpy(), g[high].to_numpy() - y])
                dodge = 2 ** (0.05 * (i - (len(archs) - 1) / 2))  # side by side where contexts coincide
                x = g["context_episodes"].to_numpy() * dodge
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=arch_colours[arch])
            ax.axhline(0.0, color="grey", lw=0.8, ls=":")
            if row == 0:
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            if len(ad):
                _context_axis(ax, ad["context_episodes"])
            ax.set(
                title=family if row == 0 else "",
                xlabel="context (episodes, log2)" if row == len(SCALING_PANELS) - 1 else "",
                ylabel=name if col == 0 else "",
            )
    handles = [plt.Line2D([], [], color=arch_colours[a], marker="o", label=a) for a in archs]
    handles += [
        plt.Line2D([], [], color="tab:purple", ls="-.", label="RL^2 (whole trial)"),
        plt.Line2D([], [], color="grey", ls="--", label="source final (1)"),
        plt.Line2D([], [], color="grey", ls=":", label="best floor (0) / no gain"),
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_cost(metrics: pd.DataFrame, costs: pd.DataFrame, path: Path, probes: pd.DataFrame | None = None) -> None:
    """(c) Against context length, a row per quantity and a column per family, axes from zero: training
    seconds per step and peak memory; inference ms per batched step and the MiB of the recurrent state
    (Mamba) or KV cache (transformer), both once it holds a whole context. Filled markers: trained models;
    hollow ones: contexts an architecture was not trained at, measured by the cost probe."""
    trained = training_costs(metrics)
    inference = inference_costs(costs, probes)
    evaluated, probed_inference = (inference[inference["measured_by"] == m] for m in (TRAINED, PROBED))
    panels = [
        (trained, probes, "train_seconds_per_step", "training seconds / step"),
        (trained, probes, "peak_mem_mib", "training peak memory (MiB)"),
        (evaluated, probed_inference, "inference_ms_per_step", "inference ms / batched step"),
        (evaluated, probed_inference, "inference_state_mib", "inference state or cache (MiB)"),
    ]
    families = sorted(trained["family"].unique())
    archs = sorted(set(trained["arch"]) | set(inference["arch"]))
    arch_colours = colours(archs)
    fig, axes = plt.subplots(len(panels), len(families), figsize=(3.6 * len(families) + 1.5, 10.5), squeeze=False)
    for col, family in enumerate(families):
        for row, (measured, probed, column, name) in enumerate(panels):
            ax = axes[row, col]
            contexts = set()
            for frame, style in ((measured, {}), (probed, {"mfc": "none", "ls": "--"})):
                if frame is None:
                    continue
                for arch, g in frame[frame["family"] == family].groupby("arch"):
                    g = g.groupby("context_episodes")[column].mean()
                    ax.plot(g.index, g.to_numpy(), marker="o", color=arch_colours[arch], **style)
                    contexts |= set(g.index)
            if contexts:
                _context_axis(ax, contexts)
            ax.set_ylim(bottom=0)
            ax.set(
                title=family if row == 0 else "",
                ylabel=name if col == 0 else "",
                xlabel="context (episodes, log2)" if row == len(panels) - 1 else "",
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
    (0 the best floor, 1 the source's final episodes) and the optimality gap (distance below 1)."""
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
    """P(X > Y) on the final return with its 95% CI, per family (and all together) and context."""
    names = [f"{r.family}, ctx {r.context_episodes}: {r.x} > {r.y}" for r in comparison.itertuples()]
    fig, ax = plt.subplots(figsize=(6, 0.3 * max(len(names), 2) + 0.9))
    tone = ["black" if f == ALL_FAMILIES else "tab:blue" for f in comparison["family"]]
    _intervals(ax, comparison["probability"], comparison["ci_low"], comparison["ci_high"], names, tone)
    ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    ax.set(xlim=(0, 1), xlabel="probability of improvement P(X > Y)")
    fig.tight_layout()
    _save(fig, path)


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


def plot_baseline_convergence(metrics: pd.DataFrame, summary: pd.DataFrame, path: Path) -> None:
    """Return against environment steps, a panel per family: each baseline's training curve (the last 10%
    of its trials' episodes on the training tasks; thin: a seed, thick: their mean) and its held-out final
    return (a star at its total steps); each AD model's held-out final return at the env steps behind it
    (source histories and expert); the strongest floor and the source's final as lines."""
    families = sorted(set(metrics["family"]) | set(summary["family"]))
    fig, axes = plt.subplots(1, len(families), figsize=(5.2 * len(families) + 1.5, 4.0), squeeze=False)
    models = summary.assign(model=[label(a, c) for a, c in zip(summary["arch"], summary["context_episodes"])])
    palette = colours(sorted(models["model"].unique()))
    for ax, family in zip(axes[0], families):
        for (arch, _), run in metrics[metrics["family"] == family].groupby(["arch", "seed"]):
            ax.plot(run["env_steps"], run["last_return"], color=palette.get(arch, "tab:purple"), lw=0.6, alpha=0.4)
        for arch, curve in curve_by_env_steps(metrics[metrics["family"] == family]).groupby("arch"):
            ax.plot(curve["env_steps"], curve["last_return"], color=palette.get(arch, "tab:purple"), lw=2)
        fam = models[models["family"] == family]
        for _, row in fam.iterrows():
            marker = "*" if row["context_episodes"] == NO_CONTEXT else "o"
            ax.plot(
                [row["train_env_steps"]],
                [row["final_return"]],
                marker=marker,
                ms=10,
                color=palette[row["model"]],
                ls="",
            )
        if len(fam):
            ax.axhline(fam["source_final_return"].iloc[0], color="black", ls="--", lw=0.8)
            ax.axhline(fam["floor_return"].iloc[0], color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set(title=family, xlabel="environment steps", ylabel="episode return" if ax is axes[0, 0] else "")
    handles = [plt.Line2D([], [], color=c, marker="o", label=m) for m, c in palette.items()]
    handles += [
        plt.Line2D([], [], color="black", ls="--", label="source final"),
        plt.Line2D([], [], color="grey", ls=":", label="strongest floor"),
        plt.Line2D([], [], color="0.3", lw=2, label="baseline training curve (training tasks)"),
        plt.Line2D([], [], color="0.3", marker="*", ls="", ms=10, label="held-out final (baseline)"),
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


VERDICT_COLOURS = dict(zip(VERDICTS, ["tab:green", "0.5", "tab:red", "0.85"]))


def plot_claims(table: pd.DataFrame, path: Path) -> None:
    """The claims table as a forest plot: a panel per claim, a row per family x comparison, the effect
    with its 95% CI coloured by verdict, and the line it is judged against."""
    present = [c for c in CLAIMS if c in set(table["claim"])] or list(CLAIMS[:1])
    sizes = [max(1, int((table["claim"] == c).sum())) for c in present]
    fig, axes = plt.subplots(
        len(present),
        1,
        figsize=(7.5, 0.32 * sum(sizes) + 1.2 * len(present)),
        squeeze=False,
        gridspec_kw={"height_ratios": sizes},
    )
    for ax, claim in zip(axes[:, 0], present):
        rows = table[table["claim"] == claim]
        names = [
            f"{f}: {c} ({s} seed{'s' if s != 1 else ''}{', no scale' if v == 'undefined' else ''})"
            for f, c, s, v in zip(rows["family"], rows["comparison"], rows["training_seeds"], rows["verdict"])
        ]
        _intervals(
            ax, rows["effect"], rows["ci_low"], rows["ci_high"], names, [VERDICT_COLOURS[v] for v in rows["verdict"]]
        )
        for threshold in sorted(set(rows["threshold"])):
            ax.axvline(threshold, color="black", ls="--", lw=0.8)
        ax.axvline(0.0, color="grey", lw=0.6)
        ax.set(title=claim.replace("_", " "), xlabel="difference in IQM of the normalised final return")
    handles = [plt.Line2D([], [], color=c, marker="o", label=v) for v, c in VERDICT_COLOURS.items()]
    fig.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.98), frameon=False, fontsize=8, title="verdict"
    )
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path) -> None:
    """The figure as PNG at `path` and as PDF beside it (same name, .pdf)."""
    path = Path(path)
    for target in (path, path.with_suffix(".pdf")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight", format=target.suffix.lstrip("."))
    plt.close(fig)


def make_all(
    model_csvs: list,
    reference_csvs: list,
    out_dir,
    train_metrics=(),
    inference_costs=(),
    inference_csvs=(),
    cost_probes=(),
    baseline_metrics=(),
) -> pd.DataFrame:
    """Every figure and table under out_dir/{figures,tables}/. The evaluations' cost tables give the
    models' env steps and training stride (where the source's history episodes sit on the in-context
    x-axis); the cost figure needs the training metrics too (and draws the cost probes' measurements,
    where given); the
    task-inference figure and table the evaluations' diagnostics; the baseline-convergence figure and
    table the baselines' training metrics."""
    out = Path(out_dir)
    models, refs = load(model_csvs), load(reference_csvs)
    costs = pd.concat([pd.read_csv(p) for p in inference_costs]) if inference_costs else None
    strides = episode_strides(costs)
    missing = sorted(set(refs["family"]) - set(strides))
    if missing:
        raise ValueError(f"no AD model's cost table gives the episode stride of {missing}; rerun their evaluate rules")
    write_table(provenance(costs, git_revision()), *table(out, "provenance"))
    plot_in_context(models, refs, strides, figure(out, "in_context_return"))
    plot_source_curves(refs, figure(out, "source_learning_curves"))
    write_table(source_improvement(refs), *table(out, "source_improvement"))
    summary = summarize(models, refs, costs=costs)
    write_table(summary, *table(out, "summary"))
    comparison = compare(models)
    write_table(comparison, *table(out, "comparison"))
    verdicts = claims(models, refs)
    write_table(verdicts, *table(out, "claims"))
    plot_claims(verdicts, figure(out, "claims"))
    plot_context_scaling(summary, figure(out, "context_scaling"))
    plot_aggregates(summary, figure(out, "aggregate_scores"))
    plot_improvement(comparison, figure(out, "probability_of_improvement"))
    # without an online baseline (`baselines: []`) the table is empty and the figure has AD's points alone
    curves = (
        pd.concat([pd.read_csv(p) for p in baseline_metrics], ignore_index=True)
        if baseline_metrics
        else pd.DataFrame(columns=["family", "arch", "seed", "env_steps", "last_return"])
    )
    write_table(baseline_convergence(curves, summary), *table(out, "baseline_convergence"))
    plot_baseline_convergence(curves, summary, figure(out, "baseline_convergence"))
    if inference_csvs:
        inference = pd.concat([pd.read_csv(p) for p in inference_csvs], ignore_index=True)
        write_table(inference_summary(inference), *table(out, "task_inference"))
        plot_task_inference(inference, figure(out, "task_inference"))
    if train_metrics:
        probes = pd.concat([pd.read_csv(p) for p in cost_probes]) if cost_probes else None
        metrics = pd.concat([pd.read_csv(p) for p in train_metrics])
        scaling = context_scaling(summary, metrics, probes, costs)
        write_table(scaling, *table(out, "context_scaling"))
        if inference_costs:
            plot_cost(metrics, costs, figure(out, "cost"), probes)
    return summary
