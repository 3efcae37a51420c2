"""Shared fixtures: an isolated home per test, both catalog backends, small real models.

PostgreSQL tests run when REGISTRY_TEST_DATABASE_URL is set. Under CI=true a
missing PostgreSQL is a failure, not a skip.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text

from registry import Registry
from registry.db import parse_url

PG_URL = os.environ.get("REGISTRY_TEST_DATABASE_URL")
IN_CI = os.environ.get("CI", "").lower() == "true"
SMALL_ARCH = "shufflenet_v2_x0_5"  # a torchvision model of 1.5 MB at num_classes=10

# A user's own model module, importable as `tiny_models:TinyNet`.
TINY_MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self, width=8, num_classes=3):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(torch.flatten(self.pool(self.features(x)), 1))

    def tiny(width=8, num_classes=3):
        return TinyNet(width, num_classes)

    class TiedNet(nn.Module):
        # A decoder whose output layer shares the embedding's weight.

        def __init__(self, vocab=11, dim=6):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.out = nn.Linear(dim, vocab, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, tokens):
            return self.out(self.embed(tokens))

    not_callable = 42

    def broken(**kwargs):
        raise RuntimeError("the builder broke")
    """
)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user_models")
    (folder / "tiny_models.py").write_text(TINY_MODELS)
    return folder


# The user's own settings, which no test may read (REGISTRY_TEST_* are the suite's).
USER_SETTINGS = (
    "REGISTRY_HOME",
    "REGISTRY_DATABASE_URL",
    "REGISTRY_STORE",
    "REGISTRY_CACHE",
    "REGISTRY_DEBUG",
    "REGISTRY_REMOTE",
    "REGISTRY_TOKEN",
    "REGISTRY_SERVE_TOKEN",
    "REGISTRY_TRUSTED_ARCHS",
    "REGISTRY_TRUSTED_KEYS",
)


@pytest.fixture(scope="session", autouse=True)
def no_user_settings(models_dir: Path) -> Iterator[None]:
    """For the whole session, module fixtures included: none of the user's settings, and
    the user's models importable here and in subprocesses. All restored at the end."""
    with pytest.MonkeyPatch.context() as patch:
        for name in USER_SETTINGS:
            patch.delenv(name, raising=False)
        patch.syspath_prepend(str(models_dir))
        patch.setenv("PYTHONPATH", str(models_dir))
        yield


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models_dir: Path) -> Iterator[None]:
    """No test touches the real home; each runs in its own folder with the user's models."""
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REGISTRY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(models_dir))
    monkeypatch.setenv("PYTHONPATH", str(models_dir))
    yield


def reset_postgres(url: str) -> None:
    engine = create_engine(parse_url(url))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def fresh_catalog_url(backend: str, tmp_path: Path) -> str:
    """A brand-new, empty catalog URL: a SQLite file in `tmp_path`, or PostgreSQL reset."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    if not PG_URL:
        if IN_CI:
            pytest.fail("REGISTRY_TEST_DATABASE_URL is not set: CI must test PostgreSQL")
        pytest.skip("set REGISTRY_TEST_DATABASE_URL to run the PostgreSQL tests")
    reset_postgres(PG_URL)
    return PG_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A brand-new, empty catalog URL on each backend."""
    return fresh_catalog_url(request.param, tmp_path)


@pytest.fixture
def reg(database_url: str, tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(database_url=database_url, store=tmp_path / "blobs")
    yield registry
    registry.close()


@pytest.fixture
def run(database_url: str, tmp_path: Path) -> Callable[..., tuple[int, str, str]]:
    """Invoke the CLI on one catalog and store; returns (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from registry.cli import cli

    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(
            cli,
            ["--database-url", database_url, "--store", str(tmp_path / "blobs"), *args],
            catch_exceptions=False,  # a traceback fails the test instead of hiding in output
        )
        return result.exit_code, result.stdout, result.stderr

    return invoke


@pytest.fixture
def cli_reg(database_url: str, tmp_path: Path) -> Registry:
    """The Registry the `run` fixture's commands work on."""
    return Registry(database_url=database_url, store=tmp_path / "blobs")


@pytest.fixture
def small_model() -> torch.nn.Module:
    from torchvision import models

    torch.manual_seed(0)
    return getattr(models, SMALL_ARCH)(weights=None, num_classes=10).eval()


@pytest.fixture
def small_file(tmp_path: Path, small_model: torch.nn.Module) -> Path:
    """The tutorial's `torch.save(model.state_dict(), ...)` of the small torchvision model."""
    path = tmp_path / "model_weights.pth"
    torch.save(small_model.state_dict(), path)
    return path


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    from helpers import tiny

    return tiny(0)
