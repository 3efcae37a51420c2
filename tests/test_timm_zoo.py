"""timm's catalogue round-trips through `timm:create_model`, as the torchvision zoo does.

A sample of 86 architectures from `timm.list_models()`, across its families
(convnets, ViTs, Swin and SwinV2, MaxViT, EfficientNet, MobileViT, LeViT,
hybrids, MLPs, ...), each under 35M parameters. For each, as a new user
would: `timm.create_model(name, pretrained=False)`, save its state_dict,
push it with `--arch timm:create_model --arg model_name=NAME`, load it with
the arch trusted by a REGISTRY_TRUSTED_ARCHS pattern, and check that every
tensor (non-persistent buffers included) and the output on timm's own input
size are bit-identical. Each version and blob is removed once checked, so
disk use stays that of one model.

Builders that compute buffers from their parameters' device (Swin's
attention mask, SwinV2's coordinate table) are the ones the empty build
broke once (issue 20). About a minute on two cores; `make test-fast`
leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from helpers import all_eval

from registry import Registry

pytestmark = pytest.mark.slow

ARCHS = [
    # convnets
    "resnet18", "resnet10t", "resnext26ts", "resnest14d", "skresnet18", "densenet121",
    "dla34", "dpn68", "hrnet_w18_small", "ese_vovnet19b_dw", "selecsls42b", "cspresnet50",
    "darknet17", "xception41", "inception_v3", "regnetx_002", "regnety_002", "regnetz_b16",
    "nf_regnet_b0", "convnext_atto", "convnextv2_atto", "inception_next_atto", "rdnet_tiny",
    "hgnetv2_b0", "repvit_m0_9", "mobileone_s0", "fasternet_t0", "starnet_s1",
    # mobile and NAS nets
    "efficientnet_b0", "tf_efficientnet_lite0", "efficientnetv2_rw_t", "mobilenetv3_small_050",
    "mobilenetv4_conv_small", "ghostnet_100", "ghostnetv2_100", "rexnet_100", "lcnet_050",
    "mixnet_s", "fbnetc_100", "spnasnet_100", "hardcorenas_a", "tinynet_e",
    # transformers and hybrids
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "eva02_tiny_patch14_224",
    "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256", "swinv2_cr_tiny_ns_224",
    "maxvit_tiny_tf_224", "coatnet_nano_rw_224", "maxxvit_rmlp_nano_rw_256", "mobilevit_xxs",
    "mobilevitv2_050", "levit_128s", "efficientformer_l1", "efficientformerv2_s0",
    "efficientvit_m0", "efficientvit_b0", "fastvit_t8", "edgenext_xx_small", "poolformer_s12",
    "coat_tiny", "crossvit_tiny_240", "xcit_nano_12_p16_224", "pit_ti_224", "convit_tiny",
    "cait_xxs24_224", "volo_d1_224", "twins_pcpvt_small", "pvt_v2_b0", "nest_tiny",
    "gcvit_xxtiny", "davit_tiny", "focalnet_tiny_srf", "hiera_tiny_224", "tnt_s_patch16_224",
    "halonet26t", "lambda_resnet26t", "botnet26t_256", "nextvit_small", "vitamin_small_224",
    # MLPs and others
    "resmlp_12_224", "mixer_s32_224", "gmlp_ti16_224", "sequencer2d_s", "mambaout_femto",
]  # fmt: skip
MAX_PARAMS = 35_000_000


@pytest.fixture(scope="module")
def timm_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(home=tmp_path_factory.mktemp("timm"))
    yield reg
    reg.close()


def test_the_sample_is_timms_own() -> None:
    """Every name is one timm lists today: a rename upstream fails here, not silently."""
    assert len(ARCHS) >= 40
    assert not set(ARCHS) - set(timm.list_models())


@pytest.mark.parametrize("name", ARCHS)
def test_timm_architecture_round_trips(
    timm_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("REGISTRY_TRUSTED_ARCHS", "timm:*")
    reg = timm_registry
    torch.manual_seed(0)
    original = timm.create_model(name, pretrained=False).eval()
    assert sum(p.numel() for p in original.parameters()) <= MAX_PARAMS
    path = tmp_path / "model_weights.pth"
    torch.save(original.state_dict(), path)
    try:
        version = reg.push(path, arch="timm:create_model", arch_args={"model_name": name})
        model = reg.load(version.ref)
        assert type(model) is type(original)
        assert all_eval(model)
        expected = dict(original.named_buffers()) | dict(original.named_parameters())
        got = dict(model.named_buffers()) | dict(model.named_parameters())
        assert expected.keys() == got.keys()
        assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
        shape = original.pretrained_cfg.get("input_size", (3, 224, 224))
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            assert torch.equal(original(x), model(x))
    finally:
        path.unlink()
        for stored in reg.search():
            reg.delete(stored.ref)
        reg.gc()
    assert [p for p in reg.store.root.rglob("*") if p.is_file()] == []
