"""The checkpoint side of a push: read the file or object, fit its weights, describe the version.

`Registry.push` owns the blob writes and the catalog transaction; the steps
here decide what is stored: the arch built without weights, the weights that
fit it (never a file's other entries), and the catalog row that records how
to rebuild the model.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import refs
from registry.errors import ArchitectureError, InvalidReferenceError, NotFoundError
from registry.tables import Fingerprint, Version

if TYPE_CHECKING:
    from torch import nn

    from registry.architectures import Arch
    from registry.checkpoints import Weights
    from registry.stores import BlobWriting

# What an in-memory nn.Module or state_dict is stored as.
IN_MEMORY_EXTENSION = ".pt"


def preflight(path: Path) -> None:
    """Refuse a missing or non-checkpoint file before anything slow starts."""
    from registry import checkpoints

    if not path.exists():
        raise NotFoundError(f"file {str(path)!r}")
    checkpoints.sniff(path)


def build(arch: str | Arch, arch_args: Mapping[str, Any]) -> tuple[Arch, nn.Module]:
    """Resolve the pusher's own arch and build it without weights."""
    from registry import architectures

    resolved = architectures.resolve(arch) if isinstance(arch, str) else arch
    return resolved, resolved.build(arch_args)


def read_weights(
    path: Path,
    writer: BlobWriting,
    arch: Arch,
    model: nn.Module,
    trust_pickle: bool,
    key: str | None,
    strip_prefix: str | None,
) -> Weights:
    """Find the weights in a copied checkpoint that fit the model.

    The copy is read, not the original: what is checked is exactly what is stored.
    """
    from registry import architectures, checkpoints

    candidates = checkpoints.read(writer.temp_path, trust_pickle, key, strip_prefix, shown_as=path)
    weights = architectures.fit(arch.name, model, candidates, path)
    pickled_class = weights.details.get("class")
    built_class = f"{type(model).__module__}:{type(model).__qualname__}"
    if pickled_class and pickled_class != built_class:
        raise ArchitectureError(
            f"{path} holds a pickled {pickled_class}, but arch {arch.name!r} builds a {built_class}"
        )
    return weights


def write_object(source: Any, writer: BlobWriting, arch: Arch, model: nn.Module) -> Weights:
    """Save an nn.Module's or a state_dict's weights into the writer, after checking they fit."""
    from registry import architectures, checkpoints

    found = checkpoints.from_object(source)
    weights = architectures.fit(arch.name, model, [found], f"the {type(source).__name__}")
    checkpoints.save(weights.state_dict, writer)  # a wrapper's prefix is not stored at all
    return replace(weights, details=found.details)


def new_version(
    arch: Arch,
    model: nn.Module,
    arch_args: dict[str, Any],
    weights: Weights,
    description: str,
) -> Version:
    """The catalog row for a push, less its blobs and number."""
    import torch

    from registry import architectures

    details = weights.describe()
    if arch.torchvision:
        import torchvision

        details["torchvision_version"] = torchvision.__version__
    added = {k: v for k, v in arch.neutral_arguments().items() if k not in arch_args}
    if added:  # what the builder was called with besides arch_args
        details["builder_defaults"] = added
    details["module_versions"] = architectures.versions_to_record(model, weights.module_versions)
    return Version(
        format=weights.format,
        arch=arch.name,
        arch_args=arch_args,
        description=description,
        created_at=datetime.now(timezone.utc),
        created_by=_user_at_host(),
        num_params=architectures.count_params(model),
        torch_version=torch.__version__,
        details=details,
    )


def fingerprint(
    arch: Arch, version: Version, weights: Weights, shape: Sequence[int]
) -> Fingerprint:
    """Run the model as a load will rebuild it on the seeded check input; record its output."""
    from registry import architectures, behaviour

    model = architectures.instantiate(
        arch, version.arch_args, weights.state_dict, version.details["module_versions"]
    )
    return Fingerprint(
        input_shape=list(shape),
        outputs=behaviour.run(model, shape),
        environment=behaviour.environment(arch),
    )


def default_name(arch: str) -> str:
    """The name used when --name is not given: `vgg16`, or `tinynet` for `mymodels:TinyNet`."""
    candidate = arch.rsplit(":", 1)[-1].rsplit(".", 1)[-1].lower()
    try:
        return refs.validate_name(candidate)
    except InvalidReferenceError:
        raise InvalidReferenceError(
            candidate, "model name", f"derived from arch {arch!r}; pass --name"
        ) from None


def _user_at_host() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
