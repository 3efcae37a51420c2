"""Export and import: versions move between registries as a tar bundle, read as untrusted input.

Each test exports from one registry and imports into another with its own
catalog and store, as a dev registry and a production one would be.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import MARKER, TINY_ARCH, TINY_ARGS, outputs_equal
from torch import nn

from registry import BundleError, IntegrityError, Registry, UntrustedArchError


@pytest.fixture
def target(tmp_path: Path) -> Registry:
    """The registry bundles are imported into (SQLite; the source runs on both backends)."""
    return Registry(home=tmp_path / "target")


def test_import_records_the_next_version_with_the_fields_of_the_source(
    reg: Registry, target: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    target.push(nn.Linear(2, 2), arch="torch.nn:Linear", name="tiny",
                arch_args={"in_features": 2, "out_features": 2})  # fmt: skip
    version = reg.push(
        tiny_model, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS,
        tags={"dataset": "cifar"}, aliases=["production"], description="tuned",
    )  # fmt: skip
    bundle = tmp_path / "models.tar"
    reg.export_bundle(refs=[version.ref], destination=bundle)
    [imported] = target.import_bundle(bundle)
    assert (imported.ref, imported.is_new, imported.aliases) == ("tiny@v2", True, ())
    same = (
        "sha256", "size", "format", "arch", "arch_args", "tags", "description",
        "created_at", "created_by", "num_params", "torch_version", "extension", "details",
    )  # fmt: skip
    assert {k: getattr(imported, k) for k in same} == {k: getattr(version, k) for k in same}
    assert outputs_equal(tiny_model, target.load(imported.ref))
    pulled = target.pull(imported.ref, tmp_path / "pulled.pt")
    assert pulled.read_bytes() == reg.pull(version.ref, tmp_path / "source.pt").read_bytes()


@pytest.mark.parametrize(
    ("filename", "recorded"),
    [("net.pth~", ".pth~"), ("net.weights", ".weights"), ("net.pth\tcopy", ".pt"), ("net", ".pt")],
)
def test_every_extension_push_records_travels_in_a_bundle(
    target: Registry, tiny_model: nn.Module, tmp_path: Path, filename: str, recorded: str
) -> None:
    """Push, bundles and the remote client hold extensions to one rule (registry.refs):
    a suffix that breaks it is recorded as .pt, and whatever push records imports."""
    source = Registry(home=tmp_path / "source")
    path = tmp_path / filename
    torch.save(tiny_model.state_dict(), path)
    version = source.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    assert version.extension == recorded
    source.export_bundle([version.ref], tmp_path / "b.tar")
    [imported] = target.import_bundle(tmp_path / "b.tar")
    assert imported.extension == recorded
    (tmp_path / "out").mkdir()
    assert target.pull(imported.ref, tmp_path / "out").name == f"tiny-v1{recorded}"


def test_import_is_idempotent(
    reg: Registry, target: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    reg.push(tiny_model, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    reg.push(tiny_model, arch=TINY_ARCH, name="copy", arch_args=TINY_ARGS)
    bundle = tmp_path / "models.tar"
    reg.export_bundle(None, bundle)  # every version; the one blob goes in once
    with tarfile.open(bundle) as tar:
        assert len(tar.getnames()) == 2  # the manifest and one blob
    assert [(v.ref, v.is_new) for v in target.import_bundle(bundle)] == [
        ("copy@v1", True),
        ("tiny@v1", True),
    ]
    assert [(v.ref, v.is_new) for v in target.import_bundle(bundle)] == [
        ("copy@v1", False),
        ("tiny@v1", False),
    ]
    assert len(target.search()) == 2


def test_trusted_pickle_travels_with_its_safe_copy(
    reg: Registry, target: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "whole.pt"
    torch.save(tiny_model, path)
    version = reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS, trust_pickle=True)
    reg.export_bundle([version.ref], tmp_path / "b.tar")
    [imported] = target.import_bundle(tmp_path / "b.tar")
    assert imported.weights_sha256 == version.weights_sha256
    assert outputs_equal(tiny_model, target.load(imported.ref))


def test_export_of_a_damaged_blob_leaves_no_bundle(
    reg: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    version = reg.push(tiny_model, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    blob = reg.store.path(version.sha256)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        reg.export_bundle([version.ref], tmp_path / "b.tar")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tar")) == []
    assert not any(p.name.startswith(".b.tar.") for p in tmp_path.iterdir())


# --- hostile bundles: one line, nothing recorded, nothing left in the store -------------------


def bundle_bytes(reg: Registry, tiny_model: nn.Module, tmp_path: Path) -> bytes:
    version = reg.push(tiny_model, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    reg.export_bundle([version.ref], tmp_path / "good.tar")
    return (tmp_path / "good.tar").read_bytes()


def rebuilt(good: bytes, change) -> bytes:
    """The good bundle's members, passed through `change(name, info, data)` -> list of members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(good)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            for new_info, new_data in change(info, data):
                dst.addfile(new_info, io.BytesIO(new_data) if new_data is not None else None)
    return out.getvalue()


def with_manifest(edit):
    def change(info, data):
        if info.name != "manifest.json":
            return [(info, data)]
        manifest = json.loads(data)
        edit(manifest["versions"][0])
        new = json.dumps(manifest).encode()
        info.size = len(new)
        return [(info, new)]

    return change


def flipped_blob(info, data):
    if info.name == "manifest.json":
        return [(info, data)]
    return [(info, data[:-1] + bytes([data[-1] ^ 0xFF]))]


def extra_member(kind: str):
    def change(info, data):
        members = [(info, data)]
        if info.name == "manifest.json":
            extra = tarfile.TarInfo("../evil" if kind == "dotdot" else "/etc/evil")
            if kind == "symlink":
                extra = tarfile.TarInfo("blobs/sha256/" + "0" * 64)
                extra.type, extra.linkname = tarfile.SYMTYPE, "/etc/passwd"
                members.append((extra, None))
            else:
                extra.size = 4
                members.append((extra, b"evil"))
        return members

    return change


def no_blobs(info, data):
    return [(info, data)] if info.name == "manifest.json" else []


HOSTILE = {
    "flipped-blob": (flipped_blob, "does not hash to its name; it is damaged"),
    "dotdot-member": (extra_member("dotdot"), "'../evil' (a regular file), which a registry"),
    "absolute-member": (extra_member("absolute"), "'/etc/evil' (a regular file), which a registry"),
    "symlink-member": (extra_member("symlink"), "(a link, sparse or special file)"),
    "missing-blob": (no_blobs, "lacks blob"),
    "bad-name": (with_manifest(lambda v: v.update(name="../evil")), "invalid model name"),
    "bad-extension": (
        with_manifest(lambda v: v.update(extension="/../../x")),
        "not a file extension",
    ),
    "bad-digest": (with_manifest(lambda v: v.update(sha256="ZZ")), "64 lowercase hex"),
    "bad-tag": (with_manifest(lambda v: v.update(tags={"bad key": "x"})), "invalid tag key"),
    "bad-details": (with_manifest(lambda v: v["details"].update(key=3)), "details.key"),
    "wrong-size": (with_manifest(lambda v: v.update(size=v["size"] + 1)), "its manifest says"),
    "safe-copy-on-a-state_dict": (
        with_manifest(lambda v: v.update(weights_sha256="0" * 64, weights_size=1)),
        "format 'state_dict' with a safe copy",
    ),
    "arch-with-newline": (
        with_manifest(lambda v: v.update(arch="resnet18\nlin@v9")),
        "is neither a model name nor module:callable",
    ),
    "control-characters": (
        with_manifest(lambda v: v.update(created_by="me\x1b[31m")),
        "created_by is not a string without control characters",
    ),
    "huge-count": (with_manifest(lambda v: v.update(num_params=2**70)), "out of range"),
    "far-date": (
        with_manifest(lambda v: v.update(created_at="0001-01-01T00:00:00+01:00")),
        "version 1 of its manifest",
    ),
    "bad-parent": (with_manifest(lambda v: v.update(parent="../x")), "invalid model name"),
    "bad-fingerprint": (
        with_manifest(lambda v: v.update(fingerprint={"input_shape": [1], "outputs": "x"})),
        "environment is missing",
    ),
    "sparse-member": (
        lambda info, data: (
            [(info, data)] if info.name == "manifest.json" else [(sparse(info), data)]
        ),
        "(a link, sparse or special file)",
    ),
}


def sparse(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.type = tarfile.GNUTYPE_SPARSE
    return info


def test_a_bundle_of_the_previous_release_still_imports(
    reg: Registry, target: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    """Bundles written before lineage carry no ref, parent or fingerprint."""

    def previous(version: dict) -> None:
        for field in ("ref", "parent"):
            del version[field]

    bundle = tmp_path / "old.tar"
    bundle.write_bytes(rebuilt(bundle_bytes(reg, tiny_model, tmp_path), with_manifest(previous)))
    (imported,) = target.import_bundle(bundle)
    assert (imported.ref, imported.parent, imported.is_new) == ("tiny@v1", None, True)
    assert target.tensors(imported.ref) == reg.tensors("tiny@v1")


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_bundle_is_refused_with_nothing_recorded(
    reg: Registry, target: Registry, tiny_model: nn.Module, tmp_path: Path, case: str
) -> None:
    change, expected = HOSTILE[case]
    bundle = tmp_path / "hostile.tar"
    bundle.write_bytes(rebuilt(bundle_bytes(reg, tiny_model, tmp_path), change))
    with pytest.raises(BundleError) as caught:
        target.import_bundle(bundle)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
    assert target.search() == []
    assert [p for p in Path(target.store.location).rglob("*") if p.is_file()] == []
    assert not Path("/etc/evil").exists() and not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "is not a readable tar file: empty file"),
        (b"not a tar file at all" * 40, "is not a readable tar file"),
    ],
)
def test_garbage_is_refused(target: Registry, tmp_path: Path, data: bytes, expected: str) -> None:
    bundle = tmp_path / "garbage.tar"
    bundle.write_bytes(data)
    with pytest.raises(BundleError, match=expected):
        target.import_bundle(bundle)


def test_truncated_bundle_is_refused(
    reg: Registry, target: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    good = bundle_bytes(reg, tiny_model, tmp_path)
    bundle = tmp_path / "cut.tar"
    bundle.write_bytes(good[: len(good) // 2])
    with pytest.raises(BundleError):
        target.import_bundle(bundle)
    assert target.search() == []


def test_planted_arch_is_recorded_as_data_and_never_called(
    reg: Registry, target: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    planted = {"args": ["touch", str(Path.cwd() / MARKER)]}
    change = with_manifest(lambda v: v.update(arch="subprocess:run", arch_args=planted))
    bundle = tmp_path / "planted.tar"
    bundle.write_bytes(rebuilt(bundle_bytes(reg, tiny_model, tmp_path), change))
    [imported] = target.import_bundle(bundle)
    with pytest.raises(UntrustedArchError):
        target.load(imported.ref)
    assert not Path(MARKER).exists()


# --- the CLI --------------------------------------------------------------------------------


def test_cli_export_and_import(
    run, cli_reg: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    version = cli_reg.push(tiny_model, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    assert run("export", version.ref, "-o", "models.tar") == (
        0, "exported 1 versions to models.tar\n", "",
    )  # fmt: skip
    from click.testing import CliRunner

    from registry.cli import cli

    other = ["--home", str(tmp_path / "other")]
    result = CliRunner().invoke(cli, [*other, "import", "models.tar"])
    assert (result.exit_code, result.stdout) == (0, "tiny@v1\n")
    result = CliRunner().invoke(cli, [*other, "import", "models.tar", "--json"])
    [record] = json.loads(result.stdout)
    assert (record["ref"], record["imported"], record["sha256"]) == (
        "tiny@v1",
        False,
        version.sha256,
    )


def test_cli_usage_and_one_line_errors(run, tmp_path: Path) -> None:
    code, _, err = run("export", "-o", "x.tar")
    assert code == 2 and "give REF... or --all" in err
    Path("garbage.tar").write_bytes(b"garbage" * 100)
    code, out, err = run("import", "garbage.tar")
    assert (code, out) == (1, "")
    assert err.startswith("Error: garbage.tar is not a readable tar file") and err.count("\n") == 1


def test_export_piped_into_import_between_processes(tiny_model: nn.Module, tmp_path: Path) -> None:
    source = Registry(home=tmp_path / "dev")
    source.push(tiny_model, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    registry = [sys.executable, "-m", "registry"]
    exporter = subprocess.Popen(
        [*registry, "--home", str(tmp_path / "dev"), "export", "--all", "-o", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    importer = subprocess.run(
        [*registry, "--home", str(tmp_path / "prod"), "import", "-"],
        stdin=exporter.stdout, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert exporter.wait(timeout=120) == 0
    assert exporter.stderr.read() == b"exported 1 versions\n"
    assert (importer.returncode, importer.stdout) == (0, "tiny@v1\n"), importer.stderr
    assert outputs_equal(tiny_model, Registry(home=tmp_path / "prod").load("tiny@v1"))


def test_nan_in_a_manifest_is_refused(
    reg: Registry, target: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    def change(info, data):
        if info.name != "manifest.json":
            return [(info, data)]
        new = data.replace(b'"num_params": ', b'"num_params": NaN, "x": ', 1)
        info.size = len(new)
        return [(info, new)]

    bundle = tmp_path / "nan.tar"
    bundle.write_bytes(rebuilt(bundle_bytes(reg, tiny_model, tmp_path), change))
    with pytest.raises(BundleError, match=r"holds NaN, which JSON does not allow"):
        target.import_bundle(bundle)


def test_export_all_keeps_the_order_versions_were_made_in(
    reg: Registry, target: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    for step in (1, 2):
        tiny_model.head.bias.data += step
        reg.push(
            tiny_model, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS, tags={"step": str(step)}
        )
    reg.export_bundle(["tiny@v2", "tiny@v1", "tiny@v2"], tmp_path / "b.tar")  # one of each
    imported = target.import_bundle(tmp_path / "b.tar")
    assert [(v.ref, v.tags["step"], v.is_new) for v in imported] == [
        ("tiny@v1", "1", True),
        ("tiny@v2", "2", True),
    ]


def test_created_at_in_another_zone_is_kept_as_the_same_instant(
    reg: Registry, target: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    change = with_manifest(lambda v: v.update(created_at="2024-01-01T05:00:00+05:00"))
    bundle = tmp_path / "zone.tar"
    bundle.write_bytes(rebuilt(bundle_bytes(reg, tiny_model, tmp_path), change))
    [imported] = target.import_bundle(bundle)
    assert target.get(imported.ref).created_at.isoformat() == "2024-01-01T00:00:00+00:00"
