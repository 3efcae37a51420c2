"""Resolve `--arch`, build the model without weights, check weights fit it, load them in.

An arch is a torchvision model name (`vgg16`, matched case-insensitively
against `torchvision.models.list_models()`) or an import path
`package.module:callable` for the user's own builder.

Building allocates no weights and runs no random initialisation that loading
would throw away:

1. On the meta device (`with torch.device("meta")`): nothing is allocated.
2. When the builder cannot run there (RegNet computes its block widths with
   torch ops and `.tolist()`), or a load needs its non-persistent buffers
   (which no state_dict carries), it is built "empty" instead: only
   parameters and persistent buffers move to meta as they are registered
   (accelerate's `init_empty_weights` technique), so the builder's own
   arithmetic and its non-persistent buffers run on the CPU while every
   initialisation function runs on meta tensors and costs nothing. A CPU
   build that skips initialisation was the alternative; it still allocates
   the whole model, and skipping init means patching every init function a
   builder might call, so it was not chosen.

Builders never fetch weights: torchvision's get `weights=None` (and
`weights_backbone=None` where they take it), any argument that would make a
builder download or read weights is refused, and a build that reaches for
the network anyway fails with one line.

An arch read back from the catalog is somebody else's data: a builder that is
not an `nn.Module` subclass is called only when the loading side trusts it
(`trust=True`, or a `REGISTRY_TRUSTED_ARCHS` pattern).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib
import inspect
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.errors import (
    ArchitectureError,
    ArchitectureMismatchError,
    UntrustedArchError,
    first_line,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from registry.checkpoints import Weights

# Builder arguments that make a builder download or read weights (torchvision, timm, ...).
WEIGHTS_ARGUMENTS = (
    "weights",
    "weights_backbone",
    "pretrained",
    "pretrained_backbone",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
)
TRUSTED_ARCHS_ENV = "REGISTRY_TRUSTED_ARCHS"


@dataclass(frozen=True)
class Arch:
    """A resolved architecture: its canonical name and how to build it."""

    name: str
    builder: Callable[..., Any]
    torchvision: bool

    def neutral_arguments(self) -> dict[str, None]:
        """The arguments that keep a torchvision builder from fetching weights."""
        if not self.torchvision:
            return {}
        accepted = inspect.signature(self.builder).parameters
        return {name: None for name in ("weights", "weights_backbone") if name in accepted}

    def build(self, arch_args: Mapping[str, Any], computed_buffers: bool = False) -> nn.Module:
        """Build the model with its parameters and persistent buffers on the meta device.

        `computed_buffers` also gets the non-persistent buffers computed for
        real, as a model that is going to run needs them.
        """
        _refuse_weights_arguments(self.name, arch_args)
        try:
            model = self._call(arch_args, on_meta=True)
            if computed_buffers and _has_meta_non_persistent_buffer(model):
                model = self._call(arch_args, on_meta=False)
        except _MetaUnsupported:
            model = self._call(arch_args, on_meta=False)
        return model

    def _call(self, arch_args: Mapping[str, Any], on_meta: bool) -> nn.Module:
        """Call the builder on the meta device, or else with empty weights."""
        import torch
        from torch import nn

        placement = torch.device("meta") if on_meta else _empty_weights()
        try:
            with _offline(), placement:
                model = self.builder(**{**self.neutral_arguments(), **arch_args})
        except _NetworkUse as exc:
            raise ArchitectureError(
                f"building arch {self.name!r} tried to reach the network ({exc}); the registry "
                "never downloads weights: leave out arguments that fetch them"
            ) from None
        except Exception as exc:
            if on_meta and _is_meta_failure(exc):
                raise _MetaUnsupported from None
            given = ", ".join(f"{k}={v!r}" for k, v in arch_args.items()) or "no arguments"
            raise ArchitectureError(
                f"building arch {self.name!r} with {given} failed: "
                f"{type(exc).__name__}: {first_line(exc)}"
            ) from None
        if not isinstance(model, nn.Module):
            raise ArchitectureError(
                f"arch {self.name!r} returned {type(model).__name__}, not a torch.nn.Module"
            )
        return model


def resolve(arch: str, trust: bool = True) -> Arch:
    """Find the builder an `--arch` value names.

    With `trust=False` (an arch read from the catalog), a callable that is not
    an `nn.Module` subclass is refused, before anything calls it, unless
    REGISTRY_TRUSTED_ARCHS names it.
    """
    if ":" in arch:
        return _resolve_import_path(arch, trust or trusted_by_environment(arch))
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


def trusted_by_environment(arch: str) -> bool:
    """Whether a REGISTRY_TRUSTED_ARCHS pattern (`timm:create_model`, `mymodels.*`) names `arch`."""
    patterns = [p.strip() for p in os.environ.get(TRUSTED_ARCHS_ENV, "").split(",") if p.strip()]
    dotted = arch.replace(":", ".")
    return any(fnmatch.fnmatchcase(arch, p) or fnmatch.fnmatchcase(dotted, p) for p in patterns)


def _resolve_import_path(arch: str, trusted: bool) -> Arch:
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
    if not trusted and not _is_module_class(target):
        raise UntrustedArchError(arch, type(target).__name__)
    return Arch(arch, target, torchvision=False)


def _is_module_class(target: Any) -> bool:
    from torch import nn

    return isinstance(target, type) and issubclass(target, nn.Module)


def _refuse_weights_arguments(arch: str, arch_args: Mapping[str, Any]) -> None:
    for name in WEIGHTS_ARGUMENTS:
        value = arch_args.get(name)
        if value not in (None, False, "", {}):
            raise ArchitectureError(
                f"arch {arch!r}: argument {name}={value!r} would make the builder download or "
                "read weights; the registry loads the checkpoint's own, so leave it out"
            )


# -- placement: where a builder's tensors go ------------------------------------------


class _MetaUnsupported(Exception):
    """The builder computes with tensors, which the meta device cannot give values for."""


def _is_meta_failure(exc: Exception) -> bool:
    text = str(exc).lower()
    return "meta" in text and isinstance(exc, (NotImplementedError, RuntimeError, ValueError))


def _has_meta_non_persistent_buffer(model: nn.Module) -> bool:
    return any(
        module._buffers[name] is not None and module._buffers[name].is_meta
        for module in model.modules()
        for name in module._non_persistent_buffers_set
    )


_EMPTY_BUILD = threading.Lock()  # the patch below is process-wide: one empty build at a time


@contextlib.contextmanager
def _empty_weights() -> Iterator[None]:
    """Parameters and persistent buffers move to meta as this thread's builder registers them."""
    from torch import nn

    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer
    builder_thread = threading.get_ident()

    def parameter_on_meta(module: nn.Module, name: str, param: Any) -> None:
        register_parameter(module, name, param)
        if param is not None and not param.is_meta and threading.get_ident() == builder_thread:
            moved = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            module._parameters[name] = moved

    def buffer_on_meta(module: nn.Module, name: str, tensor: Any, persistent: bool = True) -> None:
        register_buffer(module, name, tensor, persistent)
        if persistent and tensor is not None and threading.get_ident() == builder_thread:
            module._buffers[name] = tensor.to("meta")

    with _EMPTY_BUILD:
        nn.Module.register_parameter = parameter_on_meta  # type: ignore[method-assign]
        nn.Module.register_buffer = buffer_on_meta  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
            nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


# -- the network safety net -----------------------------------------------------------


class _NetworkUse(Exception):
    """A builder reached for the network."""


_NETWORK_EVENTS = frozenset(
    {"socket.getaddrinfo", "socket.gethostbyname", "socket.connect", "urllib.Request"}
)
_building = threading.local()
_hook_installed = False


def _refuse_network(event: str, args: tuple[Any, ...]) -> None:
    if event in _NETWORK_EVENTS and getattr(_building, "offline", False):
        target = args[1] if event == "socket.connect" else args[0]
        raise _NetworkUse(f"{event.partition('.')[2]} {target}")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """While this thread builds, anything that reaches for the network raises _NetworkUse.

    An audit hook cannot be removed, so one is installed for the process and
    consults a flag of the building thread.
    """
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_refuse_network)
        _hook_installed = True
    _building.offline = True
    try:
        yield
    finally:
        _building.offline = False


# -- fitting weights to the model ----------------------------------------------------


def fit(arch: str, model: nn.Module, candidates: Iterable[Weights], origin: Any) -> Weights:
    """The first candidate state_dict that fits the model, else the one under a key prefix.

    A checkpoint written by a training framework keeps the model under an
    attribute (`model.`, `net.`): the one prefix whose removal makes the keys
    fit is taken, and recorded. Else the first candidate's mismatch is raised,
    naming a prefix that would make the key names fit.
    """
    candidates = list(candidates)
    if not candidates:
        raise ArchitectureError(f"{origin} holds no weights")
    errors = []
    for weights in candidates:
        error = mismatch(arch, model, weights.state_dict)
        if error is None:
            return weights
        errors.append(error)
    for weights in candidates:
        if "stripped_prefix" in weights.details:
            continue
        prefixes = _prefixes_fitting_names(model, weights.state_dict)
        fitting = [p for p in prefixes if mismatch(arch, model, _under(weights, p)) is None]
        if len(fitting) == 1:
            return weights.under_prefix(fitting[0])
        if len(fitting) > 1:
            names = ", ".join(repr(p) for p in fitting)
            raise ArchitectureError(
                f"{origin}: the weights fit arch {arch!r} under several prefixes ({names}); "
                "pick one with --strip-prefix"
            )
        if prefixes:
            stripped = mismatch(arch, model, _under(weights, prefixes[0]))
            assert stripped is not None
            raise ArchitectureMismatchError(
                arch,
                stripped.missing,
                stripped.unexpected,
                stripped.mis_shaped,
                hint="; ".join(
                    part
                    for part in (
                        f"the key names fit once the prefix {prefixes[0]!r} is removed "
                        f"(--strip-prefix {prefixes[0]})",
                        stripped.hint,
                    )
                    if part
                ),
            )
    raise errors[0]


def _prefixes_fitting_names(model: nn.Module, state_dict: Mapping[str, Any]) -> list[str]:
    """Dotted key prefixes whose removal leaves exactly the model's key names."""
    expected = set(model.state_dict())
    groups = [set(names) for names in tied_groups(model)]
    prefixes = set()
    for key in state_dict:
        parts = key.split(".")
        prefixes.update(".".join(parts[:i]) + "." for i in range(1, len(parts)))
    found = []
    for prefix in sorted(prefixes):
        names = {k[len(prefix) :] for k in state_dict if k.startswith(prefix)}
        for group in groups:  # a file may keep one name of tied weights
            if names & group:
                names |= group
        if names == expected:
            found.append(prefix)
    return found


def _under(weights: Weights, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.state_dict.items() if k.startswith(prefix)}


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


# -- module versions ---------------------------------------------------------------------


def module_versions(model: nn.Module) -> dict[str, int]:
    """Each submodule's `_version`, which `_load_from_state_dict` reads from `_metadata`."""
    return {name: getattr(module, "_version", 1) for name, module in model.named_modules()}


def versions_to_record(model: nn.Module, found: Mapping[str, int] | None) -> dict[str, int]:
    """The module versions a checkpoint's `_metadata` gives that differ from the built model's.

    Loading gives every module the built model's version except these, so a
    format that carries no `_metadata` (safetensors) still loads, and a file
    saved by older code keeps the version it was saved with.
    """
    built = module_versions(model)
    return {k: v for k, v in (found or {}).items() if k in built and v != built[k]}


def _with_metadata(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], recorded: Mapping[str, int]
) -> OrderedDict[str, torch.Tensor]:
    """`state_dict` carrying the `_metadata` torch.load would have kept (MNASNet needs it)."""
    with_versions: Any = OrderedDict(state_dict)
    with_versions._metadata = {
        name: {"version": recorded.get(name, version)}
        for name, version in module_versions(model).items()
    }
    return with_versions


def instantiate(
    arch: Arch,
    arch_args: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    recorded_versions: Mapping[str, int] | None = None,
) -> nn.Module:
    """Build `arch` holding `state_dict`'s tensors, with no random initialisation to discard."""
    model = arch.build(arch_args, computed_buffers=True)
    state_dict = with_tied(model, state_dict)
    groups = tied_groups(model)
    model.load_state_dict(
        _with_metadata(model, state_dict, recorded_versions or {}), strict=True, assign=True
    )
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ArchitectureError(
            f"arch {arch.name!r}: {', '.join(left[:5])} came neither from the checkpoint nor "
            "from the builder"
        )
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
