"""pyproject.toml and environment.yml pin the same packages at the same versions."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def pins(requirements):
    found = {}
    for requirement in requirements:
        match = PIN.match(requirement.strip())
        assert match, f"not pinned exactly: {requirement!r}"
        found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return pins(requirements)


def environment_pins():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict))
    return pins(entry for entry in pip_section if not entry.startswith("-e"))


def test_environment_yml_mirrors_the_pins_of_pyproject():
    assert environment_pins() == pyproject_pins()


def test_torch_and_torchvision_are_the_builds_that_import_together():
    assert pyproject_pins()["torch"] == "2.14.1" and pyproject_pins()["torchvision"] == "0.29.1"


def test_jupyter_book_stays_below_2_which_needs_internet_to_build():
    assert pyproject_pins()["jupyter-book"].startswith("1.")
