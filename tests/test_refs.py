"""Model names, references, aliases and `key=value` pairs, as SPEC's "References" defines them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.errors import InvalidReferenceError
from registry.refs import (
    MAX_NAME_LENGTH,
    Ref,
    is_extension,
    parse_key_value,
    parse_ref,
    validate_alias,
    validate_name,
    validate_tag_key,
    validate_tags,
)

DIGEST = "397923af" + "0" * 56


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vgg16", Ref("vgg16")),
        ("vgg16@latest", Ref("vgg16")),
        ("vgg16@v3", Ref("vgg16", "version", 3)),
        ("vgg16@3", Ref("vgg16", "version", 3)),
        ("vgg16@v12", Ref("vgg16", "version", 12)),
        ("vgg16@production", Ref("vgg16", "alias", "production")),
        ("vgg16@sha256:397923af", Ref("vgg16", "digest", "397923af")),
        (f"vgg16@sha256:{DIGEST}", Ref("vgg16", "digest", DIGEST)),
        ("team/resnet50", Ref("team/resnet50")),
        ("team/resnet50@v2", Ref("team/resnet50", "version", 2)),
        ("team/resnet50@staging", Ref("team/resnet50", "alias", "staging")),
        ("resnet-50_v1.5", Ref("resnet-50_v1.5")),
        ("3d-unet", Ref("3d-unet")),
    ],
)
def test_parse_ref(text: str, expected: Ref) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("vgg16", "vgg16"),
        ("vgg16@latest", "vgg16"),
        ("vgg16@3", "vgg16@v3"),
        ("vgg16@v3", "vgg16@v3"),
        ("vgg16@production", "vgg16@production"),
        ("vgg16@sha256:397923af", "vgg16@sha256:397923af"),
        ("team/resnet50@v2", "team/resnet50@v2"),
    ],
)
def test_str_renders_canonical_form(text: str, canonical: str) -> None:
    assert str(parse_ref(text)) == canonical


def test_name_of_max_length_is_accepted() -> None:
    name = "a" * MAX_NAME_LENGTH
    assert parse_ref(name) == Ref(name)
    namespaced = "t" * 63 + "/" + "m" * 64
    assert validate_name(namespaced) == namespaced


@pytest.mark.parametrize(
    "text",
    [
        "VGG16",
        "Team/resnet50",
        ".vgg16",
        "-vgg16",
        "_vgg16",
        "team/.hidden",
        "a/b/c",
        "../x",
        "/abs",
        "a//b",
        "team/",
        "vgg\x0016",
        "vgg16\n",
        "vgg 16",
        "a" * (MAX_NAME_LENGTH + 1),
        "",
        "@v3",
    ],
)
def test_invalid_name(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match=r"^invalid model name ") as info:
        parse_ref(text)
    assert info.value.value == text.partition("@")[0]
    assert "at most 128 characters" in str(info.value)


@pytest.mark.parametrize(
    ("text", "kind", "rule"),
    [
        ("vgg16@", "reference", "nothing follows '@'"),
        ("vgg16@v0", "reference", "versions start at v1"),
        ("vgg16@0", "reference", "versions start at v1"),
        ("vgg16@sha256:abc", "reference", "8 to 64 lowercase hex digits"),
        ("vgg16@sha256:397923a", "reference", "8 to 64 lowercase hex digits"),
        ("vgg16@sha256:", "reference", "8 to 64 lowercase hex digits"),
        ("vgg16@sha256:XYZXYZXYZ", "reference", "8 to 64 lowercase hex digits"),
        ("vgg16@sha256:397923ag", "reference", "8 to 64 lowercase hex digits"),
        (f"vgg16@sha256:{DIGEST}0", "reference", "8 to 64 lowercase hex digits"),
        ("vgg16@Production", "alias", "starting with a letter"),
        ("vgg16@-prod", "alias", "starting with a letter"),
        ("vgg16@v3x@y", "alias", "starting with a letter"),
        ("vgg16@latest@", "alias", "starting with a letter"),
    ],
)
def test_invalid_selector(text: str, kind: str, rule: str) -> None:
    with pytest.raises(InvalidReferenceError, match=f"^invalid {kind} ") as info:
        parse_ref(text)
    assert rule in str(info.value)


def test_error_message_names_the_value_and_is_a_value_error() -> None:
    with pytest.raises(ValueError) as info:
        parse_ref("vgg16@v0")
    assert str(info.value) == "invalid reference 'vgg16@v0': versions start at v1"


@pytest.mark.parametrize(("text", "version"), [("vgg16@v12", 12), ("vgg16@12", 12)])
def test_selector_that_looks_like_a_version_is_a_version(text: str, version: int) -> None:
    assert parse_ref(text) == Ref("vgg16", "version", version)


@pytest.mark.parametrize("digits", [10, 5000])  # 5000 once escaped int() as a bare ValueError
def test_huge_version_number_is_an_invalid_reference(digits: int) -> None:
    with pytest.raises(InvalidReferenceError, match="at most 9 digits"):
        parse_ref("vgg16@v" + "9" * digits)


@pytest.mark.parametrize("alias", ["production", "staging", "v", "v1x", "release-2024.01", "a_b"])
def test_valid_alias(alias: str) -> None:
    assert validate_alias(alias) == alias


@pytest.mark.parametrize(
    "alias", ["latest", "v12", "v1", "12", "Production", "2fast", "-prod", "", "a" * 129]
)
def test_invalid_alias(alias: str) -> None:
    with pytest.raises(InvalidReferenceError, match=r"^invalid alias .*not 'latest'"):
        validate_alias(alias)


@pytest.mark.parametrize("key", ["lr", "Dataset", "team/owner", "eval.top1", "_private"])
def test_valid_tag_key(key: str) -> None:
    assert validate_tag_key(key) == key


@pytest.mark.parametrize("key", ["", ".x", "-x", "a b", "k=v", "a" * 129])
def test_invalid_tag_key(key: str) -> None:
    with pytest.raises(InvalidReferenceError, match=r"^invalid tag key "):
        validate_tag_key(key)


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("k=v", ("k", "v")),
        ("k=a=b", ("k", "a=b")),
        ("k=", ("k", "")),
        ("num_classes=10", ("num_classes", "10")),
    ],
)
def test_parse_key_value(text: str, pair: tuple[str, str]) -> None:
    assert parse_key_value(text) == pair


@pytest.mark.parametrize(("text", "what"), [("=v", "tag"), ("novalue", "tag"), ("", "arg")])
def test_parse_key_value_rejects(text: str, what: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_key_value(text, what)
    assert str(info.value) == f"invalid {what} {text!r}: expected KEY=VALUE"


_FIRST = "abcdefghijklmnopqrstuvwxyz0123456789"
_REST = _FIRST + "._-"
_parts = st.builds(lambda a, b: a + b, st.sampled_from(_FIRST), st.text(_REST, max_size=40))
names = st.one_of(_parts, st.builds(lambda ns, n: f"{ns}/{n}", _parts, _parts))
aliases = st.builds(
    lambda a, b: a + b, st.sampled_from("abcdefghijklmnopqrstuvwxyz"), st.text(_REST, max_size=20)
).filter(lambda a: a != "latest" and not (a[0] == "v" and a[1:].isdigit()))
refs = st.one_of(
    st.builds(Ref, names),
    st.builds(Ref, names, st.just("version"), st.integers(min_value=1, max_value=10**9 - 1)),
    st.builds(Ref, names, st.just("alias"), aliases),
    st.builds(Ref, names, st.just("digest"), st.text("0123456789abcdef", min_size=8, max_size=64)),
)


@settings(max_examples=200, deadline=None)
@given(refs)
def test_round_trip(ref: Ref) -> None:
    assert parse_ref(str(ref)) == ref


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.text("av09._-/@:sha256XYZ\x00 ")))
def test_parse_ref_returns_a_ref_or_raises_invalid_reference(text: str) -> None:
    try:
        ref = parse_ref(text)
    except InvalidReferenceError:
        return
    assert isinstance(ref, Ref)
    assert parse_ref(str(ref)) == ref


@pytest.mark.parametrize("value", ["two\nlines", "tab\there", "escape\x1b[31m", "c1\x85"])
def test_a_tag_value_with_a_control_character_is_refused(value: str) -> None:
    with pytest.raises(InvalidReferenceError, match=r"value of tag 'note'.*control character"):
        validate_tags({"note": value})


def test_tags_are_stored_as_text_and_keys_follow_the_rule() -> None:
    assert validate_tags({"epochs": 3, "dataset": "imagenet"}) == {
        "epochs": "3",
        "dataset": "imagenet",
    }
    with pytest.raises(InvalidReferenceError, match="tag key"):
        validate_tags({"bad key": "x"})


def test_an_extension_fits_the_catalog_column() -> None:
    assert is_extension("." + "x" * 31)  # 32 characters: the column's width
    assert not is_extension("." + "x" * 32)
