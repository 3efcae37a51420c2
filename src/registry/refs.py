"""Parse and validate model names, references, aliases, tags, digests and extensions. No I/O.

vgg16                 latest version of model "vgg16"
vgg16@latest          same
vgg16@v3  vgg16@3     version 3
vgg16@production      the version the alias "production" points to
vgg16@sha256:397923af the version whose digest starts with that hex (>= 8 chars)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from registry.errors import InvalidReferenceError

MAX_NAME_LENGTH = 128
MIN_DIGEST_PREFIX = 8
MAX_VERSION_DIGITS = 9  # fits the catalog's 32-bit version column

_PART = r"[a-z0-9][a-z0-9._-]*"
_NAME = re.compile(rf"{_PART}(/{_PART})?")
_ALIAS = re.compile(r"[a-z][a-z0-9._-]*")
_VERSION = re.compile(r"v?([0-9]+)")
_DIGEST = re.compile(r"sha256:([0-9a-f]+)")
_TAG_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A recorded extension names the pulled file (NAME-vN.EXT): one suffix, with no
# separator, space or control character in it. Push, bundles and the remote client
# all hold a version to this rule.
# The dot and up to 31 characters: the catalog's column holds 32.
_EXTENSION = re.compile(r"(\.[^\s./\\\x00-\x1f\x7f-\x9f]{1,31})?")
# What no text field holds: it could forge a line of the CLI's output or a terminal escape.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

NAME_RULE = (
    "use lowercase letters, digits, '.', '_', '-', optionally one '/' after a namespace, "
    f"starting with a letter or digit, at most {MAX_NAME_LENGTH} characters"
)
ALIAS_RULE = (
    "use lowercase letters, digits, '.', '_', '-', starting with a letter; "
    "not 'latest' and not a version such as 'v12'"
)
TAG_KEY_RULE = "use letters, digits, '.', '_', '-', '/', at most 128 characters"

Selector = Literal["latest", "version", "alias", "digest"]


@dataclass(frozen=True)
class Ref:
    """A parsed reference: a model name and which of its versions."""

    name: str
    selector: Selector = "latest"
    value: str | int | None = None

    def __str__(self) -> str:
        if self.selector == "latest":
            return self.name
        if self.selector == "version":
            return f"{self.name}@v{self.value}"
        if self.selector == "digest":
            return f"{self.name}@sha256:{self.value}"
        return f"{self.name}@{self.value}"


def validate_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise InvalidReferenceError."""
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InvalidReferenceError(name, "model name", NAME_RULE)
    return name


def validate_alias(alias: str) -> str:
    """Return `alias` if it can name an alias, else raise InvalidReferenceError."""
    if (
        len(alias) > MAX_NAME_LENGTH
        or not _ALIAS.fullmatch(alias)
        or alias == "latest"
        or _VERSION.fullmatch(alias)
    ):
        raise InvalidReferenceError(alias, "alias", ALIAS_RULE)
    return alias


def validate_tag_key(key: str) -> str:
    """Return `key` if it can name a tag, else raise InvalidReferenceError."""
    if len(key) > MAX_NAME_LENGTH or not _TAG_KEY.fullmatch(key):
        raise InvalidReferenceError(key, "tag key", TAG_KEY_RULE)
    return key


def validate_tag_value(key: str, value: str) -> str:
    """Return a tag's value if it is one line without control characters, else raise."""
    if CONTROL.search(value):
        raise InvalidReferenceError(
            value, f"value of tag {key!r}", "it holds a control character (a newline, a tab, ...)"
        )
    return value


def validate_tags(tags: Mapping[str, object]) -> dict[str, str]:
    """Tags as stored: each key a valid tag key, each value its text, one line."""
    return {validate_tag_key(k): validate_tag_value(k, str(v)) for k, v in tags.items()}


def is_sha256(text: object) -> bool:
    """Whether `text` is a SHA-256 as the registry writes it: 64 lowercase hex digits."""
    return isinstance(text, str) and _SHA256.fullmatch(text) is not None


def is_extension(text: object) -> bool:
    """Whether `text` is an extension a version may record ('' or '.pth', '.safetensors')."""
    return isinstance(text, str) and _EXTENSION.fullmatch(text) is not None


def extension_of(suffix: str, default: str) -> str:
    """The extension to record for a file whose `Path.suffix` is `suffix`: the suffix, or
    `default` where it has none or one that breaks the rule."""
    return suffix if suffix and is_extension(suffix) else default


def parse_ref(text: str) -> Ref:
    """Parse `NAME[@SELECTOR]` into a Ref, raising InvalidReferenceError on bad input."""
    name, at, selector = text.partition("@")
    validate_name(name)
    if not at or selector == "latest":
        if at and not selector:
            raise InvalidReferenceError(text, "reference", "nothing follows '@'")
        return Ref(name)
    if match := _VERSION.fullmatch(selector):
        if len(match.group(1)) > MAX_VERSION_DIGITS:
            raise InvalidReferenceError(
                text, "reference", f"a version has at most {MAX_VERSION_DIGITS} digits"
            )
        number = int(match.group(1))
        if number < 1:
            raise InvalidReferenceError(text, "reference", "versions start at v1")
        return Ref(name, "version", number)
    if selector.startswith("sha256:"):
        match = _DIGEST.fullmatch(selector)
        if not match or not MIN_DIGEST_PREFIX <= len(match.group(1)) <= 64:
            raise InvalidReferenceError(
                text,
                "reference",
                f"a digest is 'sha256:' and {MIN_DIGEST_PREFIX} to 64 lowercase hex digits",
            )
        return Ref(name, "digest", match.group(1))
    if not selector:
        raise InvalidReferenceError(text, "reference", "nothing follows '@'")
    validate_alias(selector)
    return Ref(name, "alias", selector)


def parse_key_value(text: str, what: str = "tag") -> tuple[str, str]:
    """Split `K=V` (as given to --tag and --arg) into its key and value."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise InvalidReferenceError(text, what, "expected KEY=VALUE")
    return key, value
