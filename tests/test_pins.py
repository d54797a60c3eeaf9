"""The conda env files, pyproject.toml and the installed packages agree on every pinned version."""

import re
import tomllib
from importlib import metadata

import yaml

from .conftest import REPO


def _pins(requirements) -> dict:
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", req.strip())
        assert m, f"not an exact pin: {req!r}"
        out[m.group(1).lower()] = m.group(2)
    return out


def _project_pins(extras=("workflow", "test", "cuda", "minari")) -> dict:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins(project["dependencies"])
    for extra in extras:
        pins.update(_pins(project["optional-dependencies"][extra]))
    return pins


def test_every_env_file_pins_exactly_what_pyproject_pins():
    project = _project_pins()
    env_files = sorted((REPO / "envs").glob("*.yaml"))
    assert {p.stem for p in env_files} >= {"sim", "train", "figures"}
    for path in env_files:
        env = yaml.safe_load(path.read_text())
        assert env["channels"] == ["conda-forge", "nodefaults"], path
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        for name, version in _pins(pip).items():
            assert project.get(name) == version, f"{path.name}: {name}=={version}, pyproject has {project.get(name)}"


def test_installed_versions_equal_the_pins():
    for name, version in _project_pins(extras=("test",)).items():  # the CUDA extra is not for CPU machines
        installed = metadata.version(name).split("+")[0]  # torch reports 2.13.0+cpu
        assert installed == version, f"{name}: installed {installed}, pinned {version}"
