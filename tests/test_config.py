"""Settings precedence, as SPEC's "Configuration" defines it: argument > env var > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.config import Settings


@pytest.fixture
def env_home(tmp_path: Path) -> Path:
    """The REGISTRY_HOME that the autouse `isolated` fixture sets."""
    return tmp_path / "home"


def sqlite_path(url: str) -> Path:
    prefix = "sqlite:///"
    assert url.startswith(prefix)
    return Path(url.removeprefix(prefix))


def test_env_home_and_its_defaults(env_home: Path) -> None:
    settings = Settings.resolve()
    assert settings.home == env_home
    assert settings.database_url == f"sqlite:///{env_home / 'registry.db'}"
    assert settings.store == str(env_home / "blobs")


def test_home_argument_beats_env_and_moves_the_defaults(tmp_path: Path) -> None:
    settings = Settings.resolve(home=tmp_path / "arg")
    assert settings.home == tmp_path / "arg"
    assert settings.database_url == f"sqlite:///{tmp_path / 'arg' / 'registry.db'}"
    assert settings.store == str(tmp_path / "arg" / "blobs")


def test_home_argument_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert Settings.resolve(home="~/reg").home == tmp_path / "user" / "reg"


def test_database_url_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_DATABASE_URL", "sqlite:////env/catalog.db")
    assert Settings.resolve().database_url == "sqlite:////env/catalog.db"
    assert Settings.resolve(home="/elsewhere").database_url == "sqlite:////env/catalog.db"


def test_database_url_argument_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_DATABASE_URL", "sqlite:////env/catalog.db")
    url = "postgresql+psycopg://user:secret@db/registry"
    assert Settings.resolve(database_url=url).database_url == url


def test_store_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_STORE", "/env/blobs")
    assert Settings.resolve().store == "/env/blobs"
    assert Settings.resolve(home="/elsewhere").store == "/env/blobs"


def test_store_argument_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_STORE", "/env/blobs")
    assert Settings.resolve(store=tmp_path / "arg").store == str(tmp_path / "arg")
    assert Settings.resolve(store="s3://bucket/prefix").store == "s3://bucket/prefix"


def test_default_home_is_under_xdg_data_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REGISTRY_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    settings = Settings.resolve()
    assert settings.home == tmp_path / "xdg" / "registry"
    assert settings.database_url == f"sqlite:///{tmp_path / 'xdg' / 'registry' / 'registry.db'}"
    assert settings.store == str(tmp_path / "xdg" / "registry" / "blobs")


@pytest.mark.parametrize("xdg", [None, ""])
def test_default_home_is_under_local_share(
    xdg: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REGISTRY_HOME")
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    home = tmp_path / "user" / ".local" / "share" / "registry"
    settings = Settings.resolve()
    assert settings.home == home
    assert settings.database_url == f"sqlite:///{home / 'registry.db'}"
    assert settings.store == str(home / "blobs")


def test_empty_env_home_falls_back_to_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_HOME", "")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings.resolve().home == tmp_path / "xdg" / "registry"


@pytest.mark.parametrize("home", ["relative/home", "~/reg"])
def test_sqlite_url_is_absolute_and_inside_home(
    home: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    settings = Settings.resolve(home=home)
    path = sqlite_path(settings.database_url)
    assert path.is_absolute()
    assert path.name == "registry.db"
    assert path.parent == settings.home.absolute()
