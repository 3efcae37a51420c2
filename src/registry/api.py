"""`Registry`: the product's every operation, as a façade over a catalog and a store.

Each method validates what it is given and delegates: the records to a
`catalogs.Catalog` (SQL, or a registry server read through HTTP), the bytes
to a `stores.Store`, a push to `pushing`, the verified reads to `reads`. Where
the catalog and store live is decided once, in `_open`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from registry import behaviour, db, progress_bars, refs
from registry.config import Settings
from registry.errors import (
    ArchitectureError,
    BehaviourMismatchError,
    CheckInputError,
    CheckpointError,
    DeviceError,
    InvalidReferenceError,
    NotFoundError,
    UntrustedArchError,
    first_line,
)
from registry.progress_bars import Progress
from registry.pushing import PushOptions
from registry.reads import Reads
from registry.records import (
    CheckResult,
    Diff,
    Fingerprint,
    Lineage,
    ModelSummary,
    ModelVersion,
    TensorInfo,
)
from registry.signatures import KeyFiles, SignatureMethods, signed
from registry.team import TeamMethods
from registry.upkeep import UpkeepMethods

if TYPE_CHECKING:
    import torch
    from sqlalchemy import Engine
    from torch import nn

    from registry.architectures import Arch
    from registry.catalogs import Catalog
    from registry.publishing import Publisher
    from registry.stores import Store


# The longest description a version keeps (characters): a page of markdown, not a file.
MAX_DESCRIPTION = 64 << 10


class Registry(UpkeepMethods, TeamMethods, SignatureMethods):
    """A model registry: a catalog (SQLite or PostgreSQL) plus a content-addressed blob store.

    Arguments override the REGISTRY_HOME, REGISTRY_DATABASE_URL and
    REGISTRY_STORE environment variables. The catalog is opened, and a
    brand-new one created, on first use. `progress=True` shows a progress bar
    for long pushes and pulls (a widget in Jupyter, via tqdm); by default they
    are silent.

    `remote` (or REGISTRY_REMOTE), the URL of a `registry serve`, works
    through that server instead, with `token` (or REGISTRY_TOKEN): reads fetch
    its files into the verified cache; pushes send the files it lacks and
    changes are asked of it, as far as the token's scope reaches; what needs
    the catalog or the store itself (gc, verify, tokens, hooks) raises
    ReadOnlyError.

    `trusted_keys` (or REGISTRY_TRUSTED_KEYS), public key files: `load`,
    `pull`, `state_dict` and `import_bundle` then read only versions one of
    those keys signed, exactly as recorded (SPEC "Signed versions").

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
        trusted_keys: KeyFiles | None = None,
    ) -> None:
        self.settings = Settings.resolve(home, database_url, store, cache, remote, token)
        self._trusted_key_files = trusted_keys
        self.catalog, self.store, self._publisher = _open(self.settings)
        self._progress = _progress_factory(progress)
        self._reads = Reads(self.catalog, self.store, self._progress)

    def close(self) -> None:
        """Release the catalog's connections; the registry reopens them if used again.

        Example:
            >>> with Registry() as reg:   # closed when the block ends
            ...     reg.get("vgg16").ref
            'vgg16@v1'
        """
        self.catalog.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.settings.where()})"  # never a password or a token

    @property
    def engine(self) -> Engine:
        return self.catalog.engine

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
            '0009'
        """
        return self.catalog.schema_revision()

    def upgrade(self) -> str:
        """Migrate the catalog to the newest schema; return the revision it is now at.

        Raises:
            DatabaseError: the catalog cannot be reached.
            SchemaOutOfDateError: the catalog is newer than this registry.

        Example:
            >>> reg.upgrade()
            '0009'
        """
        return self.catalog.upgrade()

    # -- push ----------------------------------------------------------------

    def push(
        self,
        source: str | os.PathLike[str] | nn.Module | Mapping[str, torch.Tensor],
        arch: str | Callable[..., nn.Module] | None = None,
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
        sign: str | os.PathLike[str] | None = None,
    ) -> ModelVersion:
        """Register a checkpoint file or folder, an nn.Module or a state_dict as the next version.

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
        records the tensor manifest (names, dtypes, shapes, digests). `sign`, a
        private key file (`registry keys generate`), signs the version: its
        files the OpenSSF model signing way, its arch and arguments with them.

        A folder (`save_pretrained`'s, a sharded checkpoint, a PEFT adapter, a
        `torch.distributed.checkpoint`) is pushed whole, each file a blob; its
        kind is told from its content and a transformers folder needs no
        `arch`. A transformers `PreTrainedModel` is saved as `save_pretrained`
        saves it, then pushed as that folder.

        Raises:
            NotFoundError: the file does not exist.
            CheckpointError: the file is not a checkpoint (UnsafeCheckpointError:
                it holds pickled code and `trust_pickle` is off).
            ArchitectureError: the arch cannot be found or built.
            ArchitectureMismatchError: the weights do not fit the arch.
            InvalidReferenceError: a bad name, alias or tag key.
            NotFoundError: `parent` names no version.
            CheckInputError: the model rejects `check_input`.
            KeyFileError: `sign` is not a private key this registry signs with.

        Example:
            >>> reg.push("model_weights.pth", arch="vgg16", tags={"dataset": "imagenet"})
            ModelVersion(name='vgg16', version=1, ...)
        """
        options = PushOptions(
            arch=arch,
            name=name,
            arch_args=dict(arch_args or {}),
            tags=dict(tags or {}),
            aliases=tuple(aliases),
            description=description,
            trust_pickle=trust_pickle,
            key=key,
            strip_prefix=strip_prefix,
            parent=parent,
            check_input=check_input,
            sign=sign,
        )
        from registry import hf

        if hf.is_pretrained_model(source):
            with tempfile.TemporaryDirectory(prefix="registry-push-") as folder:
                hf.save(source, Path(folder))  # type: ignore[arg-type]  # a PreTrainedModel
                return self._publisher.push(folder, options, self._progress)
        return self._publisher.push(source, options, self._progress)

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
        return self.catalog.get(ref)

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
        return self.catalog.versions(name, arch, tags, limit)

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
        return self.catalog.search(name, arch, tags, limit)

    def models(self) -> list[ModelSummary]:
        """Every model with its version count, newest version, size and aliases, by name.

        Raises:
            DatabaseError: the catalog cannot be reached.

        Example:
            >>> [(m.name, m.latest_version) for m in reg.models()]
            [('resnet18', 2), ('vgg16', 3)]
        """
        return self.catalog.models()

    def pull(
        self,
        ref: str,
        destination: str | os.PathLike[str] | None = None,
        verify: bool = True,
        format: str = "original",
        trusted_keys: KeyFiles | None = None,
        with_signature: bool = False,
    ) -> Path:
        """Write a version's checkpoint file, verified, and return its path.

        `format="original"` gives back the pushed file bit-exact;
        `format="safetensors"` converts the weights. The default destination is
        `./NAME-vN.<ext>`; a folder as destination gets that file name inside it.
        Nothing is left at the destination when the bytes do not verify.
        `with_signature` also writes the version's model signing signature
        beside it (`NAME-vN.sig`), which `model_signing verify` checks.

        Raises:
            NotFoundError: no such version.
            IntegrityError: the stored bytes do not match their SHA-256.
            StorageError: the destination cannot be written.
            SignatureError: trusted keys are set and none signed exactly this
                version; or `with_signature` and it is not signed.

        Example:
            >>> reg.pull("vgg16@v1", "weights/")
            PosixPath('weights/vgg16-v1.pth')
        """
        version, verify, reads = self._readable(ref, trusted_keys, verify)
        if with_signature:
            signed(version)  # refused before anything is written
        path = reads.pull(version, destination, verify, format)
        if with_signature:
            self._write_signature(version, path)
        return path

    def write_to(
        self,
        ref: str,
        sink: BinaryIO,
        verify: bool = True,
        trusted_keys: KeyFiles | None = None,
    ) -> ModelVersion:
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
        version, verify, reads = self._readable(ref, trusted_keys, verify)
        reads.write_to(version, sink, verify)
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
        version, verify, reads = self._readable(ref, None, verify)
        return reads.local_file(version, verify)

    def state_dict(
        self, ref: str, verify: bool = True, trusted_keys: KeyFiles | None = None
    ) -> dict[str, torch.Tensor]:
        """A version's weights as a state_dict, memory-mapped where the format allows.

        Raises:
            NotFoundError: no such version.
            IntegrityError: the stored bytes do not match their SHA-256.
            SignatureError: trusted keys are set and none signed exactly this version.

        Example:
            >>> reg.state_dict("vgg16@v1")["classifier.6.bias"].shape
            torch.Size([1000])
        """
        version, verify, reads = self._readable(ref, trusted_keys, verify)
        return reads.state_dict(version, verify)

    def load(
        self,
        ref: str,
        device: str | None = None,
        verify: bool = True,
        trust_arch: bool = False,
        arch: str | Callable[..., nn.Module] | None = None,
        check: bool = False,
        merge: bool = False,
        trusted_keys: KeyFiles | None = None,
    ) -> nn.Module:
        """Rebuild a version's model with its weights, in eval mode, ready for inference.

        The recorded arch is data: a builder that is not an nn.Module class is
        called only with `trust_arch` or a REGISTRY_TRUSTED_ARCHS pattern.
        `arch` rebuilds with a builder you hand in instead (one defined in a
        notebook, or a class that has moved since the push); the weights are
        still checked against it. `check` reruns the behaviour check recorded
        at push (on the CPU, before moving to `device`). A transformers folder
        is rebuilt from its recorded config, with no network; a PEFT adapter
        is applied to its base (its parent version), or merged into it with
        `merge`. With trusted keys (`trusted_keys`, the registry's), only a
        version one of them signed is built, and its base too.

        Raises:
            NotFoundError: no such version.
            IntegrityError: the stored bytes do not match their SHA-256.
            ArchitectureError: the arch cannot be found or built
                (UntrustedArchError: a recorded function nobody trusted).
            ArchitectureMismatchError: the weights do not fit the arch.
            CheckpointError: a folder of files the registry cannot rebuild.
            DeviceError: the model cannot be moved to `device`.
            BehaviourMismatchError: with `check`, the model computes something else.
            CheckInputError: with `check`, the version has no behaviour check.
            SignatureError: trusted keys are set and none signed exactly this version.

        Example:
            >>> model = reg.load("vgg16@production", device="cuda")
            >>> model = reg.load("net@v1", arch=Net)   # Net defined in this notebook
        """
        version, verify, reads = self._readable(ref, trusted_keys, verify)
        if merge and version.format != "peft":
            raise CheckpointError(f"merge is for a PEFT adapter; {version.ref} is not one")
        recorded = self._fingerprint(version) if check else None
        if version.format == "peft":
            model = self._adapted(version, verify, trust_arch, merge, trusted_keys, reads)
        elif version.format == "transformers" and arch is None:
            model = reads.transformers_model(version, verify, trust_arch)
        else:
            model = reads.model(version, self._arch(version, trust_arch, arch), verify)
        if recorded is not None:
            result = behaviour.verdict(version, recorded, model)
            if not result.matches:
                raise BehaviourMismatchError(version.ref, result.max_abs_diff, result.detail)
        if device is not None:
            try:
                model = model.to(device)
            except (RuntimeError, AssertionError, ValueError) as exc:
                raise DeviceError(device, first_line(exc)) from None
        return model.eval()

    def _arch(
        self,
        version: ModelVersion,
        trust_arch: bool,
        arch: str | Callable[..., nn.Module] | None,
    ) -> Arch:
        """The builder a load calls: the recorded one (trusted as the policy says), or `arch`."""
        from registry import architectures

        if version.format == "folder":
            raise CheckpointError(
                f"{version.ref} is a folder of files this registry does not know how to "
                "rebuild; pull it instead"
            )
        try:
            if arch is None:
                return architectures.resolve(version.arch, trust=trust_arch)
            if isinstance(arch, str):
                return architectures.resolve(arch)
            return architectures.of(arch, for_load=True)
        except UntrustedArchError as exc:
            raise UntrustedArchError(exc.arch, exc.kind, version.ref) from None
        except ArchitectureError as exc:
            raise ArchitectureError(f"cannot rebuild {version.ref}: {exc}") from None

    def _adapted(
        self,
        version: ModelVersion,
        verify: bool,
        trust_arch: bool,
        merge: bool,
        trusted_keys: KeyFiles | None,
        reads: Reads,
    ) -> nn.Module:
        """A PEFT adapter's base, rebuilt from its version, with the adapter applied or merged."""
        if version.parent is None:
            raise NotFoundError(f"the base of adapter {version.ref}", "it records no parent")
        try:
            base = self.load(
                version.parent, verify=verify, trust_arch=trust_arch, trusted_keys=trusted_keys
            )
        except NotFoundError:
            raise NotFoundError(
                f"{version.parent}, the base of adapter {version.ref},", "it was deleted"
            ) from None
        return reads.adapted(version, base, verify, merge)

    # -- what changed, and whether it still computes the same -------------------

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
        return self._reads.manifest(self.get(ref))

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
        return self.catalog.lineage(ref)

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
        return self._reads.diff(older, newer)

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
        version = self.get(ref)
        recorded = self._fingerprint(version)
        model = self.load(version.ref, trust_arch=trust_arch)
        return behaviour.verdict(version, recorded, model)

    def _fingerprint(self, version: ModelVersion) -> Fingerprint:
        found = self.catalog.fingerprint(version)
        if found is None:
            raise CheckInputError(
                f"{version.ref} was pushed without --check-input, so there is no recorded "
                "behaviour to check; push it again with --check-input SHAPE"
            )
        return found

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
        refs.validate_alias(alias)
        return self.catalog.set_alias(ref, alias)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias from a model.

        Raises:
            InvalidReferenceError: a bad model name or alias.
            NotFoundError: no such model or alias.

        Example:
            >>> reg.delete_alias("vgg16", "staging")
        """
        refs.validate_name(name)
        refs.validate_alias(alias)
        self.catalog.delete_alias(name, alias)

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
        tags = refs.validate_tags(tags)
        for key in deleted:
            if key in tags:
                raise InvalidReferenceError(key, "tag key", "it is both set and deleted")
        return self.catalog.set_tags(ref, tags, deleted)

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
        return self.catalog.delete(ref)

    def describe(self, ref: str, description: str) -> ModelVersion:
        """Set a version's description (markdown, as the server's page renders it).

        Raises:
            InvalidReferenceError: a bad reference.
            NotFoundError: no such version.

        Example:
            >>> reg.describe("vgg16@v1", "Fine-tuned on **CIFAR-10**.").description
            'Fine-tuned on **CIFAR-10**.'
        """
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise InvalidReferenceError(
                str(description)[:40], "description", f"at most {MAX_DESCRIPTION} characters"
            )
        return self.catalog.describe(ref, description)


def _open(settings: Settings) -> tuple[Catalog, Store, Publisher]:
    """The catalog, store and publisher the settings name: a registry server's, or a
    database and store of this process's own."""
    if settings.remote is not None:
        from registry.catalogs.http import HttpCatalog
        from registry.remote import Client
        from registry.stores.http import HttpStore
        from registry.uploads import ServerPublisher

        client = Client(settings.remote, settings.token)
        digests = settings.home / "file-digests.sqlite3"
        return (
            HttpCatalog(client),
            HttpStore(client, settings.cache),
            ServerPublisher(client, digests),
        )
    from registry.catalogs.sql import SqlCatalog
    from registry.publishing import LocalPublisher
    from registry.stores import open_store

    catalog = SqlCatalog(settings.database_url)
    store = open_store(settings.store, settings.cache)
    return catalog, store, LocalPublisher(catalog, store)


def _progress_factory(choice: bool | Progress | None) -> Progress:
    if choice is True:
        return progress_bars.auto
    if choice is False or choice is None:
        return progress_bars.silent
    return choice
