"""The distribution as a user installs it: sdist and wheel build, pass twine, and work installed.

The wheel is built from the sdist, as a package index's users would, and
installed into a bare folder: migrations, py.typed and the version from the
package metadata must all come along.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **env}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_sdist_builds_a_wheel_that_installs_and_creates_a_catalog(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run("-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(dist), str(ROOT))
    [sdist] = dist.glob("torch_registry-*.tar.gz")
    [wheel] = dist.glob("torch_registry-*.whl")
    run("-m", "twine", "check", "--strict", str(sdist), str(wheel))

    from_sdist = tmp_path / "from-sdist"
    run("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(from_sdist),
        str(sdist))  # fmt: skip
    [rebuilt] = from_sdist.glob("torch_registry-*.whl")
    names = zipfile.ZipFile(rebuilt).namelist()
    assert "registry/migrations/env.py" in names
    assert "registry/migrations/versions/0001_initial.py" in names
    assert "registry/py.typed" in names

    site = tmp_path / "site"
    run("-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(rebuilt))
    probe = (
        "import registry; print(registry.__file__); print(registry.__version__); "
        "print(registry.Registry().models())"
    )
    result = run("-c", probe, cwd=tmp_path, PYTHONPATH=str(site))
    from importlib.metadata import version

    assert result.stdout.splitlines() == [
        str(site / "registry/__init__.py"),
        version("torch-registry"),
        "[]",
    ]
    (tmp_path / "registry").mkdir()  # a home folder in the current one is not the package
    cli = run("-m", "registry", "--version", cwd=tmp_path, PYTHONPATH=str(site))
    assert cli.stdout == f"registry, version {version('torch-registry')}\n"


def test_every_subpackage_is_declared() -> None:
    """A folder of the package missing from pyproject's list would be missing from the wheel."""
    import tomllib

    root = Path(__file__).parent.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    found = {
        ".".join(init.parent.relative_to(root / "src").parts)
        for init in (root / "src" / "registry").rglob("__init__.py")
    }
    assert found == set(declared)
