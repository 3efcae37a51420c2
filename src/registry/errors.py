"""The exception hierarchy: every failure a user can cause is a `RegistryError`.

Each error carries its fields and builds a one-line message from them that
says what was wrong and, where there is one, what to do about it. The CLI
prints that message as `Error: <message>`.
"""

from __future__ import annotations

from collections.abc import Sequence


class RegistryError(Exception):
    """Root of every error the registry raises on purpose."""


class ConfigurationError(RegistryError, ValueError):
    """A setting (home, database URL, store) is unusable."""


class MissingExtraError(ConfigurationError):
    """An optional dependency a command needs is not installed."""

    def __init__(self, extra: str, module: str, needed_by: str) -> None:
        self.extra = extra
        self.module = module
        self.needed_by = needed_by
        super().__init__(
            f"{needed_by} needs {module}, which is not installed; "
            f'pip install "torch-registry[{extra}]"'
        )


class InvalidReferenceError(RegistryError, ValueError):
    """A model name, reference, alias or tag breaks the naming rules."""

    def __init__(self, value: str, kind: str, rule: str) -> None:
        self.value = value
        self.kind = kind
        self.rule = rule
        super().__init__(f"invalid {kind} {value!r}: {rule}")


class NotFoundError(RegistryError, LookupError):
    """A model, version, alias or file does not exist."""

    def __init__(self, what: str, hint: str = "") -> None:
        self.what = what
        super().__init__(f"{what} not found" + (f"; {hint}" if hint else ""))


class AmbiguousReferenceError(InvalidReferenceError):
    """A digest prefix matches more than one version."""

    def __init__(self, value: str, candidates: Sequence[str]) -> None:
        self.candidates = list(candidates)
        super().__init__(
            value,
            "reference",
            f"its digest prefix matches {len(candidates)} versions "
            f"({', '.join(candidates)}); give more hex digits",
        )


class IntegrityError(RegistryError):
    """A blob's bytes do not match the digest the catalog recorded."""

    def __init__(self, ref: str, expected: str, actual: str | None) -> None:
        self.ref = ref
        self.expected = expected
        self.actual = actual
        found = "the blob is missing" if actual is None else f"its bytes hash to {_named(actual)}"
        super().__init__(
            f"{ref} failed verification: expected {_named(expected)} but {found}; "
            "the store is corrupt (run `registry verify`)"
        )


def _named(digest: str) -> str:
    """A digest with its algorithm: bare hex is SHA-256, others carry theirs (`blake3:...`)."""
    return digest if ":" in digest else f"sha256:{digest}"


class CheckpointError(RegistryError, ValueError):
    """A file is not a checkpoint the registry can read."""


class UnsafeCheckpointError(CheckpointError):
    """Reading the checkpoint would run pickled code the user has not trusted."""


class BundleError(RegistryError, ValueError):
    """A bundle to import is damaged or holds what a registry never writes."""


class ArchitectureError(RegistryError, ValueError):
    """An `--arch` cannot be resolved or its builder fails."""


class UntrustedArchError(ArchitectureError):
    """An arch from the catalog names a callable the loading side has not trusted."""

    def __init__(self, arch: str, kind: str, ref: str = "") -> None:
        self.arch = arch
        self.kind = kind
        self.ref = ref
        super().__init__(
            (f"cannot rebuild {ref}: " if ref else "")
            + f"arch {arch!r} is a {kind}, not a torch.nn.Module class, so it could run any "
            "code and was not called; if you trust it, pass --trust-arch (trust_arch=True) "
            "or add it to REGISTRY_TRUSTED_ARCHS"
        )


class ArchitectureMismatchError(RegistryError, ValueError):
    """The weights do not fit the architecture: keys or shapes differ."""

    def __init__(
        self,
        arch: str,
        missing: Sequence[str],
        unexpected: Sequence[str],
        mis_shaped: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]],
        hint: str = "",
    ) -> None:
        self.arch = arch
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mis_shaped = list(mis_shaped)
        self.hint = hint
        parts = []
        if missing:
            parts.append(_listing(len(missing), "missing key", missing))
        if unexpected:
            parts.append(_listing(len(unexpected), "unexpected key", unexpected))
        if mis_shaped:
            shapes = [f"{k} {list(got)} vs {list(want)}" for k, got, want in mis_shaped]
            parts.append(_listing(len(mis_shaped), "mis-shaped key", shapes))
        message = f"weights do not fit arch {arch!r}: " + "; ".join(parts)
        super().__init__(message + (f"; {hint}" if hint else ""))


class SchemaOutOfDateError(RegistryError):
    """The catalog's schema revision is not the one this registry needs."""

    def __init__(self, current: str | None, head: str, newer: bool = False) -> None:
        self.current = current
        self.head = head
        if newer:
            message = (
                f"catalog is at schema revision {current}, newer than this registry "
                f"knows ({head}); upgrade the registry package"
            )
        else:
            message = (
                f"catalog is at schema revision {current or 'none'}, behind {head}; "
                "run `registry db upgrade`"
            )
        super().__init__(message)


class DatabaseError(RegistryError):
    """The catalog database cannot be reached or used."""


class DeviceError(RegistryError, RuntimeError):
    """The model cannot be moved to the requested device."""

    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        super().__init__(f"cannot load onto device {device!r}: {reason}")


class StorageError(RegistryError, OSError):
    """The blob store or a destination path cannot be read or written."""


class ReadOnlyError(RegistryError):
    """A registry read through a `registry serve` was asked what only a catalog or store can do."""

    def __init__(self, url: str, operation: str, need: str = "a catalog and a store") -> None:
        self.url = url
        self.operation = operation
        self.need = need
        super().__init__(f"registry at {url} is read-only: {operation} needs {need}")


class AccessDeniedError(RegistryError, PermissionError):
    """A token was refused (`status` 401: unknown, revoked or expired) or lacks the scope or
    the model a request needs (`status` 403)."""

    def __init__(self, message: str, status: int = 403) -> None:
        self.status = status
        super().__init__(message)


class CheckInputError(RegistryError, ValueError):
    """A behaviour check cannot run: no recorded check input, or the model rejects the shape."""


class BehaviourMismatchError(RegistryError):
    """A rebuilt model computes something else than it did at push."""

    def __init__(self, ref: str, max_abs_diff: float, detail: str) -> None:
        self.ref = ref
        self.max_abs_diff = max_abs_diff
        self.detail = detail
        super().__init__(f"{ref} behaves differently: {detail}")


class SignatureError(RegistryError):
    """A version's signature is missing, by a key nobody trusted, or not of what it claims."""

    def __init__(self, ref: str, problem: str, hint: str = "") -> None:
        self.ref = ref
        self.problem = problem
        self.hint = hint
        super().__init__(f"{ref} {problem}" + (f"; {hint}" if hint else ""))


class KeyFileError(ConfigurationError):
    """A signing or trusted key file cannot be read or is not a key the registry signs with."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"key {path}: {problem}")


class MainModuleWarning(UserWarning):
    """A version's builder lives in `__main__`: only a process defining it can rebuild it."""


def from_server(kind: str, message: str) -> RegistryError | None:
    """The error a registry server named (`kind`, its class name here) with its message, or
    None when `kind` is not one of these: a server's words are data, only a name is looked up."""
    found = globals().get(kind)
    if not (isinstance(found, type) and issubclass(found, RegistryError)):
        return None
    error = found.__new__(found)
    Exception.__init__(error, message)
    if isinstance(error, AccessDeniedError):
        error.status = 403
    return error


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line, or its type for an empty one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _listing(count: int, noun: str, items: Sequence[str], shown: int = 5) -> str:
    head = ", ".join(items[:shown]) + (", ..." if count > shown else "")
    return f"{count} {noun}{'s' if count != 1 else ''} ({head})"
