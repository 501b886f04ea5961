"""The four ImageNet classes of Table 8 and Figures 3, 10-13, and how a dataset's class folders stand for
them: by default the folder named by the class's WordNet id (ImageNet's own layout, where the sorted
folders give the class index); in a small stand-in dataset (the demo's generated folder), any folder the
config maps to the class."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ImagenetClass:
    key: str            # the config's name (goldfish, bee_eater, toy_terrier, mountain_tent)
    name: str           # as the paper prints it
    index: int          # ImageNet-1k class index
    wnid: str           # WordNet id: the folder name in ImageNet's layout


PAPER_CLASSES: dict[str, ImagenetClass] = {c.key: c for c in (
    ImagenetClass("goldfish", "goldfish", 1, "n01443537"),
    ImagenetClass("bee_eater", "bee eater", 92, "n01828970"),
    ImagenetClass("toy_terrier", "toy terrier", 158, "n02087046"),
    ImagenetClass("mountain_tent", "mountain tent", 672, "n03792972"),
)}


def class_folders_spec(classes: list[str], folders: dict[str, str]) -> list[dict[str, str]]:
    """The classes as a job spec carries them: [{"class": key, "folder": its folder}] (folder: ``folders``
    entry, else the WordNet id)."""
    return [{"class": key, "folder": folders.get(key, PAPER_CLASSES[key].wnid)} for key in classes]


def folder_classes(dataset: dict[str, Any]) -> list[str]:
    """The class folders of an image-folder dataset spec in label order (sorted, as torchvision's
    ImageFolder numbers them); ValueError for another kind of dataset."""
    if dataset.get("kind") not in ("imagefolder", "demo_imagefolder"):
        raise ValueError(f"ImageNet classes need an image-folder dataset (kind imagefolder or demo_imagefolder), "
                         f"not {dataset.get('kind')!r}")
    train = Path(dataset["root"]) / "train"
    return sorted(entry.name for entry in os.scandir(train) if entry.is_dir())


def resolve(dataset: dict[str, Any], classes: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Each class of a spec with its folder's label in ``dataset`` and the paper's name, index and WordNet
    id. A folder the dataset lacks is a ValueError naming it; so is ImageNet's own layout (1,000 folders)
    in which a WordNet id does not sit at its ImageNet index."""
    names = folder_classes(dataset)
    resolved = []
    for entry in classes:
        known = PAPER_CLASSES[entry["class"]]
        if entry["folder"] not in names:
            raise ValueError(f"class {known.name!r}: no folder {entry['folder']!r} under "
                             f"{Path(dataset['root']) / 'train'} ({len(names)} class folders)")
        label = names.index(entry["folder"])
        if len(names) == 1000 and entry["folder"] == known.wnid and label != known.index:
            raise ValueError(f"class {known.name!r}: folder {known.wnid} has label {label}, not ImageNet's "
                             f"index {known.index}; the folder tree is not ImageNet-1k's")
        resolved.append({"class": known.key, "name": known.name, "imagenet_index": known.index,
                         "wnid": known.wnid, "folder": entry["folder"], "label": label})
    return resolved
