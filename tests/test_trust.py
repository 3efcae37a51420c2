"""An arch read back from the catalog is somebody else's data, not code to run.

Whoever can write the catalog (a shared PostgreSQL, an imported bundle) chooses
the `arch` string and its arguments. Load calls a `module:callable` only when it
is an nn.Module class or the loading side trusts it, and never lets a builder
fetch weights. Each test rewrites a version by SQL, as such a writer would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SMALL_ARCH
from helpers import MARKER, TINY_ARGS, all_eval, outputs_equal
from sqlalchemy import text
from torch import nn

from registry import ArchitectureError, Registry, UntrustedArchError


def rewrite(reg: Registry, ref: str, arch: str, arch_args: dict) -> None:
    """Change a version's arch and arguments behind the registry's back."""
    version = reg.get(ref)
    with reg.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE versions SET arch = :arch, arch_args = :args WHERE version = :number "
                "AND model_id = (SELECT id FROM models WHERE name = :name)"
            ),
            {
                "arch": arch,
                "args": json.dumps(arch_args),
                "number": version.version,
                "name": version.name,
            },
        )
    assert reg.get(ref).arch == arch


@pytest.fixture
def planted(reg: Registry, tiny_model: nn.Module) -> str:
    """A version whose catalog row now says: call subprocess.run(["touch", MARKER])."""
    version = reg.push(tiny_model, arch="tiny_models:TinyNet", name="tiny", arch_args=TINY_ARGS)
    rewrite(reg, version.ref, "subprocess:run", {"args": ["touch", str(Path.cwd() / MARKER)]})
    return version.ref


def test_load_refuses_a_planted_function_and_never_calls_it(reg: Registry, planted: str) -> None:
    with pytest.raises(UntrustedArchError) as caught:
        reg.load(planted)
    assert str(caught.value) == (
        "cannot rebuild tiny@v1: arch 'subprocess:run' is a function, not a torch.nn.Module "
        "class, so it could run any code and was not called; if you trust it, pass "
        "--trust-arch (trust_arch=True) or add it to REGISTRY_TRUSTED_ARCHS"
    )
    assert not Path(MARKER).exists()


def test_cli_load_refuses_a_planted_function_in_one_line(
    run, cli_reg: Registry, tiny_model: nn.Module
) -> None:
    version = cli_reg.push(tiny_model, arch="tiny_models:TinyNet", name="tiny", arch_args=TINY_ARGS)
    rewrite(cli_reg, version.ref, "subprocess:run", {"args": ["touch", str(Path.cwd() / MARKER)]})
    code, out, err = run("load", "tiny@v1")
    assert (code, out) == (1, "")
    assert err.startswith("Error: cannot rebuild tiny@v1: arch 'subprocess:run' is a function")
    assert err.count("\n") == 1
    assert not Path(MARKER).exists()


def test_function_builder_loads_only_once_trusted(
    reg: Registry, tiny_model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg.push(tiny_model, arch="tiny_models:tiny", name="tiny", arch_args=TINY_ARGS)  # pusher trusts
    with pytest.raises(UntrustedArchError, match=r"arch 'tiny_models:tiny' is a function"):
        reg.load("tiny@v1")
    assert outputs_equal(tiny_model, reg.load("tiny@v1", trust_arch=True))
    monkeypatch.setenv("REGISTRY_TRUSTED_ARCHS", "timm:create_model, tiny_models.*")
    assert all_eval(reg.load("tiny@v1"))


def test_cli_trust_arch(run, cli_reg: Registry, tiny_model: nn.Module) -> None:
    cli_reg.push(tiny_model, arch="tiny_models:tiny", name="tiny", arch_args=TINY_ARGS)
    code, _, err = run("load", "tiny")
    assert code == 1 and "pass --trust-arch" in err
    code, out, err = run("load", "tiny", "--trust-arch")
    assert (code, err) == (0, "")
    assert out == "tiny@v1: tiny_models.TinyNet, 145 parameters, eval mode\n"


def test_module_class_from_the_catalog_needs_no_trust(reg: Registry, tiny_model: nn.Module) -> None:
    reg.push(tiny_model, arch="tiny_models:TinyNet", name="tiny", arch_args=TINY_ARGS)
    assert outputs_equal(tiny_model, reg.load("tiny"))


@pytest.mark.parametrize(
    "planted_args",
    [
        {"num_classes": 10, "weights": "IMAGENET1K_V1"},
        {"num_classes": 10, "weights": "DEFAULT"},
    ],
)
def test_load_refuses_arguments_that_fetch_weights(
    reg: Registry, small_file: Path, planted_args: dict
) -> None:
    version = reg.push(small_file, arch=SMALL_ARCH, arch_args={"num_classes": 10})
    rewrite(reg, version.ref, SMALL_ARCH, planted_args)
    with pytest.raises(ArchitectureError) as caught:
        reg.load(version.ref)
    assert "would make the builder download or read weights" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_load_refuses_a_backbone_download_planted_in_a_detection_model(reg: Registry) -> None:
    from torchvision import models

    model = models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    version = reg.push(model, arch="ssdlite320_mobilenet_v3_large")
    assert version.details["builder_defaults"] == {"weights": None, "weights_backbone": None}
    rewrite(reg, version.ref, version.arch, {"weights_backbone": "IMAGENET1K_V1"})
    with pytest.raises(ArchitectureError, match=r"weights_backbone='IMAGENET1K_V1' would make"):
        reg.load(version.ref)
