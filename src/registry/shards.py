"""The weights of a folder version: which of its files hold them, and reading them.

Every function takes `files`, the folder's relative paths mapped to local
files holding their bytes (a store's blobs, or a push's copies), so nothing
here cares where the folder came from. Shards are memory-mapped
(safetensors, torch zips), so reading a folder of any size holds no copy of
its tensors; torch files are read `weights_only`. A DCP folder is read by
torch's own reader (`registry.dcp`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from registry import folders
from registry.errors import CheckpointError

if TYPE_CHECKING:
    import torch

# The files `save_pretrained` writes its weights to, one of them per folder, in order of preference.
HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"  # transformers' generation defaults, if saved


def needed(kind: str, files: Mapping[str, Path]) -> list[str]:
    """The paths a rebuild of a `kind` folder reads: its config and the files of its weights."""
    configs = {
        "transformers": [CONFIG, GENERATION_CONFIG],
        "hub_mixin": [CONFIG],
        "peft": ["adapter_config.json"],
    }.get(kind, [])
    configs = [c for c in configs if c in files]
    return [*configs, *weight_files(kind, files)]


def index_of(kind: str, paths: Iterable[str]) -> str | None:
    """The index a `kind` folder's shards are listed in, if its weights are sharded."""
    paths = set(paths)
    if kind in ("transformers", "hub_mixin"):
        found = _hf_weights(paths)
        return found if found.endswith(".index.json") else None
    return sharded_index(paths) if kind == "sharded" else None


def weight_files(kind: str, files: Mapping[str, Path]) -> list[str]:
    """The paths holding a `kind` folder's weights (an index first, then its shards)."""
    if kind in ("transformers", "hub_mixin"):
        found = _hf_weights(files)
        return [found, *_shards(found, files)] if found.endswith(".index.json") else [found]
    if kind == "peft":
        return [ADAPTER_WEIGHTS]
    if kind == "sharded":
        index = sharded_index(files)
        return [index, *_shards(index, files)]
    if kind == "dcp":
        return [".metadata", *sorted(p for p in files if p.endswith(".distcp"))]
    return []


def _hf_weights(paths: Iterable[str]) -> str:
    """The file `save_pretrained` wrote the weights to (or their index), by preference."""
    present = set(paths)
    found = next((p for p in HF_WEIGHTS if p in present), None)
    if found is None:
        raise CheckpointError(f"the folder holds none of {', '.join(HF_WEIGHTS)}")
    return found


def sharded_index(files: Iterable[str]) -> str:
    """The one `*.index.json` of a sharded folder (safetensors' own name first)."""
    indexes = sorted(p for p in files if p.endswith(".index.json"))
    for preferred in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if preferred in indexes:
            return preferred
    if len(indexes) != 1:
        raise CheckpointError(
            f"the folder holds {len(indexes)} indexes ({', '.join(indexes) or 'none'}); "
            "a sharded checkpoint has one"
        )
    return indexes[0]


def state_dict(kind: str, files: Mapping[str, Path]) -> dict[str, torch.Tensor]:
    """A folder's weights as they are stored, every shard's tensors in one mapping."""
    state: dict[str, torch.Tensor] = {}
    for _path, shard in each_shard(kind, files):
        state.update(shard)
    return state


def each_shard(
    kind: str, files: Mapping[str, Path]
) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """A folder's weights one shard at a time (its path, its tensors), so a caller can let
    each go before the next (a DCP folder's come as one, path "").

    Every shard holds only the tensors its index places in it, and every
    tensor the index names is in its shard.
    """
    if kind == "dcp":
        from registry import dcp

        yield "", dcp.model_state(files)
        return
    paths = weight_files(kind, files)
    if not paths:
        raise CheckpointError("the folder holds no weights this registry can read")
    if not paths[0].endswith(".index.json"):
        yield paths[0], _read_shard(paths[0], files[paths[0]])
        return
    index = paths[0]
    weight_map = _weight_map(index, files[index])
    seen: set[str] = set()
    for shard in paths[1:]:
        state = _read_shard(shard, files[shard])
        for name in state:
            if weight_map.get(name) != shard:
                where = f"in {weight_map[name]}" if name in weight_map else "nowhere"
                raise CheckpointError(f"{shard} holds {name}, which {index} places {where}")
        seen.update(state)
        yield shard, state
        del state  # unmapped before the next shard is mapped
    absent = [name for name in weight_map if name not in seen]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise CheckpointError(
            f"{index} places {absent[0]} in {weight_map[absent[0]]}, which does not hold it{more}"
        )


def _shards(index: str, files: Mapping[str, Path]) -> list[str]:
    """The shards an index names, in order, each of them a file of the folder."""
    shards = sorted(set(_weight_map(index, files[index]).values()))
    missing = [s for s in shards if s not in files]
    if missing:
        raise CheckpointError(f"{index} names shard {missing[0]}, which the folder does not hold")
    return shards


def _weight_map(index: str, path: Path) -> dict[str, str]:
    """An index's `weight_map` (tensor name -> shard path), read as data."""
    weight_map = folders.read_json(index, path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index} has no weight_map of tensor names to shard files")
    return weight_map


def _read_shard(relative: str, path: Path) -> dict[str, torch.Tensor]:
    """One weights file of the folder, memory-mapped; a pickle naming code is refused."""
    import torch

    from registry import checkpoints

    try:
        kind = checkpoints.sniff(path)
        if kind == checkpoints.SAFETENSORS:
            state = checkpoints.load(path, "safetensors", {})
        else:
            serialization = "zip" if kind == checkpoints.TORCH_ZIP else "legacy"
            state = checkpoints.load(path, "state_dict", {"serialization": serialization})
    except CheckpointError as exc:  # named by the folder's path, not the blob's
        raise type(exc)(str(exc).replace(str(path), relative)) from None

    odd = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"{relative} is not a state_dict of named tensors ({odd[0]!r})")
    return state
