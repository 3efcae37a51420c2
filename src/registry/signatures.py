"""`Registry`'s side of signed versions: the trust a read insists on, and checking signatures.

`signing` does the cryptography; here a read finds the keys it trusts (its
`trusted_keys=`, the registry's, REGISTRY_TRUSTED_KEYS) and, when there are
any, refuses a version no trusted key signed exactly as the catalog, bundle
or server describes it, before a byte is read. A read that insists on a
signature also verifies every byte: the signature vouches for the digests,
and only a verified read ties the bytes to them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import files, signing
from registry.errors import NotFoundError, SignatureError

if TYPE_CHECKING:
    from registry.reads import Reads
    from registry.records import ModelVersion

KeyFiles = Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class SignatureCheck:
    """What `verify_signatures` found for one version."""

    ref: str
    status: str  # "valid", "unsigned", "untrusted" or "invalid"
    signed_by: str | None  # the fingerprint the signature names
    trusted: bool  # checked against a trusted key (not only the key the signature names)
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "status": self.status,
            "signed_by": self.signed_by,
            "trusted": self.trusted,
            "problem": self.problem,
        }


class SignatureMethods:
    """Signed-version methods of `Registry` (SPEC "Signed versions")."""

    _trusted_key_files: KeyFiles | None
    _reads: Reads

    if TYPE_CHECKING:  # Registry's own

        def get(self, ref: str) -> ModelVersion: ...

        def search(self) -> list[ModelVersion]: ...

    def trusted_keys(self, also: KeyFiles | None = None) -> tuple[signing.TrustedKey, ...]:
        """The keys reads insist on: this registry's (`trusted_keys=`, else
        REGISTRY_TRUSTED_KEYS) and `also`; none: reads take unsigned versions.

        Raises:
            KeyFileError: a key file is missing or holds no usable public key.

        Example:
            >>> [k.fingerprint[:16] for k in reg.trusted_keys(["team.pub"])]
            ['19ee86813f7ff7e8']
        """
        own = (
            signing.load_trusted(self._trusted_key_files)
            if self._trusted_key_files is not None
            else signing.trusted_from_environment()
        )
        return own + (signing.load_trusted(also) if also else ())

    def _readable(
        self, ref: str, trusted_keys: KeyFiles | None, verify: bool
    ) -> tuple[ModelVersion, bool, Reads]:
        """The version `ref` names, once any trusted key checked its signature; whether to
        verify its bytes (always, when a signature was insisted on), and the reads to do
        it with (against the digests signed, never the catalog's others)."""
        version = self.get(ref)
        trusted = self.trusted_keys(trusted_keys)
        if not trusted:
            return version, verify, self._reads
        claims = signing.Claims.of(version, self._base(version))
        found = signing.check(version.signature, claims, trusted, version.ref)
        return version, True, self._reads.trusting(found.blake3)

    def _base(self, version: ModelVersion) -> str | None:
        """The digest of the version a PEFT adapter applies to, which its signature names."""
        if version.format != "peft" or version.parent is None:
            return None
        try:
            return self.get(version.parent).sha256
        except NotFoundError:  # deleted: no base can match what was signed
            return None

    def verify_signatures(
        self, ref: str | None = None, trusted_keys: KeyFiles | None = None
    ) -> list[SignatureCheck]:
        """Check the signature of one version (or every version) without reading its files.

        With trusted keys (see `trusted_keys`), a signature is valid only when one
        of them made it; without, only whether it is whole and vouches for what
        the catalog records, by the key it names (which proves nothing of who
        that is). Reading the version then verifies its bytes against the
        digests the signature covers.

        Raises:
            NotFoundError: `ref` names no version.
            KeyFileError: a trusted key file is missing or holds no usable public key.

        Example:
            >>> [(c.ref, c.status) for c in reg.verify_signatures("vgg16@v4")]
            [('vgg16@v4', 'valid')]
        """
        trusted = self.trusted_keys(trusted_keys)
        versions = [self.get(ref)] if ref is not None else self.search()
        return [_checked(v, self._base(v), trusted) for v in versions]

    def _write_signature(self, version: ModelVersion, pulled: Path) -> Path:
        """Write `version`'s model signing bundle beside its pulled file or folder."""
        destination = signature_path(pulled, version.files is not None)
        text = signing.bundle_text(signed(version)).encode()
        with files.atomic_file(destination) as out:
            out.write(text)
        return destination


def signed(version: ModelVersion) -> dict[str, Any]:
    """The version's signature document; SignatureError when it has none."""
    if version.signature is None:
        raise SignatureError(version.ref, "is not signed, so it has no signature to write")
    return version.signature


def signature_path(pulled: Path, folder: bool) -> Path:
    """Where `pull --with-signature` writes: `NAME-vN.sig` beside `NAME-vN.pth` or `NAME-vN/`."""
    return pulled.parent / f"{pulled.name}.sig" if folder else pulled.with_suffix(".sig")


def _checked(
    version: ModelVersion, base: str | None, trusted: Iterable[signing.TrustedKey]
) -> SignatureCheck:
    keys = tuple(trusted)
    claims = signing.Claims.of(version, base)
    by = version.signed_by
    try:
        if keys:
            signing.check(version.signature, claims, keys, version.ref)
        else:
            signing.check_own(version.signature, claims, version.ref)
    except SignatureError as exc:
        status = "invalid"
        if version.signature is None:
            status = "unsigned"
        elif keys and all(k.fingerprint != by for k in keys):
            status = "untrusted"
        return SignatureCheck(version.ref, status, by, bool(keys), str(exc))
    return SignatureCheck(version.ref, "valid", by, bool(keys))
