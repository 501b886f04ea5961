"""ImageNet-style image folders: decoded into tensors when small, streamed when large (ImageNet)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mcmi.data.batch import Batch
from mcmi.data.tensors import TensorImageDataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _eval_transform(image_size: int) -> Any:
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(int(round(image_size * 256 / 224))),
                               transforms.CenterCrop(image_size)])


def check_same_classes(root: Path, train_classes: list[str], val_classes: list[str]) -> None:
    """Labels are positions in the sorted class list: a val/ tree with other classes than train/
    would silently shift labels, so it is refused naming what differs."""
    if train_classes != val_classes:
        missing = sorted(set(train_classes) - set(val_classes))
        extra = sorted(set(val_classes) - set(train_classes))
        raise ValueError(f"{root}: val/ classes differ from train/ classes (missing in val/: {missing[:10]}, "
                         f"only in val/: {extra[:10]}); labels would not match")


def open_image(loader: Any, path: str) -> Any:
    """Decode one image as RGB; a corrupt or unreadable file is a ``ValueError`` naming it."""
    try:
        return loader(path).convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:   # PIL raises these for broken files
        raise ValueError(f"{path}: cannot decode image: {error}") from error


def verify_image_files(paths: list[str], label: str, workers: int = 8) -> None:
    """Decode every image fully to RGB, as training will (PIL's ``verify()`` alone passes a truncated
    JPEG, which then fails inside training), in threads (PIL releases the GIL while decoding), with
    progress; the first failure raises a ``ValueError`` naming the file."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def check(path: str) -> str | None:
        try:
            with Image.open(path) as image:
                image.convert("RGB")
        except Exception as error:  # noqa: BLE001 - PIL raises many types for broken files
            return f"{path}: corrupt or unreadable image: {type(error).__name__}: {error}"
        return None

    step = max(1, len(paths) // 10)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, problem in enumerate(pool.map(check, paths, chunksize=256), start=1):
            if problem:
                raise ValueError(problem)
            if done % step == 0 or done == len(paths):
                print(f"[verify {label}] {done}/{len(paths)} images checked", flush=True)


def read_image_folder(root: Path, image_size: int) -> tuple[TensorImageDataset, TensorImageDataset]:
    """Decode ``root/train`` and ``root/val`` into uint8 tensors (resize + centre crop to
    ``image_size``); the train classes define the label order."""
    from torchvision.datasets import ImageFolder

    train_tree = ImageFolder(str(root / "train"))
    classes = train_tree.classes
    val_tree = ImageFolder(str(root / "val"))
    check_same_classes(root, classes, val_tree.classes)
    resize = _eval_transform(image_size)

    def decode(tree: Any, tag: str) -> TensorImageDataset:
        images = [np.asarray(resize(open_image(tree.loader, path)), dtype=np.uint8) for path, _ in tree.samples]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor([label for _, label in tree.samples], dtype=torch.int64)
        return TensorImageDataset(x, y, len(classes), IMAGENET_MEAN, IMAGENET_STD, name=f"{root.name}-{tag}")

    return decode(train_tree, "train"), decode(val_tree, "val")


def sample_seed(epoch_seed: int, position: int) -> int:
    """Seed of the random augmentation of the sample at ``position`` in an epoch whose seed is
    ``epoch_seed``: a function of the two alone, so which worker or process decodes it does not matter."""
    digest = hashlib.blake2b(f"{epoch_seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class _IndexedFolder(torch.utils.data.Dataset):
    """Samples of an ImageFolder by position; with ``epoch_seed`` each sample's random transform
    draws from its own seed (:func:`sample_seed`)."""

    def __init__(self, tree: Any, transform: Any, indices: torch.Tensor | None = None,
                 epoch_seed: int | None = None) -> None:
        self.tree, self.transform, self.epoch_seed = tree, transform, epoch_seed
        self.indices = indices if indices is not None else torch.arange(len(tree.samples))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        path, label = self.tree.samples[int(self.indices[position])]
        image = open_image(self.tree.loader, path)
        if self.epoch_seed is None:
            return self.transform(image), label, position
        in_worker = torch.utils.data.get_worker_info() is not None
        with torch.random.fork_rng(devices=[], enabled=not in_worker):   # a worker's stream is its own
            torch.manual_seed(sample_seed(self.epoch_seed, position))
            return self.transform(image), label, position


class StreamingImageFolder:
    """A large image folder read through worker processes with the standard ImageNet transforms
    (train: RandomResizedCrop + flip; otherwise resize + centre crop). Same ``batches`` API as
    ``TensorImageDataset``; ``Batch.index`` is the position in this dataset."""

    def __init__(self, root: Path, image_size: int, train: bool, workers: int | None = None,
                 indices: torch.Tensor | None = None) -> None:
        from torchvision.datasets import ImageFolder

        self.root, self.image_size, self.train = Path(root), image_size, train
        self.tree = ImageFolder(str(root))
        self.indices = indices if indices is not None else torch.arange(len(self.tree.samples))
        self.labels = torch.tensor([self.tree.samples[int(i)][1] for i in self.indices], dtype=torch.int64)
        self.num_classes = len(self.tree.classes)
        if workers is None:
            from mcmi.distributed import default_workers

            workers = default_workers()
        self.workers = workers
        self.mean, self.std, self.name = IMAGENET_MEAN, IMAGENET_STD, self.root.name

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def content_digest(self) -> str:
        """SHA-256 of this split as a job reads it: class names, each image's path (relative to the
        root), label and size in bytes, and the image size. The pixels are not read (ImageNet's are
        150 GB): an image replaced by another of the same size and name is not noticed."""
        from concurrent.futures import ThreadPoolExecutor

        samples = [self.tree.samples[int(i)] for i in self.indices]
        with ThreadPoolExecutor(max_workers=16) as pool:
            sizes = list(pool.map(lambda sample: os.stat(sample[0]).st_size, samples))
        digest = hashlib.sha256(json.dumps({"classes": self.tree.classes, "image_size": self.image_size,
                                            "train": self.train}).encode())
        for (path, label), size in zip(samples, sizes):
            digest.update(f"{os.path.relpath(path, self.root)}\0{label}\0{size}\n".encode())
        return digest.hexdigest()

    def verify_images(self) -> None:
        """Check that every image of this split decodes (the data job runs this once)."""
        paths = [self.tree.samples[int(i)][0] for i in self.indices]
        verify_image_files(paths, str(self.root), workers=max(2, self.workers))

    def subset(self, indices: torch.Tensor, name: str | None = None) -> "StreamingImageFolder":
        return StreamingImageFolder(self.root, self.image_size, self.train, self.workers, self.indices[indices])

    def _transform(self, augment: bool) -> Any:
        from torchvision import transforms

        head = ([transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip()]
                if augment else [_eval_transform(self.image_size)])
        return transforms.Compose(head + [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                shard: tuple[int, int] | None = None) -> Iterator[Batch]:
        """Batches decoded by ``self.workers`` DataLoader processes into pinned memory (on CUDA).

        One draw from ``generator`` per call seeds the epoch: its permutation and every sample's
        random crop and flip (a seed per sample, :func:`sample_seed`), so an epoch is the same
        whatever the number of workers or processes. ``shard=(rank, world)``: only that rank's rows of
        every batch (:func:`mcmi.distributed.shard_bounds`); the ranks' batches together are the
        single process's batches."""
        from mcmi.distributed import shard_bounds

        if (shuffle or augment) and generator is None:
            raise ValueError("shuffle/augment need an explicit torch.Generator (reproducibility)")
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        plan, sizes = [], []
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            first, stop = shard_bounds(len(rows), *(shard or (0, 1)))
            if stop > first:
                plan.append(rows[first:stop].tolist())
                sizes.append(len(rows))
        loader = torch.utils.data.DataLoader(
            _IndexedFolder(self.tree, self._transform(augment), self.indices, seed if augment else None),
            batch_sampler=plan, num_workers=self.workers, pin_memory=str(device).startswith("cuda"),
            persistent_workers=False,
        )
        for (x, y, index), size in zip(loader, sizes):
            # pinned by the loader on a GPU: all three copies are asynchronous
            yield Batch(x.to(device, non_blocking=True), y.to(device, non_blocking=True),
                        index.to(device, non_blocking=True), global_size=size if shard is not None else None)
