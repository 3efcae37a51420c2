"""Shell completion of names and references: right answers, and no heavy import to wait for."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import TINY

from registry import Registry


def complete(words: str, *heavy: str) -> tuple[list[str], list[str]]:
    """What bash completion offers for the last word, and which of `heavy` got imported."""
    probe = textwrap.dedent(
        f"""
        import sys
        from registry.cli import cli
        try:
            cli(prog_name="registry")
        except SystemExit:
            pass
        print("imported:", ",".join(m for m in {heavy!r} if m in sys.modules))
        """
    )
    env = {
        **os.environ,
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        "_REGISTRY_COMPLETE": "bash_complete",
    }
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    *offers, imported = result.stdout.splitlines()
    return [line.split(",", 1)[1] for line in offers if line], imported.split(": ")[1].split(",")


@pytest.fixture
def catalog(tiny_model) -> None:
    reg = Registry()
    reg.push(tiny_model, name="resnet-a", **TINY)
    tiny_model.head.bias.data += 1
    reg.push(tiny_model, name="resnet-a", aliases=["production"], **TINY)
    reg.push(tiny_model, name="vgg", **TINY)
    reg.close()


def test_names_then_versions_and_aliases(catalog: None) -> None:
    assert complete("registry pull res")[0] == ["resnet-a"]
    assert complete("registry pull ")[0] == ["resnet-a", "vgg"]
    assert complete("registry show resnet-a@")[0] == [
        "resnet-a@latest",
        "resnet-a@v2",
        "resnet-a@v1",
        "resnet-a@production",
    ]
    assert complete("registry diff resnet-a@v1 resnet-a@p")[0] == ["resnet-a@production"]
    assert complete("registry ls v")[0] == ["vgg"]


def test_completion_imports_neither_sqlalchemy_nor_torch(catalog: None) -> None:
    offers, imported = complete("registry load resnet-a@v", "sqlalchemy", "torch")
    assert offers == ["resnet-a@v2", "resnet-a@v1"]
    assert imported == [""]


def test_a_missing_catalog_completes_nothing() -> None:
    assert complete("registry pull x")[0] == []
