"""Resolve `--arch`, build the model on the meta device, and check weights fit it.

An arch is a torchvision model name (`vgg16`, matched case-insensitively
against `torchvision.models.list_models()`, built with `weights=None`) or an
import path `package.module:callable` for the user's own builder.
Building on the meta device allocates no memory and runs no random
initialisation; loading then assigns the checkpoint's tensors directly.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.errors import ArchitectureError, ArchitectureMismatchError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Arch:
    """A resolved architecture: its canonical name and how to build it."""

    name: str
    builder: Callable[..., Any]
    torchvision: bool

    def build(self, arch_args: Mapping[str, Any], device: str = "meta") -> nn.Module:
        """Call the builder under `device`; a builder that fails is an ArchitectureError."""
        import torch
        from torch import nn

        kwargs = {"weights": None, **arch_args} if self.torchvision else dict(arch_args)
        try:
            with torch.device(device):
                model = self.builder(**kwargs)
        except Exception as exc:
            given = ", ".join(f"{k}={v!r}" for k, v in arch_args.items()) or "no arguments"
            raise ArchitectureError(
                f"building arch {self.name!r} with {given} failed: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(model, nn.Module):
            raise ArchitectureError(
                f"arch {self.name!r} returned {type(model).__name__}, not a torch.nn.Module"
            )
        return model


def resolve(arch: str) -> Arch:
    """Find the builder an `--arch` value names."""
    if ":" in arch:
        return _resolve_import_path(arch)
    from torchvision import models

    names = {name.lower(): name for name in models.list_models()}
    name = names.get(arch.lower())
    if name is None:
        close = difflib.get_close_matches(arch.lower(), names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ArchitectureError(
            f"unknown arch {arch!r}: not a torchvision model and not a "
            f"'package.module:callable' path{hint}"
        )
    return Arch(name, models.get_model_builder(name), torchvision=True)


def _resolve_import_path(arch: str) -> Arch:
    module_name, _, attribute = arch.partition(":")
    if not module_name or not attribute:
        raise ArchitectureError(f"arch {arch!r}: expected 'package.module:callable'")
    if "" not in sys.path:  # the user's own models live in the current folder
        sys.path.insert(0, "")
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ArchitectureError(
            f"arch {arch!r}: module {exc.name!r} not found on PYTHONPATH or in the current folder"
        ) from None
    except Exception as exc:
        raise ArchitectureError(
            f"arch {arch!r}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ArchitectureError(f"arch {arch!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ArchitectureError(f"arch {arch!r}: {attribute} is not callable")
    return Arch(arch, target, torchvision=False)


def mismatch(
    arch: str, model: nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> ArchitectureMismatchError | None:
    """What keeps `state_dict` from loading into `model`, or None if it fits."""
    state_dict = with_tied(model, state_dict)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        (k, tuple(state_dict[k].shape), shape)
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != shape
    ]
    if not (missing or unexpected or mis_shaped):
        return None
    return ArchitectureMismatchError(
        arch,
        missing,
        unexpected,
        mis_shaped,
        hint=_head_hint(model, missing, unexpected, mis_shaped),
    )


def _head_hint(
    model: nn.Module,
    missing: list[str],
    unexpected: list[str],
    mis_shaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    """Suggest num_classes when the only difference is the output size of the last layer."""
    if missing or unexpected or not mis_shaped:
        return ""
    parameter_names = [name for name, _ in model.named_parameters()]
    last_layer = parameter_names[-1].rpartition(".")[0] if parameter_names else ""
    sizes = set()
    for key, got, want in mis_shaped:
        same_layer = key.rpartition(".")[0] == last_layer
        if not same_layer or not got or len(got) != len(want) or got[1:] != want[1:]:
            return ""
        sizes.add(got[0])
    if len(sizes) != 1:
        return ""
    return f"pass the builder's arguments with --arg num_classes={sizes.pop()}"


def count_params(model: nn.Module) -> int:
    """Number of parameters, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def instantiate(
    arch: Arch, arch_args: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> nn.Module:
    """Build `arch` holding `state_dict`'s tensors, with no random initialisation to discard."""
    model = arch.build(arch_args, device="meta")
    state_dict = with_tied(model, state_dict)
    groups = tied_groups(model)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # A non-persistent buffer is in no state_dict: build for real, then copy in.
        model = arch.build(arch_args, device="cpu")
        model.load_state_dict(state_dict, strict=True)
        return model
    for names in groups:  # assigning broke the ties: one Parameter again for each group
        shared = model.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner), attribute, shared)
    return model


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Names of parameters that are one and the same tensor (tied weights), by group."""
    by_tensor: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(parameter), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]


def with_tied(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill in tied weights a file left out (safetensors keeps one name per tensor)."""
    filled = dict(state_dict)
    for names in tied_groups(model):
        present = next((n for n in names if n in filled), None)
        if present is not None:
            for name in names:
                filled.setdefault(name, filled[present])
    return filled
