"""Counting host synchronisations of training code on the CPU.

On a GPU, a Python read of a device tensor (``.item()``, ``bool()``, ``float()``, ``int()``,
``.tolist()``, ``.cpu()``) and every op whose output shape depends on the data (``nonzero``, boolean
masks, ``unique``) make the host wait until the device has finished all queued work. On the CPU
nothing waits, so :class:`HostSyncCounter` records where such a read would happen: it follows, op by
op, which tensors would live on the device -- the models' and objectives' parameters and buffers, the
dataset's tensors, and everything computed from them -- and records each read of one of those, with
the package's source lines on the stack. Tensors made from nothing but host values (a draw from a
CPU generator, ``torch.tensor`` of a list) stay on the host on a GPU too, so reading them is free.
"""

from __future__ import annotations

import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

# aten ops that read a device tensor on the host, or whose output size depends on its values
_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
             "unique_consecutive", "unique_dim_consecutive", "repeat_interleave", "equal", "allclose",
             "masked_scatter"}
_INDEX_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}     # with a boolean mask: nonzero inside


@dataclass
class Sync:
    """One host read: the op (or Python method) and the package's frames on the stack, innermost last."""
    op: str
    where: list[str]

    def __str__(self) -> str:
        return f"{self.op} at {' <- '.join(reversed(self.where)) or '(outside the package)'}"


def _package_frames() -> list[str]:
    frames = traceback.extract_stack()[:-3]
    return [f"{f.filename.split('/mcmi/')[-1]}:{f.lineno} {f.name}" for f in frames if "/mcmi/" in f.filename]


class HostSyncCounter(TorchDispatchMode):
    """Records every host read of a device-side tensor while active (a context manager).

    ``device_tensors``: the tensors that start on the device (parameters, buffers, the dataset)."""

    def __init__(self, device_tensors: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self.device_side: WeakIdKeyDictionary = WeakIdKeyDictionary()
        for tensor in device_tensors:
            self.device_side[tensor] = True
        self.syncs: list[Sync] = []
        self._patches = ExitStack()

    def on_device(self, tensor: Any) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor in self.device_side

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        device_side = any(self.on_device(t) for t in tree_leaves((args, kwargs)))
        name = func.overloadpacket.__name__
        if device_side and (name in _SYNC_OPS or (name in _INDEX_OPS and _has_bool_index(args))):
            self.syncs.append(Sync(name, _package_frames()))
        out = func(*args, **kwargs)
        if device_side:
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    self.device_side[tensor] = True
        return out

    def __enter__(self) -> "HostSyncCounter":
        counter = self

        def watch(method: str) -> None:
            original = getattr(torch.Tensor, method)

            def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                if counter.on_device(self):
                    counter.syncs.append(Sync(f"Tensor.{method}", _package_frames()))
                return original(self, *args, **kwargs)

            own = method in vars(torch.Tensor)
            setattr(torch.Tensor, method, read)
            self._patches.callback(lambda: setattr(torch.Tensor, method, original) if own
                                   else delattr(torch.Tensor, method))

        for method in ("tolist", "numpy", "cpu"):      # host copies that never reach the dispatcher on a CPU
            watch(method)
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._patches.close()


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or [])


def device_tensors_of(*modules_or_tensors: Any) -> list[torch.Tensor]:
    """Parameters and buffers of the modules, and the tensors given, as the device-side start set."""
    out: list[torch.Tensor] = []
    for item in modules_or_tensors:
        if isinstance(item, torch.nn.Module):
            out += list(item.parameters()) + list(item.buffers())
        elif isinstance(item, torch.Tensor):
            out.append(item)
    return out
