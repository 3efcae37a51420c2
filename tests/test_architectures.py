"""architectures: resolve --arch, build on the meta device, check weights fit, instantiate."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import SMALL_ARCH
from helpers import outputs_equal
from torch import nn

from registry import architectures
from registry.architectures import Arch
from registry.checkpoints import Weights
from registry.errors import ArchitectureError, ArchitectureMismatchError, UntrustedArchError


@pytest.fixture
def write_module(tmp_path: Path) -> Iterator:
    """Write a module into the current folder; forget it from sys.modules afterwards."""
    names: list[str] = []

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        names.append(name)

    yield write
    for name in names:
        sys.modules.pop(name, None)


# --- resolve --------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["resnet18", "ResNet18", "RESNET18"])
def test_resolve_torchvision_name_case_insensitively(given: str) -> None:
    from torchvision import models

    arch = architectures.resolve(given)
    assert arch.name == "resnet18"
    assert arch.torchvision is True
    assert arch.builder is models.resnet18


def test_resolve_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve("resnt18")
    message = str(caught.value)
    assert message.startswith(
        "unknown arch 'resnt18': not a torchvision model and not a "
        "'package.module:callable' path; did you mean resnet18"
    )
    assert message.endswith("?")


def test_resolve_unknown_name_without_close_match() -> None:
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve("qqqqzzzz")
    assert str(caught.value) == (
        "unknown arch 'qqqqzzzz': not a torchvision model and not a 'package.module:callable' path"
    )


def test_resolve_import_path() -> None:
    import tiny_models

    arch = architectures.resolve("tiny_models:TinyNet")
    assert arch == Arch("tiny_models:TinyNet", tiny_models.TinyNet, torchvision=False)


def test_resolve_dotted_attribute(write_module) -> None:
    write_module("zoo_dotted", "class Zoo:\n    @staticmethod\n    def make():\n        return 1\n")
    assert architectures.resolve("zoo_dotted:Zoo.make").builder() == 1


def test_resolve_module_in_current_folder(write_module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    write_module("zoo_here", "from torch import nn\n\ndef net():\n    return nn.Linear(2, 2)\n")
    arch = architectures.resolve("zoo_here:net")
    assert isinstance(arch.build({}), nn.Linear)


def test_resolve_missing_module() -> None:
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve("no_such_models_xyz:Net")
    assert str(caught.value) == (
        "arch 'no_such_models_xyz:Net': module 'no_such_models_xyz' not found "
        "on PYTHONPATH or in the current folder"
    )


def test_resolve_missing_parent_package() -> None:
    with pytest.raises(ArchitectureError, match=r"module 'no_such_pkg_xyz' not found"):
        architectures.resolve("no_such_pkg_xyz.nets:Net")


def test_resolve_module_that_fails_to_import(write_module) -> None:
    write_module("zoo_broken", "raise ValueError('bad config')\n")
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve("zoo_broken:Net")
    assert str(caught.value) == (
        "arch 'zoo_broken:Net': importing zoo_broken failed: ValueError: bad config"
    )


def test_resolve_missing_attribute() -> None:
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve("tiny_models:HugeNet")
    assert str(caught.value) == "arch 'tiny_models:HugeNet': tiny_models has no attribute 'HugeNet'"


def test_resolve_not_callable() -> None:
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve("tiny_models:not_callable")
    assert str(caught.value) == "arch 'tiny_models:not_callable': not_callable is not callable"


@pytest.mark.parametrize("given", ["tiny_models:", ":TinyNet", ":"])
def test_resolve_incomplete_import_path(given: str) -> None:
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve(given)
    assert str(caught.value) == f"arch {given!r}: expected 'package.module:callable'"


# --- build ----------------------------------------------------------------------------


def test_build_torchvision_on_meta_without_weights() -> None:
    model = architectures.resolve(SMALL_ARCH).build({"num_classes": 10})
    assert all(t.is_meta for t in model.state_dict().values())
    assert model.fc.out_features == 10


def test_build_import_path_on_meta() -> None:
    model = architectures.resolve("tiny_models:tiny").build({"width": 6})
    assert model.head.in_features == 6
    assert model.head.weight.is_meta


def test_build_failing_builder_names_the_arguments() -> None:
    arch = architectures.resolve("tiny_models:broken")
    with pytest.raises(ArchitectureError) as caught:
        arch.build({"width": 3, "kind": "wide"})
    assert str(caught.value) == (
        "building arch 'tiny_models:broken' with width=3, kind='wide' failed: "
        "RuntimeError: the builder broke"
    )


def test_build_failing_builder_without_arguments() -> None:
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve("tiny_models:broken").build({})
    assert str(caught.value) == (
        "building arch 'tiny_models:broken' with no arguments failed: "
        "RuntimeError: the builder broke"
    )


def test_build_torchvision_with_unknown_argument() -> None:
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve(SMALL_ARCH).build({"bogus": 1})
    message = str(caught.value)
    assert message.startswith(f"building arch {SMALL_ARCH!r} with bogus=1 failed: TypeError: ")
    assert "bogus" in message.split("TypeError: ")[1]


def test_build_builder_returning_a_non_module() -> None:
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve("builtins:dict").build({})
    assert str(caught.value) == "arch 'builtins:dict' returned dict, not a torch.nn.Module"


# --- mismatch -------------------------------------------------------------------------


def test_mismatch_none_when_weights_fit(tiny_model: nn.Module) -> None:
    model = architectures.resolve("tiny_models:TinyNet").build({"width": 4, "num_classes": 5})
    assert architectures.mismatch("tiny_models:TinyNet", model, tiny_model.state_dict()) is None


def test_mismatch_head_only_suggests_num_classes(small_model: nn.Module) -> None:
    model = architectures.resolve(SMALL_ARCH).build({})  # torchvision's default: 1000 classes
    error = architectures.mismatch(SMALL_ARCH, model, small_model.state_dict())
    assert isinstance(error, ArchitectureMismatchError)
    assert error.arch == SMALL_ARCH
    assert (error.missing, error.unexpected) == ([], [])
    assert error.mis_shaped == [
        ("fc.weight", (10, 1024), (1000, 1024)),
        ("fc.bias", (10,), (1000,)),
    ]
    assert str(error) == (
        f"weights do not fit arch {SMALL_ARCH!r}: 2 mis-shaped keys "
        "(fc.weight [10, 1024] vs [1000, 1024], fc.bias [10] vs [1000]); "
        "pass the builder's arguments with --arg num_classes=10"
    )


def test_mismatch_missing_and_unexpected_keys(tiny_model: nn.Module) -> None:
    model = architectures.resolve("tiny_models:TinyNet").build({"width": 4, "num_classes": 5})
    state = dict(tiny_model.state_dict())
    state["classifier.weight"] = state.pop("head.weight")
    del state["head.bias"]
    error = architectures.mismatch("tiny_models:TinyNet", model, state)
    assert isinstance(error, ArchitectureMismatchError)
    assert error.missing == ["head.weight", "head.bias"]
    assert error.unexpected == ["classifier.weight"]
    assert error.mis_shaped == []
    assert str(error) == (
        "weights do not fit arch 'tiny_models:TinyNet': "
        "2 missing keys (head.weight, head.bias); 1 unexpected key (classifier.weight)"
    )


def test_mismatch_lists_at_most_five_keys(tiny_model: nn.Module) -> None:
    model = architectures.resolve("tiny_models:TinyNet").build({"width": 4, "num_classes": 5})
    error = architectures.mismatch("tiny_models:TinyNet", model, {})
    assert isinstance(error, ArchitectureMismatchError)
    assert len(error.missing) == len(tiny_model.state_dict()) == 9
    assert str(error) == (
        "weights do not fit arch 'tiny_models:TinyNet': 9 missing keys (features.0.weight, "
        "features.0.bias, features.1.weight, features.1.bias, features.1.running_mean, ...)"
    )


def test_mismatch_other_shapes_get_no_num_classes_hint(tiny_model: nn.Module) -> None:
    """A different width changes more than the head's first dimension: no hint."""
    model = architectures.resolve("tiny_models:TinyNet").build({"width": 8, "num_classes": 5})
    error = architectures.mismatch("tiny_models:TinyNet", model, tiny_model.state_dict())
    assert isinstance(error, ArchitectureMismatchError)
    assert ("head.weight", (5, 4), (5, 8)) in error.mis_shaped
    assert "num_classes" not in str(error)


def test_mismatch_hint_needs_head_only_difference(tiny_model: nn.Module) -> None:
    """A missing key besides a mis-shaped head: no hint, the user must look closer."""
    model = architectures.resolve("tiny_models:TinyNet").build({"width": 4, "num_classes": 7})
    state = dict(tiny_model.state_dict())
    del state["features.0.bias"]
    error = architectures.mismatch("tiny_models:TinyNet", model, state)
    assert isinstance(error, ArchitectureMismatchError)
    assert error.missing == ["features.0.bias"]
    assert "num_classes" not in str(error)


def test_mismatch_scalar_against_one_element(tiny_model: nn.Module) -> None:
    model = architectures.resolve("tiny_models:TinyNet").build({"width": 4, "num_classes": 5})
    state = dict(tiny_model.state_dict())
    state["features.1.num_batches_tracked"] = torch.tensor([3])
    error = architectures.mismatch("tiny_models:TinyNet", model, state)
    assert isinstance(error, ArchitectureMismatchError)
    assert error.mis_shaped == [("features.1.num_batches_tracked", (1,), ())]


def test_mismatch_no_num_classes_hint_for_a_non_head_key(tiny_model: nn.Module) -> None:
    model = architectures.resolve("tiny_models:TinyNet").build({"width": 4, "num_classes": 5})
    state = dict(tiny_model.state_dict())
    state["features.1.weight"] = torch.ones(6)
    error = architectures.mismatch("tiny_models:TinyNet", model, state)
    assert isinstance(error, ArchitectureMismatchError)
    assert error.mis_shaped == [("features.1.weight", (6,), (4,))]
    assert "num_classes" not in str(error)


# --- count_params and instantiate ---------------------------------------------------------


def test_count_params(tiny_model: nn.Module) -> None:
    # conv 3*4*3*3 + 4, batch norm 4 + 4, head 4*5 + 5
    assert architectures.count_params(tiny_model) == 145
    meta = architectures.resolve("tiny_models:TinyNet").build({"width": 4, "num_classes": 5})
    assert architectures.count_params(meta) == 145


def test_count_params_counts_tied_weights_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight

    assert architectures.count_params(Tied()) == 40


def test_instantiate_tiny_model(tiny_model: nn.Module) -> None:
    state = tiny_model.state_dict()
    arch = architectures.resolve("tiny_models:TinyNet")
    model = architectures.instantiate(arch, {"width": 4, "num_classes": 5}, state)
    assert not any(t.is_meta for t in model.state_dict().values())
    # Assigned, not copied: the model holds the checkpoint's own tensors.
    assert model.head.weight.data_ptr() == state["head.weight"].data_ptr()
    assert outputs_equal(model, tiny_model)


def test_instantiate_torchvision_model(small_model: nn.Module) -> None:
    arch = architectures.resolve(SMALL_ARCH)
    model = architectures.instantiate(arch, {"num_classes": 10}, small_model.state_dict())
    assert type(model) is type(small_model)
    assert outputs_equal(model, small_model, shape=(1, 3, 64, 64))


class Scaled(nn.Module):
    """A model with a non-persistent buffer, which no state_dict carries."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("scale", torch.full((2,), 3.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3))) * self.scale


def test_instantiate_model_with_non_persistent_buffer() -> None:
    torch.manual_seed(0)
    source = Scaled().eval()
    arch = Arch("test:Scaled", Scaled, torchvision=False)
    model = architectures.instantiate(arch, {}, source.state_dict())
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert torch.equal(model.scale, torch.full((2,), 3.0))
    assert outputs_equal(model, source)


# --- builds that cannot run on meta, and weights that must not be fetched --------------


def test_build_falls_back_when_the_builder_computes_with_tensors() -> None:
    """RegNet computes its widths with torch ops and .tolist(), which meta cannot do."""
    model = architectures.resolve("regnet_x_400mf").build({})
    assert all(p.is_meta for p in model.parameters())
    assert architectures.count_params(model) == 5_495_976


def test_empty_build_leaves_other_threads_alone() -> None:
    """The empty build patches nn.Module for its own thread only."""
    import threading

    built: list[nn.Module] = []
    started, release = threading.Event(), threading.Event()

    def builder() -> nn.Module:
        started.set()
        release.wait(10)
        return nn.Linear(2, 2)

    def other() -> None:
        started.wait(10)
        built.append(nn.Linear(3, 3))  # built while the empty build is under way
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    with architectures._empty_weights():
        meta = builder()
    thread.join()
    assert meta.weight.is_meta
    assert not built[0].weight.is_meta


def test_torchvision_builders_get_no_weights_arguments() -> None:
    detector = architectures.resolve("fasterrcnn_mobilenet_v3_large_320_fpn")
    assert detector.neutral_arguments() == {"weights": None, "weights_backbone": None}
    assert architectures.resolve("resnet18").neutral_arguments() == {"weights": None}
    assert architectures.resolve("tiny_models:TinyNet").neutral_arguments() == {}


def test_detection_model_builds_without_downloading() -> None:
    model = architectures.resolve("ssdlite320_mobilenet_v3_large").build({})
    assert all(t.is_meta for t in model.state_dict().values())


@pytest.mark.parametrize(
    ("arch", "args", "shown"),
    [
        ("resnet18", {"weights": "DEFAULT"}, "weights='DEFAULT'"),
        ("fcn_resnet50", {"weights_backbone": "IMAGENET1K_V1"}, "weights_backbone='IMAGENET1K_V1'"),
        ("tiny_models:TinyNet", {"pretrained": True}, "pretrained=True"),
        ("tiny_models:TinyNet", {"checkpoint_path": "/tmp/w.pth"}, "checkpoint_path='/tmp/w.pth'"),
    ],
)
def test_arguments_that_fetch_weights_are_refused(arch: str, args: dict, shown: str) -> None:
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve(arch).build(args)
    assert str(caught.value) == (
        f"arch {arch!r}: argument {shown} would make the builder download or read weights; "
        "the registry loads the checkpoint's own, so leave it out"
    )


def test_arguments_that_fetch_nothing_are_allowed() -> None:
    model = architectures.resolve(SMALL_ARCH).build({"weights": None, "num_classes": 4})
    assert model.fc.out_features == 4


def test_a_build_that_reaches_the_network_fails_with_one_line(write_module) -> None:
    write_module(
        "zoo_downloads",
        "import urllib.request\nfrom torch import nn\n\n"
        "def net():\n"
        "    urllib.request.urlopen('http://weights.example.invalid/net.pth')\n"
        "    return nn.Linear(2, 2)\n",
    )
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve("zoo_downloads:net").build({})
    message = str(caught.value)
    assert message.startswith("building arch 'zoo_downloads:net' tried to reach the network (")
    assert "weights.example.invalid" in message
    assert "\n" not in message


def test_a_build_that_connects_to_an_address_fails(write_module) -> None:
    write_module(
        "zoo_connects",
        "import socket\nfrom torch import nn\n\n"
        "def net():\n"
        "    socket.socket().connect(('127.0.0.1', 9))\n"
        "    return nn.Linear(2, 2)\n",
    )
    with pytest.raises(
        ArchitectureError, match=r"tried to reach the network \(connect \('127.0.0.1', 9\)\)"
    ):
        architectures.resolve("zoo_connects:net").build({})


def test_network_is_only_refused_while_building() -> None:
    import socket

    architectures.resolve("tiny_models:TinyNet").build({})
    assert socket.getaddrinfo("127.0.0.1", 80)  # the audit hook stays, but is off


# --- trusting an arch read from the catalog ---------------------------------------------


def test_untrusted_function_is_refused_without_being_called() -> None:
    with pytest.raises(UntrustedArchError) as caught:
        architectures.resolve("subprocess:run", trust=False)
    assert str(caught.value) == (
        "arch 'subprocess:run' is a function, not a torch.nn.Module class, so it could run "
        "any code and was not called; if you trust it, pass --trust-arch (trust_arch=True) "
        "or add it to REGISTRY_TRUSTED_ARCHS"
    )


def test_untrusted_module_class_and_torchvision_names_are_allowed() -> None:
    assert architectures.resolve("tiny_models:TinyNet", trust=False).name == "tiny_models:TinyNet"
    assert architectures.resolve("resnet18", trust=False).torchvision


@pytest.mark.parametrize(
    "patterns", ["tiny_models:tiny", "tiny_models.*", "other:x, tiny_models:t*", "*"]
)
def test_trusted_archs_patterns(patterns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_TRUSTED_ARCHS", patterns)
    assert architectures.resolve("tiny_models:tiny", trust=False).name == "tiny_models:tiny"


@pytest.mark.parametrize("patterns", ["", "tiny_models:TinyNet", "tiny_model*:x", "other.*"])
def test_untrusted_patterns(patterns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_TRUSTED_ARCHS", patterns)
    with pytest.raises(UntrustedArchError):
        architectures.resolve("tiny_models:tiny", trust=False)


# --- fitting weights kept under a prefix -------------------------------------------------


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def tiny_meta() -> nn.Module:
    return architectures.resolve("tiny_models:TinyNet").build({"width": 4, "num_classes": 5})


LIGHTNING = {"framework": "lightning"}


@pytest.mark.parametrize("prefix", ["model.", "net.", "student.backbone."])
def test_fit_finds_the_one_prefix_that_fits(tiny_model: nn.Module, prefix: str) -> None:
    state = prefixed(tiny_model.state_dict(), prefix)
    state["loss_fn.weight"] = torch.ones(5)  # a Lightning module's other submodule
    weights = Weights(state, "checkpoint", LIGHTNING)
    found = architectures.fit("tiny", tiny_meta(), [weights], "x.ckpt")
    assert found.details == {**LIGHTNING, "stripped_prefix": prefix}
    assert set(found.state_dict) == set(tiny_model.state_dict())


def test_fit_takes_a_prefix_every_key_is_under(tiny_model: nn.Module) -> None:
    state = prefixed(tiny_model.state_dict(), "wrapped.")
    found = architectures.fit("tiny", tiny_meta(), [Weights(state, "state_dict")], "x.pth")
    assert found.details == {"stripped_prefix": "wrapped."}


def test_fit_leaves_nothing_out_silently(tiny_model: nn.Module) -> None:
    """A file that holds more than the model (an encoder and a decoder) is not cut to fit."""
    state = prefixed(tiny_model.state_dict(), "encoder.")
    state["decoder.weight"] = torch.ones(5)
    with pytest.raises(ArchitectureMismatchError) as caught:
        architectures.fit("tiny", tiny_meta(), [Weights(state, "state_dict")], "x.pth")
    assert str(caught.value).endswith(
        "; the weights fit once the prefix 'encoder.' is removed, leaving out the other keys: "
        "pass --strip-prefix encoder."
    )


def test_fit_prefix_search_on_a_large_state_dict() -> None:
    """10,000 keys under a prefix: found by the keys' suffixes, not by trying every prefix."""
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(5000)])
    with torch.device("meta"):
        meta = nn.Sequential(*[nn.Linear(1, 1) for _ in range(5000)])
    state = {"model." + k: v for k, v in model.state_dict().items()}
    weights = Weights(state, "checkpoint", LIGHTNING)
    found = architectures.fit("big", meta, [weights], "x.ckpt")
    assert found.details["stripped_prefix"] == "model."


def test_fit_refuses_two_prefixes_that_fit(tiny_model: nn.Module) -> None:
    state = {
        **prefixed(tiny_model.state_dict(), "model."),
        **prefixed(tiny_model.state_dict(), "ema."),
    }
    with pytest.raises(ArchitectureError) as caught:
        architectures.fit("tiny", tiny_meta(), [Weights(state, "checkpoint")], "x.ckpt")
    assert str(caught.value) == (
        "x.ckpt: the weights fit arch 'tiny' under several prefixes ('ema.', 'model.'); "
        "pick one with --strip-prefix"
    )


def test_fit_names_the_prefix_when_only_shapes_differ(small_model: nn.Module) -> None:
    model = architectures.resolve(SMALL_ARCH).build({})  # 1000 classes; the weights have 10
    state = prefixed(small_model.state_dict(), "model.")
    with pytest.raises(ArchitectureMismatchError) as caught:
        architectures.fit(SMALL_ARCH, model, [Weights(state, "checkpoint")], "x.ckpt")
    assert str(caught.value) == (
        f"weights do not fit arch {SMALL_ARCH!r}: 2 mis-shaped keys "
        "(fc.weight [10, 1024] vs [1000, 1024], fc.bias [10] vs [1000]); "
        "the key names fit once the prefix 'model.' is removed (--strip-prefix model.); "
        "pass the builder's arguments with --arg num_classes=10"
    )


def test_fit_without_a_fitting_prefix_reports_the_weights_as_found(tiny_model: nn.Module) -> None:
    state = prefixed(tiny_model.state_dict(), "model.")
    del state["model.head.bias"]
    with pytest.raises(ArchitectureMismatchError) as caught:
        architectures.fit("tiny", tiny_meta(), [Weights(state, "checkpoint")], "x.ckpt")
    assert "9 missing keys" in str(caught.value)
    assert "8 unexpected keys (model.features.0.weight" in str(caught.value)


def test_fit_with_nothing_to_fit() -> None:
    with pytest.raises(ArchitectureError, match=r"^x.ckpt holds no weights$"):
        architectures.fit("tiny", tiny_meta(), [], "x.ckpt")


# --- module versions (state_dict _metadata) ----------------------------------------------


def test_mnasnet_loads_from_weights_without_metadata() -> None:
    """MNASNet reads its version from _metadata, which a plain dict or safetensors lacks."""
    from torchvision import models

    torch.manual_seed(0)
    source = models.mnasnet0_5(weights=None).eval()
    plain = dict(source.state_dict())  # _metadata dropped
    model = architectures.instantiate(architectures.resolve("mnasnet0_5"), {}, plain)
    assert outputs_equal(model, source, shape=(1, 3, 64, 64))


def test_versions_to_record_keeps_those_above_one() -> None:
    model = tiny_meta()
    built = architectures.module_versions(model)
    assert built["features.1"] == 2  # BatchNorm is at version 2
    assert architectures.versions_to_record(model, built) == {"features.1": 2}
    assert architectures.versions_to_record(model, None) == {"features.1": 2}  # safetensors
    older = {**built, "features.1": 1, "gone": 3}  # a file saved by older code
    assert architectures.versions_to_record(model, older) == {}


def test_instantiate_passes_recorded_versions_to_the_modules(tiny_model: nn.Module) -> None:
    seen: dict[str, object] = {}

    class Recording(nn.Linear):
        _version = 3

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
            seen[prefix] = local_metadata.get("version")
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    arch = Arch("test:Recording", lambda: Recording(2, 2), torchvision=False)
    state = {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}
    architectures.instantiate(arch, {}, state)  # recorded before versions were: the built one
    assert seen == {"": 3}
    architectures.instantiate(arch, {}, state, {"": 2})
    assert seen == {"": 2}
    architectures.instantiate(arch, {}, state, {})  # recorded: none above 1
    assert seen == {"": 1}


WIDTHS_NET = """
import torch
from torch import nn


class WidthsNet(nn.Module):
    # Computes its layer sizes with torch ops, as RegNet does, and keeps a computed buffer.

    def __init__(self, depth=3):
        super().__init__()
        widths = (torch.arange(1, depth + 1) * 2).tolist()
        self.layers = nn.ModuleList(nn.Linear(w, w) for w in widths)
        self.register_buffer("scale", torch.linspace(1, 2, depth), persistent=False)

    def forward(self, x):
        return [layer(x[..., : layer.in_features]) * s for layer, s in zip(self.layers, self.scale)]
"""


def test_custom_builder_that_computes_with_tensors_round_trips(write_module) -> None:
    write_module("zoo_widths", WIDTHS_NET)
    arch = architectures.resolve("zoo_widths:WidthsNet")
    torch.manual_seed(0)
    source = arch.builder().eval()
    assert all(t.is_meta for t in arch.build({}).state_dict().values())
    model = architectures.instantiate(arch, {}, source.state_dict())
    assert torch.equal(model.scale, torch.linspace(1, 2, 3))
    x = torch.randn(2, 6)
    assert all(torch.equal(a, b) for a, b in zip(source(x), model(x), strict=True))


# --- what the review of the empty build and the trust check found ---------------------------


EMPTY_BUILD_CASES = """
import torch
from torch import nn


class Tagged(nn.Parameter):
    pass


class Odd(nn.Module):
    # A tie made before either owner registers it, a Parameter subclass with an attribute,
    # and sizes computed from a persistent buffer, in a builder that meta cannot run.

    def __init__(self):
        super().__init__()
        widths = (torch.arange(1, 3) * 2).tolist()
        self.register_buffer("sizes", torch.tensor(widths))
        shared = nn.Parameter(torch.ones(int(self.sizes.sum())))
        self.a, self.b = nn.Module(), nn.Module()
        self.a.bias = shared
        self.b.bias = shared
        tagged = Tagged(torch.zeros(2))
        tagged.no_decay = True
        self.tagged = tagged
"""


def test_empty_build_keeps_ties_subclasses_and_buffers(write_module) -> None:
    write_module("zoo_odd", EMPTY_BUILD_CASES)
    model = architectures.resolve("zoo_odd:Odd").build({})
    assert model.a.bias is model.b.bias
    assert model.a.bias.is_meta
    assert type(model.tagged).__name__ == "Tagged"
    assert model.tagged.no_decay is True
    assert torch.equal(model.sizes, torch.tensor([2, 4]))  # computed, not on meta
    assert architectures.count_params(model) == 6 + 2


NESTED = """
import torch
from registry import architectures


def outer():
    torch.arange(2).tolist()  # meta cannot: the empty build runs this one too
    inner = architectures.resolve("zoo_widths:WidthsNet").build({})
    import urllib.request
    urllib.request.urlopen("http://after-nested.example.invalid/")
    return inner
"""


def test_nested_builds_neither_deadlock_nor_lift_the_network_guard(write_module) -> None:
    write_module("zoo_widths", WIDTHS_NET)
    write_module("zoo_nested", NESTED)
    with pytest.raises(ArchitectureError, match=r"tried to reach the network \(.*after-nested"):
        architectures.resolve("zoo_nested:outer").build({})


def test_a_unix_socket_is_not_the_network(write_module, tmp_path: Path) -> None:
    import socket

    write_module(
        "zoo_unix",
        "import socket\nfrom torch import nn\n\n"
        "def net(path):\n"
        "    client = socket.socket(socket.AF_UNIX)\n"
        "    client.connect(path)\n"
        "    client.close()\n"
        "    return nn.Linear(2, 2)\n",
    )
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    try:
        assert isinstance(architectures.resolve("zoo_unix:net").build({"path": path}), nn.Linear)
    finally:
        server.close()


@pytest.mark.parametrize("arch", ["venv.__main__:EnvBuilder", "unittest.__main__:main"])
def test_untrusted_program_modules_are_not_imported(arch: str) -> None:
    module = arch.partition(":")[0]
    sys.modules.pop(module, None)
    with pytest.raises(UntrustedArchError, match=r"module that runs a program when imported"):
        architectures.resolve(arch, trust=False)
    assert module not in sys.modules


def test_attribute_path_may_not_reach_into_another_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REGISTRY_TRUSTED_ARCHS", "tiny_models.*")
    with pytest.raises(ArchitectureError) as caught:
        architectures.resolve("tiny_models:torch.load", trust=False)
    assert str(caught.value) == (
        "arch 'tiny_models:torch.load': the path reaches into module torch; "
        "name it as 'torch:...' instead"
    )


# --- buffers computed from a parameter's device (timm's Swin, SwinV2; issue 20) ------------


DEVICE_BUFFERS = """
import torch
from torch import nn


class MaskedFromDevice(nn.Module):
    # Swin's way: a non-persistent buffer made on the device of a parameter, which the
    # empty build leaves on meta.

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("mask", self._mask(), persistent=False)

    def _mask(self):
        return torch.triu(torch.full((4, 4), -100.0, device=self.linear.weight.device), 1)

    def forward(self, x):
        return self.linear(x) + self.mask.sum(0)


class HookedMask(MaskedFromDevice):
    # ... with timm's hook to compute it again.

    recomputed = 0

    def init_non_persistent_buffers(self):
        type(self).recomputed += 1
        self.mask.copy_(self._mask())


class FilledFromDevice(nn.Module):
    # SwinV2's way: a buffer on the CPU filled in place from a tensor made on a parameter's
    # device, which fails outright when the parameters are on meta.

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.register_buffer("table", torch.empty(4), persistent=False)
        self.table.copy_(torch.arange(4.0, device=self.proj.weight.device) / 3)

    def forward(self, x):
        return self.proj(x) * self.table
"""


@pytest.mark.parametrize(
    ("builder", "recomputed"),
    [
        ("HookedMask", 1),  # its own hook computes the mask again, after the load
        ("MaskedFromDevice", 0),  # no hook: built on the CPU instead
        ("FilledFromDevice", 0),  # the empty build cannot run: built on the CPU
    ],
)
def test_buffers_computed_from_a_parameter_device_are_real_after_a_load(
    write_module, builder: str, recomputed: int
) -> None:
    write_module("zoo_device_buffers", DEVICE_BUFFERS)
    arch = architectures.resolve(f"zoo_device_buffers:{builder}")
    hooked = sys.modules["zoo_device_buffers"].HookedMask
    torch.manual_seed(0)
    source = arch.builder().eval()
    hooked.recomputed = 0
    model = architectures.instantiate(arch, {}, source.state_dict())
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert all(torch.equal(a, b) for a, b in zip(source.buffers(), model.buffers(), strict=True))
    assert hooked.recomputed == recomputed
    x = torch.randn(2, 4)
    assert torch.equal(source(x), model(x))
    assert all(p.is_meta for p in arch.build({}).parameters())  # a push's build stays free
