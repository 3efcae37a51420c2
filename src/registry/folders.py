"""Folder checkpoints (SPEC "Folders"): which files a folder version holds, its digest, its kind.

A folder version holds every regular file under the folder by its relative,
`/`-separated path. What could make a stored folder differ from the one
pushed, or a pulled one write outside its destination, is refused with one
line before anything is read: a symlink, a device, a socket or pipe, a path
that is not UTF-8 or holds a control character (the file list is one line
per file). The version's digest is the SHA-256 of its file list:

    <sha256 hex>  <size>  <path>\\n      one line per file, sorted by path (UTF-8)

The kind (`format`) is told from the content alone: nothing from the folder
is imported or run here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from registry import refs
from registry.errors import CheckpointError
from registry.records import FolderFile, ModelVersion

KINDS = ("transformers", "hub_mixin", "peft", "sharded", "dcp", "folder")
MAX_FILES = 100_000  # more is not a checkpoint; listing it would only take memory
MAX_CONFIG_BYTES = 16 << 20  # a config.json, adapter config or index larger is not read


def scan(folder: Path) -> list[FolderFile]:
    """Every regular file under `folder`, sorted by path; refuse what a version cannot hold.

    Raises:
        CheckpointError: a symlink, a device, a socket or pipe, an odd path,
            an empty folder, or more than MAX_FILES files.
    """
    found: list[FolderFile] = []
    for root, dirs, names in os.walk(folder, onerror=_unreadable(folder)):
        for name in sorted(dirs + names):
            path = Path(root) / name
            relative = _relative(folder, path)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise CheckpointError(
                    f"{folder}: {relative} is a symlink; a version holds regular files only "
                    "(copy the target in its place)"
                )
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise CheckpointError(
                    f"{folder}: {relative} is not a regular file (a device, socket or pipe)"
                )
            found.append(FolderFile(relative, os.lstat(path).st_size))
            if len(found) > MAX_FILES:
                raise CheckpointError(f"{folder} holds more than {MAX_FILES:,} files")
    if not found:
        raise CheckpointError(f"{folder} holds no files")
    return sorted(found, key=lambda f: f.path.encode())


def check_path(path: str) -> str:
    """Refuse a recorded file path that could not come from `scan` (it would write elsewhere).

    Raises:
        ValueError: empty, absolute, `.`/`..`/empty segments, a backslash or a control character.
    """
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or "\\" in path
        or refs.CONTROL.search(path)
    ):
        raise ValueError(f"the file path {path!r} is not a plain relative path")
    return path


def file_ref(version: ModelVersion, file: FolderFile) -> str:
    """How one file of a folder version is named in reads and errors: `NAME@vN/PATH`
    (where a server serves it)."""
    return f"{version.ref}/{file.path}"


def file_list(files: Iterable[FolderFile]) -> bytes:
    """The text a folder version's digest is the SHA-256 of (see the module docstring)."""
    ordered = sorted(files, key=lambda f: f.path.encode())
    return "".join(f"{f.sha256}  {f.size}  {f.path}\n" for f in ordered).encode()


def digest(files: Iterable[FolderFile]) -> str:
    """A folder version's `sha256`: the SHA-256 of its file list."""
    listed = list(files)
    unhashed = [f.path for f in listed if not refs.is_sha256(f.sha256)]
    if unhashed:
        raise ValueError(f"not hashed yet: {unhashed[0]}")
    return hashlib.sha256(file_list(listed)).hexdigest()


def kind(folder: Path, files: Sequence[FolderFile]) -> str:
    """The folder's kind, told from its files (and its JSON configs, read as data)."""
    paths = {f.path for f in files}
    if {"adapter_config.json", "adapter_model.safetensors"} <= paths:
        return "peft"
    if {".metadata"} <= paths and any(p.endswith(".distcp") for p in paths):
        return "dcp"
    config = _json(folder, "config.json") if "config.json" in paths else None
    hf_weights = (
        "model.safetensors" in paths
        or "model.safetensors.index.json" in paths
        or any(re.fullmatch(r"pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?", p) for p in paths)
    )
    if isinstance(config, dict) and hf_weights:
        architectures = config.get("architectures")
        if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
            return "transformers"
        if "model.safetensors" in paths:
            return "hub_mixin"
    if any(_is_index(folder, p) for p in paths if p.endswith(".index.json")):
        return "sharded"
    return "folder"


def config(folder: Path) -> object:
    """The folder's `config.json` as data, or None when it is not small, valid JSON."""
    return _json(folder, "config.json")


def default_name(class_name: str) -> str:
    """A model name from a class name: `BertForSequenceClassification` ->
    `bert-for-sequence-classification`, `GPT2LMHeadModel` -> `gpt2-lm-head-model`."""
    split = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", class_name)
    return refs.validate_name(split.lower())


def _relative(folder: Path, path: Path) -> str:
    """`path` relative to `folder`, `/`-separated, refused unless it is plain UTF-8 text."""
    relative = path.relative_to(folder).as_posix()
    try:
        relative.encode()
    except UnicodeEncodeError:  # a name that is not UTF-8 comes back with surrogates
        raise CheckpointError(f"{folder}: a file name is not UTF-8: {relative!r}") from None
    if refs.CONTROL.search(relative) or "\\" in relative:  # a backslash reads as a separator
        raise CheckpointError(
            f"{folder}: the path {relative!r} holds a control character or a backslash"
        )
    return relative


def _unreadable(folder: Path) -> Callable[[OSError], None]:
    """What `os.walk` calls on a folder it cannot list: one line, naming it."""

    def refuse(exc: OSError) -> None:
        raise CheckpointError(f"cannot read {folder}: {exc.strerror} ({exc.filename})")

    return refuse


def read_json(name: str, path: Path) -> dict[str, Any]:
    """A folder's small JSON file (`name`, held at `path`) as data: an object, or one line.

    Raises:
        CheckpointError: unreadable, over MAX_CONFIG_BYTES, not JSON (or nested
            past the parser's depth), or not an object.
    """
    try:
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            raise CheckpointError(
                f"{name} is {size:,} bytes, over the {MAX_CONFIG_BYTES >> 20} MiB a {name} needs"
            )
        data = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise CheckpointError(f"cannot read {name}: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{name} is not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{name} holds a {type(data).__name__}, not a JSON object")
    return data


def _json(folder: Path, relative: str) -> dict[str, Any] | None:
    """A small JSON object of the folder as data, or None when it is not one."""
    try:
        return read_json(relative, folder / relative)
    except CheckpointError:
        return None


def _is_index(folder: Path, relative: str) -> bool:
    """Whether a `*.index.json` maps weights to shards (`weight_map`), as safetensors' does."""
    data = _json(folder, relative)
    return isinstance(data, dict) and isinstance(data.get("weight_map"), dict)
