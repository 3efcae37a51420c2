"""transformers' own catalogue round-trips through a pushed save_pretrained folder.

A sweep of tiny transformers models across text (encoders, decoders,
mixtures of experts, encoder-decoders), vision, audio and multimodal. For
each, as a user would: seed, build the model class from a tiny config,
`save_pretrained` it, `Registry.push(folder)` with no arch, and
`Registry.load(ref)` it back with every socket refused. The result must be
what transformers' own `Cls.from_pretrained(folder)` gives: the same class,
in eval mode, every parameter and buffer equal with the same dtype, the same
tied weights, and the same main output (logits, last_hidden_state, ...) on a
fixed seeded input for its modality. The version must record the arch
`transformers:<Class>`, the format `transformers`, and a tensor manifest
naming exactly the tensors of the folder's safetensors files.

Cases of note: `llama_sharded` and `mixtral_sharded` are saved in several
shards, `qwen2_bf16` and `gemma_bf16` in bfloat16; those in CONVERTED store
keys transformers converts on load, so the registry loads them with
`from_pretrained` itself; those in TIED have tied weights.
Each version and its blobs are removed once checked.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from registry import Registry, hf

hf.offline()
transformers = pytest.importorskip("transformers")

VOCAB = 99
SEQ = 7


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def ids(vocab: int = VOCAB, length: int = SEQ) -> torch.Tensor:
    return torch.randint(3, vocab, (2, length), generator=_generator())


def text(**_: Any) -> dict[str, torch.Tensor]:
    return {"input_ids": ids()}


def seq2seq(**_: Any) -> dict[str, torch.Tensor]:
    return {"input_ids": ids(), "decoder_input_ids": ids(length=5)}


def image(size: int = 32, channels: int = 3) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(2, channels, size, size, generator=_generator())}


def waveform(**_: Any) -> dict[str, torch.Tensor]:
    return {"input_values": torch.randn(2, 400, generator=_generator())}


def mel(bins: int = 8, frames: int = 32) -> dict[str, torch.Tensor]:
    features = torch.randn(2, bins, frames, generator=_generator())
    return {"input_features": features, "decoder_input_ids": ids(length=5)}


def text_image(size: int = 32) -> dict[str, torch.Tensor]:
    return {"input_ids": ids(), **image(size)}


# Small sizes every text model shares.
TEXT = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
DECODER = {**TEXT, "intermediate_size": 64, "num_key_value_heads": 2}
VISION = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
}


class Case:
    """One architecture: its class, tiny config, input, and how it is saved."""

    def __init__(
        self,
        cls: str,
        config: str,
        kwargs: dict[str, Any],
        inputs: Callable[..., dict[str, torch.Tensor]] = text,
        dtype: torch.dtype | None = None,
        shard: str | None = None,
        **input_args: Any,
    ) -> None:
        self.cls, self.config, self.kwargs = cls, config, kwargs
        self.inputs, self.input_args = inputs, input_args
        self.dtype, self.shard = dtype, shard

    def make(self) -> Any:
        config = getattr(transformers, self.config)(**self.kwargs)
        torch.manual_seed(0)
        model = getattr(transformers, self.cls)(config)
        return model if self.dtype is None else model.to(self.dtype)

    def example(self) -> dict[str, torch.Tensor]:
        return self.inputs(**self.input_args)


CASES: dict[str, Case] = {
    # -- text encoders ------------------------------------------------------------------
    "bert": Case("BertForMaskedLM", "BertConfig", TEXT),
    "roberta": Case("RobertaForSequenceClassification", "RobertaConfig", {**TEXT, "num_labels": 3}),
    "distilbert": Case(
        "DistilBertForMaskedLM",
        "DistilBertConfig",
        {
            "vocab_size": VOCAB,
            "dim": 32,
            "n_layers": 2,
            "n_heads": 4,
            "hidden_dim": 37,
            "max_position_embeddings": 64,
        },
    ),
    "deberta_v2": Case(
        "DebertaV2ForMaskedLM",
        "DebertaV2Config",
        {
            **TEXT,
            "relative_attention": True,
            "position_buckets": 8,
            "max_relative_positions": 16,
            "pos_att_type": ["p2c", "c2p"],
        },
    ),
    "electra": Case("ElectraForPreTraining", "ElectraConfig", {**TEXT, "embedding_size": 16}),
    "albert": Case("AlbertForMaskedLM", "AlbertConfig", {**TEXT, "embedding_size": 16}),
    "xlm_roberta": Case("XLMRobertaModel", "XLMRobertaConfig", TEXT),
    "mpnet": Case("MPNetForMaskedLM", "MPNetConfig", TEXT),
    # -- decoders -----------------------------------------------------------------------
    "gpt2": Case(
        "GPT2LMHeadModel",
        "GPT2Config",
        {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, **TOKENS},
    ),
    "gpt_neox": Case("GPTNeoXForCausalLM", "GPTNeoXConfig", TEXT),
    "llama_sharded": Case("LlamaForCausalLM", "LlamaConfig", DECODER, shard="20KB"),
    "mistral": Case("MistralForCausalLM", "MistralConfig", {**DECODER, "sliding_window": 4}),
    "qwen2_bf16": Case("Qwen2ForCausalLM", "Qwen2Config", DECODER, dtype=torch.bfloat16),
    "gemma_bf16": Case(
        "GemmaForCausalLM", "GemmaConfig", {**DECODER, "head_dim": 8}, dtype=torch.bfloat16
    ),
    "phi3": Case("Phi3ForCausalLM", "Phi3Config", DECODER),
    "opt": Case(
        "OPTForCausalLM",
        "OPTConfig",
        {
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "ffn_dim": 37,
            "max_position_embeddings": 64,
            "word_embed_proj_dim": 32,
        },
    ),
    "bloom": Case(
        "BloomForCausalLM",
        "BloomConfig",
        {"vocab_size": VOCAB, "hidden_size": 32, "n_layer": 2, "n_head": 4},
    ),
    "falcon": Case(
        "FalconForCausalLM",
        "FalconConfig",
        {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4},
    ),
    "mixtral_sharded": Case(
        "MixtralForCausalLM",
        "MixtralConfig",
        {**DECODER, "num_local_experts": 4, "num_experts_per_tok": 2},
        shard="60KB",
    ),
    "qwen2_moe": Case(
        "Qwen2MoeForCausalLM",
        "Qwen2MoeConfig",
        {
            **DECODER,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 16,
        },
    ),
    # -- encoder-decoders ---------------------------------------------------------------
    "t5": Case(
        "T5ForConditionalGeneration",
        "T5Config",
        {
            "vocab_size": VOCAB,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 64,
            "num_layers": 2,
            "num_heads": 4,
            "decoder_start_token_id": 0,
        },
        seq2seq,
    ),
    "bart": Case(
        "BartForConditionalGeneration",
        "BartConfig",
        {
            "vocab_size": VOCAB,
            "d_model": 32,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 37,
            "decoder_ffn_dim": 37,
            "max_position_embeddings": 64,
        },
        seq2seq,
    ),
    # -- audio --------------------------------------------------------------------------
    "whisper": Case(
        "WhisperForConditionalGeneration",
        "WhisperConfig",
        {
            "vocab_size": VOCAB,
            "d_model": 32,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 37,
            "decoder_ffn_dim": 37,
            "num_mel_bins": 8,
            "max_source_positions": 16,
            "max_target_positions": 32,
            "decoder_start_token_id": 1,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "suppress_tokens": None,
            "begin_suppress_tokens": None,
        },
        mel,
    ),
    "wav2vec2": Case(
        "Wav2Vec2ForCTC",
        "Wav2Vec2Config",
        {
            **TEXT,
            "vocab_size": 12,
            "conv_dim": (16, 16),
            "conv_stride": (5, 4),
            "conv_kernel": (10, 8),
            "num_feat_extract_layers": 2,
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 2,
        },
        waveform,
    ),
    "hubert": Case(
        "HubertModel",
        "HubertConfig",
        {
            **TEXT,
            "conv_dim": (16, 16),
            "conv_stride": (5, 4),
            "conv_kernel": (10, 8),
            "num_feat_extract_layers": 2,
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 2,
        },
        waveform,
    ),
    # -- vision -------------------------------------------------------------------------
    "vit": Case("ViTForImageClassification", "ViTConfig", {**VISION, "num_labels": 5}, image),
    "deit": Case("DeiTForImageClassification", "DeiTConfig", {**VISION, "num_labels": 5}, image),
    "beit": Case(
        "BeitForImageClassification",
        "BeitConfig",
        {**VISION, "num_labels": 5, "use_relative_position_bias": True},
        image,
    ),
    "dinov2": Case("Dinov2Model", "Dinov2Config", VISION, image),
    "convnext": Case(
        "ConvNextForImageClassification",
        "ConvNextConfig",
        {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_labels": 5},
        image,
    ),
    "swin": Case(
        "SwinForImageClassification",
        "SwinConfig",
        {
            "image_size": 32,
            "patch_size": 2,
            "embed_dim": 8,
            "depths": [1, 1],
            "num_heads": [2, 2],
            "window_size": 4,
            "num_labels": 5,
        },
        image,
    ),
    "resnet": Case(
        "ResNetForImageClassification",
        "ResNetConfig",
        {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "num_labels": 5},
        image,
    ),
    "segformer": Case(
        "SegformerForSemanticSegmentation",
        "SegformerConfig",
        {
            "num_encoder_blocks": 2,
            "depths": [1, 1],
            "sr_ratios": [2, 1],
            "hidden_sizes": [8, 16],
            "num_attention_heads": [1, 2],
            "patch_sizes": [7, 3],
            "strides": [4, 2],
            "decoder_hidden_size": 16,
            "num_labels": 3,
        },
        image,
    ),
    # -- multimodal ---------------------------------------------------------------------
    "clip": Case(
        "CLIPModel",
        "CLIPConfig",
        {"text_config": TEXT, "vision_config": VISION, "projection_dim": 16},
        text_image,
    ),
    "siglip": Case(
        "SiglipModel",
        "SiglipConfig",
        {"text_config": TEXT, "vision_config": VISION},
        text_image,
    ),
}


# The models whose stored keys are not the ones the model holds, which the registry
# therefore loads with from_pretrained itself: save_pretrained writes transformers'
# original layout, so a mixture of experts stores each expert (fused on load), and the
# models transformers 5 renamed inside (ViT's `attention.attention.query` is now
# `attention.q_proj`, CLIP's prefixes...) store their old names.
CONVERTED = {
    "mixtral_sharded", "qwen2_moe", "gpt_neox", "vit", "deit", "beit", "dinov2", "swin",
    "segformer", "clip", "siglip",
}  # fmt: skip
# The models with tied weights (an output layer sharing the input embedding, a bias shared
# by two modules), which save_pretrained writes once and load must tie again.
TIED = {
    "bert", "distilbert", "deberta_v2", "albert", "mpnet", "gpt2", "gemma_bf16", "opt", "bloom",
    "falcon", "t5", "bart", "whisper",
}  # fmt: skip


def main_output(output: Any) -> torch.Tensor:
    for name in ("logits", "logits_per_image", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise AssertionError(f"no main output in {type(output).__name__}")


def run(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return main_output(model(**inputs))


def tie_groups(model: torch.nn.Module) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def folder_tensors(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            names.update(f.keys())
    return names


class NetworkUsed(AssertionError):
    pass


@contextlib.contextmanager
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every socket connect and name lookup raises while inside."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NetworkUsed(f"network use: {args[1:] or args}")

    with monkeypatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def zoo_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("transformers-zoo")
    reg = Registry(database_url=f"sqlite:///{root / 'c.db'}", store=root / "blobs")
    yield reg
    reg.close()


def test_the_network_guard_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    with no_network(monkeypatch), pytest.raises(NetworkUsed):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with no_network(monkeypatch), pytest.raises(NetworkUsed):
        socket.getaddrinfo("huggingface.co", 443)


def test_the_sweep_is_wide() -> None:
    assert len(CASES) >= 25
    assert any(case.shard for case in CASES.values())
    assert any(case.dtype == torch.bfloat16 for case in CASES.values())
    assert CASES.keys() >= CONVERTED and CASES.keys() >= TIED


@pytest.mark.parametrize("arch_id", CASES)
def test_transformers_architecture_round_trips(
    zoo_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch_id: str
) -> None:
    reg = zoo_registry
    case = CASES[arch_id]
    cls = getattr(transformers, case.cls)
    folder = tmp_path / arch_id
    original = case.make()
    if case.shard is None:
        original.save_pretrained(folder)
    else:
        original.save_pretrained(folder, max_shard_size=case.shard)
        assert len(list(folder.glob("model-*-of-*.safetensors"))) > 2
    del original
    ref = cls.from_pretrained(folder, local_files_only=True)
    links: list[Path] = []
    mkdtemp = hf.tempfile.mkdtemp

    def recorded(**kw: Any) -> str:
        links.append(Path(mkdtemp(dir=tmp_path, **kw)))
        return str(links[-1])

    try:
        version = reg.push(folder)
        assert version.arch == "transformers:" + cls.__name__
        assert version.format == "transformers"
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", version.name)
        assert version.name.replace("-", "") == cls.__name__.lower()
        assert {t.name for t in reg.tensors(version.ref)} == folder_tensors(folder)
        with no_network(monkeypatch), monkeypatch.context() as patch:
            patch.setattr(hf.tempfile, "mkdtemp", recorded)
            model = reg.load(version.ref)
        # only a checkpoint that needs transformers' weight conversions goes through
        # from_pretrained, on a folder of links that is gone afterwards
        assert len(links) == (arch_id in CONVERTED)
        assert not any(link.exists() for link in links)

        assert type(model) is cls
        assert not model.training and not ref.training
        assert all(not m.training for m in model.modules())
        for named in ("named_parameters", "named_buffers"):
            got = dict(getattr(model, named)(remove_duplicate=False))
            want = dict(getattr(ref, named)(remove_duplicate=False))
            assert got.keys() == want.keys()
            assert [k for k in got if got[k].dtype != want[k].dtype] == []
            assert [k for k in got if got[k].is_meta or not torch.equal(got[k], want[k])] == []
        assert tie_groups(model) == tie_groups(ref)
        assert bool(tie_groups(model)) == (arch_id in TIED)
        if ref.can_generate():
            assert model.generation_config.to_dict() == ref.generation_config.to_dict()
        if case.dtype is not None:
            assert model.dtype == case.dtype
        inputs = case.example()
        assert torch.equal(run(model, inputs), run(ref, inputs))
    finally:
        for stored in reg.search():
            reg.delete(stored.ref)
        reg.gc()
    assert [p for p in reg.store.root.rglob("*") if p.is_file()] == []
