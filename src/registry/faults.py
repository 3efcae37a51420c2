"""Fault injection for the crash tests: kill this process at a named point.

Set REGISTRY_TEST_KILL_AT to one of POINTS and the process SIGKILLs itself
when it reaches that point, so every step of a push or pull can be
interrupted deterministically. Unset, this costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

POINTS = (
    "push-copy",  # half-way through copying and hashing the checkpoint
    "push-hashed",  # copied and hashed, before the weights are checked
    "push-blob-placed",  # blob renamed into place, catalog not yet committed
    "push-commit",  # version row written, just before COMMIT
    "pull-copy",  # half-way through writing the destination's temp file
    "pull-folder-written",  # every file of a pulled folder written, before the rename
    "s3-upload",  # half-way through uploading a blob to the bucket
    "s3-uploaded",  # object in the bucket, catalog not yet committed
    "s3-download",  # half-way through a download from the bucket (a cache fill, a pull)
    "remote-fill",  # half-way through filling a cache entry from `registry serve`
    "import-blob",  # half-way through writing a bundle's blob into the store
    "import-commit",  # a bundle's blobs placed, catalog not yet committed
)


def crash_point(name: str) -> None:
    if os.environ.get("REGISTRY_TEST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def crash_half_way(point: str, total: int, advance: Callable[[int], None]) -> Callable[[int], None]:
    """A progress callback that also reaches crash `point` once half the bytes are done."""
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        advance(n)
        if done * 2 >= total:
            crash_point(point)

    return step
