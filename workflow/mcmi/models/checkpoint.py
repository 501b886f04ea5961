"""Loading RepDistiller-format checkpoints (``{'model': state_dict, 'epoch': ..., ...}``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

_DATA_PARALLEL_PREFIX = "module."


def _why_unreadable(error: Exception) -> str:
    """One line on why ``torch.load(..., weights_only=True)`` failed (torch's messages run to paragraphs)."""
    text = " ".join(str(error).split())
    refused = re.search(r"(unsupported GLOBAL \S+|Unsupported global: GLOBAL \S+)", text)
    if refused:
        return f"it holds pickled objects or code, which weights-only loading refuses ({refused.group(1)})"
    said = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return f"empty, truncated, or not a torch file (torch said {said[:120]!r})"


def load_repdistiller_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``model`` strictly and return it.

    Accepts a RepDistiller checkpoint (a dict whose ``'model'`` entry is the state dict) or a bare
    state dict; a leading ``'module.'`` (DataParallel) is stripped from the keys. The file is read
    with ``weights_only=True`` onto the CPU. Raises ``FileNotFoundError`` when there is no such file
    and ``ValueError`` naming the file when it cannot be read as a checkpoint (a text file, a
    truncated or foreign file: torch raises anything from IndexError to KeyError for those), holds
    a NaN/inf weight, or its keys or shapes do not match the model.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises anything for a foreign file (IndexError, KeyError, ...)
        raise ValueError(f"{path}: cannot be read as a weights-only torch checkpoint: {_why_unreadable(error)}"
                         ) from error
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state_dict.values()
    ):
        raise ValueError(f"{path}: holds neither a state dict nor a dict with one under 'model'")
    state_dict = {key.removeprefix(_DATA_PARALLEL_PREFIX): value for key, value in state_dict.items()}
    non_finite = [key for key, value in state_dict.items()
                  if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if non_finite:
        raise ValueError(f"{path}: non-finite (NaN/inf) weights in {non_finite[:5]}"
                         f"{' and more' if len(non_finite) > 5 else ''}; refusing to use this checkpoint")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match {type(model).__name__}: {error}") from error
    return model
