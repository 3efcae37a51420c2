"""Progress of long transfers: silent by default, a bar in a terminal or a notebook on request.

A progress factory takes a label and a total byte count and returns a
context manager that yields a function called with each number of bytes done.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]

# Smaller transfers are done before a bar is worth drawing.
THRESHOLD = 50_000_000


@contextlib.contextmanager
def silent(_label: str, _total: int) -> Iterator[Callable[[int], None]]:
    """No progress at all: what scripts get unless they ask."""
    yield lambda _n: None


@contextlib.contextmanager
def terminal(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar on stderr for large transfers, only when stderr is a terminal (the CLI's)."""
    if total < THRESHOLD or not sys.stderr.isatty():
        yield lambda _n: None
        return
    import click

    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


@contextlib.contextmanager
def auto(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A tqdm bar for large transfers: a widget in Jupyter, text in a terminal."""
    if total < THRESHOLD:
        yield lambda _n: None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024) as bar:
        yield bar.update
