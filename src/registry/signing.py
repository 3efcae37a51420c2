"""Signed versions (SPEC "Signed versions"): key pairs, signing a version, checking a signature.

A signed version keeps one JSON document with it (`versions.signature`):

    signed_by   the key's fingerprint: the hex SHA-256 of its public key's PEM
                (what model_signing calls the key's "hint")
    public_key  that PEM, to say who signed; never trusted because it is there
    files       an OpenSSF model signing bundle: a Sigstore bundle (v0.3) whose DSSE
                envelope holds an in-toto statement listing each file's SHA-256, as
                `model_signing` writes it; `pull --with-signature` writes it out
    version     the registry's own DSSE envelope, over everything a read decides by
                (`Claims`: the name, arch, arguments, format, details, extension,
                safe weights copy, an adapter's base) and each blob's BLAKE3

Both envelopes are signed by the one key: ECDSA on P-256 (what `registry keys
generate` makes), P-384 or P-521, the curves model_signing verifies. A loading
machine trusts keys, never documents: `check` picks the trusted key the
document names, verifies both envelopes with it and compares what they list
with the version about to be read, whose every byte the read then verifies
against the digests signed (by their BLAKE3, else their SHA-256), never the
catalog's. Everything read here is somebody else's data: a document of any
other shape is no signature, one that does not verify is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import KeyFileError, SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from registry.records import ModelVersion, NewVersion

TRUSTED_KEYS_ENV = "REGISTRY_TRUSTED_KEYS"

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
FILES_PREDICATE = "https://model_signing/signature/v1.0"  # model_signing 1.x reads this
VERSION_PREDICATE = "https://github.com/torch-registry/signed-version/v1"
# What model_signing ignores in a folder by default, recorded as it records it.
IGNORED_PATHS = [".git", ".gitattributes", ".github", ".gitignore"]
SINGLE_FILE = "."  # model_signing's name for the one file of a single-file model


@dataclass(frozen=True)
class Claims:
    """What a signature vouches for: a version as its reads will use it.

    Everything a read decides by is here: the files, the arch and its
    arguments, which weights of a file are read (`format`, `details`: the
    key of a training checkpoint, a stripped prefix, the serialization), the
    safe copy of a trusted pickle, the extension a pull names its file by,
    and an adapter's base. The version number, tags, aliases and description
    are not: the catalog hands them out.
    """

    name: str
    arch: str
    arch_args: Mapping[str, Any]
    files: Mapping[str, str]  # "." for a single file, else each relative path: its SHA-256
    weights: str | None  # the safe copy of a trusted pickle's weights, what its loads read
    format: str
    extension: str
    details: Mapping[str, Any]
    base: str | None = None  # a PEFT adapter's base: the digest of its file (list)

    @classmethod
    def of(cls, version: ModelVersion, base: str | None = None) -> Claims:
        """What a recorded version (the catalog's, a server's, a bundle's) claims; `base`,
        the sha256 of the version its adapter applies to."""
        return cls._made(version, version.sha256, base)

    @classmethod
    def of_new(cls, new: NewVersion, base: str | None = None) -> Claims:
        """What a version about to be recorded will claim."""
        return cls._made(new, new.blob_sha256, base)

    @classmethod
    def _made(cls, version: ModelVersion | NewVersion, sha256: str, base: str | None) -> Claims:
        files = version.files
        listed = {SINGLE_FILE: sha256} if files is None else {f.path: f.sha256 for f in files}
        return cls(
            version.name,
            version.arch,
            dict(version.arch_args),
            listed,
            version.weights_sha256,
            version.format,
            version.extension,
            dict(version.details),
            base if version.format == "peft" else None,
        )

    def predicate(self) -> dict[str, Any]:
        """The registry's statement of these claims, less the name and files' root."""
        return {
            "arch": self.arch,
            "arch_args": dict(self.arch_args),
            "files": dict(self.files),
            "weights": self.weights,
            "format": self.format,
            "extension": self.extension,
            "details": dict(self.details),
            "base": self.base,
        }


@dataclass(frozen=True)
class Verified:
    """A signature that checked: the key that made it, and the BLAKE3 it gives each blob
    (by SHA-256), which reads then verify against instead of the catalog's unsigned ones."""

    fingerprint: str
    blake3: Mapping[str, str]


@dataclass(frozen=True)
class TrustedKey:
    """A public key the loading side trusts, by its fingerprint."""

    fingerprint: str
    key: ec.EllipticCurvePublicKey
    path: str


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    fingerprint: str


def generate(folder: str | os.PathLike[str]) -> KeyPair:
    """Write a new ECDSA P-256 key pair into `folder`: private.pem (readable by its owner
    alone, unencrypted) and public.pem. Keys already there are never overwritten, nor a
    link followed; a pair left half-written is removed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    target = Path(folder).expanduser()
    private, public = target / "private.pem", target / "public.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    written: list[Path] = []
    try:
        target.mkdir(parents=True, exist_ok=True)
        for path, data, mode in ((private, private_pem, 0o600),
                                 (public, _public_pem(key.public_key()), 0o644)):  # fmt: skip
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            written.append(path)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise KeyFileError(
                str(exc.filename), "exists already; keys are never overwritten"
            ) from None
        raise KeyFileError(str(target), f"cannot write it: {exc.strerror or exc}") from None
    return KeyPair(private, public, fingerprint(key.public_key()))


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    return hashlib.sha256(_public_pem(key)).hexdigest()


def load_trusted(paths: Iterable[str | os.PathLike[str]]) -> tuple[TrustedKey, ...]:
    """The public keys in these PEM files."""
    found = {}
    for path in paths:
        key = _load_key(Path(path).expanduser(), private=False)
        found[fingerprint(key)] = TrustedKey(fingerprint(key), key, str(path))
    return tuple(found.values())


def trusted_from_environment() -> tuple[TrustedKey, ...]:
    """The keys REGISTRY_TRUSTED_KEYS names: PEM files, separated by commas or colons. Set
    but naming none is an error, not a registry that trusts everything."""
    setting = os.environ.get(TRUSTED_KEYS_ENV)
    if setting is None:
        return ()
    listed = [p.strip() for p in setting.replace(os.pathsep, ",").split(",") if p.strip()]
    if not listed:
        raise KeyFileError(f"{TRUSTED_KEYS_ENV}={setting!r}", "names no key file")
    return load_trusted(listed)


def check_signing_key(key_path: str | os.PathLike[str]) -> None:
    """KeyFileError unless `key_path` holds a private key this registry signs with."""
    _load_key(Path(key_path).expanduser(), private=True)


def sign(
    key_path: str | os.PathLike[str],
    claims: Claims,
    blake3: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The signature document of `claims`, signed by the private key at `key_path`.

    `blake3` (by SHA-256) is signed beside them: a trusted read then hashes the
    blobs by that BLAKE3 on every core; a blob without one is hashed by SHA-256.
    """
    key = _load_key(Path(key_path).expanduser(), private=True)
    public = key.public_key()
    names = sorted(claims.files)
    subject = [{"name": claims.name, "digest": {"sha256": _root(claims.files)}}]
    files_statement = {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": FILES_PREDICATE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": IGNORED_PATHS,
            },
            "resources": [
                {"name": n, "algorithm": "sha256", "digest": claims.files[n]} for n in names
            ],
        },
    }
    version_statement = {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": VERSION_PREDICATE,
        "predicate": {**claims.predicate(), "blake3": dict(blake3 or {})},
    }
    return {
        "signed_by": fingerprint(public),
        "public_key": _public_pem(public).decode(),
        "files": {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {
                "publicKey": {"hint": fingerprint(public)},
                "tlogEntries": [],
            },
            "dsseEnvelope": _envelope(key, files_statement),
        },
        "version": _envelope(key, version_statement),
    }


def signed_by(document: Any) -> str | None:
    """The fingerprint a signature document names (not checked), or None: only ever 64 hex
    digits, so that what a catalog holds cannot print anything else."""
    found = document.get("signed_by") if isinstance(document, Mapping) else None
    return found if isinstance(found, str) and _FINGERPRINT.fullmatch(found) else None


def well_formed(document: Any) -> dict[str, Any] | None:
    """`document` if it has the shape `sign` writes, else None (a bundle's, a server's or a
    client's document, checked before it is stored: strings in fixed places, nothing deep)."""
    try:
        bundle, envelopes = document["files"], [document["files"]["dsseEnvelope"]]
        envelopes.append(document["version"])
        shaped = (
            set(document) == {"signed_by", "public_key", "files", "version"}
            and signed_by(document) is not None
            and isinstance(document["public_key"], str)
            and set(bundle) == {"mediaType", "verificationMaterial", "dsseEnvelope"}
            and isinstance(bundle["mediaType"], str)
            and bundle["verificationMaterial"]
            == {
                "publicKey": {"hint": document["signed_by"]},
                "tlogEntries": [],
            }
            and all(_envelope_shaped(e) for e in envelopes)
        )
    except (KeyError, TypeError):
        return None
    size = len(document["public_key"]) + sum(len(e["payload"]) for e in envelopes)
    return document if shaped and size <= MAX_DOCUMENT else None


def check(
    document: Any,
    claims: Claims,
    trusted: Iterable[TrustedKey],
    ref: str,
) -> Verified:
    """That a trusted key signed exactly `claims`; what it signed; SignatureError otherwise."""
    if document is None:
        raise SignatureError(
            ref,
            "is not signed",
            "only versions signed by a trusted key are read (REGISTRY_TRUSTED_KEYS, "
            "--trusted-key, trusted_keys=)",
        )
    by = signed_by(document)
    key = next((k for k in trusted if k.fingerprint == by), None)
    if key is None:
        raise SignatureError(
            ref,
            f"is signed by key {_short(by)}, which is not trusted here",
            "add its public key to REGISTRY_TRUSTED_KEYS or --trusted-key if you trust it",
        )
    return _check_with(document, claims, key.key, ref, _short(by))


def check_own(document: Any, claims: Claims, ref: str) -> Verified:
    """With no trusted keys: that the document verifies with the key it names, and vouches
    for `claims`. This says the signature is whole, not whom to trust."""
    if document is None:
        raise SignatureError(ref, "is not signed")
    by = signed_by(document)
    try:
        key = _public_from_pem(str(document["public_key"]).encode())
    except (KeyError, TypeError, ValueError):
        raise SignatureError(ref, "has a malformed signature") from None
    if fingerprint(key) != by:
        raise SignatureError(ref, f"has a signature whose key is not {_short(by)}")
    return _check_with(document, claims, key, ref, _short(by))


def bundle_text(document: Mapping[str, Any]) -> str:
    """The model_signing signature file of a signed version (`pull --with-signature`)."""
    return json.dumps(document["files"], indent=2) + "\n"


# -- the checks ----------------------------------------------------------------------------


def verified_files(bundle: Any, key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The files a model signing bundle lists (path, or "." for a single file: SHA-256), once
    its signature verifies with `key`; ValueError (BadSignature) for any other bundle."""
    if bundle["mediaType"] != BUNDLE_MEDIA_TYPE:
        raise ValueError("not a Sigstore bundle v0.3")
    statement = _opened(bundle["dsseEnvelope"], key, FILES_PREDICATE)
    resources = statement["predicate"]["resources"]
    listed = {r["name"]: r["digest"] for r in resources if r["algorithm"] == "sha256"}
    if len(listed) != len(resources) or not all(isinstance(d, str) for d in listed.values()):
        raise ValueError("a file is hashed by another algorithm than SHA-256")
    if statement["subject"][0]["digest"]["sha256"] != _root(listed):
        raise ValueError("its subject is not the digest of its files")
    return listed


class BadSignature(ValueError):
    """An envelope whose signature does not verify with the key."""


def _check_with(
    document: Any, claims: Claims, key: ec.EllipticCurvePublicKey, ref: str, by: str
) -> Verified:
    try:
        if well_formed(document) is None:
            raise ValueError("not the shape a registry writes")
        listed = verified_files(document["files"], key)
        version = _opened(document["version"], key, VERSION_PREDICATE)
        subject, predicate = version["subject"][0], dict(version["predicate"])
        if predicate["files"] != listed or subject["digest"]["sha256"] != _root(listed):
            raise ValueError("the two envelopes list different files")
        blake3 = predicate.pop("blake3")
        if not isinstance(blake3, dict) or not all(
            isinstance(v, str) and _HEX64.fullmatch(v) for v in blake3.values()
        ):
            raise ValueError("blake3")
        signed = {"name": subject["name"], **predicate}
    except BadSignature:
        raise SignatureError(
            ref,
            f"has a signature that does not verify with key {by}",
            "the catalog, store, bundle or server may have been tampered with",
        ) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError):
        raise SignatureError(ref, "has a malformed signature") from None
    actual = {"name": claims.name, **claims.predicate()}
    if set(signed) != set(actual):
        raise SignatureError(ref, "has a malformed signature")
    for what in ("name", "files", "arch", "arch_args", "format", "details", "weights",
                 "extension", "base"):  # fmt: skip
        if _canonical(signed[what]) != _canonical(actual[what]):
            raise _differs(ref, _SAID.get(what, f"its {what}"), by)
    return Verified(str(signed_by(document)), blake3)


_SAID = {"arch_args": "its arguments", "base": "the base it adapts"}
_FINGERPRINT = _HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_DOCUMENT = 16 << 20  # a folder of the most files a version may hold, listed twice


def _canonical(value: Any) -> str:
    """One text for one JSON value: 10, 10.0 and True differ, key order does not."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _envelope_shaped(envelope: Any) -> bool:
    return (
        isinstance(envelope, Mapping)
        and set(envelope) == {"payload", "payloadType", "signatures"}
        and isinstance(envelope["payload"], str)
        and isinstance(envelope["payloadType"], str)
        and isinstance(envelope["signatures"], list)
        and len(envelope["signatures"]) == 1
        and isinstance(envelope["signatures"][0], Mapping)
        and set(envelope["signatures"][0]) == {"sig", "keyid"}
        and all(isinstance(v, str) for v in envelope["signatures"][0].values())
    )


def _differs(ref: str, what: str, by: str) -> SignatureError:
    return SignatureError(
        ref,
        f"differs from what key {by} signed: {what}",
        "the catalog, store, bundle or server may have been tampered with",
    )


def _envelope(key: ec.EllipticCurvePrivateKey, statement: Mapping[str, Any]) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = json.dumps(statement, indent=2, sort_keys=True).encode()
    signature = key.sign(_pae(payload), ec.ECDSA(_hash_for(key.curve)))
    return {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
    }


def _opened(envelope: Any, key: ec.EllipticCurvePublicKey, predicate: str) -> dict[str, Any]:
    """The statement an envelope holds, once its signature verifies with `key`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise ValueError("payload type")
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
    except binascii.Error:
        raise ValueError("base64") from None
    if len(signatures) != 1:
        raise ValueError("one signature")
    try:
        key.verify(signatures[0], _pae(payload), ec.ECDSA(_hash_for(key.curve)))
    except InvalidSignature:
        raise BadSignature("the signature does not verify with the key") from None
    statement = json.loads(payload)
    if statement["_type"] != STATEMENT_TYPE or statement["predicateType"] != predicate:
        raise ValueError("statement type")
    return dict(statement)


def _pae(payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what an envelope's signature covers."""
    kind = PAYLOAD_TYPE.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _root(files: Mapping[str, str]) -> str:
    """model_signing's subject digest: the SHA-256 of the files' digests in path order."""
    return hashlib.sha256(b"".join(bytes.fromhex(files[n]) for n in sorted(files))).hexdigest()


def _short(fingerprint: str | None) -> str:
    return (fingerprint or "?")[:16]


# -- keys ----------------------------------------------------------------------------------


def _hash_for(curve: ec.EllipticCurve) -> Any:
    from cryptography.hazmat.primitives import hashes

    algorithms: dict[int, type[hashes.HashAlgorithm]] = {
        256: hashes.SHA256,
        384: hashes.SHA384,
        521: hashes.SHA512,
    }
    return algorithms[curve.key_size]()


def _public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_from_pem(pem: bytes) -> ec.EllipticCurvePublicKey:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(pem)
    if not _supported(key):
        raise ValueError("not a P-256, P-384 or P-521 key")
    return key  # type: ignore[return-value]  # _supported checked its type


def _supported(public: Any) -> bool:
    """An ECDSA key on a curve model signing verifies (by the curve, not its size)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    curves = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
    return isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, curves)


def _load_key(path: Path, private: bool) -> Any:
    """The private key in a PEM file, or (not `private`) the public key in one."""
    from cryptography.hazmat.primitives import serialization

    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(str(path), "no such file") from None
    except OSError as exc:
        raise KeyFileError(str(path), f"cannot read it: {exc.strerror or exc}") from None
    holds_private = b"PRIVATE KEY-----" in pem
    if holds_private != private:
        raise KeyFileError(
            str(path),
            "is not a private key (sign with private.pem)"
            if private
            else "is a private key: trust its public.pem instead, and keep this one secret",
        )
    try:
        if private:
            key: Any = serialization.load_pem_private_key(pem, password=None)
        else:
            key = serialization.load_pem_public_key(pem)
    except TypeError:
        raise KeyFileError(str(path), "is encrypted; use an unencrypted key file") from None
    except ValueError:
        kind = "private" if private else "public"
        raise KeyFileError(str(path), f"is not a PEM {kind} key") from None
    if not _supported(key.public_key() if private else key):
        raise KeyFileError(
            str(path),
            "is not an ECDSA key on P-256, P-384 or P-521, the keys model signing verifies",
        )
    return key
