"""The package as notebooks and scripts use it: builders passed as objects, __main__, shortcuts.

The `__main__` cases run real scripts in fresh processes, as a user's training
script and a later inference script would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from conftest import SMALL_ARCH
from helpers import TINY_ARGS, all_eval, outputs_equal
from torch import nn

import registry
from registry import ArchitectureError, Registry

SCRIPT_NET = """
import sys, warnings
import torch
from torch import nn
import registry

class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))
"""

PUSHING_SCRIPT = (
    SCRIPT_NET
    + """
torch.manual_seed(0)
model = Net(width=5).eval()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    version = registry.push(model, arch=Net, name="net", arch_args={"width": 5})
[warning] = [w for w in caught if issubclass(w.category, registry.MainModuleWarning)]
print(version.ref, version.arch)
print(warning.filename == __file__, warning.message)
loaded = registry.load(version.ref)
x = torch.randn(1, 3, 8, 8)
print(torch.equal(loaded(x), model(x)), loaded.training)
torch.save(model.state_dict(), "net.pth")
"""
)

# A later process: Net is not defined yet when the first load runs.
LOADING_SCRIPT = (
    """
import registry
try:
    registry.load("net@v1")
except registry.ArchitectureError as exc:
    print("refused:", exc)
"""
    + SCRIPT_NET
    + """
model = registry.load("net@v1", arch=Net)
expected = Net(width=5)
expected.load_state_dict(torch.load("net.pth", weights_only=True))
x = torch.randn(1, 3, 8, 8)
print(torch.equal(model(x), expected.eval()(x)), model.training)
"""
)


def run_script(folder: Path, source: str) -> list[str]:
    script = folder / "script.py"
    script.write_text(textwrap.dedent(source))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=folder, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_builder_defined_in_a_script(tmp_path: Path) -> None:
    pushed = run_script(tmp_path, PUSHING_SCRIPT)
    assert pushed[0] == "net@v1 __main__:Net"
    assert pushed[1] == (
        "True arch '__main__:Net' is defined in __main__ (a notebook or script): only a "
        "process that defines the same Net can rebuild this version; elsewhere load it with "
        "load(ref, arch=Net), or move Net into a module"
    )
    assert pushed[2] == "True False"

    loaded = run_script(tmp_path, LOADING_SCRIPT)
    assert loaded[0] == (
        "refused: cannot rebuild net@v1: arch '__main__:Net': __main__ has no attribute 'Net'; "
        "it was defined in the notebook or script that pushed it: load with arch=Net "
        "handing in that builder"
    )
    assert loaded[1] == "True False"


def test_class_from_a_module_is_recorded_by_name_and_loads_elsewhere(
    reg: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    import tiny_models

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MainModuleWarning for an importable class
        version = reg.push(
            tiny_model, arch=tiny_models.TinyNet, arch_args={"width": 4, "num_classes": 5}
        )
    assert (version.ref, version.arch) == ("tinynet@v1", "tiny_models:TinyNet")
    probe = (
        "import registry, torch; "
        f"reg = registry.Registry(database_url={reg.settings.database_url!r}, "
        f"store={reg.settings.store!r}); "
        "m = reg.load('tinynet@v1'); print(type(m).__module__, type(m).__name__, m.training)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tiny_models TinyNet False\n"


def test_function_builder_object_is_recorded_by_name(reg: Registry, tiny_model: nn.Module) -> None:
    import tiny_models

    version = reg.push(
        tiny_model, arch=tiny_models.tiny, name="tiny", arch_args={"width": 4, "num_classes": 5}
    )
    assert version.arch == "tiny_models:tiny"
    assert outputs_equal(tiny_model, reg.load("tiny", trust_arch=True))


def test_torchvision_builder_object_keeps_its_model_name(
    reg: Registry, small_model: nn.Module
) -> None:
    from torchvision import models

    builder = getattr(models, SMALL_ARCH)
    version = reg.push(small_model, arch=builder, arch_args={"num_classes": 10})
    assert (version.ref, version.arch) == (f"{SMALL_ARCH}@v1", SMALL_ARCH)


class OtherNet(nn.Module):
    """Takes TinyNet's arguments but holds other layers."""

    def __init__(self, width: int = 4, num_classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Linear(width, num_classes)


def local_class() -> type[nn.Module]:
    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)

    return Local


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (
            lambda: nn.Linear(2, 2),
            "arch 'test_notebooks:<lambda>' is a lambda, which no other process can import by "
            "name; define the builder with def or class at the top level of a module",
        ),
        (
            local_class(),
            "arch 'test_notebooks:local_class.<locals>.Local' is defined inside a function, so "
            "no other process can import it; define it at the top level of a module",
        ),
    ],
    ids=["lambda", "local-class"],
)
def test_builders_no_process_can_import_are_refused(reg: Registry, builder, message: str) -> None:
    with pytest.raises(ArchitectureError) as caught:
        reg.push(nn.Linear(2, 2), arch=builder, name="refused")
    assert str(caught.value) == message
    assert reg.models() == []
    assert not any(p.is_file() for p in reg.store.root.rglob("*"))


def test_load_with_a_builder_handed_in_still_checks_the_weights(
    reg: Registry, tiny_model: nn.Module
) -> None:
    import tiny_models

    reg.push(
        tiny_model, arch=tiny_models.TinyNet, name="tiny", arch_args={"width": 4, "num_classes": 5}
    )
    moved = reg.load("tiny", arch=tiny_models.TinyNet)  # e.g. the class moved modules since
    assert all_eval(moved) and outputs_equal(tiny_model, moved)
    with pytest.raises(registry.ArchitectureMismatchError, match=r"weights do not fit arch"):
        reg.load("tiny", arch=OtherNet)


def test_module_level_shortcuts_use_the_default_registry(tiny_model: nn.Module) -> None:
    import tiny_models

    version = registry.push(
        tiny_model, arch=tiny_models.TinyNet, name="tiny", arch_args={"width": 4, "num_classes": 5}
    )
    assert registry.get("tiny@v1") == version
    assert registry.pull("tiny@v1", "back.pt") == Path("back.pt")
    assert torch.load("back.pt", weights_only=True).keys() == tiny_model.state_dict().keys()
    assert outputs_equal(tiny_model, registry.load("tiny@v1"))


def test_version_comes_from_the_package_metadata(run) -> None:
    from importlib.metadata import version

    assert registry.__version__ == version("torch-registry")
    assert run("--version") == (0, f"registry, version {registry.__version__}\n", "")


def test_progress_true_shows_a_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry import progress_bars

    monkeypatch.setattr(progress_bars, "THRESHOLD", 0)
    big = nn.Linear(512, 512)
    path = tmp_path / "big.pth"
    torch.save(big.state_dict(), path)
    quiet = Registry(home=tmp_path / "quiet")
    quiet.push(path, arch="torch.nn:Linear", arch_args={"in_features": 512, "out_features": 512})
    assert capsys.readouterr().err == ""
    loud = Registry(home=tmp_path / "loud", progress=True)
    loud.push(path, arch="torch.nn:Linear", arch_args={"in_features": 512, "out_features": 512})
    assert "push big.pth" in capsys.readouterr().err
    loud.pull("linear@v1", tmp_path / "out.pth")
    assert "pull linear@v1" in capsys.readouterr().err
    quiet.close()
    loud.close()


def test_registry_is_a_context_manager(tmp_path: Path) -> None:
    with Registry(home=tmp_path / "home") as reg:
        assert reg.models() == []
        assert reg.catalog._engine is not None  # type: ignore[attr-defined]
    assert reg.catalog._engine is None  # type: ignore[attr-defined]
    assert reg.models() == []  # reopens on use
    reg.close()


def test_a_main_builder_named_by_string_warns_too(
    reg: Registry, tiny_model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiny_models

    monkeypatch.setattr(sys.modules["__main__"], "TinyNet", tiny_models.TinyNet, raising=False)
    with pytest.warns(registry.MainModuleWarning, match=r"arch '__main__:TinyNet' is defined in"):
        reg.push(tiny_model, arch="__main__:TinyNet", name="tiny", arch_args=TINY_ARGS)


class Factory:
    def build(self) -> nn.Module:
        return nn.Linear(2, 2)


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (
            Factory().build,
            "arch 'test_notebooks:Factory.build' is not what importing "
            "test_notebooks:Factory.build gives (a bound method, or a class made at run time); "
            "pass a module-level class or function",
        ),
        (nn.Linear(2, 2), "arch is a Linear instance; pass its class, type(model)"),
    ],
    ids=["bound-method", "instance"],
)
def test_builders_that_name_something_else_are_refused(
    reg: Registry, builder, message: str
) -> None:
    with pytest.raises(ArchitectureError) as caught:
        reg.push(nn.Linear(2, 2), arch=builder, name="refused")
    assert str(caught.value) == message
    assert reg.models() == []


def test_load_takes_any_builder_even_a_local_class(reg: Registry, tiny_model: nn.Module) -> None:
    import tiny_models

    reg.push(tiny_model, arch=tiny_models.TinyNet, name="tiny", arch_args=TINY_ARGS)

    class Local(tiny_models.TinyNet):
        pass

    assert type(reg.load("tiny", arch=Local)).__name__ == "Local"


def test_quantizable_torchvision_builder_object_keeps_its_model_name(reg: Registry) -> None:
    from torchvision.models import quantization

    model = quantization.shufflenet_v2_x0_5(weights=None, quantize=False)
    version = reg.push(model, arch=quantization.shufflenet_v2_x0_5)
    assert version.arch == "quantized_shufflenet_v2_x0_5"
    assert all_eval(reg.load(version.ref))  # a torchvision name: no trust needed


def test_shortcuts_take_what_the_methods_take(tiny_model: nn.Module, tmp_path: Path) -> None:
    import tiny_models

    wrapped = nn.Module()
    wrapped.model = tiny_model
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": wrapped.state_dict()}, path)
    version = registry.push(
        path, arch=tiny_models.TinyNet, name="tiny", arch_args=TINY_ARGS,
        key="state_dict", strip_prefix="model.",
    )  # fmt: skip
    assert version.details["stripped_prefix"] == "model."
    out = registry.pull("tiny@v1", tmp_path / "w.safetensors", format="safetensors")
    assert out.read_bytes()[8:9] == b"{"
