"""Each conda env file holds what its rules import: for each `envs/*.yaml` (the CUDA one aside), a venv
with exactly that file's pip packages runs every rule that names the file, with the command Snakemake
gives it, on a copy of the smoke workflow's outputs."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adbench import config as cfglib

from .conftest import REPO, SMOKE, snakemake_cli

pytestmark = pytest.mark.slow


def _rules_by_env() -> dict:
    """{env file stem: [rule, ...]} from the rules' `conda:` directives (TRAIN_ENV: train.yaml on a CPU).
    A rule defined in the loop over baselines (`name: f"{baseline}_train"`) stands for each baseline."""
    baselines = cfglib.schema()["properties"]["baselines"]["items"]["enum"]
    out: dict = {}
    for path in sorted((REPO / "workflow/rules").glob("*.smk")):
        for _indent, rule, body in re.findall(r"^([ \t]*)rule ?(\w*):\n((?:\1[ \t]+.*\n|\n)*)", path.read_text(), re.M):
            names = [rule]
            if not rule:
                suffix = re.search(r'name:\s*\n\s*f"\{baseline\}(\w+)"', body).group(1)
                names = [f"{b}{suffix}" for b in baselines]
            env = re.search(r'conda:\s*\n\s*(?:"[./]*/envs/([\w-]+)\.yaml"|(TRAIN_ENV))', body)
            if env:
                out.setdefault(env.group(1) or "train", []).extend(names)
    return out


def _pip_packages(env: str) -> list:
    spec = yaml.safe_load((REPO / f"envs/{env}.yaml").read_text())
    return next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))


def _commands(workdir: Path, rule: str) -> list:
    """The shell commands Snakemake would run for `rule`'s jobs (forced), as it prints them; a rule
    outside the default target (the Minari export) is asked for by name."""
    targets = [] if rule != "minari" else [rule]
    run = snakemake_cli(workdir, *targets, "--configfile", str(SMOKE), "-n", "-p", "--cores", "2", "--forcerun", rule)
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = re.split(r"\n(?=\[[^\]]*\]\n(?:local)?rule )", run.stdout)
    return [
        re.search(r"^Shell command: (.*)$", job, re.M).group(1)
        for job in jobs
        if re.search(rf"^(?:local)?rule {rule}:", job, re.M)
    ]


def test_every_rule_names_an_env_file_and_every_env_file_is_tested():
    rules = _rules_by_env()
    assert set(rules) == {"sim", "train", "figures", "export"}
    assert {"expert", "histories", "dataset", "reference"} <= set(rules["sim"])
    assert {"train", "evaluate", "rl2_train", "varibad_train"} <= set(rules["train"]) and rules["figures"] == [
        "figures"
    ]
    assert rules["export"] == ["minari"]


@pytest.mark.parametrize("env", ["sim", "train", "figures", "export"])
def test_a_venv_of_exactly_an_env_files_packages_runs_its_rules(env, smoke_run, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", *_pip_packages(env)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    workdir = tmp_path / "work"
    shutil.copytree(smoke_run / "results", workdir / "results")
    # the rules' shell prefix puts the repository's src/ on the path; the venv's python comes first
    environ = {
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin",
        "PYTHONPATH": str(REPO / "src"),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "ADBENCH_CACHE": os.environ.get("ADBENCH_CACHE", str(tmp_path / "cache")),
    }
    ran = []
    for rule in _rules_by_env()[env]:
        commands = _commands(smoke_run, rule)
        assert commands, f"no job of rule {rule} planned"
        command = commands[0]
        run = subprocess.run(
            ["bash", "-c", f"set -euo pipefail; {command}"], cwd=workdir, env=environ, capture_output=True, text=True
        )
        if run.returncode != 0:
            logs = [p for p in (workdir / "results/logs").rglob("*.log") if rule in str(p) or rule in p.parent.name]
            tails = "".join(p.read_text()[-1500:] for p in logs)
            pytest.fail(
                f"rule {rule} in a venv of envs/{env}.yaml failed: {command[:300]}\n{run.stderr[-1500:]}{tails}"
            )
        ran.append(rule)
    assert ran == _rules_by_env()[env]
    probe = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import json, importlib.metadata as m; print(json.dumps([d.name.lower() for d in m.distributions()]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "snakemake" not in json.loads(probe.stdout)  # the venv is the env file's, not the test runner's
