"""Pull of a folder version: a folder that appears whole or not at all, or a tar stream.

The folder is written beside its destination under a temp name that says
which process writes it (`.NAME.pull-<pid>@<host>@<random>`), every file
fsynced and checked against its digest, every folder fsynced, then renamed
into place in one step. A kill leaves only that temp folder, which the next
pull beside it removes once its writer is gone. The tar is written as it is
read, each file hashed on the way; a file whose bytes do not match ends the
stream with IntegrityError.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from registry import files, folders
from registry.errors import IntegrityError, StorageError
from registry.faults import crash_half_way, crash_point

if TYPE_CHECKING:
    from registry.reads import Reads
    from registry.records import FolderFile, ModelVersion

BLOCK = tarfile.BLOCKSIZE


def write_folder(reads: Reads, version: ModelVersion, target: Path, verify: bool) -> Path:
    """Write every file of `version` under `target`, which must not exist or be empty."""
    assert version.files is not None
    _refuse_occupied(target)
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create folder {parent}: {exc.strerror}") from None
    prefix = f".{target.name}.pull-"
    _remove_abandoned(parent, prefix)
    temp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix + files.owner_prefix()))
    try:
        os.chmod(temp, files.as_created(0o777))
        with reads.progress(f"pull {version.ref}", version.size) as advance:
            step = crash_half_way("pull-copy", version.size, advance)
            for file in version.files:
                destination = temp / PurePosixPath(_plain(file.path))
                destination.parent.mkdir(parents=True, exist_ok=True)
                ref = folders.file_ref(version, file)
                copy = functools.partial(
                    reads.copy_blob, file.sha256, ref, destination, verify, step
                )
                reads.read_blobs(copy, file.sha256)
        _sync_folders(temp)
        crash_point("pull-folder-written")
        if target.is_dir():  # empty (checked): the rename takes its place
            target.rmdir()
        os.rename(temp, target)
        files.fsync_dir(parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return target


def write_tar(reads: Reads, version: ModelVersion, sink: BinaryIO, verify: bool) -> None:
    """Stream `version`'s files to `sink` as a tar (POSIX pax), each checked on the way."""
    assert version.files is not None
    with reads.progress(f"pull {version.ref}", version.size) as advance:
        for file in version.files:
            sink.write(tar_header(version, file))
            ref = folders.file_ref(version, file)
            source = reads.store.open(file.sha256, ref)
            try:
                files.copy_stream_verified(
                    source,
                    sink,
                    file.sha256,
                    ref,
                    verify,
                    advance,
                    reads.blake3_check(file.sha256, ref),
                )
            except IntegrityError:
                reads.store.evict(file.sha256)  # sent already: the next read fetches afresh
                raise
            sink.write(b"\0" * (-file.size % BLOCK))
    sink.write(b"\0" * (2 * BLOCK))  # the end-of-archive marker
    sink.flush()


def tar_header(version: ModelVersion, file: FolderFile) -> bytes:
    """The tar header of one file of a folder version (pax; its time the version's)."""
    info = tarfile.TarInfo(_plain(file.path))
    info.size, info.mode, info.mtime = file.size, 0o644, int(version.created_at.timestamp())
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _plain(path: str) -> str:
    try:
        return folders.check_path(path)
    except ValueError as exc:
        raise StorageError(f"refusing to write {exc}") from None


def _refuse_occupied(target: Path) -> None:
    if target.is_dir():
        if any(target.iterdir()):
            raise StorageError(f"{target} exists and is not empty; pull into a new folder")
    elif target.exists() or target.is_symlink():
        raise StorageError(f"{target} exists and is not a folder; pull into a new folder")


def _remove_abandoned(parent: Path, prefix: str) -> None:
    """Remove the temp folders of pulls beside this one whose process is gone."""
    for temp in parent.glob(f"{glob.escape(prefix)}*@*@*"):
        if temp.is_dir() and files.abandoned(temp, prefix):
            shutil.rmtree(temp, ignore_errors=True)


def _sync_folders(root: Path) -> None:
    """fsync every folder under `root`, deepest first, so each entry is durable."""
    for folder, _dirs, _names in sorted(os.walk(root), key=lambda w: -len(Path(w[0]).parts)):
        files.fsync_dir(Path(folder))
