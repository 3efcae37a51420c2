"""A push or an import through a team server: the files it lacks sent, then the push asked.

The client hashes each file (a file hashed before, unchanged since by its
size, mtime, ctime and inode, is not read again), asks the server which
blobs it lacks, and streams only those (`PUT /api/blobs/SHA256`, never held
in memory); the server hashes while writing and keeps only bytes that
match. Then `POST /api/push` names the file or the folder's files by digest,
and the server pushes them with its own checks: its arch trust policy, the
weights against the arch, the token's scope. Nothing is recorded unless
that push commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from registry import files, folders, wire
from registry.errors import CheckpointError, NotFoundError, SignatureError, UnsafeCheckpointError
from registry.publishing import options_json
from registry.records import FolderFile, ModelVersion
from registry.remote import Client, ref_path

if TYPE_CHECKING:
    from registry.progress_bars import Progress
    from registry.pushing import PushOptions
    from registry.signing import TrustedKey

PUSH_TIMEOUT_S = 3600.0  # the server reads, checks and digests the weights before answering
UPLOAD_CHUNK = 1 << 20


class ServerPublisher:
    """Pushes and imports carried out by a team server for this client's token."""

    def __init__(self, client: Client, digests_file: Path) -> None:
        self.client = client
        self.known = KnownDigests(digests_file)

    def push(self, source: Any, options: PushOptions, progress: Progress) -> ModelVersion:
        if options.trust_pickle:
            raise UnsafeCheckpointError(
                "a registry server never unpickles what a client sends; push the weights "
                "(torch.save(model.state_dict(), ...) or a .safetensors file) instead"
            )
        with tempfile.TemporaryDirectory(prefix="registry-push-") as scratch:
            path, arch = self._as_file(source, options, Path(scratch))
            body = dict(options_json(options, arch))
            if path.is_dir():
                root = path
                listed = [
                    replace(f, sha256=self._digest(path / f.path)) for f in folders.scan(path)
                ]
                body["files"] = [_entry(f) for f in listed]
            else:
                root, listed = path.parent, [replace(self._file(path), path=path.name)]
                body["file"] = _entry(listed[0])
            for attempt in (1, 2):
                self._send(root, listed, progress)
                try:
                    answer = self.client.send("POST", "/api/push", "", body, timeout=PUSH_TIMEOUT_S)
                    break
                except NotFoundError as exc:
                    # A gc on the server took a blob sent but not yet pushed: send it again.
                    if attempt == 2 or "send it first" not in str(exc):
                        raise
            version = self._version("/api/push", answer)
            if options.sign is None:
                return version
            # Signed here, with the key that never leaves this machine, over what the server
            # recorded (its arch, details, name); the same push again hands the server the
            # signature, which it checks against its record and stores.
            body["signature"] = self._signature(version, options.sign)
            answer = self.client.send("POST", "/api/push", "", body, timeout=PUSH_TIMEOUT_S)
        return self._version("/api/push", answer)

    def _signature(self, version: ModelVersion, key: str | os.PathLike[str]) -> dict[str, Any]:
        from registry import signing

        base = None
        if version.format == "peft" and version.parent is not None:
            path = f"/api/refs/{ref_path(version.parent)}"
            base = self._version(path, self.client.get(path, version.parent)).sha256
        claims = signing.Claims.of(version, base)
        return signing.sign(key, claims)

    def import_bundle(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        progress: Progress,
        trusted: Sequence[TrustedKey] = (),
    ) -> list[ModelVersion]:
        """Stream a bundle to the server, which verifies and records it as a local import does.

        With trusted keys, the bundle's manifest is read here first and refused
        unless one of them signed each version, before a byte is sent.
        """
        if isinstance(source, (str, os.PathLike)):
            try:
                stream: BinaryIO = open(source, "rb")  # noqa: SIM115 -- closed below
            except FileNotFoundError:
                raise NotFoundError(f"file {str(source)!r}") from None
        else:
            stream = source
        if trusted:
            self._check_signatures(source, stream, trusted)
        try:
            answer = self.client.send(
                "POST", "/api/import", content=_chunks(stream, None), timeout=PUSH_TIMEOUT_S
            )
        finally:
            if stream is not source:
                stream.close()
        path = "/api/import"
        if not isinstance(answer, list):
            raise self.client.unexpected(path, "an answer that is not a list")
        return [self._version(path, each) for each in answer]

    # -- internals -------------------------------------------------------------------------

    def _check_signatures(
        self, source: Any, stream: BinaryIO, trusted: Sequence[TrustedKey]
    ) -> None:
        """Refuse a bundle unless trusted keys signed each of its versions, from its manifest
        read here before a byte is sent; then rewind it for the upload."""
        from registry.bundles import archive, exchange

        try:
            if not stream.seekable():
                raise SignatureError(
                    "the bundle", "cannot have its signatures checked here before the server "
                    "reads it", "import a bundle file, not a pipe, through a server",
                )  # fmt: skip
            listed = archive.manifest_entries(stream, str(source))
            exchange.check_signatures(listed, trusted)
            stream.seek(0)
        except BaseException:
            if stream is not source:
                stream.close()
            raise

    def _as_file(self, source: Any, options: PushOptions, scratch: Path) -> tuple[Path, str | None]:
        """The file or folder to send, and the arch as the server reads it (a name)."""
        from registry import architectures

        arch = options.arch
        named = arch if arch is None or isinstance(arch, str) else architectures.of(arch).name
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise NotFoundError(f"file {str(path)!r}")
            return path, named
        from registry import checkpoints

        found = checkpoints.from_object(source)  # an nn.Module's or a state_dict's weights
        path = scratch / "weights.pt"
        with open(path, "wb") as out:
            checkpoints.save(found.state_dict, out)
        return path, named

    def _file(self, path: Path) -> FolderFile:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
        return FolderFile(str(path), size, self._digest(path))

    def _digest(self, path: Path) -> str:
        found = self.known.get(path)
        if found is not None:
            return found
        hasher = hashlib.sha256()
        try:
            with open(path, "rb") as stream:
                while chunk := stream.read(files.CHUNK_SIZE):
                    hasher.update(chunk)
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
        digest = hasher.hexdigest()
        self.known.put(path, digest)
        return digest

    def _send(self, root: Path, listed: list[FolderFile], progress: Progress) -> None:
        """Upload the files whose blobs the server lacks, each streamed from disk."""
        asked = sorted({f.sha256 for f in listed})
        answer = self.client.send("POST", "/api/blobs/missing", "", {"sha256": asked})
        try:
            missing = set(answer["missing"]) & set(asked)
        except (TypeError, KeyError):
            raise self.client.unexpected(
                "/api/blobs/missing", "an answer without `missing`"
            ) from None
        wanted = {f.sha256: f for f in listed if f.sha256 in missing}
        total = sum(f.size for f in wanted.values())
        with progress(f"upload {root.name or root}", total) as advance:
            for digest, file in wanted.items():
                with open(root / file.path, "rb") as stream:
                    headers = {"content-length": str(file.size)}
                    self.client.send(
                        "PUT", f"/api/blobs/{digest}", file.path,
                        content=_chunks(stream, advance), headers=headers,
                        timeout=PUSH_TIMEOUT_S,
                    )  # fmt: skip

    def _version(self, path: str, answer: Any) -> ModelVersion:
        try:
            version = wire.version(answer)
        except (KeyError, TypeError, ValueError):
            raise self.client.unexpected(path, "an answer the registry does not write") from None
        return replace(version, is_new=answer.get("is_new") is True)


def _entry(file: FolderFile) -> dict[str, Any]:
    return {"path": file.path, "size": file.size, "sha256": file.sha256}


def _chunks(stream: BinaryIO, advance: Any) -> Iterator[bytes]:
    while chunk := stream.read(UPLOAD_CHUNK):
        if advance is not None:
            advance(len(chunk))
        yield chunk


class KnownDigests:
    """SHA-256 of files hashed before, by path and what stat says of them (as git's index):
    a file written since has another ctime, which no tool can set back."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def _key(file: Path) -> tuple[str, str] | None:
        try:
            st = os.stat(file)
        except OSError:
            return None
        stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"
        return str(file.resolve()), stamp

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, stamp, sha256)")
        return db

    def get(self, file: Path) -> str | None:
        key = self._key(file)
        if key is None:
            return None
        try:
            with contextlib.closing(self._connect()) as db:
                row = db.execute(
                    "SELECT sha256 FROM digests WHERE path = ? AND stamp = ?", key
                ).fetchone()
        except (sqlite3.Error, OSError):
            return None  # a cache only: hash the file again
        return row[0] if row else None

    def put(self, file: Path, digest: str) -> None:
        key = self._key(file)
        if key is None:
            return
        try:
            with contextlib.closing(self._connect()) as db, db:
                db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (*key, digest))
        except (sqlite3.Error, OSError):
            pass
