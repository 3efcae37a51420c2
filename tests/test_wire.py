"""One reader of a version's JSON (`registry.wire`), whoever sent it: a server or a bundle.

Each hostile variant of a version's record is refused by `wire.version`, as the
HTTP catalog reads a server's answer, and by `import_bundle`, whose index
entries are the same records, with the same words: the two cannot drift apart.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from registry import BundleError, Registry, wire

ARGS = {"in_features": 4, "out_features": 3}
LINEAR = {"arch": "torch.nn:Linear", "name": "lin", "arch_args": ARGS}

Edit = Callable[[dict[str, Any]], Any]  # a version's record -> the record to send instead


class Source:
    """A registry with a version of every kind of field, and a bundle of its first version."""

    def __init__(self, home: Path) -> None:
        self.registry = reg = Registry(home=home)
        torch.manual_seed(0)
        self.first = reg.push(
            nn.Linear(4, 3), tags={"dataset": "cifar", "note": "ünïcode"},
            aliases=["production"], description="tuned\nin two lines", check_input=[2, 4],
            **LINEAR,
        )  # fmt: skip
        self.second = reg.push(nn.Linear(4, 3), parent=self.first.ref, **LINEAR)
        reg.export_bundle([self.first.ref], home / "first.tar")
        self.bundle = (home / "first.tar").read_bytes()

    def bundle_with(self, edit: Edit) -> bytes:
        """The bundle, with `edit` applied to its version's entry in the manifest."""
        out = io.BytesIO()
        with (
            tarfile.open(fileobj=io.BytesIO(self.bundle)) as src,
            tarfile.open(fileobj=out, mode="w") as dst,
        ):
            for info in src.getmembers():
                extracted = src.extractfile(info)
                assert extracted is not None
                data = extracted.read()
                if info.name == "manifest.json":  # first: blobs/sha256/<hex> follow it
                    manifest = json.loads(data)
                    manifest["versions"][0] = edit(manifest["versions"][0])
                    data = json.dumps(manifest).encode()
                    info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
        return out.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    return Source(tmp_path_factory.mktemp("wire") / "source")


def imported(tmp_path: Path, bundle: bytes) -> list[Any]:
    (tmp_path / "b.tar").write_bytes(bundle)
    return Registry(home=tmp_path / "target").import_bundle(tmp_path / "b.tar")


def replaced(**fields: Any) -> Edit:
    return lambda record: {**record, **fields}


def without(key: str) -> Edit:
    return lambda record: {k: v for k, v in record.items() if k != key}


def in_details(**fields: Any) -> Edit:
    return lambda record: {**record, "details": {**record["details"], **fields}}


# -- what a registry writes reads back as it was ---------------------------------------------


def test_every_version_round_trips_through_wire(source: Source) -> None:
    versions = source.registry.search()
    assert {v.ref for v in versions} == {"lin@v1", "lin@v2"}
    for version in versions:
        record = json.loads(json.dumps(version.to_json()))  # as it crosses the wire
        assert wire.version(record) == version
    assert source.first.check_input == (2, 4) and source.second.parent == "lin@v1"
    assert wire.version(source.first.to_json()).created_at.utcoffset() is not None


def test_summaries_and_lineage_round_trip(source: Source) -> None:
    models = source.registry.models()
    assert wire.each(wire.summary)(json.loads(json.dumps([m.to_json() for m in models]))) == models
    lineage = source.registry.lineage("lin@v2")
    assert wire.lineage(json.loads(json.dumps(lineage.to_json()))) == lineage


def test_a_record_from_an_older_registry_without_its_nullable_fields_reads(
    source: Source,
) -> None:
    record = source.second.to_json()
    for key in ("ref", "weights_sha256", "parent", "check_input"):
        del record[key]
    found = wire.version(record)
    assert (found.ref, found.parent, found.check_input, found.weights_sha256) == (
        "lin@v2", None, None, None,
    )  # fmt: skip


def test_a_bundle_entry_reads_without_the_number_the_destination_gives(source: Source) -> None:
    with tarfile.open(fileobj=io.BytesIO(source.bundle)) as tar:
        extracted = tar.extractfile("manifest.json")
        assert extracted is not None
        [entry] = json.load(extracted)["versions"]
    assert not {"version", "aliases", "check_input"} & set(entry)
    with pytest.raises(TypeError, match="version is missing or not a int"):
        wire.version(entry)
    found = wire.version(entry, numbered=False)
    assert (found.ref, found.aliases, found.check_input) == ("lin@v1", (), None)
    assert {**found.to_json(), "aliases": [], "check_input": None} == {
        **source.first.to_json(), "aliases": [], "check_input": None,
    }  # fmt: skip


def test_the_unedited_rewritten_bundle_imports(source: Source, tmp_path: Path) -> None:
    """The control for the table below: rewriting the index by itself breaks nothing."""
    [version] = imported(tmp_path, source.bundle_with(lambda record: record))
    assert (version.ref, version.sha256, version.tags) == ("lin@v1", source.first.sha256,
                                                           source.first.tags)  # fmt: skip


# -- hostile records: refused by both readers, in the same words -----------------------------


HOSTILE: dict[str, tuple[Edit, str]] = {
    "not-an-object": (lambda record: [record], "the record is missing or not a dict"),
    "missing-sha256": (without("sha256"), "sha256 is missing or not a str"),
    "missing-format": (without("format"), "format is missing or not a str"),
    "missing-created_at": (without("created_at"), "created_at is missing or not a str"),
    "size-a-string": (replaced(size="10"), "size is missing or not a int"),
    "size-a-bool": (replaced(size=True), "size is missing or not a int"),
    "size-a-float": (replaced(size=10.0), "size is missing or not a int"),
    "num_params-a-bool": (replaced(num_params=False), "num_params is missing or not a int"),
    "num_params-negative": (replaced(num_params=-1), "num_params -1 is out of range"),
    "num_params-huge": (replaced(num_params=2**70), "is out of range"),
    "arch_args-a-list": (replaced(arch_args=[1]), "arch_args is missing or not a dict"),
    "description-null": (replaced(description=None), "description is missing or not a str"),
    "bad-digest": (replaced(sha256="ZZ"), "sha256 'ZZ' is not 64 lowercase hex digits"),
    "folder-path-leaves": (
        replaced(files=[{"path": "../x", "size": 1, "sha256": "0" * 64}]),
        "the file path '../x' is not a plain relative path",
    ),
    "folder-files-of-another-digest": (
        replaced(files=[{"path": "x", "size": 1, "sha256": "0" * 64}]),
        "sha256 is not the digest of the file list",
    ),
    "uppercase-digest": (
        lambda record: {**record, "sha256": record["sha256"].upper()},
        "is not 64 lowercase hex digits",
    ),
    "short-digest": (
        lambda record: {**record, "sha256": record["sha256"][:63]},
        "is not 64 lowercase hex digits",
    ),
    "bad-weights-digest": (
        replaced(format="pickle", weights_sha256="../x"),
        "weights_sha256 '../x' is not 64 lowercase hex digits",
    ),
    "safe-copy-on-a-state_dict": (
        replaced(weights_sha256="0" * 64),
        "format 'state_dict' with a safe copy",
    ),
    "pickle-without-a-safe-copy": (replaced(format="pickle"), "format 'pickle' without a safe"),
    "unknown-format": (replaced(format="onnx"), "format 'onnx' without a safe copy"),
    "traversal-extension": (replaced(extension="/../x"), "'/../x' is not a file extension"),
    "extension-with-a-newline": (replaced(extension=".pt\n"), "is not a file extension"),
    "extension-a-number": (replaced(extension=3), "extension is missing or not a str"),
    "traversal-name": (replaced(name="../evil"), "invalid model name"),
    "control-character-in-name": (replaced(name="lin\x1b[31m"), "invalid model name"),
    "name-a-number": (replaced(name=7), "name is missing or not a str"),
    "arch-with-a-newline": (
        replaced(arch="torch.nn:Linear\nlin@v9"),
        "is neither a model name nor module:callable",
    ),
    "huge-arch": (replaced(arch="a" * 257), "is neither a model name nor module:callable"),
    "huge-created_by": (replaced(created_by="x" * 257), "created_by is longer than 256"),
    "created_by-with-escapes": (
        replaced(created_by="me\x1b[31m"),
        "created_by is not a string without control characters",
    ),
    "created_by-with-c1-control": (
        replaced(created_by="me\x9b31m"),
        "created_by is not a string without control characters",
    ),
    "huge-torch_version": (replaced(torch_version="2." * 40), "torch_version is longer than 64"),
    "torch_version-a-list": (
        replaced(torch_version=["2"]),
        "torch_version is not a string without control characters",
    ),
    "created_at-without-a-zone": (
        replaced(created_at="2024-01-01T00:00:00"),
        "created_at has no time zone",
    ),
    "created_at-not-a-time": (replaced(created_at="yesterday"), "is not an ISO 8601 time"),
    "created_at-out-of-range": (
        replaced(created_at="0001-01-01T00:00:00+01:00"),
        "created_at '0001-01-01T00:00:00+01:00' is out of range",
    ),
    "tags-a-list": (replaced(tags=[]), "tags is missing or not a dict"),
    "bad-tag-key": (replaced(tags={"bad key": "x"}), "invalid tag key"),
    "tag-value-a-number": (replaced(tags={"k": 1}), "tag 'k' is not a string"),
    "tag-value-with-a-newline": (
        replaced(tags={"k": "a\nlin@v9"}),
        "tag 'k' is not a string without control characters",
    ),
    "details-a-list": (replaced(details=[]), "details is missing or not a dict"),
    "details-key-a-number": (in_details(key=3), "details.key is not a string"),
    "details-serialization": (in_details(serialization="x"), "details.serialization"),
    "details-module_versions-bool": (
        in_details(module_versions={"": True}),
        "details.module_versions is not a map",
    ),
    "ref-latest": (replaced(ref="lin"), "ref 'lin' is not NAME@vN"),
    "ref-alias": (replaced(ref="lin@production"), "ref 'lin@production' is not NAME@vN"),
    "ref-not-as-written": (replaced(ref="lin@1"), "ref 'lin@1' is not NAME@vN"),
    "ref-v0": (replaced(ref="lin@v0"), "versions start at v1"),
    "ref-a-number": (replaced(ref=7), "ref is missing or not a str"),
    "ref-of-another-model": (replaced(ref="other@v1"), "is not a version of 'lin'"),
    "ref-traversal": (replaced(ref="../x@v1"), "invalid model name"),
    "parent-traversal": (replaced(parent="../x@v1"), "invalid model name"),
    "parent-alias": (replaced(parent="lin@production"), "is not NAME@vN"),
    "parent-a-number": (replaced(parent=1), "parent is missing or not a str"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_wire_refuses_a_hostile_record(source: Source, case: str) -> None:
    edit, expected = HOSTILE[case]
    record = edit(json.loads(json.dumps(source.first.to_json())))
    # The HTTP catalog turns exactly these into its one-line StorageError.
    with pytest.raises((TypeError, ValueError)) as caught:
        wire.version(record)
    assert expected in str(caught.value)


@pytest.mark.parametrize("case", HOSTILE)
def test_a_bundle_refuses_the_same_hostile_record(
    source: Source, tmp_path: Path, case: str
) -> None:
    edit, expected = HOSTILE[case]
    with pytest.raises(BundleError) as caught:
        imported(tmp_path, source.bundle_with(edit))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'b.tar'}: version 1 of its manifest: "), message
    assert expected in message and "\n" not in message
    target = Registry(home=tmp_path / "target")
    assert target.search() == []
    assert [p for p in Path(target.store.location).rglob("*") if p.is_file()] == []


# -- what only one of them reads -------------------------------------------------------------

NUMBERING: dict[str, tuple[Edit, str]] = {
    "version-a-bool": (replaced(version=True), "version is missing or not a int"),
    "version-a-string": (replaced(version="1"), "version is missing or not a int"),
    "version-0": (replaced(version=0), "version 0 is out of range"),
    "version-too-large": (replaced(version=10**9), "out of range"),
    "version-not-its-ref": (replaced(version=2), "ref 'lin@v1' is not version 2"),
    "alias-latest": (replaced(aliases=["latest"]), "invalid alias 'latest'"),
    "alias-a-number": (replaced(aliases=[1]), "an alias is missing or not a str"),
    "check_input-a-string": (replaced(check_input="2,4"), "check_input is not a list or null"),
    "check_input-a-bool": (replaced(check_input=[True, 4]), "check_input is missing or not a int"),
    "check_input-zero": (replaced(check_input=[0, 4]), "is not a shape"),
    "check_input-empty": (replaced(check_input=[]), "is not a shape"),
}


@pytest.mark.parametrize("case", NUMBERING)
def test_a_server_answer_is_held_to_its_number_aliases_and_check_input(
    source: Source, case: str
) -> None:
    edit, expected = NUMBERING[case]
    with pytest.raises((TypeError, ValueError)) as caught:
        wire.version(edit(source.first.to_json()))
    assert expected in str(caught.value)


def test_a_bundle_ignores_a_number_aliases_and_check_input_the_destination_gives(
    source: Source, tmp_path: Path
) -> None:
    edit = replaced(version=True, aliases=["latest", 1], check_input="x")
    [version] = imported(tmp_path, source.bundle_with(edit))
    assert (version.ref, version.aliases, version.check_input) == ("lin@v1", (), (2, 4))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (replaced(parent="lin@v9", parent_sha256="ZZ"), "parent_sha256 'ZZ' is not 64 lowercase"),
        (
            lambda r: {**r, "fingerprint": {**r["fingerprint"], "input_shape": [True, 4]}},
            "fingerprint.input_shape is missing or not a int",
        ),
        (
            lambda r: {**r, "fingerprint": {**r["fingerprint"], "environment": {"torch": "\n"}}},
            "fingerprint.environment['torch'] is not a string without control characters",
        ),
        (
            lambda r: {
                **r,
                "fingerprint": {
                    **r["fingerprint"],
                    "outputs": [{**r["fingerprint"]["outputs"][0], "mean": True}],
                },
            },
            "a number of fingerprint.outputs is not a int or float or null",
        ),
    ],
)
def test_a_bundle_holds_its_extras_to_the_same_rules(
    source: Source, tmp_path: Path, edit: Edit, expected: str
) -> None:
    with pytest.raises(BundleError) as caught:
        imported(tmp_path, source.bundle_with(edit))
    assert expected in str(caught.value)
