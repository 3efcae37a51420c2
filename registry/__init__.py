"""registry: a model registry for PyTorch.

import registry
reg = registry.Registry()
v = reg.push("model_weights.pth", arch="vgg16")     # -> vgg16@v1
model = registry.load("vgg16@v1")                   # eval mode, weights verified
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from registry.api import Registry
from registry.errors import (
    AmbiguousReferenceError,
    ArchitectureError,
    ArchitectureMismatchError,
    CheckpointError,
    ConfigurationError,
    DatabaseError,
    DeviceError,
    IntegrityError,
    InvalidReferenceError,
    NotFoundError,
    RegistryError,
    SchemaOutOfDateError,
    StorageError,
    UnsafeCheckpointError,
    UntrustedArchError,
)
from registry.records import ModelSummary, ModelVersion

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "AmbiguousReferenceError",
    "ArchitectureError",
    "ArchitectureMismatchError",
    "CheckpointError",
    "ConfigurationError",
    "DatabaseError",
    "DeviceError",
    "IntegrityError",
    "InvalidReferenceError",
    "ModelSummary",
    "ModelVersion",
    "NotFoundError",
    "Registry",
    "RegistryError",
    "SchemaOutOfDateError",
    "StorageError",
    "UnsafeCheckpointError",
    "UntrustedArchError",
    "load",
]


def load(
    ref: str, device: str | None = None, verify: bool = True, trust_arch: bool = False
) -> nn.Module:
    """Load a model from the default Registry (env vars / defaults), in eval mode."""
    return Registry().load(ref, device=device, verify=verify, trust_arch=trust_arch)
