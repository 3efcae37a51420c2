"""The baselines: the same work done in plain Python and torch, with no registry in the way.

Each function is the least a tool could do for the job the registry does,
so a ratio against it is the registry's overhead. They are also run in
subprocesses (`python -c "import floors; ..."`), so they import nothing
from `registry`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# The registry copies in 8 MiB chunks too (registry.stores.folder.CHUNK_SIZE).
CHUNK_SIZE = 8 << 20


def copy_sha256(source: str | Path, destination: str | Path, fsync: bool) -> str:
    """Copy a file in one pass, hashing it on the way; fsync the copy if asked."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with open(source, "rb") as src, open(destination, "wb") as dst:
        while n := src.readinto(buffer):
            digest.update(view[:n])
            dst.write(view[:n])
        if fsync:
            dst.flush()
            os.fsync(dst.fileno())
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def torch_save_fsync(model: nn.Module, destination: Path) -> None:
    """The tutorial's save, `torch.save(model.state_dict(), path)`, made durable with fsync."""
    import torch

    torch.save(model.state_dict(), destination)
    fd = os.open(destination, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tutorial_load(arch: str, path: Path) -> nn.Module:
    """The PyTorch tutorial's load: build the model, load the state_dict into it, eval()."""
    import torch
    from torchvision import models

    model = getattr(models, arch)()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def mmap_load(arch: str, path: Path, hash_first: bool) -> nn.Module:
    """The fastest sound load: meta-device build, mmap'd torch.load, assign; sha256 first if asked.

    The weights are paged in from the (warm) page cache on first use, which is not timed.
    """
    import torch
    from torchvision import models

    if hash_first:
        sha256_file(path)
    with torch.device("meta"):
        model = getattr(models, arch)()
    state = torch.load(path, mmap=True, weights_only=True)
    model.load_state_dict(state, assign=True)
    return model.eval()
