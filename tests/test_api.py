"""The Python API end to end, on SQLite and PostgreSQL: push, pull, load, get, list."""

from __future__ import annotations

import filecmp
import hashlib
import multiprocessing
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from conftest import SMALL_ARCH
from helpers import all_eval, outputs_equal

import registry
from registry import (
    ArchitectureError,
    ArchitectureMismatchError,
    CheckpointError,
    IntegrityError,
    InvalidReferenceError,
    NotFoundError,
    Registry,
)


def test_push_file_then_pull_is_bit_exact(reg: Registry, small_file: Path) -> None:
    version = reg.push(small_file, arch=SMALL_ARCH, arch_args={"num_classes": 10})
    assert (version.name, version.version, version.ref) == (SMALL_ARCH, 1, f"{SMALL_ARCH}@v1")
    pulled = reg.pull(version.ref)
    assert pulled == Path(f"{SMALL_ARCH}-v1.pth")
    assert filecmp.cmp(small_file, pulled, shallow=False)


def test_push_then_load_gives_the_same_model_in_eval_mode(
    reg: Registry, small_file: Path, small_model: torch.nn.Module
) -> None:
    reg.push(small_file, arch=SMALL_ARCH, arch_args={"num_classes": 10})
    loaded = reg.load(f"{SMALL_ARCH}@v1")
    assert all_eval(loaded)
    assert outputs_equal(small_model, loaded)
    assert not any(t.is_meta for t in loaded.state_dict().values())


def test_push_records_every_field(reg: Registry, small_file: Path) -> None:
    before = datetime.now(timezone.utc)
    version = reg.push(
        small_file,
        arch=SMALL_ARCH,
        name="team/shuffle",
        arch_args={"num_classes": 10},
        tags={"dataset": "cifar10"},
        aliases=["staging"],
        description="first try",
    )
    assert version == reg.get("team/shuffle@staging")
    assert version.sha256 == hashlib.sha256(small_file.read_bytes()).hexdigest()
    assert version.size == small_file.stat().st_size
    assert (version.format, version.arch, version.arch_args) == (
        "state_dict",
        SMALL_ARCH,
        {"num_classes": 10},
    )
    assert (version.tags, version.aliases, version.description) == (
        {"dataset": "cifar10"},
        ("staging",),
        "first try",
    )
    assert before <= version.created_at <= datetime.now(timezone.utc)
    assert version.created_at.tzinfo is not None
    assert "@" in version.created_by
    assert version.num_params == sum(p.numel() for p in reg.load(version.ref).parameters())
    assert version.torch_version == torch.__version__
    assert version.details["num_tensors"] == len(torch.load(small_file, weights_only=True))
    assert version.details["dtypes"]["float32"] > 0


def test_push_module_and_state_dict_from_memory(reg: Registry, tiny_model: torch.nn.Module) -> None:
    args = {"width": 4, "num_classes": 5}
    from_module = reg.push(tiny_model, arch="tiny_models:TinyNet", name="tiny", arch_args=args)
    assert (from_module.ref, from_module.format, from_module.extension) == (
        "tiny@v1",
        "state_dict",
        ".pt",
    )
    assert outputs_equal(tiny_model, reg.load("tiny@v1"))
    tiny_model.head.bias.data += 1
    from_dict = reg.push(
        tiny_model.state_dict(), arch="tiny_models:TinyNet", name="tiny", arch_args=args
    )
    assert from_dict.version == 2
    assert outputs_equal(tiny_model, reg.load("tiny"))
    assert reg.pull("tiny@v2").name == "tiny-v2.pt"


def test_arch_args_are_recorded_and_used_by_load(
    reg: Registry, tiny_model: torch.nn.Module
) -> None:
    reg.push(tiny_model, arch="tiny_models:tiny", arch_args={"width": 4, "num_classes": 5})
    loaded = reg.load("tiny@v1", trust_arch=True)  # a function builder, not a Module class
    assert loaded.head.out_features == 5
    assert reg.get("tiny").arch_args == {"width": 4, "num_classes": 5}


def test_versions_are_consecutive_and_listed_newest_first(reg: Registry, tiny_model) -> None:
    for i in range(3):
        tiny_model.head.bias.data += i + 1
        reg.push(
            tiny_model,
            arch="tiny_models:TinyNet",
            name="tiny",
            arch_args={"width": 4, "num_classes": 5},
        )
    assert [v.version for v in reg.versions("tiny")] == [3, 2, 1]
    assert reg.get("tiny").version == reg.get("tiny@latest").version == 3
    assert reg.get("tiny@2").version == reg.get("tiny@v2").version == 2
    [summary] = reg.models()
    assert (summary.name, summary.num_versions, summary.latest_version) == ("tiny", 3, 3)


def test_identical_push_returns_the_existing_version(reg: Registry, small_file: Path) -> None:
    first = reg.push(small_file, arch=SMALL_ARCH, arch_args={"num_classes": 10})
    again = reg.push(small_file, arch=SMALL_ARCH, arch_args={"num_classes": 10}, tags={"k": "v"})
    assert again.version == first.version == 1
    assert again.tags == {"k": "v"}
    other_name = reg.push(small_file, arch=SMALL_ARCH, name="copy", arch_args={"num_classes": 10})
    assert other_name.sha256 == first.sha256
    assert len(list((reg.store.root / "sha256").rglob("*"))) == 2  # one folder, one shared blob


def test_digest_reference(reg: Registry, small_file: Path) -> None:
    version = reg.push(small_file, arch=SMALL_ARCH, arch_args={"num_classes": 10})
    assert reg.get(f"{SMALL_ARCH}@sha256:{version.sha256[:8]}") == version
    with pytest.raises(NotFoundError):
        reg.get(f"{SMALL_ARCH}@sha256:{'0' * 8 if version.sha256[:8] != '0' * 8 else '1' * 8}")


def _nothing_stored(reg: Registry) -> bool:
    blobs = reg.store.root / "sha256"
    temps = reg.store.tmp_dir
    return (
        reg.models() == []
        and not (blobs.exists() and any(blobs.iterdir()))
        and not (temps.exists() and any(temps.iterdir()))
    )


def test_wrong_arch_is_refused_and_nothing_stored(reg: Registry, small_file: Path) -> None:
    with pytest.raises(ArchitectureMismatchError) as caught:
        reg.push(small_file, arch="resnet18")
    assert "weights do not fit arch 'resnet18'" in str(caught.value)
    assert caught.value.missing and caught.value.unexpected
    assert _nothing_stored(reg)


def test_head_mismatch_suggests_num_classes(reg: Registry, small_file: Path) -> None:
    with pytest.raises(ArchitectureMismatchError, match=r"--arg num_classes=10$"):
        reg.push(small_file, arch=SMALL_ARCH)
    assert _nothing_stored(reg)


def test_garbage_file_is_refused_and_nothing_stored(reg: Registry, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        reg.push(garbage, arch=SMALL_ARCH)
    assert _nothing_stored(reg)


def test_missing_file_is_refused(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"nope\.pth"):
        reg.push(tmp_path / "nope.pth", arch=SMALL_ARCH)
    assert _nothing_stored(reg)


def test_unknown_arch_is_refused(reg: Registry, small_file: Path) -> None:
    with pytest.raises(ArchitectureError, match="unknown arch 'vgg1600'"):
        reg.push(small_file, arch="vgg1600")
    assert _nothing_stored(reg)


def test_invalid_name_is_refused_before_anything_is_written(
    reg: Registry, small_file: Path
) -> None:
    with pytest.raises(InvalidReferenceError):
        reg.push(small_file, arch=SMALL_ARCH, name="../evil", arch_args={"num_classes": 10})
    assert _nothing_stored(reg)


def test_unknown_references(reg: Registry, tiny_model) -> None:
    with pytest.raises(NotFoundError, match="model 'ghost' not found"):
        reg.get("ghost")
    reg.push(
        tiny_model,
        arch="tiny_models:TinyNet",
        name="tiny",
        arch_args={"width": 4, "num_classes": 5},
    )
    with pytest.raises(NotFoundError, match="tiny@v7 not found"):
        reg.get("tiny@v7")
    with pytest.raises(NotFoundError, match="tiny@prod not found"):
        reg.get("tiny@prod")
    with pytest.raises(InvalidReferenceError):
        reg.get("Tiny@v1")


def test_corrupt_blob_is_never_pulled_or_loaded(
    reg: Registry, small_file: Path, tmp_path: Path
) -> None:
    version = reg.push(small_file, arch=SMALL_ARCH, arch_args={"num_classes": 10})
    blob = reg.store.path(version.sha256)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    destination = tmp_path / "out" / "w.pth"
    destination.parent.mkdir()
    with pytest.raises(IntegrityError) as caught:
        reg.pull(version.ref, destination)
    assert caught.value.expected == version.sha256 and caught.value.actual not in (
        None,
        version.sha256,
    )
    assert list(destination.parent.iterdir()) == []
    with pytest.raises(IntegrityError):
        reg.load(version.ref)
    reg.pull(version.ref, destination, verify=False)  # the caller said the store is trusted
    assert destination.exists()


def test_state_dict_and_device(reg: Registry, tiny_model) -> None:
    reg.push(
        tiny_model,
        arch="tiny_models:TinyNet",
        name="tiny",
        arch_args={"width": 4, "num_classes": 5},
    )
    state = reg.state_dict("tiny")
    assert state.keys() == tiny_model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in tiny_model.state_dict().items())
    model = reg.load("tiny", device="cpu", verify=False)
    assert next(model.parameters()).device.type == "cpu"


def test_module_level_load_uses_the_default_registry(tiny_model) -> None:
    Registry().push(
        tiny_model,
        arch="tiny_models:TinyNet",
        name="tiny",
        arch_args={"width": 4, "num_classes": 5},
    )
    assert outputs_equal(tiny_model, registry.load("tiny@v1"))


def test_registry_options_are_keyword_only(tmp_path: Path) -> None:
    """`Registry(a, b)` would bind a database URL as a home, or a store as a URL."""
    with pytest.raises(TypeError):
        Registry(tmp_path)  # type: ignore[misc]
    Registry(home=tmp_path).close()


@pytest.mark.parametrize("shortcut", ["push", "pull", "get", "load"])
def test_each_module_shortcut_takes_exactly_what_its_registry_method_takes(shortcut: str) -> None:
    """`registry.push(...)` and the rest cannot lack an option `Registry.push` has."""
    import inspect

    method = inspect.signature(getattr(Registry, shortcut))
    expected = [p for name, p in method.parameters.items() if name != "self"]
    assert list(inspect.signature(getattr(registry, shortcut)).parameters.values()) == expected


def test_module_shortcuts_pass_parent_check_input_and_check_through(tiny_model) -> None:
    tiny = {"arch": "tiny_models:TinyNet", "arch_args": {"width": 4, "num_classes": 5}}
    registry.push(tiny_model, name="tiny", **tiny)
    torch.nn.init.zeros_(tiny_model.head.bias)
    child = registry.push(tiny_model, name="tiny", parent="tiny@v1", check_input="1,3,8,8", **tiny)
    assert (child.ref, child.parent) == ("tiny@v2", "tiny@v1")
    assert outputs_equal(tiny_model, registry.load("tiny@v2", check=True))


def _push_many(database_url: str, store: str, worker: int, count: int) -> list[int]:
    import tiny_models

    reg = Registry(database_url=database_url, store=store)
    numbers = []
    for i in range(count):
        torch.manual_seed(worker * 100 + i)
        model = tiny_models.TinyNet(width=4, num_classes=5)
        numbers.append(
            reg.push(
                model,
                arch="tiny_models:TinyNet",
                name="race",
                arch_args={"width": 4, "num_classes": 5},
            ).version
        )
    return numbers


def test_concurrent_pushes_get_distinct_consecutive_versions(
    reg: Registry, database_url: str
) -> None:
    reg.models()  # create the catalog first; concurrent creation is a reliability test of its own
    workers, per_worker = 4, 3
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        results = pool.starmap(
            _push_many, [(database_url, str(reg.store.root), w, per_worker) for w in range(workers)]
        )
    numbers = sorted(n for batch in results for n in batch)
    assert numbers == list(range(1, workers * per_worker + 1))
    for version in reg.versions("race"):
        reg.store.verify(version.sha256, version.ref)


def test_unusable_device_is_a_one_line_error(reg: Registry, tiny_model) -> None:
    reg.push(
        tiny_model,
        arch="tiny_models:TinyNet",
        name="tiny",
        arch_args={"width": 4, "num_classes": 5},
    )
    with pytest.raises(registry.DeviceError, match=r"cannot load onto device 'nonsense'"):
        reg.load("tiny", device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(registry.DeviceError, match=r"cannot load onto device 'cuda'"):
            reg.load("tiny", device="cuda")


def test_push_options_hold_exactly_the_keywords_of_registry_push() -> None:
    """Registry.push hands every keyword to PushOptions: a new one must reach push itself."""
    import dataclasses
    import inspect

    from registry.pushing import PushOptions

    fields = {f.name for f in dataclasses.fields(PushOptions)}
    assert fields == set(inspect.signature(Registry.push).parameters) - {"self", "source"}
