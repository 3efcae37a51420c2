"""Tensor manifests: what a version is made of, tensor by tensor.

Each entry is a state_dict key with its dtype, shape and a digest of its
bytes (C order, the dtype's own encoding): `blake3:<hex>`, hashed on every
core, 224 bits so that it fits the column beside the older digests, or, for
manifests recorded before issue 14, the SHA-256 hex alone.
Equal digests let `diff` call two tensors identical without reading either
blob, and a tensor that `diff` does read is checked against its digest, so
it needs no whole-blob verification.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from registry.records import TensorInfo

if TYPE_CHECKING:
    import torch


BLAKE3_PREFIX = "blake3:"
BLAKE3_BYTES = 28  # "blake3:" + 56 hex digits fit the 64 characters SHA-256 hex took


def describe(state_dict: Mapping[str, torch.Tensor]) -> list[TensorInfo]:
    """The manifest of a state_dict, in its order; each tensor hashed on every core."""
    return [
        TensorInfo(name, dtype_name(tensor), tuple(tensor.shape), tensor_digest(tensor))
        for name, tensor in state_dict.items()
    ]


def describe_folder(
    kind: str,
    files: Mapping[str, Path],
    unchanged: Collection[str] = (),
    recorded: Mapping[str, TensorInfo] | None = None,
) -> list[TensorInfo]:
    """The manifest of a folder's weights (`registry.shards`), sorted by name, one shard read
    at a time. A shard in `unchanged` (the previous version held it, byte for byte) keeps
    its tensors' `recorded` entries instead of being read in full."""
    from registry import shards

    tensors: list[TensorInfo] = []
    for path, shard in shards.each_shard(kind, files):
        found = [(recorded or {}).get(name) for name in shard] if path in unchanged else []
        if found and all(
            t is not None and (t.dtype, t.shape) == (dtype_name(v), tuple(v.shape))
            for t, v in zip(found, shard.values(), strict=True)
        ):
            tensors.extend(t for t in found if t is not None)
        else:
            tensors.extend(describe(shard))
        del shard, found  # the shard's mapping goes before the next is read
    return sorted(tensors, key=lambda t: t.name)


def tensor_digest(tensor: torch.Tensor, like: str | None = None) -> str | None:
    """The digest of a tensor's bytes; None for a layout that has no plain bytes (sparse).

    BLAKE3 (`blake3:` and 56 hex digits), or the bare SHA-256 hex when `like` is such a
    legacy digest, to check a tensor against a manifest recorded before BLAKE3.
    """
    import blake3
    import torch

    if tensor.layout != torch.strided:
        return None
    if tensor.is_quantized:
        tensor = tensor.int_repr()
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    data = flat.view(torch.uint8).numpy().data if flat.numel() else b""
    if like is not None and not like.startswith(BLAKE3_PREFIX):
        return hashlib.sha256(data).hexdigest()
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if len(data) >= _THREADED else 1)
    hasher.update(data)  # releases the GIL
    return BLAKE3_PREFIX + hasher.hexdigest(length=BLAKE3_BYTES)


_THREADED = 1 << 20  # smaller tensors: one thread, a thread pool's start costs more


def dtype_name(tensor: torch.Tensor) -> str:
    """`float32` for torch.float32: the name a user types."""
    return str(tensor.dtype).removeprefix("torch.")
