"""`Registry`: every operation of the product, over a catalog and a blob store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from registry import behaviour, db, files, manifests, progress_bars, pushing, refs
from registry.catalogs import queries as catalog
from registry.config import Settings
from registry.errors import (
    ArchitectureError,
    BehaviourMismatchError,
    CheckInputError,
    CheckpointError,
    DeviceError,
    IntegrityError,
    InvalidReferenceError,
    NotFoundError,
    ReadOnlyError,
    StorageError,
    UntrustedArchError,
    first_line,
)
from registry.faults import crash_half_way, crash_point
from registry.progress_bars import Progress
from registry.records import (
    CheckResult,
    Diff,
    Lineage,
    ModelSummary,
    ModelVersion,
    Problem,
    Reclaimed,
    TensorInfo,
)
from registry.stores import Store, open_store

if TYPE_CHECKING:
    import torch
    from sqlalchemy import Engine
    from torch import nn

    from registry.catalogs.http import HttpCatalog
    from registry.digests import Check
    from registry.stores import BlobWriting
    from registry.tables import Fingerprint


FORMATS = ("original", "safetensors")
T = TypeVar("T")


class Registry:
    """A model registry: a catalog (SQLite or PostgreSQL) plus a content-addressed blob store.

    Arguments override the REGISTRY_HOME, REGISTRY_DATABASE_URL and
    REGISTRY_STORE environment variables. The catalog is opened, and a
    brand-new one created, on first use. `progress=True` shows a progress bar
    for long pushes and pulls (a widget in Jupyter, via tqdm); by default they
    are silent.

    `remote` (or REGISTRY_REMOTE), the URL of a `registry serve`, reads
    everything through that server instead, with `token` (or REGISTRY_TOKEN):
    what reads works (get, versions, search, models, tensors, lineage, diff,
    pull, write_to, state_dict, load), its files fetched into the verified
    cache; what writes raises ReadOnlyError.

    Example:
        >>> reg = Registry(progress=True)
        >>> reg.push("model_weights.pth", arch="vgg16").ref
        'vgg16@v1'
        >>> Registry(remote="http://models.internal:8765", token="...").get("vgg16").ref
        'vgg16@v1'
    """

    def __init__(
        self,
        *,
        home: str | os.PathLike[str] | None = None,
        database_url: str | None = None,
        store: str | os.PathLike[str] | None = None,
        progress: bool | Progress | None = False,
        cache: str | os.PathLike[str] | None = None,
        remote: str | None = None,
        token: str | None = None,
    ) -> None:
        self.settings = Settings.resolve(home, database_url, store, cache, remote, token)
        self._remote: HttpCatalog | None = None
        if self.settings.remote is not None:
            from registry.catalogs.http import HttpCatalog
            from registry.remote import Client
            from registry.stores.http import HttpStore

            client = Client(self.settings.remote, self.settings.token)
            self._remote = HttpCatalog(client)
            self.store: Store = HttpStore(client, self.settings.cache)
        else:
            self.store = open_store(self.settings.store, self.settings.cache)
        self._progress = _progress_factory(progress)
        self._engine: Engine | None = None

    def close(self) -> None:
        """Release the catalog's connections; the registry reopens them if used again.

        Example:
            >>> with Registry() as reg:   # closed when the block ends
            ...     reg.get("vgg16").ref
            'vgg16@v1'
        """
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._remote is not None:
            self._remote.client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._remote is not None:  # never the token
            return f"Registry(remote={self._remote.url!r})"
        url, store = self.safe_database_url, self.store.location
        return f"Registry(database_url={url!r}, store={store!r})"

    @property
    def engine(self) -> Engine:
        self._local("this", "a catalog")
        if self._engine is None:
            engine = db.open_engine(self.settings.database_url)
            db.ensure_schema(engine)
            self._engine = engine
        return self._engine

    @property
    def safe_database_url(self) -> str:
        """The catalog URL with any password masked, fit to print."""
        return db.safe_url(self.settings.database_url)

    def schema_revision(self) -> str | None:
        """The catalog's schema revision, without creating or migrating anything.

        Raises:
            DatabaseError: the catalog cannot be reached.

        Example:
            >>> reg.schema_revision()
            '0005'
        """
        self._local("db current", "a catalog")
        return db.current_revision(db.open_engine(self.settings.database_url))

    def upgrade(self) -> str:
        """Migrate the catalog to the newest schema; return the revision it is now at.

        Raises:
            DatabaseError: the catalog cannot be reached.
            SchemaOutOfDateError: the catalog is newer than this registry.

        Example:
            >>> reg.upgrade()
            '0005'
        """
        self._local("db upgrade", "a catalog")
        engine = db.open_engine(self.settings.database_url)
        db.upgrade(engine)
        return db.current_revision(engine) or "none"

    # -- push ----------------------------------------------------------------

    def push(
        self,
        source: str | os.PathLike[str] | nn.Module | Mapping[str, torch.Tensor],
        arch: str | Callable[..., nn.Module],
        name: str | None = None,
        arch_args: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        aliases: Sequence[str] = (),
        description: str = "",
        trust_pickle: bool = False,
        key: str | None = None,
        strip_prefix: str | None = None,
        parent: str | None = None,
        check_input: Sequence[int] | str | None = None,
    ) -> ModelVersion:
        """Register a checkpoint file, an nn.Module or a state_dict as the next version.

        `arch` is a torchvision model name (`"vgg16"`), a `"package.module:callable"`
        path, or the class or function itself (recorded as `module:qualname`;
        one defined in `__main__` warns that only a process defining it can
        rebuild the version). The weights are checked against it before
        anything is stored. Bytes identical to an existing version with the
        same arch and arguments give back that version, with any new tags and
        aliases added to it. `trust_pickle` reads a whole-model pickle (it runs
        the file's code); `key` picks the entry of a training checkpoint that
        holds the weights; `strip_prefix` takes the keys under an attribute
        prefix (`model.` of a Lightning checkpoint), otherwise found when
        exactly one fits. `parent` names the version this one was fine-tuned
        or derived from, of any model. `check_input` (a shape such as
        `(1, 3, 224, 224)`) runs the rebuilt model on a seeded input and
        records its output, for `check` to compare with later. Every push
        records the tensor manifest (names, dtypes, shapes, digests).

        Raises:
            NotFoundError: the file does not exist.
            CheckpointError: the file is not a checkpoint (UnsafeCheckpointError:
                it holds pickled code and `trust_pickle` is off).
            ArchitectureError: the arch cannot be found or built.
            ArchitectureMismatchError: the weights do not fit the arch.
            InvalidReferenceError: a bad name, alias or tag key.
            NotFoundError: `parent` names no version.
            CheckInputError: the model rejects `check_input`.

        Example:
            >>> reg.push("model_weights.pth", arch="vgg16", tags={"dataset": "imagenet"})
            ModelVersion(name='vgg16', version=1, ...)
        """
        from registry import architectures

        self._local("push")
        builder = arch if isinstance(arch, str) else architectures.of(arch)
        if isinstance(arch, str):
            architectures.warn_if_main(arch)
        arch_args = dict(arch_args or {})
        tags = {refs.validate_tag_key(k): str(v) for k, v in (tags or {}).items()}
        aliases = [refs.validate_alias(a) for a in aliases]
        if name is not None:
            refs.validate_name(name)
        shape = behaviour.parse_shape(check_input) if check_input is not None else None
        parent_ref = refs.parse_ref(parent) if parent is not None else None
        if parent is not None:
            self.get(parent)  # fail before the copy, not after
        if isinstance(source, (str, os.PathLike)):
            pushing.preflight(Path(source))

        with contextlib.ExitStack() as stack:
            original = stack.enter_context(self.store.writer())
            # Importing torch takes seconds: build the arch on another thread while
            # this one copies the file.
            pool = stack.enter_context(ThreadPoolExecutor(1, "registry-build"))
            building = pool.submit(pushing.build, builder, arch_args)
            if isinstance(source, (str, os.PathLike)):
                path = Path(source)
                self._copy_file(path, original)
                resolved, model = building.result()
                weights = pushing.read_weights(
                    path, original, resolved, model, trust_pickle, key, strip_prefix
                )
                extension = refs.extension_of(path.suffix, pushing.IN_MEMORY_EXTENSION)
            else:
                resolved, model = building.result()
                weights = pushing.write_object(source, original, resolved, model)
                extension = pushing.IN_MEMORY_EXTENSION
            name = name if name is not None else pushing.default_name(resolved.name)
            version = pushing.new_version(resolved, model, arch_args, weights, description)
            version.blob_sha256, version.extension = original.finish(), extension
            tensors = manifests.describe(weights.state_dict)
            fingerprint = None
            if shape is not None:
                fingerprint = pushing.fingerprint(resolved, version, weights, shape)
            writers = [original]
            if weights.format == "pickle":  # so that loads never unpickle it again
                from registry import checkpoints

                safe_copy = stack.enter_context(self.store.writer())
                checkpoints.save_safetensors(weights.state_dict, safe_copy)
                version.weights_sha256 = safe_copy.finish()
                writers.append(safe_copy)
            for writer in writers:
                writer.publish()  # before the transaction: an upload holds no catalog lock
            with db.session(self.engine, write=True) as s:
                for writer in writers:
                    digest = writer.finish()
                    catalog.claim_blob(s, digest, writer.size, writer.check, version.created_at)
                    writer.commit()  # in place before any version refers to it
                crash_point("push-blob-placed")
                parent_rows = catalog.resolve(s, parent_ref) if parent_ref else None
                record, is_new = catalog.add_version(
                    s, name, version, tags, aliases, tensors, parent_rows, fingerprint
                )
                s.flush()
                crash_point("push-commit")
        return replace(record, is_new=is_new)

    def _copy_file(self, path: Path, writer: BlobWriting) -> None:
        """Copy a checkpoint file into the writer, hashing it."""
        try:
            source = open(path, "rb")  # noqa: SIM115 -- copy_stream closes it
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
        size = os.fstat(source.fileno()).st_size
        with self._progress(f"push {path.name}", size) as advance:
            files.copy_stream(source, writer, crash_half_way("push-copy", size, advance))
        writer.finish()
        crash_point("push-hashed")

    # -- reading -------------------------------------------------------------

    def get(self, ref: str) -> ModelVersion:
        """The version a reference names (`vgg16`, `vgg16@v3`, `vgg16@production`, ...).

        Raises:
            InvalidReferenceError: `ref` is not a valid reference
                (AmbiguousReferenceError: a digest prefix matching several versions).
            NotFoundError: no such model, version or alias.

        Example:
            >>> reg.get("vgg16@production").sha256
            '98066c3be41efb2e137dab889b902e4a87df4865b78ab34f0afa4decd2c7151b'
        """
        if self._remote is not None:
            return self._remote.get(ref)
        with db.session(self.engine) as s:
            model, row = catalog.resolve(s, refs.parse_ref(ref))
            return catalog.records(s, [(model.name, row)])[0]

    def versions(
        self,
        name: str,
        arch: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[ModelVersion]:
        """A model's versions, newest first, optionally filtered by arch and tags.

        Raises:
            InvalidReferenceError: `name` is not a valid model name.
            NotFoundError: no model of that name.

        Example:
            >>> [v.ref for v in reg.versions("vgg16", tags={"dataset": "imagenet"})]
            ['vgg16@v3', 'vgg16@v1']
        """
        refs.validate_name(name)
        if self._remote is not None:
            return self._remote.search(name=name, arch=arch, tags=tags, limit=limit)
        with db.session(self.engine) as s:
            catalog.model_row(s, name)
            return catalog.search(s, name=name, arch=arch, tags=tags, limit=limit)

    def search(
        self,
        name: str | None = None,
        arch: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[ModelVersion]:
        """Versions matching every filter given, by model name then newest first.

        Raises:
            DatabaseError: the catalog cannot be reached.

        Example:
            >>> [v.ref for v in reg.search(arch="resnet18", limit=2)]
            ['cifar-resnet@v4', 'resnet18@v2']
        """
        if self._remote is not None:
            try:
                return self._remote.search(name=name, arch=arch, tags=tags, limit=limit)
            except NotFoundError:  # no such model: no versions match, as in a catalog
                return []
        with db.session(self.engine) as s:
            return catalog.search(s, name=name, arch=arch, tags=tags, limit=limit)

    def models(self) -> list[ModelSummary]:
        """Every model with its version count, newest version, size and aliases, by name.

        Raises:
            DatabaseError: the catalog cannot be reached.

        Example:
            >>> [(m.name, m.latest_version) for m in reg.models()]
            [('resnet18', 2), ('vgg16', 3)]
        """
        if self._remote is not None:
            return self._remote.models()
        with db.session(self.engine) as s:
            return catalog.summaries(s)

    def pull(
        self,
        ref: str,
        destination: str | os.PathLike[str] | None = None,
        verify: bool = True,
        format: str = "original",
    ) -> Path:
        """Write a version's checkpoint file, verified, and return its path.

        `format="original"` gives back the pushed file bit-exact;
        `format="safetensors"` converts the weights. The default destination is
        `./NAME-vN.<ext>`; a folder as destination gets that file name inside it.
        Nothing is left at the destination when the bytes do not verify.

        Raises:
            NotFoundError: no such version.
            IntegrityError: the stored bytes do not match their SHA-256.
            StorageError: the destination cannot be written.

        Example:
            >>> reg.pull("vgg16@v1", "weights/")
            PosixPath('weights/vgg16-v1.pth')
        """
        if format not in FORMATS:
            raise InvalidReferenceError(format, "format", f"choose one of {', '.join(FORMATS)}")
        version = self.get(ref)
        extension = version.extension if format == "original" else ".safetensors"
        filename = f"{version.name.rsplit('/', 1)[-1]}-v{version.version}{extension}"
        target = Path(destination) if destination is not None else Path(filename)
        if target.is_dir() or str(destination).endswith(os.sep):
            target = target / filename
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create folder {target.parent}: {exc.strerror}") from None
        if format == "safetensors":
            from registry import checkpoints

            def convert() -> None:
                with self._weights_file(version, verify) as (path, weights_format, details):
                    state = checkpoints.load(path, weights_format, details)
                with files.atomic_file(target) as out:
                    checkpoints.save_safetensors(state, out)

            self._read_blobs(convert, _weights_digest(version))
            return target

        def copy() -> None:
            with self._progress(f"pull {version.ref}", version.size) as advance:
                progress = crash_half_way("pull-copy", version.size, advance)
                blake3 = self._blake3_check(version) if verify else None
                source = self.store.open(version.sha256, version.ref)
                files.copy_verified(
                    source, target, version.sha256, version.ref, verify, progress, blake3
                )

        self._read_blobs(copy, version.sha256)
        return target

    def write_to(self, ref: str, sink: BinaryIO, verify: bool = True) -> ModelVersion:
        """Write a version's checkpoint, as pushed, to a stream (standard output, a socket).

        The bytes are hashed on the way; a mismatch raises IntegrityError once
        they are sent, so the caller must treat the stream as failed.

        Raises:
            NotFoundError: no such version.
            IntegrityError: the stored bytes do not match their SHA-256.

        Example:
            >>> reg.write_to("vgg16@v1", sys.stdout.buffer).ref
            'vgg16@v1'
        """
        version = self.get(ref)
        with self._progress(f"pull {version.ref}", version.size) as advance:
            blake3 = self._blake3_check(version) if verify else None
            source = self.store.open(version.sha256, version.ref)
            try:
                files.copy_stream_verified(
                    source, sink, version.sha256, version.ref, verify, advance, blake3
                )
            except IntegrityError:
                self.store.evict(version.sha256)  # sent already: the next read fetches afresh
                raise
        return version

    def local_file(self, ref: str, verify: bool = True) -> Path:
        """A local path of a version's checkpoint as pushed, verified before it is returned.

        The store's own file (or a remote store's cached copy): read it, never
        write to it; `pull` makes a copy of your own. The bytes are hashed in
        parallel pieces where the catalog has their digests.

        Raises:
            NotFoundError: no such version.
            IntegrityError: the stored bytes do not match their SHA-256.

        Example:
            >>> reg.local_file("vgg16@v1")
            PosixPath('/home/me/.local/share/registry/blobs/sha256/39/3979...')
        """
        version = self.get(ref)
        path = self.store.local_path(version.sha256, version.ref)
        if verify:
            self.store.verify(version.sha256, version.ref, self._verification(version.sha256))
        return path

    def state_dict(self, ref: str, verify: bool = True) -> dict[str, torch.Tensor]:
        """A version's weights as a state_dict, memory-mapped where the format allows.

        Raises:
            NotFoundError: no such version.
            IntegrityError: the stored bytes do not match their SHA-256.

        Example:
            >>> reg.state_dict("vgg16@v1")["classifier.6.bias"].shape
            torch.Size([1000])
        """
        from registry import checkpoints

        version = self.get(ref)

        def read() -> dict[str, torch.Tensor]:
            with self._weights_file(version, verify) as (path, format, details):
                return checkpoints.load(path, format, details)

        return self._read_blobs(read, _weights_digest(version))

    def load(
        self,
        ref: str,
        device: str | None = None,
        verify: bool = True,
        trust_arch: bool = False,
        arch: str | Callable[..., nn.Module] | None = None,
        check: bool = False,
    ) -> nn.Module:
        """Rebuild a version's model with its weights, in eval mode, ready for inference.

        The recorded arch is data: a builder that is not an nn.Module class is
        called only with `trust_arch` or a REGISTRY_TRUSTED_ARCHS pattern.
        `arch` rebuilds with a builder you hand in instead (one defined in a
        notebook, or a class that has moved since the push); the weights are
        still checked against it. `check` reruns the behaviour check recorded
        at push (on the CPU, before moving to `device`).

        Raises:
            NotFoundError: no such version.
            IntegrityError: the stored bytes do not match their SHA-256.
            ArchitectureError: the arch cannot be found or built
                (UntrustedArchError: a recorded function nobody trusted).
            ArchitectureMismatchError: the weights do not fit the arch.
            DeviceError: the model cannot be moved to `device`.
            BehaviourMismatchError: with `check`, the model computes something else.
            CheckInputError: with `check`, the version has no behaviour check.

        Example:
            >>> model = reg.load("vgg16@production", device="cuda")
            >>> model = reg.load("net@v1", arch=Net)   # Net defined in this notebook
        """
        from registry import architectures, checkpoints

        version = self.get(ref)
        recorded = self._fingerprint(version) if check else None
        try:
            if arch is None:
                resolved = architectures.resolve(version.arch, trust=trust_arch)
            elif isinstance(arch, str):
                resolved = architectures.resolve(arch)
            else:
                resolved = architectures.of(arch, for_load=True)
        except UntrustedArchError as exc:
            raise UntrustedArchError(exc.arch, exc.kind, version.ref) from None
        except ArchitectureError as exc:
            raise ArchitectureError(f"cannot rebuild {version.ref}: {exc}") from None
        recorded_versions = version.details.get("module_versions")

        def build() -> nn.Module:
            with self._weights_file(version, verify) as (path, format, details):
                state = checkpoints.load(path, format, details)
                return architectures.instantiate(
                    resolved, version.arch_args, state, recorded_versions
                )

        model = self._read_blobs(build, _weights_digest(version))
        if recorded is not None:
            result = self._compare(version, recorded, model)
            if not result.matches:
                raise BehaviourMismatchError(version.ref, result.max_abs_diff, result.detail)
        if device is not None:
            try:
                model = model.to(device)
            except (RuntimeError, AssertionError, ValueError) as exc:
                raise DeviceError(device, first_line(exc)) from None
        return model.eval()

    def _read_blobs(self, read: Callable[[], T], *digests: str) -> T:
        """`read()`, and once more if its bytes did not verify but the store can fetch them again.

        A remote store's cached copy can be damaged while the bucket's object is
        not: the copies are evicted and the second read fetches, verifies and
        uses fresh ones, so the read that found the damage still succeeds. An
        IntegrityError from the second read, or from a local store, is final.
        """
        try:
            return read()
        except IntegrityError:
            evicted = [self.store.evict(digest) for digest in digests]
            if not all(evicted):
                raise
        return read()

    def _verification(self, digest: str) -> Check | None:
        """What a read of `digest` verifies against; a server sends none: then one SHA-256 pass."""
        if self._remote is not None:
            return None
        with db.session(self.engine) as s:
            return catalog.verification(s, digest)

    def _blake3_check(self, version: ModelVersion) -> files.Blake3Check | None:
        """How a copy of the blob is verified: by its BLAKE3 when recorded, else None (SHA-256)."""
        check = self._verification(version.sha256)
        if check is None or not check.blake3:
            return None
        return files.Blake3Check(check.blake3, lambda: self.store.hash(version.sha256, version.ref))

    @contextlib.contextmanager
    def _weights_file(
        self, version: ModelVersion, verify: bool
    ) -> Iterator[tuple[Path, str, dict[str, Any]]]:
        """The blob holding a version's weights (a trusted pickle's safe copy), its format.

        With `verify`, the blob is re-hashed on other threads while the caller
        reads it; the block ends only when the bytes matched, else IntegrityError
        is raised and whatever the caller built from them is dropped.
        """
        if version.weights_sha256:
            self._local(
                f"reading {version.ref}'s weights",
                "their safe copy (it was pushed as a trusted pickle), which the server does "
                "not send; pull the original file, or load it where the store is",
            )
            digest, format, details = version.weights_sha256, "safetensors", {}
        else:
            digest, format, details = version.sha256, version.format, version.details
        path = self.store.local_path(digest, version.ref)
        if not verify:
            yield path, format, details
            return
        check = self._verification(digest)
        with ThreadPoolExecutor(1, "registry-verify") as pool:
            verifying = pool.submit(self.store.verify, digest, version.ref, check)
            try:
                yield path, format, details
            finally:
                verifying.result()  # an IntegrityError wins over what corrupt bytes caused

    # -- what changed --------------------------------------------------------------

    def tensors(self, ref: str) -> list[TensorInfo]:
        """A version's tensor manifest: each tensor's name, dtype, shape and digest.

        Read from the catalog alone. A version recorded before manifests were
        (schema 0003) gets its manifest from its blob once, then kept.

        Raises:
            NotFoundError: no such version.
            IntegrityError: an old version's blob, read to fill its manifest, is damaged.

        Example:
            >>> [(t.name, t.shape) for t in reg.tensors("vgg16@v1")][-1]
            ('classifier.6.bias', (1000,))
        """
        if self._remote is not None:
            return self._remote.tensors(ref)
        return self._manifest(self.get(ref))

    def _manifest(self, version: ModelVersion) -> list[TensorInfo]:
        """The tensor manifest of a version already looked up: from the catalog, else its blob."""
        with db.session(self.engine) as s:
            _, row = catalog.resolve(s, refs.parse_ref(version.ref))
            found = catalog.tensors(s, row.id)
        if found:
            return found
        from registry import checkpoints

        def describe() -> list[TensorInfo]:
            with self._weights_file(version, verify=True) as (path, format, details):
                return manifests.describe(checkpoints.load(path, format, details))

        found = self._read_blobs(describe, _weights_digest(version))
        with db.session(self.engine, write=True) as s:
            _, row = catalog.resolve(s, refs.parse_ref(version.ref))
            catalog.add_tensors(s, row.id, found)
        return found

    def lineage(self, ref: str) -> Lineage:
        """A version's ancestors back to its root, nearest first, and its descendants as a tree.

        Each walk is one recursive query, however long the chain; deleted
        versions keep their place, marked `deleted`.

        Raises:
            NotFoundError: no such version.

        Example:
            >>> reg.lineage("cifar-resnet@v2").to_json()["ancestors"]
            ['cifar-resnet@v1', 'resnet18@v1']
        """
        from registry import lineage

        if self._remote is not None:
            return self._remote.lineage(ref)
        with db.session(self.engine) as s:
            model, row = catalog.resolve(s, refs.parse_ref(ref))
            return lineage.of(s, model, row)

    def diff(self, a: str, b: str | None = None) -> Diff:
        """Compare two versions tensor by tensor: `a` the older, `b` the newer.

        With one argument, `a` is compared with its parent. Tensors with
        matching manifest digests are identical without reading either blob;
        the others are read one pair at a time and measured (`max_abs`,
        `rel_l2`). Tensors are matched by name, so any two architectures compare.

        Raises:
            NotFoundError: no such version; with one argument, a version
                without a parent, or whose parent was deleted.
            IntegrityError: a tensor read does not match its manifest digest.

        Example:
            >>> reg.diff("resnet18@v1", "cifar-resnet@v1").summary
            {'identical': 60, 'changed': 0, 'added': 0, 'removed': 0, 'reshaped': 2}
        """
        from registry import diffing

        if b is None:
            newer = self.get(a)
            if newer.parent is None:
                raise NotFoundError(
                    f"parent of {newer.ref}",
                    "it was pushed without --parent; give two versions: registry diff A B",
                )
            try:
                older = self.get(newer.parent)
            except NotFoundError:
                raise NotFoundError(
                    f"{newer.parent}, the parent of {newer.ref},", "it was deleted"
                ) from None
        else:
            older, newer = self.get(a), self.get(b)
        if self._remote is not None:
            return self._remote.diff(older.ref, newer.ref)
        left, right = self._manifest(older), self._manifest(newer)
        if diffing.unread(left, right):
            return diffing.compare(older.ref, newer.ref, left, right, None, None)

        def compare() -> Diff:
            with contextlib.ExitStack() as stack:
                readers = [stack.enter_context(self._tensor_reader(v)) for v in (older, newer)]
                return diffing.compare(older.ref, newer.ref, left, right, *readers)

        return self._read_blobs(compare, _weights_digest(older), _weights_digest(newer))

    @contextlib.contextmanager
    def _tensor_reader(self, version: ModelVersion) -> Iterator[Callable[[str], torch.Tensor]]:
        """One tensor at a time from a version's weights; `diff` checks each against its digest."""
        from registry import checkpoints

        with (
            self._weights_file(version, verify=False) as (path, format, details),
            checkpoints.tensor_reader(path, format, details) as read,
        ):
            yield read

    def check(self, ref: str, trust_arch: bool = False) -> CheckResult:
        """Rebuild a version and compare its output on the seeded check input with the recorded.

        The tolerance, `|new - recorded| <= 1e-4 + 1e-3 * |recorded|`, allows
        for CPU thread counts and kernels; a mismatch names the largest
        deviation and what produced the output at push and now (torch,
        torchvision, the arch's code).

        Raises:
            CheckInputError: the version was pushed without `check_input`.
            NotFoundError, IntegrityError, ArchitectureError: as for `load`.

        Example:
            >>> reg.check("resnet18@v2").matches
            True
        """
        self._local("check", "the behaviour recorded in the catalog; run it where the catalog is")
        version = self.get(ref)
        recorded = self._fingerprint(version)
        model = self.load(version.ref, trust_arch=trust_arch)
        return self._compare(version, recorded, model)

    def _fingerprint(self, version: ModelVersion) -> Fingerprint:
        self._local("check", "the behaviour recorded in the catalog; run it where the catalog is")
        with db.session(self.engine) as s:
            _, row = catalog.resolve(s, refs.parse_ref(version.ref))
            found = catalog.fingerprint(s, row.id)
        if found is None:
            raise CheckInputError(
                f"{version.ref} was pushed without --check-input, so there is no recorded "
                "behaviour to check; push it again with --check-input SHAPE"
            )
        return found

    def _compare(
        self, version: ModelVersion, recorded: Fingerprint, model: nn.Module
    ) -> CheckResult:
        from registry import architectures

        outputs = behaviour.run(model, recorded.input_shape)
        found = behaviour.compare(recorded.outputs, outputs)
        detail = f"max abs diff {found.max_abs_diff:.3g} at {found.where}"
        if not found.matches:
            resolved = architectures.resolve(version.arch, trust=True)
            now = behaviour.environment(resolved)
            then = ", ".join(f"{k} {v}" for k, v in recorded.environment.items())
            today = ", ".join(f"{k} {v}" for k, v in now.items())
            detail += f" (tolerance {behaviour.TOLERANCE}); at push: {then}; now: {today}"
        return CheckResult(
            version.ref, found.matches, found.max_abs_diff, behaviour.TOLERANCE, detail
        )

    # -- aliases, tags, deletion ----------------------------------------------

    def set_alias(self, ref: str, alias: str) -> ModelVersion:
        """Point `alias` at the version `ref` names, creating or moving it atomically.

        Raises:
            InvalidReferenceError: a bad reference or alias (`latest`, `v2`, ...).
            NotFoundError: no such version.

        Example:
            >>> reg.set_alias("vgg16@v2", "production").ref
            'vgg16@v2'
        """
        self._local("alias")
        refs.validate_alias(alias)
        with db.session(self.engine, write=True) as s:
            model, row = catalog.resolve(s, refs.parse_ref(ref))
            catalog.set_alias(s, model, alias, row)
            return catalog.records(s, [(model.name, row)])[0]

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias from a model.

        Raises:
            InvalidReferenceError: a bad model name or alias.
            NotFoundError: no such model or alias.

        Example:
            >>> reg.delete_alias("vgg16", "staging")
        """
        self._local("alias --delete")
        refs.validate_name(name)
        refs.validate_alias(alias)
        with db.session(self.engine, write=True) as s:
            catalog.delete_alias(s, catalog.model_row(s, name), alias)

    def set_tags(
        self, ref: str, tags: Mapping[str, str], *, delete: Iterable[str] = ()
    ) -> ModelVersion:
        """Set (add or overwrite) tags on a version and remove the keys in `delete`, in one
        transaction: if any part fails, no tag changes.

        Raises:
            InvalidReferenceError: a bad reference or tag key, or a key both set and deleted.
            NotFoundError: no such version, or a key to delete that it has no tag for.

        Example:
            >>> reg.set_tags("vgg16@v1", {"dataset": "imagenet"}).tags
            {'dataset': 'imagenet'}
        """
        deleted = list(dict.fromkeys(delete))  # once: `delete` may be an iterator
        self._local("tag --delete" if deleted else "tag")
        tags = {refs.validate_tag_key(k): str(v) for k, v in tags.items()}
        for key in deleted:
            if key in tags:
                raise InvalidReferenceError(key, "tag key", "it is both set and deleted")
        with db.session(self.engine, write=True) as s:
            model, row = catalog.resolve(s, refs.parse_ref(ref))
            for key in deleted:
                catalog.delete_tag(s, row, f"{model.name}@v{row.version}", key)
            catalog.set_tags(s, row, tags)
            return catalog.records(s, [(model.name, row)])[0]

    def delete_tag(self, ref: str, key: str) -> ModelVersion:
        """Remove one tag from a version.

        Raises:
            InvalidReferenceError: a bad reference.
            NotFoundError: no such version, or no such tag on it.

        Example:
            >>> reg.delete_tag("vgg16@v1", "dataset").tags
            {}
        """
        return self.set_tags(ref, {}, delete=[key])

    def delete(self, ref: str) -> ModelVersion:
        """Delete a version and its aliases; its number is never reused, its blob waits for gc.

        Raises:
            InvalidReferenceError: a bad reference.
            NotFoundError: no such version.

        Example:
            >>> reg.delete("vgg16@v1").ref
            'vgg16@v1'
        """
        self._local("rm")
        with db.session(self.engine, write=True) as s:
            model, row = catalog.resolve(s, refs.parse_ref(ref))
            record = catalog.records(s, [(model.name, row)])[0]
            catalog.delete_version(s, row)
            return record

    # -- store maintenance -----------------------------------------------------

    def verify(self, ref: str | None = None) -> list[Problem]:
        """Re-hash the blobs of one version (or all); report each missing or damaged one.

        Raises:
            NotFoundError: `ref` names no version.

        Example:
            >>> reg.verify()
            []
        """
        from registry import maintenance

        self._local("verify", "the store itself; run it where the store is")
        versions = [self.get(ref)] if ref is not None else self.search()
        return maintenance.verify(self.engine, self.store, versions)

    def gc(self, dry_run: bool = False) -> Reclaimed:
        """Delete blobs no version references, and temp files of writers that are gone.

        Each blob is deleted while its catalog row is locked, so a push that is
        about to reference the same bytes waits, then writes them again.

        Raises:
            StorageError: a blob cannot be deleted.
            DatabaseError: the catalog cannot be reached.

        Example:
            >>> reg.gc(dry_run=True).bytes
            553433881
        """
        from registry import maintenance

        self._local("gc")
        return maintenance.gc(self.engine, self.store, dry_run)

    def prune_cache(self, max_size: int = 0, dry_run: bool = False) -> Reclaimed:
        """Remove the least recently used blobs from a remote store's cache down to `max_size`.

        Raises:
            ConfigurationError: the store is a local folder, which has no cache.

        Example:
            >>> reg.prune_cache(max_size=10 * 2**30).bytes
            1234567890
        """
        from registry import maintenance

        return maintenance.prune_cache(self.store, max_size, dry_run)

    # -- moving models between registries ---------------------------------------------------

    def export_bundle(
        self, refs: Sequence[str] | None, destination: str | os.PathLike[str] | BinaryIO
    ) -> list[ModelVersion]:
        """Write versions (None: every version) and their blobs to a bundle (a tar file).

        `destination` is a path, written atomically, or a binary stream such as
        `sys.stdout.buffer`. Each blob is checked against its digest while it is
        written; a damaged one stops the export and leaves no file.

        Raises:
            NotFoundError: a reference names no version.
            IntegrityError: a blob does not match its digest.
            StorageError: the destination cannot be written.

        Example:
            >>> [v.ref for v in reg.export_bundle(["vgg16@v3"], "models.tar")]
            ['vgg16@v3']
        """
        from registry import transfers

        self._local("export")
        found = self.search() if refs is None else [self.get(ref) for ref in refs]
        # Oldest first, each once: the destination numbers them in this order.
        unique = {v.ref: v for v in found}
        versions = sorted(unique.values(), key=lambda v: (v.name, v.version))
        with self._progress("export", sum(v.size for v in versions)) as advance:
            transfers.export(self.engine, self.store, versions, destination, advance)
        return versions

    def import_bundle(self, source: str | os.PathLike[str] | BinaryIO) -> list[ModelVersion]:
        """Record the versions of a bundle, each as the next version of its model.

        The bundle is untrusted: every field is validated and every blob verified
        before anything is recorded, and nothing in it is unpickled or called. A
        version equal to one already here (bytes, arch, arguments) is not made
        twice; the records say which are new (`is_new`). Aliases are not carried.

        Raises:
            BundleError: the bundle is damaged or holds what a registry never writes.
            NotFoundError: the file does not exist.

        Example:
            >>> [(v.ref, v.is_new) for v in reg.import_bundle("models.tar")]
            [('vgg16@v1', True)]
        """
        from registry import transfers

        self._local("import")
        return transfers.import_(self.engine, self.store, source)

    def _local(self, operation: str, need: str = "a catalog and a store") -> None:
        """Refuse, on a registry read through a server, what needs the catalog or store itself."""
        if self._remote is not None:
            raise ReadOnlyError(self._remote.url, operation, need)


def _progress_factory(choice: bool | Progress | None) -> Progress:
    if choice is True:
        return progress_bars.auto
    if choice is False or choice is None:
        return progress_bars.silent
    return choice


def _weights_digest(version: ModelVersion) -> str:
    """The blob holding a version's weights: a trusted pickle's safe copy, else the file."""
    return version.weights_sha256 or version.sha256
