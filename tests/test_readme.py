"""The README's "Finding and managing models" transcript, run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import torch
from click.testing import CliRunner

from registry.cli import cli

README = (Path(__file__).parent.parent / "README.md").read_text()


def transcript(section: str) -> list[tuple[str, list[str]]]:
    """The `$ registry ...` commands of a README section's console block, with their output."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = body.split("```console\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def matches(expected: list[str], actual: str) -> bool:
    """`...` alone on a line stands for any lines; inside a line, for any text."""
    pattern = "".join(
        r"(?:.*\n)*?" if line == "..." else re.escape(line).replace(r"\.\.\.", ".*") + r"\n"
        for line in expected
    )
    return re.fullmatch(pattern, actual) is not None


def test_finding_and_managing_models_transcript(tmp_path: Path) -> None:
    from torchvision import models

    for seed, name in [(1, "v1.pth"), (2, "v2.pth")]:
        torch.manual_seed(seed)
        torch.save(models.resnet18(weights=None, num_classes=10).state_dict(), name)
    steps = transcript("Finding and managing models")
    assert len(steps) >= 10
    runner = CliRunner()
    for command, expected in steps:
        argv = shlex.split(command)
        assert argv[0] == "registry"
        result = runner.invoke(cli, argv[1:])
        assert result.exit_code == 0, (command, result.output)
        assert matches(expected, result.stdout), (command, expected, result.stdout)


def test_the_layout_section_names_every_module_and_only_those() -> None:
    """A module added or renamed and not described under "Layout" fails here."""
    package = Path(__file__).parent.parent / "src" / "registry"
    block = README.split("## Layout\n", 1)[1].split("```", 2)[1]
    described = set(re.findall(r"^  ([\w/]+\.py) ", block, re.MULTILINE))
    modules = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if p.parts[len(package.parts)] != "migrations"
    } - {"__init__.py", "__main__.py"}
    assert described == modules
