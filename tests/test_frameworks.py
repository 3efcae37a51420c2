"""Checkpoints as training frameworks write them: real PyTorch Lightning, and timm's shape.

A Lightning `.ckpt` keeps the model under the LightningModule's attribute
(`model.`, `net.`) next to optimizer states, loops and hyperparameters; push
finds the one prefix that fits, or takes `--strip-prefix`, and records it with
Lightning's version. timm's `checkpoint.pth.tar` holds `state_dict`,
`state_dict_ema` and its argparse options.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch
from conftest import SMALL_ARCH
from helpers import all_eval, outputs_equal, same_tensors
from torch import nn

from registry import ArchitectureError, CheckpointError, Registry

ARGS = {"num_classes": 10}


def small_net() -> nn.Module:
    from torchvision import models

    return getattr(models, SMALL_ARCH)(weights=None, num_classes=10)


def write_lightning_checkpoint(path: Path, **submodules: nn.Module) -> nn.Module:
    """Train a LightningModule holding `submodules` for one step; save it with the Trainer."""
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    import lightning as L

    first = next(iter(submodules))

    class Classifier(L.LightningModule):
        def __init__(self, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            for name, module in submodules.items():
                setattr(self, name, module)
            self.loss_fn = nn.CrossEntropyLoss(weight=torch.ones(10))  # a buffer of its own

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int):
            images, labels = batch
            return self.loss_fn(getattr(self, first)(images), labels)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,)))
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=path.parent,
    )
    module = Classifier()
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    trainer.save_checkpoint(path)
    return getattr(module, first).eval()


@pytest.fixture(scope="module")
def lightning_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, nn.Module]]:
    """Lightning checkpoints, written once: the model under `model.`, under `net.`, and twice."""
    folder = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(0)
    files = {}
    for case, names in (("model", ["model"]), ("net", ["net"]), ("two", ["model", "ema"])):
        path = folder / f"{case}.ckpt"
        files[case] = (path, write_lightning_checkpoint(path, **{n: small_net() for n in names}))
    return files


def lightning_version() -> str:
    import lightning

    return lightning.__version__


@pytest.mark.parametrize(("case", "prefix"), [("model", "model."), ("net", "net.")])
def test_lightning_checkpoint_pushes_as_it_is(
    reg: Registry, lightning_files: dict, case: str, prefix: str
) -> None:
    path, trained = lightning_files[case]
    version = reg.push(path, arch=SMALL_ARCH, arch_args=ARGS)
    assert version.format == "checkpoint"
    assert {k: version.details[k] for k in ("key", "stripped_prefix")} == {
        "key": "state_dict",
        "stripped_prefix": prefix,
    }
    assert version.details["framework"] == "lightning"
    assert version.details["framework_version"] == lightning_version()
    assert version.num_params == sum(p.numel() for p in trained.parameters())
    model = reg.load(version.ref)
    assert all_eval(model)
    assert outputs_equal(trained, model, shape=(1, 3, 64, 64))
    assert reg.pull(version.ref, "back.ckpt").read_bytes() == path.read_bytes()


def test_lightning_checkpoint_with_the_model_twice_needs_a_prefix(
    reg: Registry, lightning_files: dict
) -> None:
    path, _ = lightning_files["two"]
    with pytest.raises(ArchitectureError) as caught:
        reg.push(path, arch=SMALL_ARCH, arch_args=ARGS)
    assert str(caught.value) == (
        f"{path}: the weights fit arch {SMALL_ARCH!r} under several prefixes "
        "('ema.', 'model.'); pick one with --strip-prefix"
    )
    assert reg.models() == []


@pytest.mark.parametrize("given", ["ema.", "ema"])
def test_strip_prefix_names_the_submodule(reg: Registry, lightning_files: dict, given: str) -> None:
    path, _ = lightning_files["two"]
    version = reg.push(path, arch=SMALL_ARCH, arch_args=ARGS, strip_prefix=given)
    assert version.details["stripped_prefix"] == "ema."
    saved = torch.load(path, weights_only=True)["state_dict"]
    ema = {k.removeprefix("ema."): v for k, v in saved.items() if k.startswith("ema.")}
    loaded = reg.load(version.ref)
    assert all_eval(loaded)
    assert same_tensors(dict(loaded.state_dict()), ema)


def test_cli_strip_prefix(run, lightning_files: dict) -> None:
    path, _ = lightning_files["two"]
    code, out, err = run(
        "push",
        str(path),
        "--arch",
        SMALL_ARCH,
        "--arg",
        "num_classes=10",
        "--strip-prefix",
        "model.",
    )
    assert (code, err) == (0, "")
    assert out.startswith(f"{SMALL_ARCH}@v1 sha256:")
    code, out, _ = run("load", f"{SMALL_ARCH}@v1", "--json")
    assert code == 0


def test_cli_strip_prefix_that_is_not_there(run, lightning_files: dict, tmp_path: Path) -> None:
    path, _ = lightning_files["model"]
    code, out, err = run(
        "push", str(path), "--arch", SMALL_ARCH, "--arg", "num_classes=10", "--strip-prefix", "net"
    )
    assert (code, out) == (1, "")
    assert err == (
        f"Error: {path} has no keys under prefix 'net.'; its keys start loss_fn., model.\n"
    )
    assert run("ls", "--json") == (0, "[]\n", "")


def test_cli_lightning_checkpoint_with_wrong_num_classes_names_prefix_and_argument(
    run, lightning_files: dict
) -> None:
    path, _ = lightning_files["model"]
    code, out, err = run("push", str(path), "--arch", SMALL_ARCH)
    assert (code, out) == (1, "")
    assert err == (
        f"Error: weights do not fit arch {SMALL_ARCH!r}: 2 mis-shaped keys "
        "(fc.weight [10, 1024] vs [1000, 1024], fc.bias [10] vs [1000]); "
        "the key names fit once the prefix 'model.' is removed (--strip-prefix model.); "
        "pass the builder's arguments with --arg num_classes=10\n"
    )


# --- timm's checkpoint.pth.tar ---------------------------------------------------------------


def write_timm_checkpoint(path: Path) -> tuple[nn.Module, nn.Module]:
    """What timm's CheckpointSaver writes: weights, EMA weights, optimizer, argparse options."""
    torch.manual_seed(0)
    model, ema = small_net().eval(), small_net().eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save(
        {
            "epoch": 3,
            "arch": SMALL_ARCH,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "version": 2,
            "args": argparse.Namespace(model=SMALL_ARCH, lr=0.1, epochs=3),
            "metric": 71.5,
            "state_dict_ema": ema.state_dict(),
        },
        path,
    )
    return model, ema


@pytest.mark.parametrize(("key", "pick"), [(None, 0), ("state_dict_ema", 1)])
def test_timm_checkpoint(reg: Registry, tmp_path: Path, key: str | None, pick: int) -> None:
    path = tmp_path / "checkpoint.pth.tar"
    expected = write_timm_checkpoint(path)[pick]
    version = reg.push(path, arch=SMALL_ARCH, arch_args=ARGS, key=key)
    assert version.details["key"] == (key or "state_dict")
    assert "framework" not in version.details
    assert outputs_equal(expected, reg.load(version.ref), shape=(1, 3, 64, 64))


# --- what a refused file leaves behind ------------------------------------------------------


def test_strip_prefix_on_a_plain_state_dict_that_lacks_it(reg: Registry, small_file: Path) -> None:
    with pytest.raises(CheckpointError, match=r"has no keys under prefix 'model\.'"):
        reg.push(small_file, arch=SMALL_ARCH, arch_args=ARGS, strip_prefix="model.")
    assert reg.models() == []


def test_push_module_holding_the_model_under_an_attribute(reg: Registry) -> None:
    """An in-memory wrapper (a LightningModule, say) is stored without its prefix."""
    torch.manual_seed(0)
    wrapper = nn.Module()
    wrapper.model = small_net().eval()
    version = reg.push(wrapper, arch=SMALL_ARCH, arch_args=ARGS, name="wrapped")
    assert "stripped_prefix" not in version.details
    assert set(reg.state_dict(version.ref)) == set(wrapper.model.state_dict())
    assert outputs_equal(wrapper.model, reg.load(version.ref), shape=(1, 3, 64, 64))
