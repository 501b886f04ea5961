"""The Python dependencies are listed once, in pyproject.toml; the rules' conda env (envs/mcmi.yaml)
installs the repository's package to get them instead of repeating the list."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest
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


def _heavy_environment() -> Path | None:
    """The shared environment holding the heavy dependencies this test runs with (the folder of
    torch's site-packages), when the Makefile made it (its .complete marker)."""
    import torch

    venv = Path(torch.__file__).resolve().parents[4]          # <venv>/lib/pythonX.Y/site-packages/torch
    return venv if (venv / ".complete").is_file() else None


def _installs_of_ours(venv: Path) -> str:
    """What the environment's site-packages says about our package (editable-install files)."""
    return "".join(p.read_text() for p in sorted(venv.glob("lib/python*/site-packages/__editable__*mcmi*")))


def _clone(folder: Path, marker: str) -> Path:
    """A copy of what `make setup` installs, its package marked so that its code can be told apart."""
    import shutil

    folder.mkdir()
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, folder / name)
    shutil.copytree(ROOT / "workflow" / "mcmi", folder / "workflow" / "mcmi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(folder / "workflow" / "mcmi" / "__init__.py", "a") as handle:
        handle.write(f"\nCLONE = {marker!r}\n")
    return folder


@pytest.mark.slow
def test_each_clone_runs_its_own_code_with_the_shared_dependencies(tmp_path) -> None:
    """`make setup` in two clones on one machine: each clone's python, mcmi and snakemake run that
    clone's package, while both reuse one heavy environment (which holds no package of ours), and
    setup ends by saying how to use the environment."""
    import os
    import subprocess

    heavy = _heavy_environment()
    if heavy is None:
        pytest.skip("not run from the environment `make setup` builds")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    before = _installs_of_ours(heavy)
    for marker in ("first", "second"):
        clone = _clone(tmp_path / marker, marker)
        made = subprocess.run(["make", "-C", str(clone), "setup", f"VENV={heavy}"], capture_output=True, text=True,
                              env=env, timeout=600)
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
        assert f"export PATH={clone / '.venv' / 'bin'}:$PATH" in made.stdout
    for marker in ("first", "second"):
        bin_dir = tmp_path / marker / ".venv" / "bin"
        shell = {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}
        ran = subprocess.run(["python", "-c", "import mcmi, torch, snakemake; print(mcmi.CLONE)"], cwd=tmp_path,
                             capture_output=True, text=True, env=shell, timeout=300)
        assert ran.stdout.strip() == marker, ran.stderr[-2000:]
        for command in (["mcmi", "--help"], ["snakemake", "--version"]):
            assert subprocess.run(command, capture_output=True, env=shell, timeout=300).returncode == 0, command
            assert (bin_dir / command[0]).is_file()
    assert _installs_of_ours(heavy) == before and str(tmp_path) not in before    # not re-pointed at a clone
