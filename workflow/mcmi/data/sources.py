"""Where datasets come from: CIFAR-10/100 (python pickles), image folders, scikit-learn's digits.

``load_dataset(spec)`` returns ``(train, test)`` for a spec such as
``{"name": "cifar100", "root": "data/", "download": false}``. A missing dataset is an error that
says how to provide it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mcmi.data.tensors import TensorImageDataset

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
_CIFAR_LAYOUT = {
    # name: (folder, train files, test files, label key, num classes, torchvision class name)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10,
                "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100, "CIFAR100"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's dicts of numpy arrays and nothing else: no arbitrary code runs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle, checked: a readable pickle of a dict, ``data`` a (N, 3072) uint8 array,
    N labels in [0, num_classes). Anything else is a ``ValueError`` naming the file and the fault."""
    try:
        with open(path, "rb") as handle:
            entry = _ArrayOnlyUnpickler(handle, encoding="latin1").load()
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(f"{path}: not a readable CIFAR pickle (truncated or corrupt?): "
                         f"{type(error).__name__}: {error}") from error
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{path}: not a CIFAR batch file (expected keys 'data' and {label_key!r}, found {keys})")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: 'data' must be a uint8 array of pixels, got {kind}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must have shape (N, 3072) (32x32 RGB rows), got {data.shape}")
    labels = np.asarray(entry[label_key])
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {label_key!r} must hold {data.shape[0]} integer labels (one per image), "
                         f"got shape {labels.shape} of {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _download_cifar(name: str, tv_name: str, root: Path, base: Path) -> None:
    """torchvision's download and checksum of the archive into ``root``; a failure (no network, a
    proxy, a corrupt archive) is one FileNotFoundError saying how to provide the files instead."""
    import urllib.error

    import torchvision

    try:
        getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        reason = getattr(error, "reason", None) or error
        raise FileNotFoundError(
            f"{name}: download into {root} failed ({type(error).__name__}: {' '.join(str(reason).split())}). "
            f"Without network access, put the extracted python version of the dataset at {base}/ and set "
            f"the dataset's 'download: false' in the config"
        ) from error


def load_cifar(name: str, root: str | Path, download: bool = False) -> tuple[TensorImageDataset, TensorImageDataset]:
    """CIFAR-10/100 from ``root`` (the folder holding cifar-10-batches-py/ or cifar-100-python/).

    With ``download`` torchvision fetches and verifies the archive first (needs network)."""
    folder, train_files, test_files, label_key, num_classes, tv_name = _CIFAR_LAYOUT[name]
    root = Path(root)
    base = root / folder
    if download:
        _download_cifar(name, tv_name, root, base)
    missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name}: files {missing} not found under {base}. Put the extracted python version of "
            f"the dataset there (e.g. {folder}/ from the official archive), or set the dataset's "
            f"'download: true' in the config on a machine with network access."
        )
    mean, std = CIFAR_STATS[name]

    def split(files: list[str], tag: str) -> TensorImageDataset:
        parts = [_read_cifar_batch(base / f, label_key, num_classes) for f in files]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        return TensorImageDataset(images, labels, num_classes, mean, std, name=f"{name}-{tag}")

    return split(train_files, "train"), split(test_files, "test")


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float() / 255.0
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


def _read_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits file shipped inside scikit-learn, read directly (importing sklearn takes seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the digits dataset ships with scikit-learn: pip install scikit-learn")
    data = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def load_digits(image_size: int = 32, test_fraction: float = 0.2, split_seed: int = 0
                ) -> tuple[TensorImageDataset, TensorImageDataset]:
    """scikit-learn's 8x8 handwritten digits (ships inside the package: works offline), upsampled to
    ``image_size`` x ``image_size`` x 3 so CIFAR models run on it. Stratified, seeded split."""
    pixels, target = _read_sklearn_digits()
    x = torch.from_numpy(pixels).float().view(-1, 1, 8, 8) / 16.0            # (N, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    labels = torch.from_numpy(target).long()
    gen = torch.Generator().manual_seed(split_seed)
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        test_mask[idx[: int(round(test_fraction * len(idx)))]] = True
    mean, std = _channel_stats(images[~test_mask])
    padding = max(1, image_size // 8)       # the CIFAR recipe's 4 px at 32 px, scaled to the image size
    train = TensorImageDataset(images[~test_mask], labels[~test_mask], 10, mean, std, "digits-train", padding)
    test = TensorImageDataset(images[test_mask], labels[test_mask], 10, mean, std, "digits-test", padding)
    return train, test


def load_image_folder(root: str | Path, image_size: int, in_memory: bool = True,
                      ) -> tuple[Any, Any]:
    """An ImageNet-style tree ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

    Small trees are decoded once into tensors (resized to ``image_size``); large ones (ImageNet)
    stream through torchvision's ImageFolder with the standard ImageNet transforms."""
    from mcmi.data.folder import StreamingImageFolder, check_same_classes, read_image_folder

    root = Path(root)
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise FileNotFoundError(
                f"image folder dataset: {root / part} does not exist; expected {root}/train/<class>/* and "
                f"{root}/val/<class>/* (the ImageNet layout torchvision's ImageFolder reads)"
            )
    if in_memory:
        return read_image_folder(root, image_size)
    train = StreamingImageFolder(root / "train", image_size, train=True)
    val = StreamingImageFolder(root / "val", image_size, train=False)
    check_same_classes(root, train.tree.classes, val.tree.classes)
    return train, val


_LOADERS: dict[str, Callable[[dict[str, Any]], tuple[Any, Any]]] = {
    "cifar10": lambda s: load_cifar("cifar10", s.get("root", "data"), s.get("download", False)),
    "cifar100": lambda s: load_cifar("cifar100", s.get("root", "data"), s.get("download", False)),
    "digits": lambda s: load_digits(s.get("image_size", 32)),
    "imagefolder": lambda s: load_image_folder(s["root"], s.get("image_size", 224), s.get("in_memory", True)),
    "demo_imagefolder": lambda s: load_image_folder(s["root"], s.get("image_size", 32), True),
}
DATASET_KINDS = tuple(_LOADERS)


def load_dataset(spec: dict[str, Any]) -> tuple[Any, Any]:
    """Load ``(train, test)`` for a dataset spec; ``spec['kind']`` picks the loader."""
    kind = spec.get("kind")
    if kind not in _LOADERS:
        raise ValueError(f"dataset kind {kind!r} unknown; expected one of {list(_LOADERS)}")
    train, test = _LOADERS[kind](spec)
    if spec.get("max_train") and spec["max_train"] < len(train):
        train = train.subset(torch.arange(spec["max_train"]), name=train.name)
    if spec.get("max_test") and spec["max_test"] < len(test):
        test = test.subset(torch.arange(spec["max_test"]), name=test.name)
    return train, test


def verify_dataset(*splits: Any) -> None:
    """The data job's deep check: a dataset streamed from files (ImageNet) has every image decoded,
    so a corrupt or truncated file is reported with its path before any training job starts.
    In-memory datasets were fully decoded and checked while loading."""
    for split in splits:
        verify = getattr(split, "verify_images", None)
        if verify is not None:
            verify()


def write_demo_image_folder(root: str | Path, per_class: int = 20, classes: int = 10, image_size: int = 32) -> Path:
    """A tiny ImageNet-layout tree (root/{train,val}/<class>/*.png) made from scikit-learn's digits,
    so the ImageNet code path (Tables 2 and 4) runs offline. Idempotent."""
    from PIL import Image

    root = Path(root)
    train, test = load_digits(image_size)
    for split, data in (("train", train), ("val", test)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            idx = (data.labels == c).nonzero().flatten()[:per_class]
            for k, i in enumerate(idx.tolist()):
                path = folder / f"{split}_{c}_{k}.png"
                if not path.exists():
                    Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(path)
    return root
