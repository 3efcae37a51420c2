"""Tensor manifests: what a version is made of, tensor by tensor.

Each entry is a state_dict key with its dtype, shape and the SHA-256 of its
bytes (C order, the dtype's own encoding). Equal digests let `diff` call two
tensors identical without reading either blob, and a tensor that `diff` does
read is checked against its digest, so it needs no whole-blob verification.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from registry.records import TensorInfo

if TYPE_CHECKING:
    import torch


def describe(state_dict: Mapping[str, torch.Tensor]) -> list[TensorInfo]:
    """The manifest of a state_dict, in its order; tensors are hashed on several threads."""
    import os

    items = list(state_dict.items())
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1), "registry-manifest") as pool:
        digests = list(pool.map(tensor_digest, (tensor for _, tensor in items)))
    return [
        TensorInfo(name, dtype_name(tensor), tuple(tensor.shape), digest)
        for (name, tensor), digest in zip(items, digests, strict=True)
    ]


def tensor_digest(tensor: torch.Tensor) -> str | None:
    """SHA-256 of a tensor's bytes; None for a layout that has no plain bytes (sparse)."""
    import torch

    if tensor.layout != torch.strided:
        return None
    if tensor.is_quantized:
        tensor = tensor.int_repr()
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    hasher = hashlib.sha256()
    if flat.numel():
        hasher.update(flat.view(torch.uint8).numpy().data)  # hashlib releases the GIL
    return hasher.hexdigest()


def dtype_name(tensor: torch.Tensor) -> str:
    """`float32` for torch.float32: the name a user types."""
    return str(tensor.dtype).removeprefix("torch.")
