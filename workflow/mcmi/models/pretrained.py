"""Pretrained teachers from torchvision's weights, as the paper took its ImageNet MLL teachers.

``teachers.pretrained.<dataset>.<model>: torchvision:<WEIGHTS>`` names one of torchvision's weights
of that model (``torchvision.models.get_model_weights(model)[WEIGHTS]``, e.g. ``IMAGENET1K_V1``).
The paper's Table 2 quotes the MLL teachers at 73.31 / 91.42 (ResNet34) and 76.13 / 92.86 (ResNet50):
torchvision's ``IMAGENET1K_V1`` weights (its metadata: 73.314 / 91.42 and 76.13 / 92.862; appendix
A.8.1: "we obtain the pre-trained teacher from PyTorch official repository").

The file is torchvision's own, fetched into torch's hub cache (``$TORCH_HOME/hub/checkpoints/``, what
``torchvision``'s ``weights.get_state_dict`` uses) by ``torch.hub.download_url_to_file`` with its hash
check, or put there by hand on an offline cluster. Every use checks it again: the SHA-256 of the file
must begin with the hash torchvision's file name carries (``resnet34-b627a593.pth``), else it is
refused naming the file. It loads strictly (``weights_only``) into the zoo's model, whose ImageNet
models are torchvision's classes with torchvision's state-dict keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "torchvision:"


def is_torchvision(source: str | None) -> bool:
    """Whether a ``teachers.pretrained`` value names torchvision weights (else it is a file path)."""
    return isinstance(source, str) and source.startswith(PREFIX)


@dataclass(frozen=True)
class TorchvisionWeights:
    """One of torchvision's weights of a zoo model: where its file is fetched from and kept, the hash
    its file name carries, its number of classes and torchvision's accuracy."""

    model: str
    name: str              # e.g. IMAGENET1K_V1
    enum: str              # e.g. ResNet34_Weights
    url: str
    hash_prefix: str
    num_classes: int
    metrics: dict[str, Any]

    @property
    def file(self) -> Path:
        """Where torch's hub cache keeps the file (``torch.hub.get_dir()``/checkpoints/<file name>)."""
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / self.url.rsplit("/", 1)[-1]

    @property
    def label(self) -> str:
        return f"torchvision's {self.enum}.{self.name}"

    @property
    def key(self) -> str:
        """``<enum>.<name>``, e.g. ``ResNet34_Weights.IMAGENET1K_V1`` (the workflow's name for the file)."""
        return f"{self.enum}.{self.name}"


def _url(weights: Any) -> str:
    """The download address of a torchvision weights enum member (a seam for tests)."""
    return str(weights.url)


def resolve_torchvision(model: str, source: str) -> TorchvisionWeights:
    """The torchvision weights ``source`` (``torchvision:<WEIGHTS>``) of zoo model ``model``; a
    ``ValueError`` naming what is wrong (not a torchvision model of the zoo, unknown weights)."""
    import torch.hub

    from mcmi.models.zoo import IMAGENET_MODEL_NAMES

    if not is_torchvision(source):
        raise ValueError(f"{source!r} is not of the form 'torchvision:<WEIGHTS>'")
    name = source[len(PREFIX):]
    if model not in IMAGENET_MODEL_NAMES:
        raise ValueError(f"{model}: torchvision weights exist only for the zoo's torchvision models "
                         f"{list(IMAGENET_MODEL_NAMES)}")
    from torchvision.models import get_model_weights

    enum = get_model_weights(model)
    if name not in enum.__members__:
        raise ValueError(f"{model}: torchvision has no weights {name!r}; it has {list(enum.__members__)}")
    weights = enum[name]          # an alias (DEFAULT) resolves to the weights it stands for
    name = weights.name
    url = _url(weights)
    found = torch.hub.HASH_REGEX.search(url.rsplit("/", 1)[-1])
    if not found or not found.group(1):
        raise ValueError(f"{url}: no hash in the file name to check the file against")
    return TorchvisionWeights(model, name, enum.__name__, url, found.group(1), len(weights.meta["categories"]),
                              dict(weights.meta.get("_metrics", {}).get("ImageNet-1K", {})))


def _sha256(path: Path) -> str:
    from mcmi.identity import file_digest

    return file_digest(path)


def verify_file(weights: TorchvisionWeights, path: str | Path | None = None) -> Path:
    """``path`` (default: the cache file) if its SHA-256 begins with the hash of torchvision's file
    name; else a ``ValueError`` naming the file and what to do."""
    path = Path(path or weights.file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {weights.label} is not there; run the workflow (its rule fetches it on "
                                f"the submitting node) or, offline, copy torchvision's file {weights.url} there")
    digest = _sha256(path)
    if not digest.startswith(weights.hash_prefix):
        raise ValueError(f"{path}: SHA-256 {digest[:16]}... does not begin with {weights.hash_prefix}, the hash "
                         f"of {weights.label} ({weights.url}); this is not that file (damaged or replaced): "
                         f"delete it to fetch it again, or copy torchvision's own file there")
    return path


def fetch(weights: TorchvisionWeights) -> Path:
    """torchvision's file of ``weights`` in the hub cache, downloaded with torch's hash check when it
    is not there yet, and checked (:func:`verify_file`) either way."""
    import torch.hub

    target = weights.file
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {weights.label} from {weights.url} to {target}", flush=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(target), hash_prefix=weights.hash_prefix)
        except RuntimeError as error:          # torch's own hash check
            raise ValueError(f"{weights.url}: {error}; nothing was kept at {target}") from error
        except OSError as error:
            raise OSError(f"cannot download {weights.url} ({error}); on a machine without network copy "
                          f"torchvision's file to {target}, or give teachers.pretrained a local file") from error
    path = verify_file(weights, target)
    print(f"{weights.label}: {path} (SHA-256 begins with {weights.hash_prefix}; torchvision's ImageNet "
          f"accuracy {weights.metrics})", flush=True)
    return path


def fetch_and_record(weights: TorchvisionWeights, record: str | Path, log: str | Path | None = None) -> None:
    """:func:`fetch` (its lines into ``log`` when given), then write ``record`` (JSON: the weights, the
    file, its SHA-256, torchvision's accuracy): the workflow's output for the file, which stays in the
    hub cache."""
    from contextlib import redirect_stdout, nullcontext

    from mcmi.provenance import write_json_atomic

    with open(log, "w") if log else nullcontext() as handle, redirect_stdout(handle) if log else nullcontext():
        path = fetch(weights)
    write_json_atomic(record, {"weights": weights.key, "model": weights.model, "url": weights.url,
                               "file": str(path), "sha256": _sha256(path), "num_classes": weights.num_classes,
                               "torchvision_metrics": weights.metrics})
