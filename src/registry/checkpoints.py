"""Read checkpoint files. The only module that calls `torch.load`.

A file's kind is told from its first bytes, never from its extension:

| kind         | how it is recognised                         | read with                        |
|--------------|----------------------------------------------|----------------------------------|
| torch zip    | a zip holding `<dir>/data.pkl`               | torch.load(weights_only, mmap)   |
| torch legacy | the pickled magic number of old torch.save   | torch.load(weights_only)         |
| safetensors  | a little-endian header length, then `{`      | safetensors (memory-mapped)      |
| TorchScript  | a zip holding `<dir>/code/`                  | refused                          |

Unpickling runs code, so every read here is `weights_only=True`: a pickle
naming anything but tensors and plain containers is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import CheckpointError, UnsafeCheckpointError

if TYPE_CHECKING:
    import torch

TORCH_ZIP = "torch-zip"
TORCH_LEGACY = "torch-legacy"
SAFETENSORS = "safetensors"

# How the pickle of a legacy (non-zip) torch.save begins: protocol 2, then its magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
# Where training checkpoints usually keep the model's weights.
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "net", "network", "ema", "module")
PREFIXES = ("module.", "_orig_mod.")
# The entry by which a PyTorch Lightning checkpoint tells its writer's version.
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"


@dataclass(frozen=True)
class Weights:
    """A state_dict found in a checkpoint, and where in the file it was."""

    state_dict: dict[str, torch.Tensor]
    format: str  # "state_dict", "checkpoint" or "safetensors"
    details: dict[str, Any] = field(default_factory=dict)
    # Module versions from the state_dict's `_metadata` (prefix -> version); None if it had none.
    module_versions: dict[str, int] | None = None

    def under_prefix(self, prefix: str) -> Weights:
        """The weights of the submodule under `prefix` (`module.`, `model.`), prefix removed."""
        versions = None
        if self.module_versions is not None:
            inner = prefix[:-1]
            versions = {
                "" if k == inner else k[len(prefix) :]: v
                for k, v in self.module_versions.items()
                if k == inner or k.startswith(prefix)
            }
        details = {**self.details, "stripped_prefix": prefix}
        return Weights(_strip(self.state_dict, prefix), self.format, details, versions)

    def describe(self) -> dict[str, Any]:
        """What `show` reports: where the weights were, their count and a dtype summary."""
        dtypes: dict[str, int] = {}
        for tensor in self.state_dict.values():
            dtype = str(tensor.dtype).removeprefix("torch.")
            dtypes[dtype] = dtypes.get(dtype, 0) + 1
        return {**self.details, "num_tensors": len(self.state_dict), "dtypes": dtypes}


def sniff(path: Path) -> str:
    """Tell what kind of file `path` is from its content."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = f.seek(0, 2)
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    if not head:
        raise CheckpointError(f"{path} is empty")
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path)
    if head.startswith(_LEGACY_MAGIC):
        return TORCH_LEGACY
    if len(head) >= 9 and head[8:9] == b"{":
        (header_size,) = struct.unpack("<Q", head[:8])
        if header_size <= size - 8:
            return SAFETENSORS
        raise CheckpointError(
            f"{path} looks like safetensors but its header claims {header_size:,} bytes "
            f"and the file holds {size:,}"
        )
    if head[:1] == b"\x80":
        found = _first_global(path)
        imports = f"; it imports {found}" if found else ""
        raise UnsafeCheckpointError(
            f"{path} is a raw pickle (or a legacy torch.save with pickle_protocol > 2), which "
            f"cannot be read without running code{imports}; save model.state_dict() with "
            "torch.save instead"
        )
    raise CheckpointError(
        f"{path} is not a checkpoint: expected a torch.save file or .safetensors, "
        f"found bytes {head[:8].hex()}"
    )


def _first_global(path: Path, max_ops: int = 100_000) -> str | None:
    """The first module.name a pickle imports, read by parsing it (nothing runs)."""
    import pickletools

    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for count, (opcode, arg, _) in enumerate(pickletools.genops(f)):
                if opcode.name == "GLOBAL":
                    return str(arg).replace(" ", ".")
                if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return f"{strings[-2]}.{strings[-1]}"
                if isinstance(arg, str):
                    strings.append(arg)
                if count > max_ops:
                    break
    except Exception:
        return None
    return None


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path} is a damaged zip archive: {exc}") from None
    names = [entry.filename for entry in entries]
    archive_size = path.stat().st_size
    if any(entry.file_size > archive_size for entry in entries):
        # torch.save stores entries uncompressed; one that inflates past the
        # file's own size is a zip bomb or a lie.
        raise CheckpointError(
            f"{path} is a zip archive whose entries claim more bytes than the file holds"
        )
    if any("/code/" in name for name in names) or any(n.endswith("/constants.pkl") for n in names):
        raise CheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save); push the model's "
            "state_dict saved with torch.save instead"
        )
    if not any(name.endswith("data.pkl") for name in names):
        raise CheckpointError(f"{path} is a zip archive but not a torch.save checkpoint")
    return TORCH_ZIP


def read(
    path: Path,
    trust_pickle: bool = False,
    key: str | None = None,
    strip_prefix: str | None = None,
    shown_as: Path | None = None,
) -> list[Weights]:
    """Every state_dict `path` could hold, most likely first; the caller picks one that fits.

    `trust_pickle` unpickles whatever the file holds (a whole `torch.save(model)`);
    `key` names the entry of a training checkpoint to take; `strip_prefix` takes
    only the keys under that prefix (`model.`), without it; errors name the file
    `shown_as` (the user's file, when `path` is the registry's copy of it).
    """
    try:
        found = list(_read(path, trust_pickle, key))
        if strip_prefix is not None:
            return [_explicit_prefix(found, strip_prefix, path)]
        return [p for weights in found for p in _with_prefixes(weights)]
    except CheckpointError as exc:
        if shown_as is None:
            raise
        raise type(exc)(str(exc).replace(str(path), str(shown_as))) from None


def _explicit_prefix(found: list[Weights], prefix: str, path: Path) -> Weights:
    """The first state_dict with keys under `prefix`, taken from under it."""
    prefix = prefix if prefix.endswith(".") else prefix + "."
    for weights in found:
        if any(k.startswith(prefix) for k in weights.state_dict):
            return weights.under_prefix(prefix)
    first_parts = sorted({k.split(".", 1)[0] + "." for w in found for k in w.state_dict})
    shown = ", ".join(first_parts[:8]) + (", ..." if len(first_parts) > 8 else "")
    raise CheckpointError(f"{path} has no keys under prefix {prefix!r}; its keys start {shown}")


def _read(path: Path, trust_pickle: bool, key: str | None) -> Iterator[Weights]:
    kind = sniff(path)
    if kind == SAFETENSORS:
        tensors = _read_safetensors(path)
        if not tensors:
            raise CheckpointError(f"{path} holds no tensors")
        yield Weights(tensors, "safetensors")
        return
    details: dict[str, Any] = {"serialization": "zip" if kind == TORCH_ZIP else "legacy"}
    obj = _torch_load(path, mmap=kind == TORCH_ZIP, trust_pickle=trust_pickle)
    if trust_pickle:
        obj, details = _unwrap_module(obj, details)
    candidates = _candidates(obj, details, key, path)
    if not candidates:
        if isinstance(obj, Mapping):
            keys = ", ".join(map(str, list(obj)[:8]))
            found = f"a dict with keys {keys}" if obj else "an empty dict"
        else:
            kind_of = type(obj)
            module = "" if kind_of.__module__ == "builtins" else f"{kind_of.__module__}."
            found = f"a {module}{kind_of.__qualname__}"
        raise CheckpointError(f"{path} holds no state_dict: found {found}")
    yield from candidates


def _candidates(obj: Any, details: dict[str, Any], key: str | None, path: Path) -> list[Weights]:
    """The state_dicts in a loaded object: itself, or entries of a training checkpoint."""
    format = "pickle" if "class" in details else "state_dict"
    if key is None and _is_state_dict(obj):
        return [Weights(dict(obj), format, details, _module_versions(obj))]
    if not isinstance(obj, Mapping):
        return []
    if LIGHTNING_VERSION_KEY in obj:
        details = {**details, "framework": "lightning"}
        details["framework_version"] = str(obj[LIGHTNING_VERSION_KEY])
    if key is not None:
        if not _is_state_dict(obj.get(key)):
            keys = ", ".join(map(str, obj))
            raise CheckpointError(f"{path} has no state_dict under key {key!r}; its keys: {keys}")
        nested = [key]
    else:
        nested = [k for k in STATE_DICT_KEYS if _is_state_dict(obj.get(k))]
        nested += [k for k, v in obj.items() if k not in nested and _is_state_dict(v)]
    format = "pickle" if "class" in details else "checkpoint"
    return [
        Weights(dict(obj[k]), format, {**details, "key": k}, _module_versions(obj[k]))
        for k in nested
    ]


def _module_versions(state_dict: Any) -> dict[str, int] | None:
    """The module versions torch.save kept in a state_dict's `_metadata`, if it kept any."""
    metadata = getattr(state_dict, "_metadata", None)
    if not isinstance(metadata, Mapping):
        return None
    return {
        str(k): v["version"]
        for k, v in metadata.items()
        if isinstance(v, Mapping) and isinstance(v.get("version"), int)
    }


def _unwrap_module(obj: Any, details: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A trusted pickle of a whole model, alone or in a dict: take its state_dict."""
    from torch import nn

    def unwrap(module: nn.Module) -> nn.Module:
        # DataParallel/DDP keep the model in .module; torch.compile in ._orig_mod.
        while True:
            inner = getattr(module, "_orig_mod", None) or getattr(module, "module", None)
            if not isinstance(inner, nn.Module):
                return module
            module = inner

    def describe(module: nn.Module) -> str:
        return f"{type(module).__module__}:{type(module).__qualname__}"

    if isinstance(obj, nn.Module):
        model = unwrap(obj)
        return model.state_dict(), {**details, "class": describe(model)}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(v, nn.Module):
                model = unwrap(v)
                return {**obj, k: model.state_dict()}, {**details, "class": describe(model)}
    return obj, {**details, "class": type(obj).__qualname__}


def from_object(source: Any) -> Weights:
    """The weights of an nn.Module or a state_dict handed to push in memory."""
    from torch import nn

    if isinstance(source, nn.Module):
        state: Any = source.state_dict()
    elif isinstance(source, Mapping):
        state = source
    else:
        raise CheckpointError(
            f"cannot push a {type(source).__name__}: give a file path, an nn.Module or a state_dict"
        )
    return Weights(dict(state), "state_dict", {"serialization": "zip"}, _module_versions(state))


def load(path: Path, format: str, details: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Read back the state_dict a version recorded, memory-mapped where the format allows."""
    if format == "safetensors":
        state = _read_safetensors(path)
    else:
        state = _torch_load(path, mmap=details.get("serialization", "zip") == "zip")
        if "key" in details:
            state = state[details["key"]]
    prefix = details.get("stripped_prefix")
    return _strip(state, prefix) if prefix else dict(state)


@contextlib.contextmanager
def tensor_reader(
    path: Path, format: str, details: Mapping[str, Any]
) -> Iterator[Callable[[str], torch.Tensor]]:
    """A function reading one recorded tensor at a time: `diff` holds one, not the model.

    safetensors reads just that tensor's bytes; a torch zip is memory-mapped,
    so only the pages of the tensors asked for are read.
    """
    prefix = details.get("stripped_prefix") or ""
    if format != "safetensors":
        state = load(path, format, details)
        yield state.__getitem__
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            yield lambda name: file.get_tensor(prefix + name)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None


def save(state_dict: Mapping[str, torch.Tensor], sink: Any) -> None:
    """Write a state_dict in torch.save's zip format to a file-like `sink`."""
    import torch

    torch.save(dict(state_dict), sink)


def save_safetensors(state_dict: Mapping[str, torch.Tensor], sink: Any) -> None:
    """Write a state_dict as safetensors to a file-like `sink`.

    safetensors refuses tensors that share memory (tied weights), so a tensor
    whose storage was already written is saved as a copy.
    """
    from safetensors.torch import save

    seen: set[int] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        storage = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        shared = storage in seen
        seen.add(storage)
        tensors[name] = tensor.clone() if shared else tensor.contiguous()
    sink.write(save(tensors))


def _torch_load(path: Path, mmap: bool, trust_pickle: bool = False) -> Any:
    import pickle

    import torch

    try:
        with _namespace_allowed():
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if _pickle_is_intact(path, zipped=mmap):
            raise _unsafe(path, str(exc)) from None
        raise _damaged(path, exc) from None
    except Exception as exc:  # a damaged file fails in many ways inside torch
        if trust_pickle and isinstance(exc, (AttributeError, ImportError)):
            raise CheckpointError(
                f"{path}: unpickling needs code that is not importable here: {exc}"
            ) from None
        raise _damaged(path, exc) from None


def _namespace_allowed() -> contextlib.AbstractContextManager[object]:
    """Let weights_only loads rebuild an argparse.Namespace, which only sets attributes.

    timm's train.py saves its options as one beside the weights (and timm's own
    loader allows it the same way). torch's allow-list is process-wide: one
    the caller already allowed is left as it is.
    """
    import torch

    if argparse.Namespace in torch.serialization.get_safe_globals():
        return contextlib.nullcontext()
    return torch.serialization.safe_globals([argparse.Namespace])


def _pickle_is_intact(path: Path, zipped: bool) -> bool:
    """Whether the checkpoint's pickles parse to their end (parsing runs nothing).

    Tells a refused global in a sound file (unsafe) from a truncated one (damaged).
    """
    import pickletools

    try:
        if zipped:
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                for _ in pickletools.genops(archive.read(name)):
                    pass
        else:
            with open(path, "rb") as f:
                for _ in range(4):  # magic number, protocol, sys info, then the object
                    for _ in pickletools.genops(f):
                        pass
    except Exception:
        return False
    return True


def _damaged(path: Path, exc: Exception) -> CheckpointError:
    """A one-line report of a file torch could not read, with torch's own reason in it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    # torch's weights-only errors lead with advice; the cause follows this marker.
    text = text.split("WeightsUnpickler error:", 1)[-1].strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    reason = "".join(c if c.isprintable() else "?" for c in reason)
    reason = re.sub(r"\?{4,}", "...", reason)[:200]
    return CheckpointError(f"{path} is damaged or truncated: {reason}")


def _unsafe(path: Path, message: str) -> UnsafeCheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"global ([\w.]+)", message)
    what = f"a pickled {found.group(1)}" if found else "pickled objects"
    return UnsafeCheckpointError(
        f"{path} holds {what}; unpickling it would run code, so it was not read. "
        "Save model.state_dict() with torch.save, or pass --trust-pickle for a file you trust"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None


def _is_state_dict(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _with_prefixes(weights: Weights) -> Iterator[Weights]:
    """The weights as found, then with a DataParallel/torch.compile prefix stripped."""
    yield weights
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in weights.state_dict):
            yield weights.under_prefix(prefix)


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under `prefix`, without it; the others are left out."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
