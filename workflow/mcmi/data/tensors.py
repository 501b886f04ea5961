"""Image datasets held as uint8 tensors, augmented batch-wise on the device (airbench style)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from mcmi.data.batch import Batch


def crop_flip_params(b: int, generator: torch.Generator, padding: int = 4
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random offsets (dy, dx) and flips of :func:`random_crop_flip` for a batch of ``b``, drawn
    from ``generator`` in that order (on the CPU)."""
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    return dy, dx, flip


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the CPU) on ``device`` without the host waiting for the device: a copy from
    pageable memory would synchronise the stream (the host would wait for every queued kernel), so a
    GPU gets it through pinned memory, asynchronously. On the CPU it is returned as is."""
    if device.type == "cpu":
        return tensor
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4,
                     params: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-sample random crop (zero padding ``padding``) and horizontal flip of a (B, C, H, W) batch.

    Equivalent to torchvision's RandomCrop(size, padding) + RandomHorizontalFlip applied image by
    image before normalisation, but done for the whole batch at once. ``params`` (rows of
    :func:`crop_flip_params`) replaces the draw from ``generator``."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    dy, dx, flip = params if params is not None else crop_flip_params(b, generator, padding)
    dy, dx, flip = to_device_async(torch.stack([dy, dx, flip.long()]), images.device)   # one copy per batch
    flip = flip.bool()
    rows = dy[:, None] + torch.arange(h, device=images.device)[None, :]            # (B, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)[None, :]            # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch_idx = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch_idx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


@dataclass
class TensorImageDataset:
    """A whole image dataset in memory.

    images: (N, C, H, W) uint8; labels: (N,) int64. ``Batch.index`` is the position in this dataset."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    crop_padding: int = 4          # random-crop padding of the augmentation (CIFAR: 4 at 32 px)
    _device_copies: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _normalisers: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict, init=False, repr=False,
                                                                compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be a (N, C, H, W) uint8 tensor, got "
                             f"{tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.name}: {self.images.shape[0]} images but {self.labels.shape[0]} labels")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def content_digest(self) -> str:
        """SHA-256 of what a job sees of this split: pixels, labels, class count, normalisation and
        augmentation padding (part of every job's content identity, :mod:`mcmi.identity`)."""
        digest = hashlib.sha256(json.dumps(
            {"shape": list(self.images.shape), "num_classes": self.num_classes, "mean": list(self.mean),
             "std": list(self.std), "crop_padding": self.crop_padding}, sort_keys=True).encode())
        digest.update(self.images.contiguous().numpy())
        digest.update(self.labels.contiguous().numpy())
        return digest.hexdigest()

    def subset(self, indices: torch.Tensor, name: str | None = None) -> "TensorImageDataset":
        """The samples at ``indices`` (positions are renumbered from 0)."""
        return replace(self, images=self.images[indices], labels=self.labels[indices],
                       name=name or f"{self.name}[subset]")

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(x / 255 - mean) / std with every operand a tensor on the images' device, made once per device
        (a tensor from a list is a blocking copy). A tensor 255, not the number: CUDA divides by a host
        number as a product with its reciprocal (one bit off, for about half the pixel values); dividing by
        a tensor is the correctly rounded division on every device, so a GPU's batches equal the CPU's."""
        key = str(images.device)
        if key not in self._normalisers:
            self._normalisers[key] = tuple(torch.tensor(values).view(1, -1, 1, 1).to(images.device)
                                           for values in ((255.0,), self.mean, self.std))
        scale, mean, std = self._normalisers[key]
        return (images.float() / scale - mean) / std

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        """Yield normalised batches; shuffling and augmentation draw from ``generator`` only.

        ``shard=(rank, world)``: only that rank's rows of every batch (:func:`mcmi.distributed.shard_bounds`),
        with the permutation and the augmentation of the whole batch drawn as without it, so the
        ranks' batches together are the single process's batches."""
        if (shuffle or augment) and generator is None:
            raise ValueError("shuffle/augment need an explicit torch.Generator (reproducibility)")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        images, labels = self.on_device(device)
        order = order.to(images.device)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            if shard is None:
                x = images[index]
                if augment:
                    x = random_crop_flip(x, generator, self.crop_padding)
                yield Batch(self.normalise(x), labels[index], index)
                continue
            from mcmi.distributed import shard_bounds

            size = len(index)
            first, stop = shard_bounds(size, *shard)
            params = crop_flip_params(size, generator, self.crop_padding) if augment else None
            index = index[first:stop]
            x = images[index]
            if params is not None:
                x = random_crop_flip(x, generator, self.crop_padding, tuple(p[first:stop] for p in params))
            yield Batch(self.normalise(x), labels[index], index, global_size=size)

    def on_device(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (uint8) and labels on ``device``, copied there once and kept: a GPU job indexes,
        augments and normalises its batches on the GPU, with no host-to-device copy of images per step."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.images, self.labels
        if str(device) not in self._device_copies:
            self._device_copies[str(device)] = (self.images.to(device), self.labels.to(device))
        return self._device_copies[str(device)]
