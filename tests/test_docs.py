"""The README documents every command, and every command explains itself."""

from __future__ import annotations

from pathlib import Path

import click

from registry.cli import cli

README = (Path(__file__).parent.parent / "README.md").read_text()


def all_commands(group: click.Group = cli, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += all_commands(command, f"{prefix}{name} ")
    return found


def test_every_command_has_help_text() -> None:
    for name, command in all_commands():
        assert command.help and command.help.strip(), name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts}"


def test_every_command_is_in_the_readme() -> None:
    for name, _ in all_commands():
        assert f"registry {name}" in README, name


def test_every_public_registry_method_names_its_errors_and_shows_an_example() -> None:
    import inspect

    from registry import Registry

    methods = [
        (name, member)
        for name, member in inspect.getmembers(Registry, inspect.isfunction)
        if not name.startswith("_")
    ]
    assert len(methods) >= 18
    for name, method in methods:
        doc = inspect.getdoc(method) or ""
        assert "Example:\n    >>> " in doc, name
        if name != "close":  # releasing connections raises nothing
            assert "Raises:\n    " in doc, name
