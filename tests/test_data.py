"""Data: CIFAR pickles read by the real loader, image folders, digits, augmentation, subsets."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from mcmi.data.sources import load_cifar, load_dataset, load_digits, write_demo_image_folder
from mcmi.data.subsets import (
    few_shot_indices,
    labelled_indices,
    labelled_train_set,
    student_train_set,
    without_classes_indices,
)
from mcmi.data.tensors import TensorImageDataset, random_crop_flip


def test_cifar100_pickles_are_read_by_the_real_loader(cifar100_root):
    train, test = load_dataset({"kind": "cifar100", "root": str(cifar100_root)})
    assert len(train) == 60 and len(test) == 20
    assert train.images.shape == (60, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.num_classes == 100
    with open(cifar100_root / "cifar-100-python" / "train", "rb") as handle:
        raw = pickle.load(handle, encoding="latin1")
    # channel-major rows of 3072 bytes become (3, 32, 32) images
    assert torch.equal(train.images[0], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    assert train.labels.tolist() == raw["fine_labels"]
    batch = next(train.batches(16))
    assert batch.x.shape == (16, 3, 32, 32) and batch.index.tolist() == list(range(16))


def test_missing_cifar_says_how_to_provide_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download: true"):
        load_cifar("cifar100", tmp_path)


def test_dataset_files_cannot_run_code(cifar100_root):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(cifar100_root / "cifar-100-python" / "train", "wb") as handle:
        pickle.dump({"data": Evil(), "fine_labels": [0]}, handle)
    with pytest.raises(ValueError, match=r"cifar-100-python/train: .*refusing to load"):
        load_cifar("cifar100", cifar100_root)


def test_unknown_dataset_kind_is_named():
    with pytest.raises(ValueError, match="'mnist'"):
        load_dataset({"kind": "mnist"})


def test_digits_ship_offline_as_rgb_images():
    train, test = load_digits(16)
    assert train.images.shape[1:] == (3, 16, 16)
    assert len(train) + len(test) == 1797
    assert torch.bincount(test.labels, minlength=10).min() >= 30  # stratified split


def test_image_folder_in_memory_and_streaming_agree_on_labels(image_folder):
    train, val = load_dataset({"kind": "imagefolder", "root": str(image_folder), "image_size": 16})
    assert train.images.shape == (12, 3, 16, 16) and val.num_classes == 3
    stream_train, _ = load_dataset({"kind": "imagefolder", "root": str(image_folder), "image_size": 16,
                                    "in_memory": False})
    stream_train.workers = 0
    batches = list(stream_train.batches(5, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)))
    assert sum(len(b) for b in batches) == 12
    assert batches[0].x.shape[1:] == (3, 16, 16)
    seen = torch.cat([b.index for b in batches]).sort().values
    assert seen.tolist() == list(range(12))
    assert torch.equal(torch.cat([b.y for b in batches]), stream_train.labels[torch.cat([b.index for b in batches])])


def test_missing_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        load_dataset({"kind": "imagefolder", "root": str(tmp_path)})


def test_demo_image_folder_is_generated_in_imagenet_layout(tmp_path):
    root = write_demo_image_folder(tmp_path / "demo", per_class=3, classes=10, image_size=16)
    train, val = load_dataset({"kind": "imagefolder", "root": str(root), "image_size": 16})
    assert len(train) == 30 and len(val) == 30 and train.num_classes == 10


def test_batch_augmentation_matches_per_image_crop_and_flip():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(3)
    out = random_crop_flip(images, gen, padding=2)
    replay = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 5, (6,), generator=replay)
    dx = torch.randint(0, 5, (6,), generator=replay)
    flip = torch.rand(6, generator=replay) < 0.5
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(6):
        expected = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        if flip[i]:
            expected = expected.flip(-1)
        assert torch.equal(out[i], expected)


def test_batches_are_reproducible_from_the_generator():
    data = TensorImageDataset(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20) % 4, 4,
                              (0.5,) * 3, (0.25,) * 3)
    a = [b.x for b in data.batches(7, shuffle=True, augment=True, generator=torch.Generator().manual_seed(1))]
    b = [b.x for b in data.batches(7, shuffle=True, augment=True, generator=torch.Generator().manual_seed(1))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="Generator"):
        next(data.batches(7, shuffle=True))


def test_few_shot_partition_sizes_and_stability():
    labels = torch.arange(1000) % 10          # 100 per class
    idx = few_shot_indices(labels, 15, seed=0)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [15] * 10
    assert torch.equal(idx, few_shot_indices(labels, 15, seed=0))       # same partition for MLL and MCMI
    assert not torch.equal(idx, few_shot_indices(labels, 15, seed=1))
    assert set(few_shot_indices(labels, 5, seed=0).tolist()) <= set(range(1000))
    with pytest.raises(ValueError, match="alpha_percent"):
        few_shot_indices(labels, 0, seed=0)


def test_labelled_subsets_are_balanced_seeded_and_nested():
    """Figure 9's labelled subsets on a CIFAR-10-shaped label vector (5,000 a class): 500 ... 4,000
    labels are 50 ... 400 a class, the same for the same seed, new for a new seed, each contained in
    the next; an uneven count spreads its remainder one per class."""
    labels = torch.arange(50_000) % 10
    subsets = {n: labelled_indices(labels, n, seed=0) for n in (500, 1000, 2000, 4000)}
    for n, idx in subsets.items():
        assert torch.bincount(labels[idx], minlength=10).tolist() == [n // 10] * 10
        assert len(set(idx.tolist())) == n and torch.equal(idx, idx.sort().values)
        assert torch.equal(idx, labelled_indices(labels, n, seed=0))
    for small, large in ((500, 1000), (1000, 2000), (2000, 4000)):
        assert set(subsets[small].tolist()) < set(subsets[large].tolist())
    other = labelled_indices(labels, 500, seed=1)
    assert len(set(other.tolist()) & set(subsets[500].tolist())) < 50      # ~5 expected by chance

    uneven = [labelled_indices(labels, n, seed=3) for n in (23, 24, 25)]
    for n, idx in zip((23, 24, 25), uneven):
        counts = torch.bincount(labels[idx], minlength=10)
        assert counts.sum() == n and counts.max() - counts.min() == 1
    assert set(uneven[0].tolist()) < set(uneven[1].tolist()) < set(uneven[2].tolist())


def test_labelled_subset_bad_counts_and_the_training_set():
    data = TensorImageDataset(torch.zeros(40, 3, 4, 4, dtype=torch.uint8), torch.arange(40) % 10, 10,
                              (0.5,) * 3, (0.25,) * 3)
    sub = labelled_train_set(data, 20, seed=0)
    assert len(sub) == 20 and torch.bincount(sub.labels, minlength=10).tolist() == [2] * 10
    with pytest.raises(ValueError, match="between the number of classes \\(10\\) and the number of samples"):
        labelled_indices(data.labels, 5, seed=0)
    with pytest.raises(ValueError, match="class 0 has 1 samples, needs 2"):
        labelled_indices(torch.tensor([0] + [1] * 10), 4, seed=0)


def test_zero_shot_removes_classes_and_student_set_uses_spec():
    data = TensorImageDataset(torch.zeros(40, 3, 4, 4, dtype=torch.uint8), torch.arange(40) % 10, 10,
                              (0.5,) * 3, (0.25,) * 3)
    idx = without_classes_indices(data.labels, [1, 3])
    assert not set(data.labels[idx].tolist()) & {1, 3} and len(idx) == 32
    sub = student_train_set(data, removed_classes=[1, 3])
    assert len(sub) == 32
    few = student_train_set(data, alpha_percent=50, subset_seed=0)
    assert len(few) == 20
    assert student_train_set(data) is data
    with pytest.raises(ValueError, match="out of range"):
        without_classes_indices(data.labels, [12])
