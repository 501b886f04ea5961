"""Shared fixtures: small datasets written in the real on-disk formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains for several epochs or runs Snakemake/SLURM; "
                                       "`pytest -m 'not slow'` runs the rest in about a minute")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one); `pytest -m cuda` runs them, "
                                       "and `make gpu-check` runs them before its benchmarks")


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """A CIFAR-100 python-version tree in the official pickle layout (dict of numpy arrays, latin1)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        entry = {
            "filenames": [f"img_{i}.png" for i in range(n)],
            "batch_label": f"{name} batch",
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine // 5).tolist(),
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    return root


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    return write_cifar100(tmp_path / "data")


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 20) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "folder")


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield
