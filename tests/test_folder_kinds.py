"""Each folder kind through the Registry (issue 22): transformers, PEFT, hub_mixin and DCP.

Pushed, loaded and compared with what its own library loads from the same
folder (transformers' and peft's `from_pretrained`, DCP's `load`); refused
where SPEC refuses, with nothing stored. tests/test_hf.py and
tests/test_dcp.py test the rebuilds themselves, from blobs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from registry import ArchitectureError, CheckpointError, Registry, hf

hf.offline()
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDS = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))


def llama(folder: Path, seed: int = 0, **save: Any) -> Any:
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, **save)
    return model


def lora(base: Any, folder: Path) -> None:
    """A LoRA adapter with non-zero weights (init_lora_weights=False), saved by peft."""
    torch.manual_seed(1)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(base, config).save_pretrained(folder)


@pytest.fixture
def local(tmp_path: Path) -> Registry:
    return Registry(database_url=f"sqlite:///{tmp_path / 'catalog.db'}", store=tmp_path / "blobs")


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(
        left[k].dtype == right[k].dtype and torch.equal(left[k], right[k]) for k in left
    )


def test_a_save_pretrained_folder_needs_no_arch_and_loads_as_from_pretrained(
    reg: Registry, tmp_path: Path
) -> None:
    llama(tmp_path / "llama", max_shard_size="40KB")
    assert len(list((tmp_path / "llama").glob("model-*.safetensors"))) > 1
    version = reg.push(tmp_path / "llama")
    assert (version.ref, version.format) == ("llama-for-causal-lm@v1", "transformers")
    assert version.arch == "transformers:LlamaForCausalLM"
    model = reg.load(version.ref)
    expected = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    assert type(model) is type(expected) and not model.training
    assert same(model, expected)
    assert torch.equal(model(IDS).logits, expected(IDS).logits)


def test_a_pretrained_model_object_is_pushed_as_save_pretrained_saves_it(
    local: Registry, tmp_path: Path
) -> None:
    model = llama(tmp_path / "llama")
    version = local.push(model, name="tiny-llama")
    assert version.files is not None and "config.json" in {f.path for f in version.files}
    assert torch.equal(local.load("tiny-llama@v1")(IDS).logits, model(IDS).logits)


def test_an_adapter_needs_its_parent_and_loads_as_peft_does(
    local: Registry, tmp_path: Path
) -> None:
    base = llama(tmp_path / "llama")
    lora(base, tmp_path / "lora")
    with pytest.raises(ArchitectureError, match="--parent"):
        local.push(tmp_path / "lora")
    assert local.models() == []
    local.push(tmp_path / "llama", name="base")
    adapter = local.push(tmp_path / "lora", parent="base@v1")
    assert (adapter.ref, adapter.format, adapter.parent) == ("lora@v1", "peft", "base@v1")

    fresh = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llama")
    expected = peft.PeftModel.from_pretrained(fresh, tmp_path / "lora").eval()
    loaded = local.load("lora@v1")
    assert not loaded.training
    assert torch.equal(loaded(IDS).logits, expected(IDS).logits)

    merged = local.load("lora@v1", merge=True)
    assert type(merged) is transformers.LlamaForCausalLM
    assert same(merged, expected.merge_and_unload())

    changes = {c.name: c.status for c in local.diff("base@v1", "lora@v1").tensors}
    added = {name for name, status in changes.items() if status == "added"}
    assert added and all(".lora_" in name for name in added)
    assert {s for n, s in changes.items() if n not in added} == {"identical"}


def test_an_adapter_for_another_base_is_refused_at_push(local: Registry, tmp_path: Path) -> None:
    base = llama(tmp_path / "llama")
    lora(base, tmp_path / "lora")
    torch.manual_seed(0)
    save_file(torch.nn.Linear(4, 3).state_dict(), tmp_path / "linear.safetensors")
    local.push(tmp_path / "linear.safetensors", arch="torch.nn:Linear",
               arch_args={"in_features": 4, "out_features": 3})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"wraps 4 module\(s\) its base linear@v1 does not"):
        local.push(tmp_path / "lora", parent="linear@v1")
    assert [m.name for m in local.models()] == ["linear"]


def test_merge_is_for_an_adapter(local: Registry, tmp_path: Path) -> None:
    llama(tmp_path / "llama")
    local.push(tmp_path / "llama", name="base")
    with pytest.raises(CheckpointError, match="merge is for a PEFT adapter"):
        local.load("base@v1", merge=True)


def test_auto_map_is_refused_with_nothing_stored(local: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "llama"
    llama(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text("raise SystemExit('imported the folder code')\n")
    with pytest.raises(CheckpointError, match="auto_map"):
        local.push(folder)
    assert local.models() == []
    assert not (local.store.root / "sha256").exists() or not any(
        (local.store.root / "sha256").rglob("*.*")
    )


def test_a_hub_mixin_folder_takes_its_arguments_from_config_json(
    local: Registry, tmp_path: Path
) -> None:
    folder = tmp_path / "mixin"
    folder.mkdir()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    save_file(model.state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"in_features": 4, "out_features": 3}))
    version = local.push(folder, arch="torch.nn:Linear")
    assert (version.format, version.arch_args) == (
        "hub_mixin",
        {"in_features": 4, "out_features": 3},
    )
    assert torch.equal(local.load(version.ref).weight, model.weight)
    with pytest.raises(Exception, match="mis-shaped"):
        local.push(folder, arch="torch.nn:Linear", arch_args={"out_features": 5})


def test_a_dcp_folder_loads_its_model_entry_without_a_process_group(
    reg: Registry, tmp_path: Path
) -> None:
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
        dcp.save(state, checkpoint_id=str(tmp_path / "step-1"))
    version = reg.push(
        tmp_path / "step-1", arch="torch.nn:Linear", arch_args={"in_features": 4, "out_features": 3}
    )
    assert version.format == "dcp"
    assert {t.name for t in reg.tensors(version.ref)} == {"weight", "bias"}
    assert same(reg.load(version.ref), model)
    with pytest.raises(ArchitectureError, match="--arch"):
        reg.push(tmp_path / "step-1")


def test_a_signed_adapter_is_read_only_on_the_base_it_was_signed_with(
    local: Registry, tmp_path: Path
) -> None:
    """The catalog's lineage picks an adapter's base; a trusted read takes only the signed
    one (issue 25), even when the other base is signed by the same key."""
    from sqlalchemy import text

    from registry import SignatureError
    from registry.signing import generate

    pair = generate(tmp_path / "keys")
    first = llama(tmp_path / "llama", seed=0)
    llama(tmp_path / "llama2", seed=1)
    lora(first, tmp_path / "lora")
    local.push(tmp_path / "llama", name="base", sign=pair.private)
    local.push(tmp_path / "llama2", name="base", sign=pair.private)
    local.push(tmp_path / "lora", parent="base@v1", sign=pair.private)
    trusted = [pair.public]
    expected = local.load("lora@v1")
    assert torch.equal(local.load("lora@v1", trusted_keys=trusted)(IDS).logits,
                       expected(IDS).logits)  # fmt: skip
    with local.engine.begin() as conn:  # the catalog's writer moves the adapter to base@v2
        conn.execute(text("UPDATE lineage SET parent_version = 2"))
    assert local.get("lora@v1").parent == "base@v2"
    with pytest.raises(SignatureError, match="signed: the base it adapts"):
        local.load("lora@v1", trusted_keys=trusted)
