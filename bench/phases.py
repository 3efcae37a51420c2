"""Where a push's time goes: each phase of `Registry.push` timed inside real pushes.

    .venv/bin/python bench/phases.py [--store s3] [--arch vgg16] [--runs 3]

Wraps the functions a push calls in turn (copying and hashing the file into
the store's writer, reading the weights against the arch, the tensor
manifest, the upload to the bucket, the catalog transaction) with timers,
pushes distinct checkpoints (one weight changed each) into fresh registries,
and prints each phase's median next to the whole push. With `--store s3` it
starts moto's S3 server on loopback, and also times boto3's `upload_file` of
the same file with boto3's default client and with one without its CRC
checksums (as for an endpoint that refuses them), interleaved with the pushes.
It is the profile behind the S3 push figure's explanation in
docs/benchmarks.md; not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from figures import Workspace
from services import BUCKET, STORE, moto_server

from registry import Registry, manifests, pushing
from registry.stores import s3 as s3store

PHASES: list[tuple[Any, str, str]] = [
    (pushing, "copy_file", "copy into the writer: SHA-256 + BLAKE3, fsync begun"),
    (pushing, "read_weights", "read the weights, fit them to the arch"),
    (manifests, "describe", "tensor manifest: a BLAKE3 of each tensor"),
    (s3store._UploadingWriter, "publish", "S3: upload the copy (HEAD, then upload_file)"),
]


@contextlib.contextmanager
def timed_phases(spent: dict[str, float]) -> Iterator[None]:
    """Add each phase's seconds to `spent` while the block runs."""
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in PHASES]

    def timer(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - started

        return timed

    for (owner, name, _), (_, _, function) in zip(PHASES, originals, strict=True):
        setattr(owner, name, timer(name, function))
    try:
        yield
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/phases.py")
    parser.add_argument("--store", choices=["local", "s3"], default="local")
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="registry-phases-"))
    times: dict[str, list[float]] = defaultdict(list)
    try:
        ws = Workspace(work)
        inputs = ws.variants(args.arch, 3 * args.runs)
        with moto_server() if args.store == "s3" else contextlib.nullcontext() as client:
            store = STORE if args.store == "s3" else None
            plain = s3store.S3Store(STORE, work / "c")._make_client(False) if client else None
            for run in range(args.runs):
                path = inputs[3 * run]
                spent: dict[str, float] = defaultdict(float)
                home = ws.fresh_home(work / f"home-{run}")
                started = time.perf_counter()
                with timed_phases(spent):
                    Registry(home=home, store=store).push(path, arch=args.arch)
                times["whole push"].append(time.perf_counter() - started)
                for _, name, _ in PHASES:
                    times[name].append(spent[name])
                if client is not None:
                    for key, c, label in (
                        (1, client, "boto3 upload_file, default client"),
                        (2, plain, "boto3 upload_file, without CRC checksums"),
                    ):
                        other = inputs[3 * run + key]
                        started = time.perf_counter()
                        c.upload_file(str(other), BUCKET, f"plain/{other.name}")
                        times[label].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    labels = {name: text for _, name, text in PHASES}
    print(f"{args.arch}, store {args.store}, {args.runs} runs: medians (min … max)")
    for key, values in times.items():
        if key in labels and not any(values):
            continue
        print(
            f"  {labels.get(key, key):58} {statistics.median(values):6.2f} s"
            f"  ({min(values):.2f} … {max(values):.2f})"
        )


if __name__ == "__main__":
    main()
