"""Load, merge and validate experiment configs against the one schema, with one-line errors."""

import copy
import functools
import hashlib
import json
from importlib import resources
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    """A config that does not match the schema; the message names the key and what is allowed."""


def schema() -> dict:
    return yaml.safe_load(resources.files("adbench").joinpath("config.schema.yaml").read_text())


def deep_merge(base: dict, override: dict) -> dict:
    """Nested update, as Snakemake merges --configfile overrides into the configfile."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else copy.deepcopy(value)
        )
    return out


def _key(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _one_line(error: jsonschema.ValidationError) -> str:
    where = _key(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        where = _key([*error.absolute_path, missing])
        return f"config is missing key '{where}' (required keys here: {error.validator_value})"
    if error.validator == "additionalProperties" and isinstance(error.schema.get("properties"), dict):
        return f"config key '{where}': {error.message}; allowed keys: {sorted(error.schema['properties'])}"
    if error.validator == "enum":
        return f"config key '{where}': {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    return f"config key '{where}': {error.message}"


def _resolve(node: dict, root: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"].removeprefix("#/").split("/")
        target = root
        for part in ref:
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _numbers(value, node: dict, root: dict):
    node = _resolve(node, root)
    kind = node.get("type")
    if isinstance(value, str) and kind in ("integer", "number"):
        for cast in (int,) if kind == "integer" else (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        return value
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_numbers(v, node["items"], root) for v in value]
    if isinstance(value, dict):
        props, extra = node.get("properties", {}), node.get("additionalProperties")
        return {
            k: _numbers(v, props[k] if k in props else extra, root) if isinstance(props.get(k, extra), dict) else v
            for k, v in value.items()
        }
    return value


def coerce_numbers(cfg: dict) -> dict:
    """Numbers given as strings (Snakemake's `--config 'context_episodes=[4,8]'` passes list items as text)
    become numbers wherever the schema asks for one; everything else is left to validation."""
    root = schema()
    out = _numbers(cfg, root, root)
    if isinstance(out, dict) and isinstance(out.get("overrides"), dict):  # each family's overrides: the same sections
        out["overrides"] = {f: _numbers(o, root, root) for f, o in out["overrides"].items()}
    return out


def validate(cfg: dict, sections: list | None = None, _whole: bool = True) -> dict:
    """Raise ConfigError (one line) unless `cfg` matches the schema; with `sections`, check only those keys."""
    full = schema()
    if not isinstance(cfg, dict):
        raise ConfigError(f"config must be a mapping of keys to values, got {type(cfg).__name__}")
    if sections is not None:
        unknown = [s for s in sections if s not in full["properties"]]
        if unknown:
            raise ConfigError(f"unknown config section {unknown[0]!r}; sections: {sorted(full['properties'])}")
        full = {**full, "required": list(sections), "properties": {s: full["properties"][s] for s in sections}}
        cfg = {s: cfg[s] for s in sections if s in cfg}
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(full).iter_errors(cfg))
    if error is not None:
        raise ConfigError(_one_line(error))
    if sections is None and _whole:  # the experiment as a whole, not one family's merged settings
        for family in cfg.get("overrides", {}):
            for_family(cfg, family)
        for family in cfg["families"]:
            _check_contexts_fit(for_family(cfg, family), family)
            _check_source(for_family(cfg, family), family)
    return cfg


def trained_contexts(cfg: dict, arch: str) -> list:
    """The contexts `arch` is trained at: context_episodes up to max_context[arch]."""
    limit = cfg.get("max_context", {}).get(arch)
    return [c for c in cfg["context_episodes"] if limit is None or c <= limit]


def training_seeds(cfg: dict, model: str) -> list:
    """The training seeds of an architecture or baseline: arch_seeds[model], or `seeds`."""
    return cfg.get("arch_seeds", {}).get(model, cfg["seeds"])


def probed_contexts(cfg: dict, arch: str) -> list:
    """The contexts beyond max_context[arch]: not trained, their cost measured (cost_probe)."""
    trained = trained_contexts(cfg, arch)
    return [c for c in cfg["context_episodes"] if c not in trained]


def shard_sizes(cfg: dict) -> list:
    """Tasks per `histories` shard: the train and test tasks in shards of source.tasks_per_shard, then the
    validation tasks in shards of their own (so that adding them leaves the train/test shards as they were)."""
    t, per = cfg["tasks"], cfg["source"]["tasks_per_shard"]

    def sizes(n: int) -> list:
        return [min(per, n - i) for i in range(0, n, per)]

    return sizes(t["n_train"] + t["n_test"]) + sizes(t["n_val"])


def needs_expert(cfg: dict) -> bool:
    """Whether a family trains a task-conditioned expert of its own (the `expert` rule) for its histories."""
    src = cfg["source"]
    return src["algorithm"] == "noise_distill" and src["noise_distill"]["expert"] == "task_ppo"


# Families whose expert steers another family's task-conditioned expert (`expert: steer`): AntGoal's
# goal reached by telling AntDir's expert, at every step, the direction from the ant to the goal.
STEERED_BY = {"AntGoal": "AntDir"}


def expert_family(cfg: dict, family: str) -> str | None:
    """The family whose trained expert (results/experts/<it>.pt) rolls out `family`'s histories, or None."""
    src = cfg["source"]
    if src["algorithm"] != "noise_distill":
        return None
    expert = src["noise_distill"]["expert"]
    return family if expert == "task_ppo" else STEERED_BY.get(family) if expert == "steer" else None


# Families with an analytic expert (tasks.Family.oracle); tests check this against the registry, which
# the config does not import (it would load MuJoCo into every Snakemake process).
ORACLE_FAMILIES = ("PointNav",)
# Families whose task changes the dynamics, not the reward (no counterfactual reward); tested likewise.
DYNAMICS_FAMILIES = ("Walker2dParams",)


def _check_source(cfg: dict, family: str) -> None:
    """Source settings that the schema cannot check: an expert the family has, episode counts PPO can split."""
    src = cfg["source"]
    rollout = src["ppo"]["rollout_episodes"]
    if src["algorithm"] == "ppo" and src["episodes"] % rollout:
        raise ConfigError(
            f"{family}: source.episodes ({src['episodes']}) must be a multiple of "
            f"source.ppo.rollout_episodes ({rollout})"
        )
    if src["algorithm"] != "noise_distill" and cfg["train"]["target"] == "expert":
        raise ConfigError(
            f"{family}: train.target 'expert' needs a source with an expert (source.algorithm noise_distill); "
            f"{src['algorithm']} histories have only the recorded actions: use train.target 'recorded'"
        )
    counterfactuals = src["algorithm"] == "noise_distill" and src["noise_distill"]["counterfactuals"] > 0
    if cfg["train"]["target"] == "counterfactual" and not counterfactuals:
        raise ConfigError(
            f"{family}: train.target 'counterfactual' needs histories with counterfactual tasks: set "
            f"source.algorithm noise_distill and source.noise_distill.counterfactuals above 0"
        )
    if src["algorithm"] != "noise_distill":
        return
    expert = src["noise_distill"]["expert"]
    if counterfactuals and (family in DYNAMICS_FAMILIES or expert == "ppo"):
        raise ConfigError(
            f"{family}: source.noise_distill.counterfactuals needs a family whose task changes the reward (not "
            f"{list(DYNAMICS_FAMILIES)}) and an expert that can be told any task (oracle, task_ppo, steer), got "
            f"expert {expert!r}; set counterfactuals to 0"
        )
    if expert == "steer" and family not in STEERED_BY:
        raise ConfigError(
            f"{family}: source.noise_distill.expert 'steer' exists only for {list(STEERED_BY)}; "
            f"use 'task_ppo' (a task-conditioned expert) or 'ppo'"
        )
    if expert == "oracle" and family not in ORACLE_FAMILIES:
        raise ConfigError(
            f"{family}: source.noise_distill.expert 'oracle' exists only for {list(ORACLE_FAMILIES)}; "
            f"use 'task_ppo' (a task-conditioned expert) or 'ppo'"
        )
    if src["noise_distill"]["search"] and (
        expert not in ("task_ppo", "steer") or src["noise_distill"]["task_noise"] == 0
    ):
        raise ConfigError(
            f"{family}: source.noise_distill.search needs a task_ppo or steer expert and task_noise > 0 "
            f"(the search's step), got expert {expert!r} and task_noise {src['noise_distill']['task_noise']}"
        )
    if src["noise_distill"]["expert_tasks"] == "fresh" and expert != "task_ppo":
        raise ConfigError(
            f"{family}: source.noise_distill.expert_tasks 'fresh' trains a task_ppo expert, got expert {expert!r}; "
            f"set expert_tasks to 'train'"
        )
    if expert in ("ppo", "task_ppo") and src["noise_distill"]["expert_episodes"] % rollout:
        raise ConfigError(
            f"{family}: source.noise_distill.expert_episodes ({src['noise_distill']['expert_episodes']}) "
            f"must be a multiple of source.ppo.rollout_episodes ({rollout})"
        )


def _check_contexts_fit(cfg: dict, family: str) -> None:
    """The longest AD context, at the subsampling stride, must fit in one learning history."""
    longest, stride, episodes = (
        max(cfg["context_episodes"]),
        cfg["dataset"]["episode_stride"],
        cfg["source"]["episodes"],
    )
    span = window_span(longest, stride)
    if span > episodes:
        raise ConfigError(
            f"{family}: a context of {longest} episodes at dataset.episode_stride {stride} spans {span} history "
            f"episodes but source.episodes is {episodes}; lower the stride or the context, or lengthen the histories"
        )


def load(paths: list) -> dict:
    """Merge YAML files in order (later override earlier) and validate the result."""
    cfg: dict = {}
    for path in paths:
        try:
            cfg = deep_merge(cfg, yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(
                f"cannot read config file {path}: {e.__class__.__name__}: {str(e).splitlines()[0]}"
            ) from None
    return validate(cfg)


def for_family(cfg: dict, family: str) -> dict:
    """The settings one family runs with: its `overrides` merged over the shared sections, validated.

    Memoised on the config's content: the workflow asks once per job (params, resources), and schema
    validation costs ~20 ms, seconds at the start of a 300-job plan. Returns a fresh copy."""
    return copy.deepcopy(_for_family(json.dumps(cfg, sort_keys=True), family))


@functools.lru_cache(maxsize=64)
def _for_family(cfg_json: str, family: str) -> dict:
    cfg = json.loads(cfg_json)
    merged = deep_merge({k: v for k, v in cfg.items() if k != "overrides"}, cfg.get("overrides", {}).get(family, {}))
    try:
        return validate(merged, _whole=False)
    except ConfigError as e:
        raise ConfigError(f"{e} (after merging overrides.{family})") from None


def digest(cfg: dict) -> str:
    """Stable short hash of a config (or a section of one), recorded in every output's provenance."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


# Each family's own episode length in steps (tasks.registry builds the families with these).
DEFAULT_HORIZONS = {"PointNav": 50, "HalfCheetahVel": 200, "AntDir": 200, "AntGoal": 200, "Walker2dParams": 200}


def horizon(cfg: dict, family: str) -> int:
    """A family's episode length: tasks.horizon.<family> if the config sets it, else the family's own."""
    return int(cfg["tasks"].get("horizon", {}).get(family, DEFAULT_HORIZONS[family]))


def window_span(context_episodes: int, stride: int) -> int:
    """How many history episodes an AD window of `context_episodes` at `stride` covers."""
    return (context_episodes - 1) * stride + 1


def window_tokens(context_episodes: int, horizon: int) -> int:
    """The tokens of an AD window (one per step)."""
    return context_episodes * horizon
