"""Prepared data through Ray's object store without a copy per trial.

Ray stores NumPy arrays out of band, and a ``ray.get`` on the same node maps them from the node's
shared memory. Torch tensors are pickled instead, i.e. copied into every trial's heap (Ray's
zero-copy path for tensors is experimental and off by default): N-Caltech101 at T = 10 is about
2 GB of frames and images, once per trial. So the driver puts a ``Prepared`` with its tensors as
NumPy arrays (:func:`as_arrays`, no copy), and each trial wraps them back with ``torch.from_numpy``
(:func:`as_tensors`, no copy): one copy per node. The arrays are read-only in the trial, which is
safe because the engine never writes into prepared data (its tests reuse one ``Prepared`` across
runs and compare them bit for bit).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class _Array:
    """A tensor travelling as a NumPy array (a marker, so only these become tensors again)."""

    array: np.ndarray


def as_arrays(obj: Any) -> Any:
    """``obj`` with every CPU tensor NumPy can hold (not bf16) replaced by a view as an array."""
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu" or obj.requires_grad or obj.dtype == torch.bfloat16:
            return obj
        return _Array(obj.contiguous().numpy())
    return _walk(obj, as_arrays)


def as_tensors(obj: Any) -> Any:
    """The inverse of :func:`as_arrays`: tensors sharing the arrays' memory (read-only in Ray)."""
    if isinstance(obj, _Array):
        with warnings.catch_warnings():  # torch warns once that the array is not writable
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(obj.array)
    return _walk(obj, as_tensors)


def _walk(obj: Any, convert: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        new = copy.copy(obj)  # not dataclasses.replace: __post_init__ checks would meet _Array fields
        for f in dataclasses.fields(obj):
            object.__setattr__(new, f.name, convert(getattr(obj, f.name)))
        return new
    if isinstance(obj, dict):
        return {k: convert(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):  # named tuples kept as they are
        return type(obj)(convert(v) for v in obj)
    return obj
