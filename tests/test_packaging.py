"""The Python dependencies are listed once, in pyproject.toml; the rules' conda env (envs/mcmi.yaml)
installs the repository's package to get them instead of repeating the list."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "envs" / "mcmi.yaml"
REPO_INSTALL = "-e ${MCMI_REPO}"  # pip expands ${MCMI_REPO}; workflow/rules/common.smk sets it
DIGEST_LINE = re.compile(r"^# pyproject-dependencies-sha256: ([0-9a-f]{16})$", re.MULTILINE)


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def requirement_name(spec: str) -> str:
    """The normalised distribution name of a requirement ('Torch_Vision>=1' -> 'torch-vision')."""
    name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
    assert name, f"not a requirement: {spec!r}"
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def env_dependencies() -> tuple[list[str], list[str]]:
    """(conda specs, pip lines) of envs/mcmi.yaml."""
    conda, pip = [], []
    for entry in yaml.safe_load(ENV_FILE.read_text())["dependencies"]:
        if isinstance(entry, dict):
            pip.extend(entry["pip"])
        else:
            conda.append(entry)
    return conda, pip


def dependencies_digest(dependencies: list[str]) -> str:
    """What envs/mcmi.yaml's digest line must say for this dependency list."""
    return hashlib.sha256("\n".join(dependencies).encode()).hexdigest()[:16]


def test_pyproject_parses_and_pins_torch() -> None:
    project = pyproject()["project"]
    assert project["name"] == "mcmi-kd"
    assert "torch==2.14.1" in project["dependencies"]
    assert "torchvision==0.29.1" in project["dependencies"]


def test_env_installs_the_repository_and_repeats_no_dependency() -> None:
    listed = {requirement_name(d) for d in pyproject()["project"]["dependencies"]}
    conda, pip = env_dependencies()
    assert REPO_INSTALL in pip, f"envs/mcmi.yaml must install the repository: pip: [{REPO_INSTALL!r}]"
    own = [line for line in pip if line != REPO_INSTALL]
    repeated = [s for s in conda + own if requirement_name(s) in listed]
    assert not repeated, f"envs/mcmi.yaml repeats pyproject.toml's dependencies {repeated}: list them there only"
    assert not own, f"envs/mcmi.yaml's pip section has entries of its own {own}: put them in pyproject.toml"


def test_snakemake_points_the_env_at_this_repository() -> None:
    assert (ROOT / "pyproject.toml").is_file()  # what ${MCMI_REPO} names must be installable
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert "os.environ.update(MCMI_REPO=workflow.basedir)" in common
    assert Path(ROOT / "Snakefile").is_file()  # workflow.basedir is the root: the Snakefile is there


def test_env_digest_follows_pyproject_dependencies() -> None:
    """Snakemake rebuilds a conda env only when its file's text changes: the digest line makes a
    dependency change in pyproject.toml change envs/mcmi.yaml too."""
    expected = dependencies_digest(pyproject()["project"]["dependencies"])
    found = DIGEST_LINE.findall(ENV_FILE.read_text())
    assert found == [expected], (
        f"pyproject.toml's dependencies changed: set envs/mcmi.yaml's line to "
        f"'# pyproject-dependencies-sha256: {expected}' so that Snakemake rebuilds the env"
    )
