"""Signed versions (SPEC "Signed versions", issue 25): keys, `push --sign`, trusted reads.

Every tamper case edits what an attacker with the catalog's password (or a
bundle's author, or a server) controls, and must be refused by a reader that
trusts a key, with one line and nothing written or built. Interop is checked
with the OpenSSF `model_signing` package's own verifier.
"""

from __future__ import annotations

import base64
import io
import json
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_CLI, Server, outputs_equal, same_tensors, tiny, tiny_file
from sqlalchemy import text
from test_s3 import aws, bucket, endpoint  # noqa: F401  -- fixtures: moto's S3 server, a bucket

from registry import Registry
from registry.errors import IntegrityError, InvalidReferenceError, KeyFileError, SignatureError
from registry.signing import generate

KEYS = ("alice", "bob")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Two key pairs; `alice` and `bob` are their private keys, `*.pub` their public ones."""
    found = {}
    for name in KEYS:
        pair = generate(tmp_path / "keys" / name)
        found[name], found[f"{name}.pub"] = pair.private, pair.public
    return found


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command in its own process, as a user runs it."""
    import os

    environment = {k: v for k, v in os.environ.items() if k != "REGISTRY_TRUSTED_KEYS"}
    return subprocess.run(
        [sys.executable, "-m", "registry", *args],
        capture_output=True, text=True, timeout=300, env={**environment, **(env or {})},
    )  # fmt: skip


def one_error_line(stderr: str) -> str:
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    return stderr


# -- keys and push --sign ------------------------------------------------------------------


def test_keys_generate_writes_a_private_key_for_its_owner_alone_and_never_overwrites(
    tmp_path: Path,
) -> None:
    done = cli("keys", "generate", "signing", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    private, public = Path(found["private_key"]), Path(found["public_key"])
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert len(found["fingerprint"]) == 64
    before = private.read_bytes()
    again = cli("keys", "generate", "signing")
    assert again.returncode == 1
    assert "exists already" in one_error_line(again.stderr)
    assert private.read_bytes() == before


def test_a_signed_push_shows_its_signer_and_an_unsigned_one_null(
    reg: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    signed = reg.push(tiny(0), name="net", sign=keys["alice"], **TINY)
    unsigned = reg.push(tiny(1), name="net", **TINY)
    fingerprint = generate(tmp_path / "other").fingerprint  # a third key, to compare shapes
    assert signed.signed_by is not None and len(signed.signed_by) == len(fingerprint)
    assert reg.get("net@v1").to_json()["signed_by"] == signed.signed_by
    assert reg.get("net@v2").to_json()["signed_by"] is None and unsigned.signature is None
    checks = reg.verify_signatures(trusted_keys=[keys["alice.pub"]])
    assert [(c.ref, c.status) for c in checks] == [("net@v2", "unsigned"), ("net@v1", "valid")]


def test_a_bad_signing_key_is_refused_before_anything_is_stored(
    reg: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    for key, problem in [
        (tmp_path / "missing.pem", "no such file"),
        (keys["alice.pub"], "is not a private key"),
        (tiny_file(tmp_path, 0), "is not a private key"),
    ]:
        with pytest.raises(KeyFileError, match=problem):
            reg.push(tiny(0), name="net", sign=key, **TINY)
    assert reg.models() == []


# -- trusted reads ------------------------------------------------------------------------


def test_a_trusted_key_reads_its_versions_and_refuses_the_others(
    reg: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    model = tiny(0)
    reg.push(model, name="net", sign=keys["alice"], **TINY)
    reg.push(tiny(1), name="net", **TINY)
    reg.push(tiny(2), name="net", sign=keys["bob"], **TINY)
    alice = [keys["alice.pub"]]
    assert outputs_equal(model, reg.load("net@v1", trusted_keys=alice))
    assert set(reg.state_dict("net@v1", trusted_keys=alice)) == set(model.state_dict())
    assert reg.pull("net@v1", tmp_path / "v1.pt", trusted_keys=alice).is_file()
    with pytest.raises(SignatureError, match=r"^net@v2 is not signed; only versions signed"):
        reg.load("net@v2", trusted_keys=alice)
    with pytest.raises(SignatureError, match=r"^net@v3 is signed by key \w{16}, which is not"):
        reg.pull("net@v3", tmp_path / "v3.pt", trusted_keys=alice)
    assert not (tmp_path / "v3.pt").exists()
    # A registry made with trusted keys insists on them for every read.
    strict = Registry(
        database_url=reg.settings.database_url, store=reg.settings.store, trusted_keys=alice
    )
    with pytest.raises(SignatureError):
        strict.state_dict("net@v3")
    assert outputs_equal(model, strict.load("net@v1"))
    strict.close()


def test_the_cli_refuses_an_unsigned_version_with_one_line_and_writes_nothing(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    path = tiny_file(tmp_path, 0)
    assert cli("push", str(path), *TINY_CLI, "--name", "net").returncode == 0
    trust = {"REGISTRY_TRUSTED_KEYS": str(keys["alice.pub"])}
    for command in (["pull", "net@v1", "-o", "out/"], ["load", "net@v1"]):
        done = cli(*command, env=trust)
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert "net@v1 is not signed" in one_error_line(done.stderr)
    assert not Path("out").exists() or list(Path("out").iterdir()) == []
    # --trusted-key says the same, per command or for the whole registry.
    assert cli("load", "net@v1", "--trusted-key", str(keys["alice.pub"])).returncode == 1
    assert cli("--trusted-key", str(keys["alice.pub"]), "load", "net@v1").returncode == 1
    assert cli("push", str(path), *TINY_CLI, "--name", "net", "--sign", str(keys["alice"]))
    done = cli("pull", "net@v1", "-o", "out/", env=trust)  # re-signed by that push: read now
    assert done.returncode == 0, done.stderr


def test_re_pushing_with_another_key_signs_the_version_again(
    reg: Registry, keys: dict[str, Path]
) -> None:
    """Key rotation: the same bytes pushed with the new key move the version's signature."""
    first = reg.push(tiny(0), name="net", sign=keys["alice"], **TINY)
    again = reg.push(tiny(0), name="net", sign=keys["bob"], **TINY)
    assert (again.ref, again.is_new) == (first.ref, False)
    assert again.signed_by != first.signed_by
    said = [e.details for e in reversed(reg.log("net"))]  # the log says who signed, each time
    assert said == [
        {"new": True, "signed_by": first.signed_by},
        {"new": False, "signed_by": again.signed_by},
    ]
    reg.load("net@v1", trusted_keys=[keys["bob.pub"]])
    with pytest.raises(SignatureError, match="not trusted"):
        reg.load("net@v1", trusted_keys=[keys["alice.pub"]])


def test_verify_signature_reports_each_version_and_exits_1_unless_all_are_valid(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    alice, bob = str(keys["alice"]), str(keys["bob"])
    for seed, sign in [(0, ["--sign", alice]), (1, []), (2, ["--sign", bob])]:
        path = tiny_file(tmp_path, seed)
        assert cli("push", str(path), *TINY_CLI, "--name", "net", *sign).returncode == 0
    done = cli("verify", "net@v1", "--signature", "--trusted-key", str(keys["alice.pub"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("net@v1: signature valid, by a trusted key: ")
    done = cli("verify", "--signature", "--json", "--trusted-key", str(keys["alice.pub"]))
    assert done.returncode == 1
    statuses = {c["ref"]: c["status"] for c in json.loads(done.stdout)}
    assert statuses == {"net@v1": "valid", "net@v2": "unsigned", "net@v3": "untrusted"}
    done = cli("verify", "net@v3", "--signature")  # no key trusted: whole, by the key it names
    assert done.returncode == 0 and "none trusted given" in done.stdout


# -- tampering ------------------------------------------------------------------------------


def sql(reg: Registry, statement: str, **values: object) -> None:
    with reg.engine.begin() as conn:
        conn.execute(text(statement), values)


def test_an_sql_edit_of_the_arguments_or_arch_is_refused(
    reg: Registry, keys: dict[str, Path]
) -> None:
    reg.push(tiny(0), name="net", sign=keys["alice"], **TINY)
    trusted = [keys["alice.pub"]]
    sql(
        reg,
        "UPDATE versions SET arch_args = :args",
        args=json.dumps({"width": 4, "num_classes": 6}),
    )
    with pytest.raises(SignatureError, match=r"differs from what key \w{16} signed: its arguments"):
        reg.load("net@v1", trusted_keys=trusted)
    sql(reg, "UPDATE versions SET arch_args = :args, arch = 'torch.nn:Linear'",
        args=json.dumps(TINY["arch_args"]))  # fmt: skip
    with pytest.raises(SignatureError, match="signed: its arch"):
        reg.state_dict("net@v1", trusted_keys=trusted)
    assert reg.verify_signatures("net@v1", trusted_keys=trusted)[0].status == "invalid"


def test_a_consistent_swap_of_blob_and_digest_is_refused(
    reg: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    """The attacker points the signed version at other stored bytes, digest and all: every
    byte then verifies against the catalog, but not against what was signed."""
    signed = reg.push(tiny(0), name="net", sign=keys["alice"], **TINY)
    other = reg.push(tiny(1), name="evil", **TINY)
    reg.delete(other.ref)  # its blob stays until gc
    sql(reg, "UPDATE versions SET blob_sha256 = :evil WHERE blob_sha256 = :good",
        evil=other.sha256, good=signed.sha256)  # fmt: skip
    assert reg.verify("net@v1") == []  # the bytes match the (tampered) catalog
    with pytest.raises(SignatureError, match="signed: its files"):
        reg.pull("net@v1", tmp_path / "out.pt", trusted_keys=[keys["alice.pub"]])
    assert not (tmp_path / "out.pt").exists()


def test_a_signature_copied_from_another_version_is_refused(
    reg: Registry, keys: dict[str, Path]
) -> None:
    reg.push(tiny(0), name="net", sign=keys["alice"], **TINY)
    reg.push(tiny(1), name="net", **TINY)
    reg.push(tiny(1), name="twin", sign=keys["alice"], **TINY)  # the same bytes, another name
    net_v2 = (
        "UPDATE versions SET signature = :s WHERE version = 2 "
        "AND model_id = (SELECT id FROM models WHERE name = 'net')"
    )
    sql(reg, net_v2, s=json.dumps(reg.get("net@v1").signature))
    with pytest.raises(SignatureError, match="signed: its files"):
        reg.load("net@v2", trusted_keys=[keys["alice.pub"]])
    sql(reg, net_v2, s=json.dumps(reg.get("twin@v1").signature))
    with pytest.raises(SignatureError, match="signed: its name"):
        reg.load("net@v2", trusted_keys=[keys["alice.pub"]])


def test_a_forged_or_stripped_signature_in_a_bundle_is_refused_and_nothing_imported(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    source = Registry(home=tmp_path / "source")
    source.push(tiny(0), name="net", sign=keys["alice"], **TINY)
    bundle = tmp_path / "net.tar"
    source.export_bundle(["net@v1"], bundle)
    trusted = [keys["alice.pub"]]

    def rewritten(change: object) -> Path:
        """The bundle with its manifest's version changed by `change`."""
        with tarfile.open(bundle) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
        manifest = json.loads(members[0][1])
        change(manifest["versions"][0])  # type: ignore[operator]
        out = tmp_path / f"forged-{len(list(tmp_path.glob('forged-*')))}.tar"
        with tarfile.open(out, "w") as tar:
            for member, data in members:
                if member.name == "manifest.json":
                    data = json.dumps(manifest).encode()
                    member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        return out

    def forge(entry: dict) -> None:  # the bundle's author re-signs with their own key... badly
        envelope = entry["signature"]["version"]
        payload = json.loads(base64.b64decode(envelope["payload"]))
        payload["predicate"]["arch_args"]["num_classes"] = 6
        entry["arch_args"]["num_classes"] = 6
        envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()

    target = Registry(home=tmp_path / "target")
    for forged, problem in [
        (rewritten(forge), "has a signature that does not verify with key"),
        (rewritten(lambda e: e.update(signature=None)), "is not signed"),
    ]:
        with pytest.raises(SignatureError, match=f"net@v1 in the bundle {problem}"):
            target.import_bundle(forged, trusted_keys=trusted)
        assert target.models() == []
        assert not (tmp_path / "target" / "blobs").exists() or not list(
            (tmp_path / "target" / "blobs").rglob("sha256/*/*")
        )
    imported = target.import_bundle(bundle, trusted_keys=trusted)
    assert [v.signed_by for v in imported] == [source.get("net@v1").signed_by]
    assert outputs_equal(tiny(0), target.load("net@v1", trusted_keys=trusted))


# -- interop with OpenSSF model signing ------------------------------------------------------


def model_signing_verify(model: Path, signature: Path, public: Path) -> None:
    model_signing = pytest.importorskip("model_signing")
    config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public)
    config.verify(model, signature)  # raises unless it verifies


def test_pull_with_signature_passes_model_signings_own_verifier(
    reg: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("model_signing")
    reg.push(tiny_file(tmp_path, 0), name="net", sign=keys["alice"], **TINY)
    pulled = reg.pull("net@v1", tmp_path / "out" / "net-v1.pt", with_signature=True)
    signature = tmp_path / "out" / "net-v1.sig"
    assert signature.is_file()
    model_signing_verify(pulled, signature, keys["alice.pub"])
    renamed = pulled.rename(tmp_path / "out" / "renamed.pt")  # a file's name is not signed
    model_signing_verify(renamed, signature, keys["alice.pub"])
    with pytest.raises(ValueError, match="Key mismatch"):
        model_signing_verify(renamed, signature, keys["bob.pub"])
    data = bytearray(renamed.read_bytes())
    data[-1] ^= 1
    renamed.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="Hash mismatch"):
        model_signing_verify(renamed, signature, keys["alice.pub"])


def test_a_folder_pull_with_signature_passes_model_signings_verifier_and_its_cli(
    reg: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("model_signing")
    folder = tmp_path / "assets"
    (folder / "sub").mkdir(parents=True)
    (folder / "vocab.txt").write_text("a b c\n")
    (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    reg.push(folder, name="assets", sign=keys["alice"])
    done = cli("--database-url", reg.settings.database_url, "--store", str(reg.settings.store),
               "pull", "assets@v1", "--with-signature")  # fmt: skip
    assert done.returncode == 0, done.stderr
    pulled, signature = Path("assets-v1").absolute(), Path("assets-v1.sig").absolute()
    assert [str(Path(p).absolute()) for p in done.stdout.split()] == [str(pulled), str(signature)]
    model_signing_verify(pulled, signature, keys["alice.pub"])
    verifier = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(pulled),
         "--signature", str(signature), "--public_key", str(keys["alice.pub"])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verifier.returncode == 0 and "Verification succeeded" in verifier.stdout, verifier
    (pulled / "extra.txt").write_text("not signed")
    with pytest.raises(ValueError, match="Extra files"):
        model_signing_verify(pulled, signature, keys["alice.pub"])


def test_a_signature_model_signing_makes_lists_the_digests_the_registry_signs(
    reg: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    """The other direction: model_signing signs the pulled file with the same key; the
    registry's reader verifies that bundle and finds the version's own digest in it."""
    model_signing = pytest.importorskip("model_signing")
    from registry import signing

    version = reg.push(tiny_file(tmp_path, 0), name="net", sign=keys["alice"], **TINY)
    pulled = reg.pull("net@v1", tmp_path / "net-v1.pt")
    theirs = tmp_path / "theirs.sig"
    model_signing.signing.Config().use_elliptic_key_signer(private_key=keys["alice"]).sign(
        pulled, theirs
    )
    [trusted] = signing.load_trusted([keys["alice.pub"]])
    bundle = json.loads(theirs.read_text())
    assert signing.verified_files(bundle, trusted.key) == {".": version.sha256}
    assert signing.verified_files(version.signature["files"], trusted.key) == {  # type: ignore[index]
        ".": version.sha256
    }
    [bob] = signing.load_trusted([keys["bob.pub"]])
    with pytest.raises(ValueError):
        signing.verified_files(bundle, bob.key)


# -- through registry serve -----------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, keys: dict[str, Path]) -> Iterator[tuple[Server, Registry, str]]:
    pytest.importorskip("starlette")
    home = tmp_path / "served"
    local = Registry(home=home)
    local.push(tiny(0), name="net", sign=keys["alice"], **TINY)
    local.push(tiny(1), name="net", **TINY)
    secret = local.create_token("writer", "write")[1]
    server = Server(home)
    yield server, local, secret
    server.stop()
    local.close()


def test_a_server_that_reports_another_arch_is_refused_by_a_trusting_client(
    served: tuple[Server, Registry, str], keys: dict[str, Path], tmp_path: Path
) -> None:
    server, local, secret = served
    client = Registry(home=tmp_path / "client", remote=server.url, token=secret)
    trusted = [keys["alice.pub"]]
    assert outputs_equal(tiny(0), client.load("net@v1", trusted_keys=trusted))
    assert client.get("net@v1").signed_by == local.get("net@v1").signed_by
    with pytest.raises(SignatureError, match="net@v2 is not signed"):
        client.pull("net@v2", tmp_path / "v2.pt", trusted_keys=trusted)
    sql(local, "UPDATE versions SET arch = 'tiny_models:Other' WHERE version = 1")
    with pytest.raises(SignatureError, match="signed: its arch"):
        client.state_dict("net@v1", trusted_keys=trusted)
    client.close()


def test_a_push_through_the_server_is_signed_by_the_client_and_stored_as_signed(
    served: tuple[Server, Registry, str], keys: dict[str, Path], tmp_path: Path
) -> None:
    server, local, secret = served
    client = Registry(home=tmp_path / "client", remote=server.url, token=secret)
    pushed = client.push(tiny_file(tmp_path, 5), name="pushed", sign=keys["bob"], **TINY)
    assert pushed.signed_by is not None
    assert local.get("pushed@v1").signature == pushed.signature  # the server only stored it
    assert local.verify_signatures("pushed@v1", [keys["bob.pub"]])[0].status == "valid"
    model = client.load("pushed@v1", trusted_keys=[keys["bob.pub"]])
    assert isinstance(model, torch.nn.Module)
    client.close()


def test_a_bundle_imported_through_a_server_is_checked_by_the_client_before_it_is_sent(
    served: tuple[Server, Registry, str], keys: dict[str, Path], tmp_path: Path
) -> None:
    server, local, secret = served
    bundle = tmp_path / "both.tar"
    local.export_bundle(["net@v1", "net@v2"], bundle)  # v2 is unsigned
    client = Registry(home=tmp_path / "client", remote=server.url, token=secret)
    before = len(local.versions("net"))
    with pytest.raises(SignatureError, match="net@v2 in the bundle is not signed"):
        client.import_bundle(bundle, trusted_keys=[keys["alice.pub"]])
    assert len(local.versions("net")) == before
    client.close()


# -- through an S3 store --------------------------------------------------------------------


def test_a_signature_travels_with_an_s3_store_to_a_machine_with_a_cold_cache(
    keys: dict[str, Path],
    tmp_path: Path,
    bucket: str,  # noqa: F811
) -> None:
    catalog = f"sqlite:///{tmp_path / 'shared.db'}"
    store = f"s3://{bucket}/team"
    pusher = Registry(home=tmp_path / "me", store=store, database_url=catalog)
    pusher.push(tiny(0), name="net", sign=keys["alice"], **TINY)
    pusher.push(tiny(1), name="net", **TINY)
    other = Registry(home=tmp_path / "other", store=store, database_url=catalog,
                     trusted_keys=[keys["alice.pub"]])  # fmt: skip
    assert outputs_equal(tiny(0), other.load("net@v1"))
    with pytest.raises(SignatureError, match="net@v2 is not signed"):
        other.pull("net@v2", tmp_path / "v2.pt")
    assert not (tmp_path / "v2.pt").exists()
    other.close()
    pusher.close()


# -- what else a trusted read must not take from the catalog ----------------------------------


def test_a_blob_swapped_with_its_blake3_in_the_catalog_is_refused(
    reg: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Reads verify by the BLAKE3 the catalog records; a trusted read by the one signed."""
    from registry.digests import blake3_of

    version = reg.push(tiny_file(tmp_path, 0), name="net", sign=keys["alice"], **TINY)
    evil = tiny_file(tmp_path, 1)
    blob = reg.store.path(version.sha256)  # type: ignore[attr-defined]
    blob.chmod(0o644)
    blob.write_bytes(evil.read_bytes())
    sql(reg, "UPDATE blobs SET blake3 = :b WHERE sha256 = :d", b=blake3_of(evil), d=version.sha256)
    with pytest.raises(IntegrityError):
        reg.state_dict("net@v1", trusted_keys=[keys["alice.pub"]])
    with pytest.raises(IntegrityError):
        reg.pull("net@v1", tmp_path / "out.pt", trusted_keys=[keys["alice.pub"]])
    assert not (tmp_path / "out.pt").exists()


def test_an_sql_edit_of_which_weights_a_file_holds_is_refused(
    reg: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    """The key of a training checkpoint (and a stripped prefix) pick the weights a read
    takes from the same bytes: they are signed with the version."""
    path = tmp_path / "two.pt"
    torch.save({"a": tiny(0).state_dict(), "b": tiny(1).state_dict()}, path)
    reg.push(path, name="net", key="a", sign=keys["alice"], **TINY)
    trusted = [keys["alice.pub"]]
    assert same_tensors(reg.state_dict("net@v1", trusted_keys=trusted), tiny(0).state_dict())
    details = dict(reg.get("net@v1").details, key="b")
    sql(reg, "UPDATE versions SET details = :d", d=json.dumps(details))
    with pytest.raises(SignatureError, match="signed: its details"):
        reg.state_dict("net@v1", trusted_keys=trusted)


def test_arguments_of_another_json_type_are_refused(reg: Registry, keys: dict[str, Path]) -> None:
    reg.push(tiny(0), name="net", sign=keys["alice"], **TINY)
    args = json.dumps({"width": 4.0, "num_classes": 5})  # 4 == 4.0 in Python, not in JSON
    sql(reg, "UPDATE versions SET arch_args = :a", a=args)
    with pytest.raises(SignatureError, match="signed: its arguments"):
        reg.load("net@v1", trusted_keys=[keys["alice.pub"]])


def test_a_catalog_extension_that_names_a_path_is_refused_by_pull(
    reg: Registry, tmp_path: Path
) -> None:
    reg.push(tiny(0), name="net", **TINY)
    sql(reg, "UPDATE versions SET extension = '/../../escaped.pt'")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    with pytest.raises(InvalidReferenceError, match="extension"):
        reg.pull("net@v1", tmp_path / "deep" / "er" / "")
    assert not (tmp_path / "escaped.pt").exists()


def test_a_malformed_signature_in_the_catalog_is_no_signature_and_never_a_traceback(
    reg: Registry, keys: dict[str, Path], tmp_path: Path
) -> None:
    reg.push(tiny(0), name="net", sign=keys["alice"], **TINY)
    deep: dict[str, object] = {}
    for _ in range(700):
        deep = {"x": deep}
    for junk in (deep, {"signed_by": "\x1b[31mteam"}, [1, 2]):
        sql(reg, "UPDATE versions SET signature = :s", s=json.dumps(junk))
        version = reg.get("net@v1")
        assert version.signature is None and version.to_json()["signed_by"] is None
        with pytest.raises(SignatureError, match="is not signed"):
            reg.load("net@v1", trusted_keys=[keys["alice.pub"]])
    # Whole, signed by the key it names, but not of a version: one line, not a KeyError.
    from registry import signing

    claims = signing.Claims.of(reg.get("net@v1"))
    document = signing.sign(keys["bob"], claims)
    document["version"] = signing._envelope(  # a statement that lacks the arch
        signing._load_key(keys["bob"], private=True),
        {"_type": signing.STATEMENT_TYPE, "predicateType": signing.VERSION_PREDICATE,
         "subject": [{"name": "net", "digest": {"sha256": signing._root(claims.files)}}],
         "predicate": {"files": dict(claims.files), "blake3": {}}},
    )  # fmt: skip
    with pytest.raises(SignatureError, match="has a malformed signature"):
        signing.check_own(document, claims, "net@v1")


def test_key_settings_that_would_trust_nothing_are_refused(
    reg: Registry, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg.push(tiny(0), name="net", **TINY)
    monkeypatch.setenv("REGISTRY_TRUSTED_KEYS", " , ")
    with pytest.raises(KeyFileError, match="names no key file"):
        reg.load("net@v1")
    monkeypatch.delenv("REGISTRY_TRUSTED_KEYS")
    with pytest.raises(KeyFileError, match=r"is a private key: trust its public\.pem"):
        reg.load("net@v1", trusted_keys=[keys["alice"]])
