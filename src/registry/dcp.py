"""Read a torch.distributed.checkpoint (DCP) folder without running code from it.

DCP's own reader unpickles `.metadata` with the full pickle machinery and
loads every non-tensor item with `torch.load(weights_only=False)`. Here
`.metadata` is read by an unpickler that builds only DCP's metadata classes,
torch sizes, dtypes and paths, its storage entries are checked to name files
of the folder, and only tensor items are requested from DCP, whose reader
loads each slice with `torch.load(weights_only=True)`.

Every function takes `files`: the folder's relative paths (`.metadata`,
`__0_0.distcp`, ...) mapped to local files holding their bytes, whatever
those files are named (a store's blobs are named by their digest).
"""

from __future__ import annotations

import math
import pathlib
import pickle
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from registry.errors import CheckpointError, UnsafeCheckpointError, first_line

if TYPE_CHECKING:
    import torch
    from torch.distributed.checkpoint.metadata import Metadata

METADATA = ".metadata"
MAX_METADATA_BYTES = 256 << 20  # more than the metadata of any model's checkpoint
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
# The globals a DCP `.metadata` pickle names (gathered from real files, torch 2.x).
ALLOWED_GLOBALS = frozenset(
    {
        (_DCP_METADATA, "Metadata"),
        (_DCP_METADATA, "TensorStorageMetadata"),
        (_DCP_METADATA, "BytesStorageMetadata"),
        (_DCP_METADATA, "ChunkStorageMetadata"),
        (_DCP_METADATA, "TensorProperties"),
        (_DCP_METADATA, "MetadataIndex"),
        (_DCP_METADATA, "StorageMeta"),
        (_DCP_METADATA, "_MEM_FORMAT_ENCODING"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
    }
)
# `StorageMeta.checkpoint_id` is the path it was saved to; it is rebuilt as a pure path.
_PATHS = {"PosixPath": pathlib.PurePosixPath, "WindowsPath": pathlib.PureWindowsPath}
_PATHS.update({"PurePosixPath": pathlib.PurePosixPath, "PureWindowsPath": pathlib.PureWindowsPath})
# Stream transforms DCP's reader knows how to undo (`_StorageInfo.transform_descriptors`).
KNOWN_TRANSFORMS = frozenset({"stream.zstd/1"})
# Top-level entries of an app state that hold training state, not the model.
TRAINING_STATE = frozenset(
    {
        "optim",
        "optimizer",
        "optimizers",
        "optim_state",
        "optimizer_state",
        "lr_scheduler",
        "lr_schedulers",
        "scheduler",
        "schedulers",
        "dataloader",
        "data_loader",
        "train_state",
        "trainer_state",
        "scaler",
        "grad_scaler",
        "rng",
        "rng_state",
        "rng_states",
        "step",
        "epoch",
    }
)
_SINGLE_PROCESS_WARNING = "torch.distributed is disabled, unavailable or uninitialized"


def metadata(files: Mapping[str, Path]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor of the checkpoint (flattened DCP key -> shape, dtype), from its `.metadata`."""
    md = _read_metadata(files)
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    return {
        key: (tuple(entry.size), entry.properties.dtype)
        for key, entry in md.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }


def model_prefix(names: Iterable[str]) -> str:
    """The prefix of the model's tensors among a checkpoint's tensor names; "" for the whole state.

    That is `model.` where the checkpoint is an app state `{"model": ..., "optim": ...}`,
    `app.model.` where one Stateful entry holds such a state (`{"app": AppState}`),
    else "" (a state dict saved as it is). An app state's entries other than
    `model` must be training state (an optimizer, scheduler, ...), so the
    `model.` of a bare Hugging Face state dict (`model.layers...`, `lm_head...`)
    is not taken for one.
    """
    names = list(names)
    found = _model_entry(names, "")
    if found is not None:
        return found
    tops = {name.split(".", 1)[0] for name in names}
    if len(tops) == 1 and all("." in name for name in names):
        found = _model_entry(names, f"{tops.pop()}.")
        if found is not None:
            return found
    return ""


def model_state(files: Mapping[str, Path]) -> dict[str, torch.Tensor]:
    """The model's tensors, prefix removed, read by DCP's own loader from `files`."""
    md = _read_metadata(files)
    import torch
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import load

    tensors = {
        key: entry
        for key, entry in md.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }
    prefix = model_prefix(tensors)
    # Flat keys flatten to themselves, so DCP reads exactly these items and no others.
    target: dict[str, Any] = {
        key: torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
        for key, entry in tensors.items()
        if key.startswith(prefix)
    }
    if not target:
        raise CheckpointError("the DCP checkpoint holds no tensors")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING)
            load(
                target,
                storage_reader=_reader(files, md),
                planner=DefaultLoadPlanner(allow_partial_load=False),
                no_dist=True,
            )
    except CheckpointException as exc:  # a BaseException, holding each rank's error
        raise _one_error(next(iter(exc.failures.values()), (exc, None))[0]) from None
    except Exception as exc:
        raise _one_error(exc) from None
    return {key[len(prefix) :]: tensor for key, tensor in target.items()}


def _one_error(exc: BaseException) -> CheckpointError:
    """A failure inside DCP's loader as one line (the registry's own errors as they are)."""
    if isinstance(exc, CheckpointError):
        return exc
    if isinstance(exc, pickle.UnpicklingError):  # what torch.load(weights_only=True) raises
        return CheckpointError(
            "cannot read the DCP checkpoint: a tensor slice is not a plain torch.save of a "
            "tensor (it is damaged, or names globals weights_only refuses)"
        )
    return CheckpointError(f"cannot read the DCP checkpoint: {first_line(exc)}")


def _model_entry(names: list[str], base: str) -> str | None:
    """`<base>model.` where the entries under `base` are `model` and training state only."""
    entries: dict[str, list[str]] = {}
    for name in names:
        if name.startswith(base) and "." in name[len(base) :]:
            entry, rest = name[len(base) :].split(".", 1)
            entries.setdefault(entry, []).append(rest)
    if "model" not in entries:
        return None
    others = [e for e in entries if e != "model"]
    if all(_is_training_state(e, entries[e]) for e in others):
        return f"{base}model."
    return None


def _is_training_state(entry: str, rests: list[str]) -> bool:
    """Whether an app-state entry is training state: a known name, or an optimizer's state dict."""
    return entry in TRAINING_STATE or all(
        rest.split(".", 1)[0] in ("state", "param_groups") for rest in rests
    )


class _SafeUnpickler(pickle.Unpickler):
    """Builds only what a DCP `.metadata` holds; any other global is refused unrun."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module in ("pathlib", "pathlib._local") and name in _PATHS:
            return _PATHS[name]
        if module == "torch":
            import torch

            value = getattr(torch, name, None)
            if isinstance(value, (torch.dtype, torch.memory_format, torch.layout)):
                return value
        raise UnsafeCheckpointError(
            f"the DCP {METADATA} wants {module}.{name}, which checkpoint metadata never "
            "needs; refused without running it"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"the DCP {METADATA} holds a persistent id; refused")


def _read_metadata(files: Mapping[str, Path]) -> Metadata:
    """The checkpoint's `.metadata`, unpickled safely and checked against `files`."""
    if METADATA not in files:
        raise CheckpointError(f"the DCP checkpoint has no {METADATA}")
    path = files[METADATA]
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            raise CheckpointError(
                f"the DCP {METADATA} is larger than {MAX_METADATA_BYTES >> 20} MiB"
            )
        with path.open("rb") as stream:
            md = _SafeUnpickler(stream).load()
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read the DCP {METADATA}: {exc.strerror}") from None
    except Exception as exc:
        raise CheckpointError(f"the DCP {METADATA} is damaged: {first_line(exc)}") from None
    _check(md, files)
    return cast("Metadata", md)


def _check(md: Any, files: Mapping[str, Path]) -> None:
    """Refuse metadata that is not DCP's, or whose storage entries leave the folder."""
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    where = f"the DCP {METADATA}"
    if not isinstance(md, Metadata):
        raise CheckpointError(f"{where} holds a {type(md).__name__}, not DCP metadata")
    entries, storage = md.state_dict_metadata, md.storage_data
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise CheckpointError(f"{where} lacks its state_dict or storage tables")
    held: dict[str, int] = {}  # tensor key -> bytes of its slices
    transformed: set[str] = set()
    sizes: dict[str, int] = {}
    for index, info in storage.items():
        if not isinstance(index, MetadataIndex) or not isinstance(info, _StorageInfo):
            raise CheckpointError(f"{where} has a storage entry that is not DCP's")
        name = info.relative_path
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or any(c in name for c in "/\\\0")
            or name not in files
        ):
            raise CheckpointError(
                f"{where} places {index.fqn!r} in {name!r}, which is not a file of the folder"
            )
        offset, length = info.offset, info.length
        if not all(type(n) is int and n >= 0 for n in (offset, length)):
            raise CheckpointError(f"{where} gives {index.fqn!r} a bad offset or length")
        if name not in sizes:
            sizes[name] = files[name].stat().st_size
        if offset + length > sizes[name]:
            raise CheckpointError(
                f"{where} places {index.fqn!r} at bytes {offset}-{offset + length} of {name}, "
                f"which holds {sizes[name]}"
            )
        descriptors = info.transform_descriptors or ()
        if isinstance(descriptors, str) or any(d not in KNOWN_TRANSFORMS for d in descriptors):
            raise CheckpointError(
                f"{where} stores {index.fqn!r} with unknown transforms {list(descriptors)!r}"
            )
        if descriptors:
            transformed.add(index.fqn)
        held[index.fqn] = held.get(index.fqn, 0) + length
    for key, entry in entries.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where} has a key that is not a string: {key!r}")
        if isinstance(entry, BytesStorageMetadata):
            continue
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointError(f"{where} describes {key!r} as a {type(entry).__name__}")
        props, size = entry.properties, entry.size
        if (
            not isinstance(props, TensorProperties)
            or not isinstance(props.dtype, torch.dtype)
            or not isinstance(size, tuple)
            or not all(isinstance(n, int) and n >= 0 for n in size)
            or not isinstance(entry.chunks, list)
            or not all(isinstance(c, ChunkStorageMetadata) for c in entry.chunks)
        ):
            raise CheckpointError(f"{where} describes tensor {key!r} with bad properties")
        # A slice is a torch.save of the tensor's data: no smaller than it, unless compressed.
        needs = math.prod(size) * props.dtype.itemsize
        if key not in transformed and held.get(key, 0) < needs:
            raise CheckpointError(
                f"{where} describes {key!r} as {list(size)} {props.dtype} ({needs:,} bytes) "
                f"but stores {held.get(key, 0):,} bytes of it"
            )


def _reader(files: Mapping[str, Path], md: Metadata) -> Any:
    """A DCP FileSystemReader that opens `files[relative_path]` and returns checked metadata."""
    from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class BlobFileSystem(FileSystem):
        def concat_path(self, path: Any, suffix: str) -> Any:
            if suffix not in files:
                raise CheckpointError(
                    f"the DCP checkpoint needs {suffix!r}, which the folder lacks"
                )
            return files[suffix]

    class BlobReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            assert md.storage_meta is not None
            md.storage_meta.load_id = self.load_id
            return md

    reader = BlobReader(files[METADATA].parent)
    reader.fs = BlobFileSystem()
    return reader
