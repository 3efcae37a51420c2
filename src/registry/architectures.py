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
   parameters move to meta as they are registered (accelerate's
   `init_empty_weights` technique), so the builder's own arithmetic and its
   buffers run on the CPU while every initialisation function runs on meta
   parameters and costs nothing. A CPU build that skips initialisation was
   the alternative; it still allocates the whole model, and skipping init
   means patching every init function a builder might call, so it was not
   chosen.
3. A builder that computes with its own parameters (timm's SwinV2 fills a
   buffer from a tensor made on `proj.weight.device`) fails empty too, and
   is built on the CPU, initialisation and all.
4. A builder may compute a non-persistent buffer from a parameter's device
   (timm's Swin builds its attention mask on `norm1.weight.device`), which
   leaves it on meta even in the empty build. Once the weights are in, each
   such module recomputes its own with `init_non_persistent_buffers()`
   (timm's convention, the buffer first materialised as `to_empty()` does);
   a module without that hook gets the model built on the CPU instead, its
   initialisation run and thrown away, so the buffer is what the builder
   computes.

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
import socket
import sys
import threading
import types
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.errors import (
    ArchitectureError,
    ArchitectureMismatchError,
    MainModuleWarning,
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
        """Build the model with its parameters (and, where it can, its buffers) on meta.

        `computed_buffers` also gets the non-persistent buffers computed for
        real, as a model that is going to run needs them.
        """
        _refuse_weights_arguments(self.name, arch_args)
        try:
            model = self._call(arch_args, "meta")
            if not (computed_buffers and _has_meta_non_persistent_buffer(model)):
                return model
        except _MetaUnsupported:
            pass
        try:
            return self._call(arch_args, "empty")
        except _MetaUnsupported:  # it computes with its own parameters (timm's SwinV2)
            return self._call(arch_args, "cpu")

    def build_on_cpu(self, arch_args: Mapping[str, Any]) -> nn.Module:
        """Build the model as its builder does unaided: every tensor real, initialised."""
        _refuse_weights_arguments(self.name, arch_args)
        return self._call(arch_args, "cpu")

    def _call(self, arch_args: Mapping[str, Any], placement: str) -> nn.Module:
        """Call the builder on the meta device, with empty weights, or on the CPU."""
        import torch
        from torch import nn

        where: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()  # "cpu"
        if placement == "meta":
            where = torch.device("meta")
        elif placement == "empty":
            where = _empty_weights()
        try:
            with _offline(), where:
                model = self.builder(**{**self.neutral_arguments(), **arch_args})
        except _NetworkUse as exc:
            raise ArchitectureError(
                f"building arch {self.name!r} tried to reach the network ({exc}); the registry "
                "never downloads weights: leave out arguments that fetch them"
            ) from None
        except Exception as exc:
            if placement != "cpu" and _is_meta_failure(exc):
                raise _MetaUnsupported from None
            given = ", ".join(
                f"{k if k.isidentifier() else repr(k)}={v!r}" for k, v in arch_args.items()
            )  # one line, whatever the keys hold
            given = given or "no arguments"
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


def of(builder: Callable[..., Any], for_load: bool = False) -> Arch:
    """The arch a class or function names, recorded as `module:qualname`.

    A torchvision builder keeps its model name. At push, a builder that no
    other process could import by that name (a lambda, one defined inside a
    function, a bound method) is refused; one defined in `__main__` (a
    notebook, a script) is accepted with a warning, since only a process
    defining it can rebuild the version. At load (`for_load`) nothing is
    recorded, so any builder will do.
    """
    module = getattr(builder, "__module__", None)
    qualname = getattr(builder, "__qualname__", None)
    if hasattr(builder, "state_dict") and not isinstance(builder, type):
        raise ArchitectureError(
            f"arch is a {type(builder).__name__} instance; pass its class, type(model)"
        )
    if not callable(builder) or not isinstance(module, str) or not isinstance(qualname, str):
        raise ArchitectureError(
            f"arch of type {type(builder).__name__}: expected a model name, a "
            "'package.module:callable' path, a class or a function (put arguments in arch_args)"
        )
    torchvision_name = next((n for b, n in _torchvision_names().items() if b is builder), None)
    if torchvision_name is not None:
        return Arch(torchvision_name, builder, torchvision=True)
    name = f"{module}:{qualname}"
    if for_load:
        return Arch(name, builder, torchvision=False)
    if "<lambda>" in qualname:
        raise ArchitectureError(
            f"arch {name!r} is a lambda, which no other process can import by name; "
            "define the builder with def or class at the top level of a module"
        )
    if "<locals>" in qualname:
        raise ArchitectureError(
            f"arch {name!r} is defined inside a function, so no other process can import it; "
            "define it at the top level of a module"
        )
    if module == "__main__":
        warn_if_main(name)
    elif not _importable_as(builder, module, qualname):
        raise ArchitectureError(
            f"arch {name!r} is not what importing {name} gives (a bound method, or a class "
            "made at run time); pass a module-level class or function"
        )
    return Arch(name, builder, torchvision=False)


def warn_if_main(arch: str) -> None:
    """Warn that a builder in `__main__` can only be rebuilt by a process defining it."""
    module, _, qualname = arch.partition(":")
    if module != "__main__":
        return
    warnings.warn(
        f"arch {arch!r} is defined in __main__ (a notebook or script): only a process "
        f"that defines the same {qualname} can rebuild this version; elsewhere load it with "
        f"load(ref, arch={qualname}), or move {qualname} into a module",
        MainModuleWarning,
        stacklevel=_outside_the_package(),
    )


def _importable_as(builder: Any, module: str, qualname: str) -> bool:
    """Whether `module:qualname` leads back to `builder`, as pickle checks a class."""
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target is builder or (target is not None and target == builder)


def _outside_the_package() -> int:
    """The warnings stacklevel of the first caller outside this package (the user's line)."""
    package = os.path.join(os.path.dirname(__file__), "")
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _torchvision_names() -> dict[Callable[..., Any], str]:
    """torchvision's model names by builder (quantized ones included), if torchvision is loaded.

    A builder object from torchvision means torchvision is imported already,
    so this costs no import when it is not.
    """
    if "torchvision.models" not in sys.modules:
        return {}
    from torchvision import models

    return {models.get_model_builder(name): name for name in models.list_models()}


def trusted_by_environment(arch: str) -> bool:
    """Whether a REGISTRY_TRUSTED_ARCHS pattern (`timm:create_model`, `mymodels.*`) names `arch`."""
    patterns = [p.strip() for p in os.environ.get(TRUSTED_ARCHS_ENV, "").split(",") if p.strip()]
    dotted = arch.replace(":", ".")
    return any(fnmatch.fnmatchcase(arch, p) or fnmatch.fnmatchcase(dotted, p) for p in patterns)


def _resolve_import_path(arch: str, trusted: bool) -> Arch:
    module_name, _, attribute = arch.partition(":")
    if not module_name or not attribute:
        raise ArchitectureError(f"arch {arch!r}: expected 'package.module:callable'")
    if not trusted and _import_runs_a_program(module_name):
        raise UntrustedArchError(arch, "module that runs a program when imported")
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
        if isinstance(target, types.ModuleType) and target is not module:
            raise ArchitectureError(
                f"arch {arch!r}: the path reaches into module {target.__name__}; "
                f"name it as '{target.__name__}:...' instead"
            )
        if not hasattr(target, part):
            hint = ""
            if module_name == "__main__":
                hint = (
                    "; it was defined in the notebook or script that pushed it: load with "
                    f"arch={attribute.rsplit('.', 1)[-1]} handing in that builder"
                )
            raise ArchitectureError(
                f"arch {arch!r}: {module_name} has no attribute {attribute!r}{hint}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ArchitectureError(f"arch {arch!r}: {attribute} is not callable")
    if not trusted and not _is_module_class(target):
        raise UntrustedArchError(arch, type(target).__name__)
    return Arch(arch, target, torchvision=False)


def _import_runs_a_program(module_name: str) -> bool:
    """Whether importing `module_name` for the first time could run a program, not define one.

    A `__main__` module (`venv.__main__`, `unittest.__main__`) runs its program
    on import, and the standard library holds no nn.Module to build; neither is
    imported for an arch nobody trusted. What is already imported runs nothing.
    """
    if module_name in sys.modules:
        return False
    parts = module_name.split(".")
    return "__main__" in parts or parts[0] in sys.stdlib_module_names


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


def _meta_non_persistent_buffers(module: nn.Module) -> list[str]:
    """The names of `module`'s own non-persistent buffers that are on the meta device."""
    return [
        name
        for name in module._non_persistent_buffers_set
        if (buffer := module._buffers.get(name)) is not None and buffer.is_meta
    ]


def _has_meta_non_persistent_buffer(model: nn.Module) -> bool:
    return any(_meta_non_persistent_buffers(module) for module in model.modules())


def _recompute_meta_buffers(model: nn.Module) -> bool:
    """Have each module with a buffer left on meta compute it again; whether all could.

    `init_non_persistent_buffers()` is timm's hook for this (it recomputes
    buffers from the module's configuration and its parameters' device).
    The buffers are first made real and empty, as `to_empty()` would, since
    some hooks fill them in place. `reset_parameters()` is never called: it
    would overwrite the weights just loaded.
    """
    import torch

    for module in model.modules():
        names = _meta_non_persistent_buffers(module)
        if not names:
            continue
        hook = getattr(module, "init_non_persistent_buffers", None)
        if not callable(hook):
            return False
        device = next((p.device for p in module.parameters() if not p.is_meta), "cpu")
        for name in names:
            buffer = module._buffers[name]
            assert buffer is not None
            module._buffers[name] = torch.empty_like(buffer, device=device)
        try:
            with torch.no_grad():
                hook()
        except Exception:
            return False
    return not _has_meta_non_persistent_buffer(model)


_building = threading.local()  # what the builder running on this thread may do
_install = threading.Lock()
_patched = False
_hook_installed = False


@contextlib.contextmanager
def _thread_flag(name: str) -> Iterator[None]:
    """Set a flag of this thread's build; nested builds restore what the outer one had."""
    before = getattr(_building, name, False)
    setattr(_building, name, True)
    try:
        yield
    finally:
        setattr(_building, name, before)


@contextlib.contextmanager
def _empty_weights() -> Iterator[None]:
    """Parameters move to meta as this thread's builder registers them.

    Buffers stay: they are small, and builders compute with them. The patch
    of `nn.Module.register_parameter` is installed once for the process and
    acts only on a thread whose flag is set, so no other thread, and no other
    patcher (accelerate's), is ever affected by a build here.
    """
    global _patched
    with _install:
        if not _patched:
            _patch_register_parameter()
            _patched = True
    _building.moved = getattr(_building, "moved", None) or {}
    try:
        with _thread_flag("empty"):
            yield
    finally:
        if not getattr(_building, "empty", False):
            _building.moved = {}


def _patch_register_parameter() -> None:
    from torch import nn

    register_parameter = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: Any) -> None:
        register_parameter(module, name, param)
        if param is None or param.is_meta or not getattr(_building, "empty", False):
            return
        if isinstance(param, nn.parameter.UninitializedParameter):
            return
        moved = _building.moved  # one meta Parameter per original: ties stay tied
        seen = moved.get(id(param))
        if seen is None or seen[0]() is not param:  # a weak reference: an id can be reused
            meta = type(param)(param.to("meta"), requires_grad=param.requires_grad)
            meta.__dict__.update(param.__dict__)
            seen = moved[id(param)] = (weakref.ref(param), meta)
        module._parameters[name] = seen[1]

    nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]


# -- the network safety net -----------------------------------------------------------


class _NetworkUse(Exception):
    """A builder reached for the network."""


_NETWORK_EVENTS = frozenset(
    {"socket.getaddrinfo", "socket.gethostbyname", "socket.connect", "urllib.Request"}
)


def _refuse_network(event: str, args: tuple[Any, ...]) -> None:
    if event not in _NETWORK_EVENTS or not getattr(_building, "offline", False):
        return
    if event == "socket.connect":
        if getattr(args[0], "family", None) not in (socket.AF_INET, socket.AF_INET6):
            return  # a Unix socket (syslog, a multiprocessing manager) is not the network
        raise _NetworkUse(f"connect {args[1]}")
    raise _NetworkUse(f"{event.partition('.')[2]} {args[0]}")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """While this thread builds, anything that reaches for the network raises _NetworkUse.

    An audit hook cannot be removed, so one is installed for the process and
    consults a flag of the building thread. A builder that downloads on
    threads of its own is not caught; the arguments it would need are
    refused before it runs (WEIGHTS_ARGUMENTS).
    """
    global _hook_installed
    with _install:
        if not _hook_installed:
            sys.addaudithook(_refuse_network)
            _hook_installed = True
    with _thread_flag("offline"):
        yield


# -- fitting weights to the model ----------------------------------------------------


def fit(arch: str, model: nn.Module, candidates: Iterable[Weights], origin: Any) -> Weights:
    """The first candidate state_dict that fits the model, else the one under a key prefix.

    A training framework keeps the model under an attribute (`model.`, `net.`):
    the one prefix whose removal makes the keys fit is taken and recorded,
    when the file comes from a framework (Lightning) or every key is under
    it. Otherwise the file holds more than the model, and the mismatch names
    the prefix to pass as `--strip-prefix` rather than drop the rest silently.
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
    for weights, error in zip(candidates, errors, strict=True):
        if "stripped_prefix" in weights.details:
            continue
        prefixes = _prefixes_fitting_names(model, weights.state_dict)
        fitting = [
            p for p in prefixes if mismatch(arch, model, weights.under_prefix(p).state_dict) is None
        ]
        if len(fitting) > 1:
            names = ", ".join(repr(p) for p in fitting)
            raise ArchitectureError(
                f"{origin}: the weights fit arch {arch!r} under several prefixes ({names}); "
                "pick one with --strip-prefix"
            )
        if fitting and _whole_or_framework(weights, fitting[0]):
            return weights.under_prefix(fitting[0])
        if fitting:
            raise _with_hint(
                error,
                f"the weights fit once the prefix {fitting[0]!r} is removed, leaving out the "
                f"other keys: pass --strip-prefix {fitting[0]}",
            )
        if prefixes:
            stripped = mismatch(arch, model, weights.under_prefix(prefixes[0]).state_dict)
            assert stripped is not None
            raise _with_hint(
                stripped,
                f"the key names fit once the prefix {prefixes[0]!r} is removed "
                f"(--strip-prefix {prefixes[0]})",
            )
    raise errors[0]


def _whole_or_framework(weights: Weights, prefix: str) -> bool:
    """Whether taking the keys under `prefix` leaves out nothing but a framework's own."""
    return "framework" in weights.details or all(k.startswith(prefix) for k in weights.state_dict)


def _with_hint(error: ArchitectureMismatchError, hint: str) -> ArchitectureMismatchError:
    """The same mismatch, with `hint` said before the one it had."""
    hints = "; ".join(part for part in (hint, error.hint) if part)
    return ArchitectureMismatchError(
        error.arch, error.missing, error.unexpected, error.mis_shaped, hint=hints
    )


def _prefixes_fitting_names(model: nn.Module, state_dict: Mapping[str, Any]) -> list[str]:
    """Dotted key prefixes whose removal leaves exactly the model's key names.

    A prefix is only considered when enough keys under it end in one of the
    model's names, so the search stays linear in the number of keys.
    """
    expected = set(model.state_dict())
    groups = [set(names) for names in tied_groups(model)]
    needed = len(expected) - sum(len(group) - 1 for group in groups)
    hits: dict[str, int] = {}
    for key in state_dict:
        for i, char in enumerate(key):
            if char == "." and key[i + 1 :] in expected:
                hits[key[: i + 1]] = hits.get(key[: i + 1], 0) + 1
    found = []
    for prefix in sorted(p for p, count in hits.items() if count >= needed):
        names = {k[len(prefix) :] for k in state_dict if k.startswith(prefix)}
        for group in groups:  # a file may keep one name of tied weights
            if names & group:
                names |= group
        if names == expected:
            found.append(prefix)
    return found


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
    """Each submodule's `_version`, by every name it has, as `_metadata` would give it."""
    return {
        name: getattr(module, "_version", 1)
        for name, module in model.named_modules(remove_duplicate=False)
    }


def versions_to_record(model: nn.Module, found: Mapping[str, int] | None) -> dict[str, int]:
    """The module versions a version keeps: those above 1 (BatchNorm's 2, MNASNet's 2).

    They come from the checkpoint's `_metadata` where it has them, else from
    the model as built at push (safetensors carries none). Loading gives every
    other module version 1, so a library that later raises a class's
    `_version` still sees the version the weights were saved with.
    """
    built = module_versions(model)
    versions = {**built, **{k: v for k, v in (found or {}).items() if k in built}}
    return {name: version for name, version in versions.items() if version != 1}


def _with_metadata(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], recorded: Mapping[str, int] | None
) -> OrderedDict[str, torch.Tensor]:
    """`state_dict` carrying the `_metadata` torch.load would have kept (MNASNet needs it).

    A version recorded before module versions were (`recorded` None) gets the
    built model's own.
    """
    built = module_versions(model)
    versions = built if recorded is None else {name: recorded.get(name, 1) for name in built}
    with_versions = OrderedDict(state_dict)
    with_versions._metadata = {  # type: ignore[attr-defined]  # read by load_state_dict
        name: {"version": version} for name, version in versions.items()
    }
    return with_versions


def instantiate(
    arch: Arch,
    arch_args: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    recorded_versions: Mapping[str, int] | None = None,
) -> nn.Module:
    """Build `arch` holding `state_dict`'s tensors, with no random initialisation to discard.

    Only a builder that computes a buffer from its parameters' device, in a
    module with no hook to compute it again, is built on the CPU and pays
    for its initialisation.
    """
    model = _load_into(
        arch, arch.build(arch_args, computed_buffers=True), state_dict, recorded_versions
    )
    if _has_meta_non_persistent_buffer(model) and not _recompute_meta_buffers(model):
        model = _load_into(arch, arch.build_on_cpu(arch_args), state_dict, recorded_versions)
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ArchitectureError(
            f"arch {arch.name!r}: {', '.join(left[:5])} came neither from the checkpoint nor "
            "from the builder"
        )
    return model


def _load_into(
    arch: Arch,
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    recorded_versions: Mapping[str, int] | None,
) -> nn.Module:
    """Put `state_dict`'s tensors into `model` in place of its own, ties kept."""
    error = mismatch(arch.name, model, state_dict)
    if error is not None:  # a builder handed in at load, or code changed since the push
        raise error
    state_dict = with_tied(model, state_dict)
    groups = tied_groups(model)
    model.load_state_dict(
        _with_metadata(model, state_dict, recorded_versions), strict=True, assign=True
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
