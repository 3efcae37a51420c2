"""registry: a model registry for PyTorch.

import registry
reg = registry.Registry()
v = reg.push("model_weights.pth", arch="vgg16")     # -> vgg16@v1
model = registry.load("vgg16@v1")                   # eval mode, weights verified
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import (
    AccessDeniedError,
    AmbiguousReferenceError,
    ArchitectureError,
    ArchitectureMismatchError,
    BehaviourMismatchError,
    BundleError,
    CheckInputError,
    CheckpointError,
    ConfigurationError,
    DatabaseError,
    DeviceError,
    IntegrityError,
    InvalidReferenceError,
    KeyFileError,
    MainModuleWarning,
    NotFoundError,
    ReadOnlyError,
    RegistryError,
    SchemaOutOfDateError,
    SignatureError,
    StorageError,
    UnsafeCheckpointError,
    UntrustedArchError,
)
from registry.records import (
    AuditEntry,
    CheckResult,
    Diff,
    HookInfo,
    Lineage,
    LineageNode,
    ModelSummary,
    ModelVersion,
    TensorChange,
    TensorInfo,
    TokenInfo,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from registry.api import Registry
    from registry.signatures import KeyFiles

DISTRIBUTION = "torch-registry"  # the name on the package index; `registry` was taken

__all__ = [
    "AccessDeniedError",
    "AmbiguousReferenceError",
    "ArchitectureError",
    "ArchitectureMismatchError",
    "AuditEntry",
    "BehaviourMismatchError",
    "BundleError",
    "CheckInputError",
    "CheckResult",
    "CheckpointError",
    "ConfigurationError",
    "DatabaseError",
    "DeviceError",
    "Diff",
    "HookInfo",
    "IntegrityError",
    "InvalidReferenceError",
    "KeyFileError",
    "Lineage",
    "LineageNode",
    "MainModuleWarning",
    "ModelSummary",
    "ModelVersion",
    "NotFoundError",
    "ReadOnlyError",
    "Registry",
    "RegistryError",
    "SchemaOutOfDateError",
    "SignatureError",
    "StorageError",
    "TensorChange",
    "TensorInfo",
    "TokenInfo",
    "UnsafeCheckpointError",
    "UntrustedArchError",
    "__version__",
    "get",
    "load",
    "pull",
    "push",
]


def __getattr__(name: str) -> Any:
    """`registry.Registry` and `__version__`, on first use: `registry ls` needs neither
    SQLAlchemy's ORM for completion nor importlib.metadata's scan of every installed package."""
    if name == "Registry":
        from registry.api import Registry

        return Registry
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(DISTRIBUTION)
        except PackageNotFoundError:  # imported from a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'registry' has no attribute {name!r}")


def push(
    source: str | os.PathLike[str] | nn.Module | Mapping[str, torch.Tensor],
    arch: str | Callable[..., nn.Module] | None = None,
    name: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    aliases: Sequence[str] = (),
    description: str = "",
    trust_pickle: bool = False,
    key: str | None = None,
    strip_prefix: str | None = None,
    parent: str | None = None,
    check_input: Sequence[int] | str | None = None,
    sign: str | os.PathLike[str] | None = None,
) -> ModelVersion:
    """Push to the default Registry (env vars / defaults); see `Registry.push`."""
    from registry.api import Registry

    with Registry() as reg:
        return reg.push(
            source,
            arch,
            name=name,
            arch_args=arch_args,
            tags=tags,
            aliases=aliases,
            description=description,
            trust_pickle=trust_pickle,
            key=key,
            strip_prefix=strip_prefix,
            parent=parent,
            check_input=check_input,
            sign=sign,
        )


def pull(
    ref: str,
    destination: str | os.PathLike[str] | None = None,
    verify: bool = True,
    format: str = "original",
    trusted_keys: KeyFiles | None = None,
    with_signature: bool = False,
) -> Path:
    """Pull from the default Registry, verified; see `Registry.pull`."""
    from registry.api import Registry

    with Registry() as reg:
        return reg.pull(
            ref,
            destination,
            verify=verify,
            format=format,
            trusted_keys=trusted_keys,
            with_signature=with_signature,
        )


def get(ref: str) -> ModelVersion:
    """A version of the default Registry; see `Registry.get`."""
    from registry.api import Registry

    with Registry() as reg:
        return reg.get(ref)


def load(
    ref: str,
    device: str | None = None,
    verify: bool = True,
    trust_arch: bool = False,
    arch: str | Callable[..., nn.Module] | None = None,
    check: bool = False,
    merge: bool = False,
    trusted_keys: KeyFiles | None = None,
) -> nn.Module:
    """Load a model from the default Registry, in eval mode; see `Registry.load`."""
    from registry.api import Registry

    with Registry() as reg:
        return reg.load(
            ref,
            device=device,
            verify=verify,
            trust_arch=trust_arch,
            arch=arch,
            check=check,
            merge=merge,
            trusted_keys=trusted_keys,
        )
