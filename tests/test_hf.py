"""registry.hf: save_pretrained folders and LoRA adapters rebuilt from blobs, as from_pretrained."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from registry import hf
from registry.errors import (
    ArchitectureError,
    ArchitectureMismatchError,
    CheckpointError,
    UnsafeCheckpointError,
    UntrustedArchError,
)

hf.offline()
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

VOCAB = 100
IDS = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))


def as_blobs(folder: Path, store: Path) -> dict[str, Path]:
    """The folder's files copied to blobs named by their sha256, as a folder version keeps them."""
    store.mkdir(parents=True, exist_ok=True)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = store / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        files[path.relative_to(folder).as_posix()] = blob
    return files


def llama_config(**kw: Any) -> Any:
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **kw,
    )


def bert(folder: Path) -> None:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=3,
    )
    transformers.BertForSequenceClassification(config).save_pretrained(folder)


def llama_sharded(folder: Path) -> None:
    transformers.LlamaForCausalLM(llama_config()).save_pretrained(folder, max_shard_size="20KB")
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 2


def llama_tied_bf16(folder: Path) -> None:
    model = transformers.LlamaForCausalLM(llama_config(tie_word_embeddings=True))
    model.to(torch.bfloat16).save_pretrained(folder)


def gpt2(folder: Path) -> None:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)


def gpt2_bin(folder: Path) -> None:
    """A pytorch_model.bin folder (transformers 5 always writes safetensors, so by hand)."""
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64
    )
    model = transformers.GPT2LMHeadModel(config)
    folder.mkdir()
    model.config.architectures = ["GPT2LMHeadModel"]
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


def t5(folder: Path) -> None:
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
    )
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)


def mixtral(folder: Path) -> None:
    config = transformers.MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    transformers.MixtralForCausalLM(config).save_pretrained(folder)


def logits(model: Any) -> torch.Tensor:
    extra = {"decoder_input_ids": IDS[:, :5]} if model.config.model_type == "t5" else {}
    with torch.no_grad():
        return model(input_ids=IDS, **extra).logits  # type: ignore[no-any-return]


def tie_groups(model: torch.nn.Module) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def assert_same(mine: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Same class, tensors, dtypes, ties, mode and logits."""
    assert type(mine) is type(ref)
    assert not mine.training and not ref.training
    for named in ("named_parameters", "named_buffers"):
        a = dict(getattr(mine, named)(remove_duplicate=False))
        b = dict(getattr(ref, named)(remove_duplicate=False))
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype, k
            assert not a[k].is_meta and torch.equal(a[k], b[k]), k
            assert a[k].requires_grad == b[k].requires_grad, k
    assert tie_groups(mine) == tie_groups(ref)
    assert torch.equal(logits(mine), logits(ref))


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "bert": (bert, "BertForSequenceClassification"),
    "llama_sharded": (llama_sharded, "LlamaForCausalLM"),
    "llama_tied_bf16": (llama_tied_bf16, "LlamaForCausalLM"),
    "gpt2": (gpt2, "GPT2LMHeadModel"),
    "gpt2_bin": (gpt2_bin, "GPT2LMHeadModel"),
    "t5": (t5, "T5ForConditionalGeneration"),
    "mixtral": (mixtral, "MixtralForCausalLM"),
}


@pytest.mark.parametrize("case", CASES)
def test_load_equals_from_pretrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    links: list[Path] = []
    mkdtemp = hf.tempfile.mkdtemp

    def recorded(**kw: Any) -> str:
        links.append(Path(mkdtemp(dir=tmp_path, **kw)))
        return str(links[-1])

    monkeypatch.setattr(hf.tempfile, "mkdtemp", recorded)
    make, cls_name = CASES[case]
    torch.manual_seed(0)
    folder = tmp_path / "folder"
    make(folder)
    cls = getattr(transformers, cls_name)
    ref = cls.from_pretrained(folder, local_files_only=True)
    files = as_blobs(folder, tmp_path / "blobs")
    shutil.rmtree(folder)  # only the blobs are left to read
    config = hf.config_data(files, trusted=False)
    arch = hf.arch_of(config)
    assert arch == f"transformers:{cls_name}"
    mine = hf.load(arch, files, trusted=False)
    assert_same(mine, ref)
    if case == "llama_tied_bf16":
        assert mine.dtype == torch.bfloat16
    if hasattr(ref, "generation_config"):
        assert mine.generation_config.to_dict() == ref.generation_config.to_dict()
    # only a checkpoint that needs transformers' weight conversions goes through from_pretrained,
    # on a folder of links that is gone afterwards
    assert len(links) == (case == "mixtral")
    assert not any(link.exists() for link in links)


def test_weights_are_the_stored_tensors_memory_mapped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    llama_sharded(tmp_path / "folder")
    files = as_blobs(tmp_path / "folder", tmp_path / "blobs")
    index = json.loads((tmp_path / "folder" / "model.safetensors.index.json").read_text())
    state = hf.weights(files)
    assert state.keys() == index["weight_map"].keys()
    mixtral(tmp_path / "moe")
    moe = hf.weights(as_blobs(tmp_path / "moe", tmp_path / "moe-blobs"))
    assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in moe  # as on disk, unconverted


def test_weights_are_memory_mapped(tmp_path: Path) -> None:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    torch.manual_seed(0)
    llama_sharded(tmp_path / "folder")
    files = as_blobs(tmp_path / "folder", tmp_path / "blobs")
    tensor = hf.weights(files)["model.embed_tokens.weight"]
    address = tensor.data_ptr()
    blobs = {str(p) for p in files.values()}
    for line in maps.read_text().splitlines():
        span, *_, path = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= address < high:
            assert path in blobs
            return
    pytest.fail("the tensor lies in no mapping")


class NotATensor:
    pass


def test_weight_files_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    llama_sharded(tmp_path / "folder")
    files = as_blobs(tmp_path / "folder", tmp_path / "blobs")
    shard = next(k for k in files if k.startswith("model-"))
    with pytest.raises(CheckpointError, match="which the folder does not hold"):
        hf.weights({k: v for k, v in files.items() if k != shard})
    with pytest.raises(CheckpointError, match=r"holds none of model\.safetensors"):
        hf.weights({"config.json": files["config.json"]})
    torch.save({"w": torch.zeros(1), "x": NotATensor()}, tmp_path / "evil.bin")
    with pytest.raises(UnsafeCheckpointError):
        hf.weights({"pytorch_model.bin": tmp_path / "evil.bin"})


MY_MODELS = """
import transformers

class MyLlama(transformers.LlamaForCausalLM):
    pass

class NotAModel:
    pass
"""


def test_trusted_class_of_ones_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_hf_models.py").write_text(MY_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_hf_models  # type: ignore[import-not-found]

    torch.manual_seed(0)
    my_hf_models.MyLlama(llama_config()).save_pretrained(tmp_path / "folder")
    ref = my_hf_models.MyLlama.from_pretrained(tmp_path / "folder")
    files = as_blobs(tmp_path / "folder", tmp_path / "blobs")
    with pytest.raises(UntrustedArchError, match="class outside transformers"):
        hf.load("my_hf_models:MyLlama", files, trusted=False)
    assert_same(hf.load("my_hf_models:MyLlama", files, trusted=True), ref)
    with pytest.raises(ArchitectureError, match="not a transformers PreTrainedModel"):
        hf.model_class("my_hf_models:NotAModel", trusted=True)
    monkeypatch.delitem(sys.modules, "my_hf_models")


def test_fit_follows_transformers_rules(tmp_path: Path) -> None:
    torch.manual_seed(0)
    gpt2(tmp_path / "folder")
    files = as_blobs(tmp_path / "folder", tmp_path / "blobs")
    config = hf.config_data(files, trusted=False)
    arch = hf.arch_of(config)
    model = hf.build(hf.model_class(arch, trusted=False), config)
    shapes = {k: (tuple(v.shape), str(v.dtype)) for k, v in hf.weights(files).items()}
    assert "lm_head.weight" not in shapes  # a tied target may be missing
    hf.fit(model, shapes, arch)
    hf.fit(model, {**shapes, "transformer.h.0.attn.bias": ((), "float32")}, arch)
    broken = dict(shapes)
    del broken["transformer.wpe.weight"]
    broken["transformer.wte.weight"] = ((VOCAB + 1, 32), "float32")
    broken["extra.weight"] = ((1,), "float32")
    with pytest.raises(ArchitectureMismatchError) as caught:
        hf.fit(model, broken, arch)
    assert caught.value.missing == ["transformer.wpe.weight"]
    assert caught.value.unexpected == ["extra.weight"]
    assert caught.value.mis_shaped == [("transformer.wte.weight", (VOCAB + 1, 32), (VOCAB, 32))]
    assert "\n" not in str(caught.value)
    moe = hf.build(transformers.MixtralForCausalLM, json.loads(mixtral_config_json(tmp_path)))
    names = hf.checkpoint_names(moe)
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in names


def mixtral_config_json(tmp_path: Path) -> str:
    mixtral(tmp_path / "moe-folder")
    return (tmp_path / "moe-folder" / "config.json").read_text()


def test_save_writes_a_folder_from_pretrained_reads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2)
    ).eval()
    hf.save(model, tmp_path / "out")
    assert_same(transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out"), model)
    assert hf.is_pretrained_model(model)
    assert not hf.is_pretrained_model(torch.nn.Linear(2, 2))
    assert not hf.is_pretrained_model(transformers.GPT2LMHeadModel)


# -- PEFT adapters --------------------------------------------------------------------------

ADAPTERS = {
    "q_v": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "all_linear_dora_saved_head": dict(
        r=4, lora_alpha=16, target_modules="all-linear", use_dora=True, modules_to_save=["lm_head"]
    ),
}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama") / "folder"
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(llama_config()).save_pretrained(folder)
    return folder


def base(llama_folder: Path) -> Any:
    return transformers.LlamaForCausalLM.from_pretrained(llama_folder, local_files_only=True)


def make_adapter(llama_folder: Path, folder: Path, **kw: Any) -> None:
    torch.manual_seed(2)
    config = peft.LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **kw)
    peft.get_peft_model(base(llama_folder), config).save_pretrained(folder)


@pytest.mark.parametrize("variant", ADAPTERS)
def test_apply_adapter_equals_peft(tmp_path: Path, llama_folder: Path, variant: str) -> None:
    make_adapter(llama_folder, tmp_path / "adapter", **ADAPTERS[variant])
    base_files = as_blobs(llama_folder, tmp_path / "blobs")
    files = as_blobs(tmp_path / "adapter", tmp_path / "blobs")
    arch = "transformers:LlamaForCausalLM"

    ref = peft.PeftModel.from_pretrained(base(llama_folder), tmp_path / "adapter").eval()
    mine = hf.apply_adapter(hf.load(arch, base_files, False), files, merge=False)
    assert not mine.training
    assert not any(p.is_meta for p in mine.parameters())
    assert torch.equal(logits(mine), logits(ref))
    assert not torch.equal(logits(mine), logits(base(llama_folder)))  # the adapter matters

    merged_ref = ref.merge_and_unload()
    merged = hf.apply_adapter(hf.load(arch, base_files, False), files, merge=True)
    assert type(merged) is transformers.LlamaForCausalLM
    assert not merged.training
    a, b = merged.state_dict(), merged_ref.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_for_another_base_is_one_line(tmp_path: Path, llama_folder: Path) -> None:
    make_adapter(llama_folder, tmp_path / "adapter", r=4, target_modules=["q_proj"])
    files = as_blobs(tmp_path / "adapter", tmp_path / "blobs")
    torch.manual_seed(0)
    bert(tmp_path / "bert")
    other = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="q_proj") as caught:
        hf.apply_adapter(other, files, merge=False)
    assert "\n" not in str(caught.value)

    # the adapter's tensors do not fit the modules it names
    state = dict(_adapter_state(files))
    key = next(k for k in state if "layers.1" in k)
    state[key.replace("layers.1", "layers.7")] = state.pop(key)
    save_file(state, tmp_path / "renamed.safetensors")
    files = {**files, "adapter_model.safetensors": tmp_path / "renamed.safetensors"}
    with pytest.raises(ArchitectureMismatchError, match=r"layers\.7") as mismatch:
        hf.apply_adapter(base(llama_folder), files, merge=False)
    assert "\n" not in str(mismatch.value)


def _adapter_state(files: dict[str, Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(files["adapter_model.safetensors"])


# -- refusals ------------------------------------------------------------------------------


def config_files(tmp_path: Path, name: str, data: dict[str, Any]) -> dict[str, Path]:
    blob = tmp_path / hashlib.sha256(json.dumps(data).encode()).hexdigest()
    blob.write_text(json.dumps(data))
    return {name: blob}


LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"auto_map": {"AutoModel": "modeling_evil.Evil"}}, "auto_map"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantization_config"),
        ({"model_type": "evil_model"}, "model_type 'evil_model'"),
    ],
)
def test_config_refusals(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    files = config_files(tmp_path, "config.json", {**LLAMA, **extra})
    with pytest.raises(CheckpointError, match=message) as caught:
        hf.config_data(files, trusted=False)
    assert "\n" not in str(caught.value)


def test_trusted_config_keeps_auto_map_out_of_the_way(tmp_path: Path) -> None:
    files = config_files(tmp_path, "config.json", {**LLAMA, "auto_map": {"AutoModel": "x.Y"}})
    assert hf.config_data(files, trusted=True)["auto_map"] == {"AutoModel": "x.Y"}
    with pytest.raises(CheckpointError, match="quantization_config"):
        hf.config_data(
            config_files(tmp_path, "config.json", {**LLAMA, "quantization_config": {}}), True
        )


def test_model_class_refusals() -> None:
    with pytest.raises(UntrustedArchError, match="class outside transformers"):
        hf.model_class("tiny_models:TinyNet", trusted=False)
    for arch in ("transformers:NoSuchModel", "transformers:PreTrainedModel", "transformers:os"):
        with pytest.raises(ArchitectureError, match="no model class"):
            hf.model_class(arch, trusted=False)
    with pytest.raises(CheckpointError, match="architectures"):
        hf.arch_of({"model_type": "llama"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"init_lora_weights": "pissa"}, "init_lora_weights 'pissa'"),
        ({"init_lora_weights": "olora"}, "rewrites the base"),
        ({"peft_type": "IA3"}, "peft_type is 'IA3'"),
        ({"megatron_config": {"tp": 2}, "megatron_core": "evil"}, "megatron_config.*evil"),
    ],
)
def test_adapter_refusals(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    data = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], **extra}
    with pytest.raises(CheckpointError, match=message) as caught:
        hf.adapter_config(config_files(tmp_path, "adapter_config.json", data))
    assert "\n" not in str(caught.value)
    plain = {"peft_type": "LORA", "init_lora_weights": "gaussian", "base_model_name_or_path": "x/y"}
    assert "base_model_name_or_path" not in hf.adapter_config(
        config_files(tmp_path, "adapter_config.json", plain)
    )


# -- no network, no imports -----------------------------------------------------------------


def test_kernel_attn_implementation_builds_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    folder = tmp_path / "folder"
    transformers.LlamaForCausalLM(llama_config()).save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    data["attn_implementation"] = "kernels-community/flash-attn2"
    data["_attn_implementation"] = "kernels-community/flash-attn2"
    (folder / "config.json").write_text(json.dumps(data))
    files = as_blobs(folder, tmp_path / "blobs")
    calls: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = hf.load("transformers:LlamaForCausalLM", files, trusted=False)
    assert calls == []
    assert model.config._attn_implementation in ("sdpa", "eager")


def test_offline_forces_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hf.offline()
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    import os

    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_importing_it_imports_neither_torch_nor_transformers() -> None:
    code = "import sys, registry.hf; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
