"""References, aliases, tags, search, deletion, gc and verify, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_ARGS, TINY_CLI, tiny

from registry import AmbiguousReferenceError, InvalidReferenceError, NotFoundError, Registry


def push_tiny(reg: Registry, seed: int, name: str = "tiny", **kwargs):
    return reg.push(tiny(seed), name=name, **TINY, **kwargs)


def flip_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# -- references ----------------------------------------------------------------


def test_every_reference_form(reg: Registry) -> None:
    v1 = push_tiny(reg, 1)
    v2 = push_tiny(reg, 2, aliases=["production"])
    assert reg.get("tiny") == reg.get("tiny@latest") == v2
    assert reg.get("tiny@v1") == reg.get("tiny@1") == v1
    assert reg.get("tiny@production") == v2
    assert reg.get(f"tiny@sha256:{v1.sha256[:8]}") == v1
    assert reg.get(f"tiny@sha256:{v1.sha256}") == v1


def test_namespaced_names(reg: Registry) -> None:
    version = push_tiny(reg, 1, name="team/tiny")
    assert version.ref == "team/tiny@v1"
    assert reg.get("team/tiny@v1") == version
    assert reg.pull("team/tiny@v1").name == "tiny-v1.pt"


def test_ambiguous_digest_prefix_lists_candidates(reg: Registry) -> None:
    # Two versions of one model share a blob when the same bytes come with another arch.
    first = push_tiny(reg, 1)
    reg.push(
        reg.store.path(first.sha256), arch="tiny_models:tiny", name="tiny", arch_args=TINY_ARGS
    )
    with pytest.raises(AmbiguousReferenceError, match=r"matches 2 versions \(tiny@v1, tiny@v2\)"):
        reg.get(f"tiny@sha256:{first.sha256[:8]}")


@pytest.mark.parametrize("ref", ["tiny@", "tiny@sha256:12", "Tiny", "tiny@LATEST", "../tiny"])
def test_invalid_references_state_the_rule(reg: Registry, ref: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid"):
        reg.get(ref)


# -- aliases -------------------------------------------------------------------


def test_alias_create_move_show_delete(reg: Registry) -> None:
    push_tiny(reg, 1)
    push_tiny(reg, 2)
    assert reg.set_alias("tiny@v1", "production").aliases == ("production",)
    assert reg.get("tiny@production").version == 1
    reg.set_alias("tiny@v2", "production")
    assert reg.get("tiny@production").version == 2
    assert reg.get("tiny@v1").aliases == ()
    assert reg.get("tiny@v2").aliases == ("production",)
    reg.delete_alias("tiny", "production")
    with pytest.raises(NotFoundError, match="tiny@production not found"):
        reg.get("tiny@production")
    with pytest.raises(NotFoundError, match="alias tiny@production not found"):
        reg.delete_alias("tiny", "production")


@pytest.mark.parametrize("alias", ["latest", "v3", "12", "Prod"])
def test_reserved_or_bad_aliases_are_refused(reg: Registry, alias: str) -> None:
    push_tiny(reg, 1)
    with pytest.raises(InvalidReferenceError, match=f"invalid alias '{alias}'"):
        reg.set_alias("tiny@v1", alias)


# -- tags and search -------------------------------------------------------------


def test_tags_set_overwrite_delete(reg: Registry) -> None:
    push_tiny(reg, 1, tags={"dataset": "a"})
    assert reg.set_tags("tiny@v1", {"dataset": "b", "stage": "dev"}).tags == {
        "dataset": "b",
        "stage": "dev",
    }
    assert reg.delete_tag("tiny@v1", "stage").tags == {"dataset": "b"}
    with pytest.raises(NotFoundError, match="tag 'stage' on tiny@v1 not found"):
        reg.delete_tag("tiny@v1", "stage")


def test_tags_set_and_deleted_together_change_all_or_nothing(reg: Registry) -> None:
    push_tiny(reg, 1, tags={"dataset": "a", "stage": "dev"})
    with pytest.raises(NotFoundError, match="tag 'owner' on tiny@v1 not found"):
        reg.set_tags("tiny@v1", {"dataset": "b"}, delete=["stage", "owner"])
    assert reg.get("tiny@v1").tags == {"dataset": "a", "stage": "dev"}  # nothing changed
    with pytest.raises(InvalidReferenceError, match="both set and deleted"):
        reg.set_tags("tiny@v1", {"stage": "prod"}, delete=["stage"])
    assert reg.set_tags("tiny@v1", {"dataset": "b"}, delete=["stage"]).tags == {"dataset": "b"}


def test_search_and_filters(reg: Registry) -> None:
    push_tiny(reg, 1, tags={"dataset": "a"})
    push_tiny(reg, 2, tags={"dataset": "b", "stage": "prod"})
    push_tiny(reg, 3, tags={"dataset": "b"})
    push_tiny(reg, 4, name="other", tags={"dataset": "b"})
    refs = [v.ref for v in reg.search(tags={"dataset": "b"})]
    assert refs == ["other@v1", "tiny@v3", "tiny@v2"]
    assert [v.ref for v in reg.search(tags={"dataset": "b", "stage": "prod"})] == ["tiny@v2"]
    assert [v.ref for v in reg.versions("tiny", tags={"dataset": "b"}, limit=1)] == ["tiny@v3"]
    assert reg.versions("tiny", arch="resnet18") == []
    assert len(reg.search(arch="tiny_models:TinyNet")) == 4


def test_models_summary(reg: Registry) -> None:
    v1 = push_tiny(reg, 1)
    v2 = push_tiny(reg, 2, aliases=["production"])
    [summary] = reg.models()
    assert (summary.num_versions, summary.latest_version) == (2, 2)
    assert summary.size == v1.size + v2.size
    assert summary.aliases == ("production=v2",)


# -- idempotent push -------------------------------------------------------------


def test_identical_push_adds_tags_and_aliases(reg: Registry) -> None:
    first = push_tiny(reg, 1)
    assert first.is_new
    again = push_tiny(reg, 1, tags={"k": "v"}, aliases=["staging"])
    assert not again.is_new
    assert (again.version, again.tags, again.aliases) == (1, {"k": "v"}, ("staging",))
    assert [v.version for v in reg.versions("tiny")] == [1]


# -- delete ----------------------------------------------------------------------


def test_delete_never_reuses_the_number(reg: Registry) -> None:
    push_tiny(reg, 1)
    push_tiny(reg, 2, aliases=["production"])
    deleted = reg.delete("tiny@production")
    assert deleted.ref == "tiny@v2"
    with pytest.raises(NotFoundError):
        reg.get("tiny@v2")
    with pytest.raises(NotFoundError):
        reg.get("tiny@production")  # its alias went with it
    assert reg.get("tiny").version == 1
    assert reg.store.exists(deleted.sha256)  # kept until gc
    assert push_tiny(reg, 3).version == 3
    reg.delete("tiny@v3")
    reg.delete("tiny@v1")
    assert reg.versions("tiny") == []
    assert push_tiny(reg, 4).version == 4


# -- gc ---------------------------------------------------------------------------


def test_gc_reclaims_exactly_the_unreferenced_blobs(reg: Registry) -> None:
    kept = push_tiny(reg, 1)
    shared = push_tiny(reg, 2)
    reg.push(
        reg.store.path(shared.sha256), arch="tiny_models:TinyNet", name="copy", arch_args=TINY_ARGS
    )
    gone = push_tiny(reg, 3)
    reg.delete("tiny@v2")  # its blob is still used by copy@v1
    reg.delete("tiny@v3")
    dry = reg.gc(dry_run=True)
    assert (dry.blobs, dry.bytes) == (1, gone.size)
    assert reg.store.exists(gone.sha256)
    result = reg.gc()
    assert (result.blobs, result.bytes) == (1, gone.size)
    assert not reg.store.exists(gone.sha256)
    assert reg.store.exists(kept.sha256) and reg.store.exists(shared.sha256)
    assert reg.gc().blobs == 0
    assert reg.verify() == []
    assert push_tiny(reg, 3).version == 4  # the same bytes again: written anew
    assert reg.verify() == []


def test_gc_cleans_temp_files_of_dead_writers(reg: Registry) -> None:
    push_tiny(reg, 1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    host = os.uname().nodename
    leftover = reg.store.tmp_dir / f"{dead.stdout.strip()}@{host}@abc.part"
    leftover.write_bytes(b"x" * 100)
    live = reg.store.tmp_dir / f"{os.getpid()}@{host}@def.part"
    live.write_bytes(b"y" * 10)
    result = reg.gc()
    assert (result.temp_files, result.bytes) == (1, 100)
    assert not leftover.exists() and live.exists()


# -- verify -------------------------------------------------------------------------


def test_verify_catches_flipped_truncated_and_missing_blobs(reg: Registry) -> None:
    flipped, truncated, missing, fine = (push_tiny(reg, i) for i in range(4))
    flip_byte(reg.store.path(flipped.sha256))
    path = reg.store.path(truncated.sha256)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:100])
    reg.store.path(missing.sha256).unlink()
    problems = {p.ref: p for p in reg.verify()}
    assert problems.keys() == {flipped.ref, truncated.ref, missing.ref}
    assert problems[flipped.ref].status == "corrupt"
    assert problems[truncated.ref].status == "truncated"
    assert (problems[missing.ref].status, problems[missing.ref].actual) == ("missing", None)
    assert problems[flipped.ref].expected == flipped.sha256
    assert reg.verify(fine.ref) == []
    assert [p.ref for p in reg.verify(flipped.ref)] == [flipped.ref]


# -- the CLI over all of it ------------------------------------------------------------


def test_cli_alias_tag_rm(run, cli_reg: Registry) -> None:
    push_tiny(cli_reg, 1)
    push_tiny(cli_reg, 2)
    assert run("alias", "tiny@v1", "production") == (0, "tiny@production -> tiny@v1\n", "")
    assert run("alias", "tiny@v2", "production") == (0, "tiny@production -> tiny@v2\n", "")
    assert run("alias", "--delete", "tiny", "production") == (0, "removed tiny@production\n", "")
    code, _, err = run("alias", "tiny@v1", "latest")
    assert code == 1 and err.startswith("Error: invalid alias 'latest'")
    assert run("tag", "tiny@v1", "dataset=a", "stage=dev") == (
        0,
        "tiny@v1 dataset=a stage=dev\n",
        "",
    )
    assert run("tag", "tiny@v1", "--delete", "stage") == (0, "tiny@v1 dataset=a\n", "")
    code, _, err = run("tag", "tiny@v1", "owner=me", "--delete", "stage")  # gone already
    assert (code, err) == (1, "Error: tag 'stage' on tiny@v1 not found\n")
    assert cli_reg.get("tiny@v1").tags == {"dataset": "a"}  # owner=me was not set either
    assert run("tag", "tiny@v1", "owner=me", "--delete", "dataset") == (0, "tiny@v1 owner=me\n", "")
    assert run("tag", "tiny@v1")[0] == 2
    assert run("rm", "tiny@v2") == (0, "deleted tiny@v2\n", "")
    assert run("show", "tiny@v2") == (
        1,
        "",
        "Error: tiny@v2 not found; see `registry ls tiny` for its versions\n",
    )


def test_cli_ls_tables_exactly(run, cli_reg: Registry) -> None:
    v1 = push_tiny(cli_reg, 1, tags={"dataset": "a"})
    v2 = push_tiny(cli_reg, 2, aliases=["production"])
    size = f"{(v1.size + v2.size) / 1000:.1f} kB"
    when = v2.created_at.strftime("%Y-%m-%d %H:%M")
    assert run("ls") == (
        0,
        f"NAME  VERSIONS  LATEST  {'SIZE':<{len(size)}}  UPDATED           ALIASES\n"
        f"tiny  2         v2      {size}  {when}  production=v2\n",
        "",
    )
    rows = [
        (v2, f"{v2.size / 1000:.1f} kB", "production", ""),
        (v1, f"{v1.size / 1000:.1f} kB", "", "dataset=a"),
    ]
    expected = (
        "REF      SHA256        SIZE    ARCH                 CREATED           ALIASES     TAGS\n"
    )
    for v, human, aliases, tags in rows:
        line = (
            f"{v.ref}  {v.sha256[:12]}  {human}  tiny_models:TinyNet  "
            f"{v.created_at.strftime('%Y-%m-%d %H:%M')}  {aliases:<10}  {tags}"
        )
        expected += line.rstrip() + "\n"
    assert run("ls", "tiny") == (0, expected, "")
    _, out, _ = run("ls", "tiny", "--tag", "dataset=a", "--json")
    assert [v["ref"] for v in json.loads(out)] == ["tiny@v1"]
    assert json.loads(run("ls", "tiny", "--limit", "1", "--json")[1])[0]["ref"] == "tiny@v2"
    assert run("ls", "--tag", "dataset=a")[0] == 2


def test_cli_verify_and_gc(run, cli_reg: Registry) -> None:
    v1 = push_tiny(cli_reg, 1)
    v2 = push_tiny(cli_reg, 2)
    assert run("verify") == (0, "all blobs verified\n", "")
    flip_byte(cli_reg.store.path(v1.sha256))
    code, out, _ = run("verify")
    assert code == 1
    assert out.startswith(f"tiny@v1: corrupt: expected sha256:{v1.sha256}, found sha256:")
    code, out, _ = run("verify", "--json")
    assert code == 1 and json.loads(out)[0]["status"] == "corrupt"
    assert run("verify", "tiny@v2") == (0, "tiny@v2 verified\n", "")
    run("rm", "tiny@v2")
    assert run("gc", "--dry-run") == (
        0,
        f"would reclaim 1 blobs and 0 temp files, {v2.size / 1000:.1f} kB\n",
        "",
    )
    assert run("gc") == (0, f"reclaimed 1 blobs and 0 temp files, {v2.size / 1000:.1f} kB\n", "")
    assert json.loads(run("gc", "--json")[1]) == {
        "blobs": 0,
        "bytes": 0,
        "temp_files": 0,
        "dry_run": False,
    }


def test_cli_push_of_identical_bytes_says_so(run, cli_reg: Registry, tiny_model, tmp_path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), path)
    args = ["push", str(path), *TINY_CLI]
    code, out, err = run(*args)
    assert (code, err) == (0, "") and out.startswith("tinynet@v1 sha256:")
    code, again, err = run(*args, "--tag", "k=v")
    assert (code, again) == (0, out)
    assert err == "tinynet@v1 already holds these bytes; no new version made\n"
    assert cli_reg.get("tinynet").tags == {"k": "v"}


def test_model_summaries_follow_pushes_deletes_and_imports(reg: Registry, tmp_path) -> None:
    """`ls` reads counters kept on each model row: they must equal the versions' own figures."""
    import torch

    from registry.records import ModelSummary

    def expected(name: str) -> ModelSummary:
        versions = reg.versions(name)
        return ModelSummary(
            name=name,
            num_versions=len(versions),
            latest_version=max((v.version for v in versions), default=None),
            updated_at=max((v.created_at for v in versions), default=None),
            size=sum(v.size for v in versions),
            aliases=tuple(f"{a}=v{v.version}" for v in versions for a in v.aliases),
        )

    args = {"arch": "torch.nn:Linear", "arch_args": {"in_features": 4, "out_features": 2}}
    for width in range(3):
        torch.manual_seed(width)
        reg.push(torch.nn.Linear(4, 2), name="m", aliases=["production"] if width else [], **args)
    assert [m for m in reg.models() if m.name == "m"] == [expected("m")]
    reg.delete("m@v3")
    assert reg.models() == [expected("m")]
    reg.delete("m@v1")
    assert reg.models() == [expected("m")]
    reg.export_bundle(["m@v2"], tmp_path / "b.tar")
    target = Registry(home=tmp_path / "target")
    target.import_bundle(tmp_path / "b.tar")
    (imported,) = target.models()
    assert (imported.num_versions, imported.latest_version, imported.size) == (
        1,
        1,
        reg.get("m@v2").size,
    )
    reg.delete("m@v2")
    assert reg.models() == [ModelSummary("m", 0, None, None, 0, ())]
