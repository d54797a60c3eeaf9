"""`adbench <stage> ...`: the only entry point the workflow rules call.

Each stage takes its settings either as config files (`--config config.yaml override.yaml`, merged
in order and validated against the schema) or as the JSON of the config sections it needs
(`--settings '{...}'`, what the rules pass, so that a rule reruns only when its own sections change).
"""

import argparse
import json
import logging
import sys

from . import config as cfglib


def _settings(args, sections: list) -> dict:
    """The stage's settings: --settings as given, or --config files merged, with the per-family
    `overrides:` of the family the stage works on applied (as the workflow does)."""
    if args.settings is not None:
        try:
            cfg = json.loads(args.settings)
        except json.JSONDecodeError as e:
            raise cfglib.ConfigError(f"--settings is not valid JSON ({e})") from None
        return cfglib.validate(cfg, sections)
    if not args.config:
        raise cfglib.ConfigError("give --config FILE [FILE ...] or --settings JSON")
    cfg = cfglib.load(args.config)
    family = _family(args)
    return cfglib.for_family(cfg, family) if family else cfg


def _family(args) -> str | None:
    """The family a stage works on: --family, or the family of its --dataset."""
    if getattr(args, "family", None):
        return args.family
    if getattr(args, "dataset", None):
        from .data import open_histories

        with open_histories(args.dataset) as f:
            return str(f.attrs["family"])
    return None


def cmd_check_config(args):
    cfg = cfglib.load(args.config)
    print(
        f"config OK: families {cfg['families']}, architectures {cfg['architectures']}, "
        f"contexts {cfg['context_episodes']}, seeds {cfg['seeds']}"
    )


def cmd_expert(args):
    from .histories import SECTIONS, train_expert

    train_expert(_settings(args, SECTIONS), args.family, args.out, progress=sys.stderr)


def cmd_histories(args):
    from .histories import SECTIONS, run_shard

    run_shard(
        _settings(args, SECTIONS), args.family, args.shard, args.out, progress=sys.stderr, expert_path=args.expert
    )


def cmd_dataset(args):
    from .histories import SECTIONS, merge_shards

    summary = merge_shards(_settings(args, SECTIONS), args.family, args.shards, args.out)
    print(json.dumps(summary))


def cmd_validate(args):
    from .data import validate_file

    for path in args.files:
        print(f"{path}: OK {json.dumps(validate_file(path))}")


def cmd_cost_probe(args):
    from .cost_probe import SECTIONS, probe

    probe(_settings(args, SECTIONS), args.dataset, args.arch, args.ctx, args.out, progress=sys.stderr)


def cmd_export_minari(args):
    from .export import export_minari

    dataset = export_minari(args.dataset, args.name, args.root)
    where = args.root or "Minari's default folder (~/.minari/datasets or $MINARI_DATASETS_PATH)"
    print(f"{args.name}: {dataset.total_episodes} episodes, {dataset.total_steps} steps, under {where}")


def cmd_train(args):
    from .train import SECTIONS, run

    run(_settings(args, SECTIONS), args.dataset, args.arch, args.ctx, args.seed, args.out_dir, progress=sys.stderr)


def cmd_baseline_train(args):
    from .baselines import BASELINES, run

    if args.baseline not in BASELINES:
        raise cfglib.ConfigError(f"--baseline {args.baseline} is unknown; choose one of {', '.join(BASELINES)}")
    trainer = BASELINES[args.baseline]
    run(trainer, _settings(args, [args.baseline]), args.dataset, args.seed, args.out_dir, progress=sys.stderr)


def cmd_evaluate(args):
    from .evaluate import SECTIONS, evaluate_model

    evaluate_model(
        _settings(args, SECTIONS),
        args.dataset,
        args.model,
        args.out,
        args.cost_out,
        progress=sys.stderr,
        inference_path=args.inference_out,
    )


def cmd_primed(args):
    from .primed import SECTIONS, evaluate_primed

    evaluate_primed(_settings(args, SECTIONS), args.dataset, args.model, args.out, args.episodes, progress=sys.stderr)


def cmd_reference(args):
    from .evaluate import REFERENCE_SECTIONS, evaluate_references

    cfg = _settings(args, REFERENCE_SECTIONS)
    expert = None
    if args.expert:
        from .data import validate_file
        from .histories import load_expert

        expert = load_expert(args.expert, cfg, validate_file(args.dataset)["family"])[0]
    evaluate_references(
        cfg, args.dataset, args.out, progress=sys.stderr, inference_path=args.inference_out, expert=expert
    )


def cmd_figures(args):
    from .figures import make_all

    summary = make_all(
        args.models,
        args.references,
        args.out_dir,
        args.train_metrics,
        args.inference_costs,
        args.task_inference,
        args.cost_probes,
        args.baseline_metrics,
    )
    print(summary.to_string(index=False))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="stage", required=True)

    def stage(name, func, help_):
        s = sub.add_parser(name, help=help_)
        s.set_defaults(func=func)
        if name not in ("validate", "figures", "export-minari"):
            s.add_argument("--config", nargs="+", metavar="FILE", help="config files, merged in order")
        if name not in ("validate", "check-config", "figures", "export-minari"):
            s.add_argument("--settings", help="JSON of the config sections this stage needs")
        return s

    stage("check-config", cmd_check_config, "validate config files")
    s = stage("expert", cmd_expert, "train the task-conditioned expert of a family on its training tasks")
    s.add_argument("--family", required=True)
    s.add_argument("--out", required=True)
    s = stage("histories", cmd_histories, "learning histories of one shard of tasks")
    s.add_argument("--family", required=True)
    s.add_argument("--shard", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--expert", help="the trained task-conditioned expert (source.noise_distill.expert task_ppo)")
    s = stage("cost-probe", cmd_cost_probe, "measure training and inference cost at a context not trained at")
    s.add_argument("--dataset", required=True)
    s.add_argument("--arch", required=True)
    s.add_argument("--ctx", type=int, required=True)
    s.add_argument("--out", required=True, help="CSV of the measured costs")
    s = stage("export-minari", cmd_export_minari, "write a history file as a Minari dataset")
    s.add_argument("dataset", help="a history file (results/datasets/<family>.h5)")
    s.add_argument("--name", required=True, help="the Minari dataset id, e.g. adbench/HalfCheetahVel/histories-v0")
    s.add_argument("--root", help="folder of Minari datasets (default: Minari's own)")
    s = stage("dataset", cmd_dataset, "merge history shards into one validated dataset")
    s.add_argument("--family", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("shards", nargs="+")
    s = stage("validate", cmd_validate, "check history files against the schema")
    s.add_argument("files", nargs="+")
    s = stage("train", cmd_train, "one AD training run")
    s.add_argument("--dataset", required=True)
    s.add_argument("--arch", required=True)
    s.add_argument("--ctx", type=int, required=True, help="context length in episodes")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out-dir", required=True)
    s = stage("baseline-train", cmd_baseline_train, "meta-train an online baseline on a dataset's training tasks")
    s.add_argument("--baseline", required=True, help="the baseline's name, as in the config's `baselines`")
    s.add_argument("--dataset", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out-dir", required=True)
    s = stage("evaluate", cmd_evaluate, "in-context evaluation of a trained model on held-out tasks")
    s.add_argument("--dataset", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--cost-out", help="CSV of the inference cost (ms per batched step)")
    s.add_argument("--inference-out", help="CSV of the task-inference diagnostic of every episode")
    s = stage("primed", cmd_primed, "returns after the context is filled with a held-out task's solved history")
    s.add_argument("--dataset", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--episodes", type=int, default=4, help="episodes the model acts after the priming")
    s = stage("reference", cmd_reference, "the floors' and the source's curves on the held-out tasks")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--inference-out", help="CSV of the task-inference diagnostic of every episode")
    s.add_argument("--expert", help="the source's trained expert (the expert stage's output): the task-blind floor")
    s = stage("figures", cmd_figures, "figures and summary tables from the result CSVs")
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--references", nargs="+", required=True)
    s.add_argument("--train-metrics", nargs="*", default=[], help="metrics.csv of each training run (cost figure)")
    s.add_argument("--inference-costs", nargs="*", default=[], help="inference cost CSVs of the evaluate stage")
    s.add_argument(
        "--baseline-metrics", nargs="*", default=[], help="metrics.csv of each baseline's training (convergence)"
    )
    s.add_argument(
        "--task-inference",
        nargs="*",
        default=[],
        help="task-inference diagnostic CSVs of the evaluate and reference stages",
    )
    s.add_argument("--cost-probes", nargs="*", default=[], help="cost-probe CSVs (contexts not trained at)")
    s.add_argument("--out-dir", required=True, help="writes figures/ and tables/ under it")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    # the package's own messages (e.g. which Mamba kernels run) go to stderr: the rule's log
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("adbench").addHandler(handler)
    logging.getLogger("adbench").setLevel(logging.INFO)
    try:
        args.func(args)
    except (ValueError, FloatingPointError, RuntimeError) as e:  # the package's errors are ValueErrors
        print(f"adbench {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
