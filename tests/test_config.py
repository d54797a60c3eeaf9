import re
import subprocess
import sys

import pytest
import yaml

from adbench import config as cfglib
from adbench.baselines import BASELINES
from adbench.models import ARCHITECTURES
from adbench.models.policy import HEADS
from adbench.tasks import FAMILIES

from .conftest import REPO, snakemake_cli

SHIPPED = [[]] + [
    # online_converged.yaml goes over mujoco.yaml, as its header says
    [REPO / "workflow/configs/mujoco.yaml", path] if path.name == "online_converged.yaml" else [path]
    for path in sorted((REPO / "workflow/configs").glob("*.yaml"))
]


@pytest.mark.parametrize("extra", SHIPPED, ids=lambda extra: extra[-1].name if extra else "config.yaml")
def test_every_shipped_config_is_valid_for_each_family_it_sets_up(extra):
    cfg = cfglib.load([REPO / "config.yaml", *extra])
    # the families it runs, and those its own overrides prepare for `--config 'families=[...]'`
    own = yaml.safe_load(extra[-1].read_text()) if extra else {}
    families = sorted({*cfg["families"], *own.get("overrides", {})})
    cfglib.validate(cfglib.deep_merge(cfg, {"families": families}))


@pytest.mark.parametrize("extra", SHIPPED, ids=lambda extra: extra[-1].name if extra else "config.yaml")
def test_a_shipped_config_that_sets_the_training_steps_sets_them_for_each_family(extra):
    """A family's overrides in config.yaml are merged over any configfile's shared settings: a config that
    sets the training steps must not leave a family at config.yaml's own per-family steps."""
    path = extra[-1] if extra else REPO / "config.yaml"
    own = yaml.safe_load(path.read_text())
    if "steps" not in own.get("train", {}):
        pytest.skip(f"{path.name} keeps the training steps it is merged over")
    cfg = cfglib.load([REPO / "config.yaml", *extra])
    for family in sorted({*cfg["families"], *own.get("overrides", {})}):
        expected = own.get("overrides", {}).get(family, {}).get("train", {}).get("steps", own["train"]["steps"])
        assert cfglib.for_family(cfg, family)["train"]["steps"] == expected, family


def test_a_configfile_overriding_one_family_leaves_the_others_alone():
    """Snakemake updates config.yaml's dicts in place with each --configfile: no dict may be shared."""
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    config = load_configfile(str(REPO / "config.yaml"))
    before = yaml.safe_load((REPO / "config.yaml").read_text())
    families = list(config["overrides"])
    for family in families:
        update_config(
            config, {"overrides": {family: {section: {"probe": family} for section in config["overrides"][family]}}}
        )
    for family in families:
        for section, value in config["overrides"][family].items():
            if isinstance(before["overrides"][family][section], dict):
                assert value == {**before["overrides"][family][section], "probe": family}, (family, section)


def test_schema_enums_match_the_registries():
    props = cfglib.schema()["properties"]
    assert props["families"]["items"]["enum"] == sorted(FAMILIES)
    assert props["architectures"]["items"]["enum"] == list(ARCHITECTURES)
    assert props["baselines"]["items"]["enum"] == list(BASELINES)
    assert props["model"]["properties"]["head"]["enum"] == list(HEADS)
    # the keys that name models one by one: every architecture (and baseline) and nothing else
    assert sorted(props["max_context"]["properties"]) == sorted(ARCHITECTURES)
    assert sorted(props["arch_seeds"]["properties"]) == sorted([*ARCHITECTURES, *BASELINES])


@pytest.mark.parametrize(
    "override, words",
    [
        ({"families": ["Atari"]}, ["families[0]", "'Atari'", "PointNav"]),
        ({"context_episodes": [0]}, ["context_episodes[0]", "minimum of 1"]),
        ({"train": {"steps": "many"}}, ["train.steps", "integer"]),
        ({"architectures": ["lstm"]}, ["architectures[0]", "mamba", "transformer"]),
        ({"evaluate": {"typo": 1}}, ["evaluate", "typo", "allowed keys"]),
        ({"arch_seeds": {"lstm": [0]}}, ["arch_seeds", "lstm", "allowed keys"]),
        ({"arch_seeds": {"mamba": []}}, ["arch_seeds.mamba"]),
    ],
)
def test_bad_values_give_one_line_errors_naming_key_and_allowed(override, words):
    cfg = cfglib.deep_merge(cfglib.load([REPO / "config.yaml"]), override)
    with pytest.raises(cfglib.ConfigError) as err:
        cfglib.validate(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_missing_key_is_named():
    cfg = cfglib.load([REPO / "config.yaml"])
    del cfg["train"]["steps"]
    with pytest.raises(cfglib.ConfigError, match=r"missing key 'train\.steps'"):
        cfglib.validate(cfg)


def test_section_validation_checks_only_named_sections():
    cfg = cfglib.load([REPO / "config.yaml"])
    cfglib.validate({"evaluate": cfg["evaluate"]}, ["evaluate"])
    with pytest.raises(cfglib.ConfigError, match="missing key 'train'"):
        cfglib.validate({"evaluate": cfg["evaluate"]}, ["evaluate", "train"])


def test_workflow_stops_before_any_job_on_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"context_episodes": [0]}))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    # Snakemake's own notice that --configfile extends config.yaml may precede the one error line.
    assert lines[-1] == "adbench: invalid config: config key 'context_episodes[0]': 0 is less than the minimum of 1"
    assert not any("Traceback" in line or "rule " in line for line in lines)
    assert not (tmp_path / "results").exists()


def test_cli_rejects_a_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"families": ["Nope"]}))
    run = subprocess.run(
        [sys.executable, "-m", "adbench", "check-config", "--config", str(REPO / "config.yaml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "families[0]" in run.stderr


def test_family_overrides_merge_over_the_shared_settings():
    cfg = cfglib.load([REPO / "config.yaml"])
    cheetah = cfglib.for_family(cfg, "HalfCheetahVel")
    assert cheetah["source"]["episodes"] == cfg["overrides"]["HalfCheetahVel"]["source"]["episodes"]
    assert cheetah["source"]["ppo"]["gamma"] == cfg["source"]["ppo"]["gamma"]  # untouched keys are inherited
    assert "overrides" not in cheetah
    assert cfglib.for_family(cfg, "PointNav")["source"] == cfg["source"]


def test_a_bad_override_is_named_with_its_family():
    cfg = cfglib.deep_merge(
        cfglib.load([REPO / "config.yaml"]), {"overrides": {"AntDir": {"dataset": {"episode_stride": 0}}}}
    )
    with pytest.raises(cfglib.ConfigError, match=r"dataset\.episode_stride.*minimum of 1.*overrides\.AntDir"):
        cfglib.validate(cfg)


def test_the_longest_context_must_fit_in_a_history(cfg):
    cfg["context_episodes"] = [2, 40]  # at stride 4, 40 episodes span 157 > 80 history episodes
    with pytest.raises(
        cfglib.ConfigError, match=r"PointNav: a context of 40 episodes at dataset.episode_stride 4 spans 157"
    ):
        cfglib.validate(cfg)


def test_numbers_given_as_text_become_numbers_where_the_schema_wants_them():
    cfg = cfglib.coerce_numbers(
        {
            "context_episodes": ["4", "16"],
            "seeds": ["0"],
            "families": ["PointNav"],
            "train": {"learning_rate": "3e-4", "steps": "100", "device": "cpu"},
            "overrides": {"AntDir": {"dataset": {"episode_stride": "5"}}},
        }
    )
    assert cfg["context_episodes"] == [4, 16] and cfg["seeds"] == [0]
    assert cfg["train"] == {"learning_rate": 3e-4, "steps": 100, "device": "cpu"}
    assert cfg["overrides"]["AntDir"]["dataset"]["episode_stride"] == 5
    assert cfg["families"] == ["PointNav"]


def test_text_that_is_not_a_number_is_left_for_validation_to_reject():
    cfg = cfglib.deep_merge(cfglib.load([REPO / "config.yaml"]), {"context_episodes": ["four"]})
    with pytest.raises(cfglib.ConfigError, match=r"context_episodes\[0\]"):
        cfglib.validate(cfglib.coerce_numbers(cfg))


@pytest.mark.slow
def test_snakemake_plans_contexts_and_seeds_given_on_the_command_line(tmp_path):
    run = snakemake_cli(tmp_path, "-n", "--config", "context_episodes=[2,4,8]", "seeds=[0,1]", timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    jobs = dict(re.findall(r"^(train|evaluate)\s+(\d+)$", run.stdout, re.M))
    families = len(cfglib.load([REPO / "config.yaml"])["families"])
    # families x archs x contexts x seeds, and RL^2 per family and seed
    assert jobs == {"train": str(families * 2 * 3 * 2), "evaluate": str(families * (2 * 3 * 2 + 2))}


@pytest.mark.slow
def test_snakemake_plans_each_models_own_training_seeds(tmp_path):
    run = snakemake_cli(
        tmp_path, "-n", "--config", "context_episodes=[4,8]", "arch_seeds={mamba: [0, 1, 2], rl2: [3]}", timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    jobs = dict(re.findall(r"^(train|evaluate)\s+(\d+)$", run.stdout, re.M))
    families = len(cfglib.load([REPO / "config.yaml"])["families"])
    # per family: Mamba at 2 contexts x 3 seeds, the transformer at 2 x 1 (`seeds`), RL^2 at 1 seed
    assert jobs == {"train": str(families * (6 + 2)), "evaluate": str(families * (6 + 2 + 1))}
    assert "rl2-seed3" in run.stdout and "rl2-seed0" not in run.stdout and "transformer-ctx4-seed1" not in run.stdout


def test_arch_seeds_replace_seeds_for_their_model_only():
    cfg = {"seeds": [0], "arch_seeds": {"mamba": [0, 1]}}
    assert cfglib.training_seeds(cfg, "mamba") == [0, 1]
    assert cfglib.training_seeds(cfg, "transformer") == cfglib.training_seeds(cfg, "rl2") == [0]
    assert cfglib.training_seeds({"seeds": [2, 5]}, "mamba") == [2, 5]


def test_the_oracle_families_are_those_with_an_analytic_expert():
    from adbench.tasks import FAMILIES

    assert sorted(cfglib.ORACLE_FAMILIES) == sorted(name for name, fam in FAMILIES.items() if fam.oracle is not None)


def test_the_dynamics_families_are_those_whose_task_leaves_the_reward_alone():
    from adbench.tasks import make_env, sample_tasks

    varies = {name: make_env(name, sample_tasks(name, 1, 0)[0]).reward_varies for name in FAMILIES}
    assert sorted(cfglib.DYNAMICS_FAMILIES) == sorted(name for name, v in varies.items() if not v)


def test_the_counterfactual_target_needs_counterfactual_histories_of_a_reward_family():
    base = cfglib.load([REPO / "config.yaml"])
    no_cf = cfglib.deep_merge(
        base, {"overrides": {"HalfCheetahVel": {"source": {"noise_distill": {"counterfactuals": 0}}}}}
    )
    with pytest.raises(cfglib.ConfigError, match=r"HalfCheetahVel: train.target 'counterfactual' needs histories"):
        cfglib.validate(no_cf)
    pointnav = cfglib.deep_merge(base, {"train": {"target": "counterfactual"}})  # PPO histories
    with pytest.raises(cfglib.ConfigError, match=r"PointNav: train.target 'counterfactual' needs histories"):
        cfglib.validate(pointnav)
    cf = {"source": {"noise_distill": {"counterfactuals": 2}}, "train": {"target": "counterfactual"}}
    cfglib.validate(cfglib.deep_merge(base, {"overrides": {"HalfCheetahVel": cf}}))
    walker = cfglib.deep_merge(
        base, {"families": ["Walker2dParams"], "overrides": {"Walker2dParams": {"source": cf["source"]}}}
    )
    with pytest.raises(
        cfglib.ConfigError, match=r"Walker2dParams: source.noise_distill.counterfactuals needs a family"
    ):
        cfglib.validate(walker)


def test_a_family_without_an_oracle_cannot_have_the_oracle_expert():
    cfg = cfglib.deep_merge(
        cfglib.load([REPO / "config.yaml"]),
        {
            "families": ["PointNav", "AntGoal"],
            "overrides": {"AntGoal": {"source": {"algorithm": "noise_distill", "noise_distill": {"expert": "oracle"}}}},
        },
    )
    with pytest.raises(cfglib.ConfigError, match=r"AntGoal: source.noise_distill.expert 'oracle' exists only for"):
        cfglib.validate(cfg)


def test_fresh_expert_tasks_need_a_task_conditioned_expert():
    cfg = cfglib.deep_merge(
        cfglib.load([REPO / "config.yaml"]),
        {
            "families": ["PointNav"],
            "source": {"algorithm": "noise_distill", "noise_distill": {"expert_tasks": "fresh"}},
        },
    )
    with pytest.raises(cfglib.ConfigError, match=r"PointNav: source.noise_distill.expert_tasks 'fresh' trains a task"):
        cfglib.validate(cfg)


def test_expert_episodes_must_split_into_ppo_rollouts():
    cfg = cfglib.deep_merge(
        cfglib.load([REPO / "config.yaml"]),
        {
            "families": ["HalfCheetahVel"],
            "overrides": {
                "HalfCheetahVel": {"source": {"noise_distill": {"expert_episodes": 12}, "ppo": {"rollout_episodes": 5}}}
            },
        },
    )
    with pytest.raises(
        cfglib.ConfigError, match=r"expert_episodes \(12\) must be a multiple of source.ppo.rollout_episodes \(5\)"
    ):
        cfglib.validate(cfg)


@pytest.mark.parametrize(
    "stage,sections",
    [("train", ["dataset", "model", "train"]), ("evaluate", ["evaluate"]), ("rl2", ["rl2"]), ("varibad", ["varibad"])],
)
def test_cli_with_config_files_applies_the_dataset_familys_overrides_as_the_workflow_does(tmp_path, stage, sections):
    import argparse
    import json

    import h5py

    from adbench import cli

    dataset = tmp_path / "d.h5"
    with h5py.File(dataset, "w") as f:
        f.attrs["family"] = "HalfCheetahVel"
    args = argparse.Namespace(settings=None, config=[REPO / "config.yaml"], dataset=str(dataset))
    got = cli._settings(args, sections)
    workflow = cfglib.for_family(cfglib.load([REPO / "config.yaml"]), "HalfCheetahVel")
    as_passed_by_rules = json.loads(json.dumps({s: workflow[s] for s in sections}, sort_keys=True))
    assert {s: got[s] for s in sections} == as_passed_by_rules
    if stage == "train":
        assert got["train"]["batch_size"] == 8 != cfglib.load([REPO / "config.yaml"])["train"]["batch_size"]


def test_cli_with_config_files_applies_the_family_flags_overrides():
    import argparse

    from adbench import cli

    args = argparse.Namespace(settings=None, config=[REPO / "config.yaml"], family="AntDir")
    source = cli._settings(args, ["tasks", "source"])["source"]
    assert source["algorithm"] == "noise_distill" and source["noise_distill"]["expert_episodes"] == 300


def test_only_antgoal_steers_another_familys_expert():
    cfg = cfglib.load([REPO / "config.yaml"])
    assert cfglib.expert_family(cfglib.for_family(cfg, "AntGoal"), "AntGoal") == "AntDir"
    assert cfglib.expert_family(cfglib.for_family(cfg, "AntDir"), "AntDir") == "AntDir"
    assert cfglib.expert_family(cfglib.for_family(cfg, "PointNav"), "PointNav") is None  # PPO histories
    bad = cfglib.deep_merge(
        cfg,
        {
            "families": ["HalfCheetahVel"],
            "overrides": {"HalfCheetahVel": {"source": {"noise_distill": {"expert": "steer"}}}},
        },
    )
    with pytest.raises(
        cfglib.ConfigError, match=r"HalfCheetahVel: source.noise_distill.expert 'steer' exists only for"
    ):
        cfglib.validate(bad)


def test_every_family_has_its_episode_length_in_the_config():
    assert sorted(cfglib.DEFAULT_HORIZONS) == sorted(FAMILIES)
    assert all(FAMILIES[name].horizon == h for name, h in cfglib.DEFAULT_HORIZONS.items())


def test_the_workflows_config_and_resource_modules_load_no_simulator_and_no_torch():
    """Snakemake imports adbench.config and adbench.resources into every process it starts."""
    code = (
        "import sys, adbench.config, adbench.resources; "
        "print(sorted(m for m in ('mujoco', 'gymnasium', 'torch', 'h5py') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_schema_key_is_described():
    """config.schema.yaml is the config's reference: each key says what it is."""
    missing = []

    def walk(node, path):
        for key, child in node.get("properties", {}).items():
            where = f"{path}.{key}" if path else key
            if "description" not in child:
                missing.append(where)
            walk(child, where)

    walk(cfglib.schema(), "")
    assert missing == []


def test_the_expert_target_needs_a_source_with_an_expert(smoke_config):
    import copy

    cfg = copy.deepcopy(smoke_config)
    cfg["train"]["target"] = "expert"  # PointNav's source in the smoke config is ppo
    with pytest.raises(cfglib.ConfigError, match="PointNav: train.target 'expert' needs a source with an expert"):
        cfglib.validate(cfg)


def test_a_searching_source_needs_a_told_expert_and_a_search_step(smoke_config):
    import copy

    cfg = copy.deepcopy(smoke_config)
    cfg["overrides"]["HalfCheetahVel"]["source"]["noise_distill"].update(search=True, task_noise=0.0)
    with pytest.raises(
        cfglib.ConfigError, match="HalfCheetahVel: source.noise_distill.search needs a task_ppo or steer"
    ):
        cfglib.validate(cfg)
    cfg["overrides"]["HalfCheetahVel"]["source"]["noise_distill"]["task_noise"] = 0.5
    cfglib.validate(cfg)
