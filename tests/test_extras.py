"""A missing optional extra is one `Error:` line naming it, never a traceback (issue 20).

`pip install torch-registry` leaves the extras out. Each test hides one of an
extra's modules from a `registry` subprocess, as an install without the extra
would be (a folder first on PYTHONPATH whose `<module>/__init__.py` raises
ModuleNotFoundError), and runs every kind of command that needs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import LINEAR
from safetensors.torch import save_file

from registry.extras import EXTRAS

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = Path(sys.executable).parent / "registry"

# What each extra is needed by, as a user would meet it: (extra, command after `registry`).
COMMANDS = {
    "remote-ls": ("remote", ["--remote", "http://127.0.0.1:9", "ls"]),
    "remote-pull": ("remote", ["--remote", "http://127.0.0.1:9", "pull", "net@v1"]),
    "s3-push": ("s3", ["--store", "s3://models/team", "push", "weights.pth", *LINEAR]),
    "s3-gc": ("s3", ["--store", "s3://models/team", "gc"]),
    "serve": ("serve", ["serve", "--port", "0"]),
    "hf-push": ("hf", ["push", "bert"]),  # a save_pretrained folder
}
CASES = [
    pytest.param(extra, module, command, id=f"{name}-without-{module}")
    for name, (extra, command) in COMMANDS.items()
    for module in EXTRAS[extra]
]


def hide(module: str, folder: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes `import module` fail as if not installed."""
    package = folder / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n"
    )
    return folder


@pytest.mark.parametrize(("extra", "module", "command"), CASES)
def test_a_missing_extra_is_one_line_naming_it(
    tmp_path: Path, extra: str, module: str, command: list[str]
) -> None:
    torch.save(torch.nn.Linear(4, 3).state_dict(), tmp_path / "weights.pth")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(
        '{"architectures": ["BertModel"], "model_type": "bert"}'
    )
    save_file(torch.nn.Linear(4, 3).state_dict(), tmp_path / "bert" / "model.safetensors")
    hidden = hide(module, tmp_path / "hidden")
    env = {**os.environ, "PYTHONPATH": f"{hidden}{os.pathsep}{os.environ['PYTHONPATH']}"}
    result = subprocess.run(
        [str(REGISTRY), *command], capture_output=True, text=True, env=env, timeout=120
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert f"needs {module}, which is not installed" in lines[0]
    assert lines[0].endswith(f'pip install "torch-registry[{extra}]"')


def test_every_extra_of_pyproject_is_known_with_its_modules() -> None:
    """An extra added to pyproject.toml and not to registry.extras fails here."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: v for k, v in declared["optional-dependencies"].items() if k != "dev"}
    assert extras.keys() == EXTRAS.keys()
    for extra, requirements in extras.items():
        distributions = {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0] for r in requirements}
        modules = {d.lower().replace("-", "_").removesuffix("_py") for d in distributions}
        assert modules <= set(EXTRAS[extra]), extra


def test_the_readme_names_every_extra() -> None:
    readme = (ROOT / "README.md").read_text()
    for extra in EXTRAS:
        assert f'"torch-registry[{extra}]"' in readme
