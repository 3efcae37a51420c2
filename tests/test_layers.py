"""Modules import only downward (README, "Layout"): the interfaces never reach up.

Every import statement is read, those inside functions too (torch and others are
imported lazily), so a layer cannot reach up even where it is lazy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "registry"

# What each part never imports: the parts above it.
CLI = ("cli", "cli_team", "cli_signing")
FACADE = ("api", "upkeep", "team", "signatures")
ABOVE = {
    "catalogs": (*FACADE, *CLI, "server", "publishing", "uploads", "pushing", "folder_push",
                 "reads", "maintenance", "bundles", "hooks"),
    "stores": (*FACADE, *CLI, "server", "publishing", "uploads", "pushing", "folder_push",
               "reads", "maintenance", "bundles", "catalogs", "hooks"),
    "signing": (*FACADE, *CLI, "server", "publishing", "uploads", "pushing", "folder_push",
                "reads", "maintenance", "bundles", "catalogs", "stores", "hooks"),
    "pushing": ("api", *CLI, "server", "uploads", "publishing"),
    "folder_push": ("api", *CLI, "server", "uploads", "publishing"),
    "publishing": ("api", *CLI, "server", "uploads"),
    "uploads": ("api", *CLI, "server"),
    "hooks": ("api", *CLI, "server"),
    "api": (*CLI, "server"),
    "upkeep": ("api", *CLI, "server"),
    "team": ("api", *CLI, "server"),
    "signatures": ("api", *CLI, "server"),
    "server": CLI,
}  # fmt: skip


def imported(path: Path) -> set[str]:
    """The registry modules a file imports, by their first name under `registry`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "registry":
                found.add(parts[1] if len(parts) > 1 else node.names[0].name)
                if len(parts) == 1:
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "registry" and len(parts) > 1:
                    found.add(parts[1])
    return found


@pytest.mark.parametrize("part", sorted(ABOVE))
def test_no_part_imports_the_parts_above_it(part: str) -> None:
    files = sorted((PACKAGE / part).rglob("*.py")) if (PACKAGE / part).is_dir() else [
        PACKAGE / f"{part}.py"
    ]  # fmt: skip
    for file in files:
        upward = imported(file) & set(ABOVE[part])
        assert not upward, f"{file.relative_to(PACKAGE)} imports {sorted(upward)}"
