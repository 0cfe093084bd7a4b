"""Training state in one safetensors file: nested dicts/lists of tensors and plain values, never pickled.

``save_state`` splits a state tree into tensors (stored as safetensors) and a JSON skeleton (stored in the
file's metadata) in which each tensor is replaced by a reference. Writes are atomic (``pipelines.files.atomic_write``). ``load_state`` rebuilds the tree; nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipelines.files import atomic_write

_TENSOR = "__tensor__"
_NDARRAY = "__ndarray__"
_TUPLE = "__tuple__"
_INT_KEYS = "__int_keys__"


def _flatten(node: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, torch.Tensor):
        key = path or "root"
        tensors[key] = node.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(node, np.ndarray):
        key = path or "root"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(node))
        return {_NDARRAY: key}
    if isinstance(node, dict):
        int_keys = all(isinstance(k, int) for k in node) and bool(node)
        if not int_keys and not all(isinstance(k, str) for k in node):
            raise TypeError(f"state keys at '{path}' must be all str or all int")
        children = {str(k): _flatten(v, f"{path}/{k}", tensors) for k, v in node.items()}
        return {_INT_KEYS: children} if int_keys else children
    if isinstance(node, tuple):
        return {_TUPLE: [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(node)]}
    if isinstance(node, list):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(node)]
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, (np.integer, np.floating)):
        return node.item()
    raise TypeError(f"cannot store {type(node).__name__} at '{path}' without pickle")


def _unflatten(node: Any, handle: Any) -> Any:
    if isinstance(node, dict):
        if _TENSOR in node:
            return handle.get_tensor(node[_TENSOR])
        if _NDARRAY in node:
            return handle.get_tensor(node[_NDARRAY]).numpy()
        if _TUPLE in node:
            return tuple(_unflatten(v, handle) for v in node[_TUPLE])
        if _INT_KEYS in node:
            return {int(k): _unflatten(v, handle) for k, v in node[_INT_KEYS].items()}
        return {k: _unflatten(v, handle) for k, v in node.items()}
    if isinstance(node, list):
        return [_unflatten(v, handle) for v in node]
    return node


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a state tree atomically as one safetensors file (tensors shared in memory are stored once each)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    atomic_write(path, lambda tmp: save_file(_unshare(tensors), tmp, metadata={"state": json.dumps(skeleton)}))


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory: copy views and repeats into storage of their own."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage()
        shared = storage.data_ptr() in seen or storage.nbytes() != tensor.numel() * tensor.element_size()
        out[key] = tensor.clone() if shared and tensor.numel() else tensor
        seen.add(storage.data_ptr())
    return out


def load_state(path: Path) -> dict[str, Any]:
    """Read a file written by ``save_state``."""
    with safe_open(str(path), framework="pt") as handle:
        skeleton = json.loads((handle.metadata() or {})["state"])
        return _unflatten(skeleton, handle)
