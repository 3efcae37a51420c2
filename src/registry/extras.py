"""The optional extras: the modules each one brings, and one error line when one is missing.

`pip install torch-registry` leaves them out; a command that needs one says
which to install instead of ending in a traceback. tests/test_extras.py
checks this table against pyproject.toml's optional dependencies, so an
extra added there and not here fails the suite.
"""

from __future__ import annotations

import importlib
import sys

from registry.errors import MissingExtraError

# extra -> the modules it installs, as they are imported
EXTRAS: dict[str, tuple[str, ...]] = {
    "s3": ("boto3", "botocore"),  # the S3 store
    "serve": ("starlette", "uvicorn", "httptools", "jinja2", "httpx", "markdown_it", "nh3"),
    "remote": ("httpx",),  # --remote URL
    "hf": ("transformers", "peft"),  # Hugging Face folders (transformers, PEFT)
}


def require(extra: str, needed_by: str) -> None:
    """Import every module of `extra`, or raise MissingExtraError naming the extra."""
    for module in EXTRAS[extra]:
        if module in sys.modules:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtraError(extra, exc.name or module, needed_by) from None
