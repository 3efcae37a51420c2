"""Figures 9 and 10: the S3 store next to boto3, and `registry serve` next to `http.server`.

Figure 9 starts moto's S3 server on loopback (real HTTP) and times, on
distinct checkpoints written beforehand so that no upload finds its bytes
stored: `Registry.push` to an `s3://` store against boto3's `upload_file` of
a file of the same size, both with boto3's default client settings;
`Registry.pull` through a cache that has never seen the object against
`download_file` and against one streamed `get_object` into a file (its
target holds against each), beside a reference row that writes the same GET
to a file and to a second, fsynced one (the writes of a pull that keeps a
durable cached copy, before any hash); and a verified `load` from a warm cache against
one from a local store. Figure 10 serves one stored checkpoint with
`registry serve` and with `python -m http.server` and downloads it from each
with the same httpx client.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from figures import Outputs, Workspace, feed, feed_homes
from harness import Contender, Result, Target, compare

from registry import Registry

BUCKET = "bench"
STORE = f"s3://{BUCKET}/registry"


@contextlib.contextmanager
def moto_server() -> Iterator[Any]:
    """An S3 server on loopback, the environment pointed at it; a boto3 client of it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def s3(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 9: push, pull and cached load through the S3 store."""
    runs = repeats + 1
    inputs = ws.variants(arch, 2 * runs)
    out = Outputs(ws.root / f"s3-{arch}")
    pushed: list[tuple[Path, str]] = []  # (home, ref) of each push, for the pulls

    def push(run: tuple[Path, Path]) -> None:
        path, home = run
        pushed.append((home, Registry(home=home, store=STORE).push(path, arch=arch).ref))

    def cold_pull(run: tuple[Path, str, Path, Path]) -> None:
        """Pull with the catalog of a push, through a cache that never saw its object."""
        push_home, ref, home, destination = run
        catalog = f"sqlite:///{push_home / 'registry.db'}"
        Registry(home=home, store=STORE, database_url=catalog).pull(ref, destination)

    def streamed_get(run: tuple[str, Path]) -> None:
        """One GET, its body streamed into the file: the other floor of a pull."""
        body = client.get_object(Bucket=BUCKET, Key=run[0])["Body"]
        with open(run[1], "wb") as out:
            for chunk in body.iter_chunks(1 << 20):
                out.write(chunk)

    def streamed_get_and_copy(run: tuple[str, Path, Path]) -> None:
        """The GET written to a file and to a second, fsynced file: what a pull that keeps
        a durable cached copy must write, before any hashing."""
        body = client.get_object(Bucket=BUCKET, Key=run[0])["Body"]
        with open(run[1], "wb") as out, open(run[2], "wb") as copy:
            for chunk in body.iter_chunks(1 << 20):
                out.write(chunk)
                copy.write(chunk)
            copy.flush()
            os.fsync(copy.fileno())

    push_target = (Target(1.1, "ratio"),) if targets else ()
    streamed = "one streamed `get_object` into a file"
    pull_targets = (Target(1.1, "ratio"), Target(1.1, "ratio", against=streamed))
    with moto_server() as client:
        # boto3's client without its CRC checksums: what the registry uses for an endpoint
        # that refused them (MinIO, R2 and others); over plain HTTP, botocore then signs
        # each part's SHA-256 instead.
        from registry.stores.s3 import S3Store

        plain_client = S3Store(STORE, ws.root / "s3-settings-cache")._make_client(checksums=False)
        try:
            results = compare(
                f"9 · push · {arch}",
                [
                    Contender(
                        "boto3 `upload_file` (baseline)",
                        lambda path: client.upload_file(str(path), BUCKET, f"plain/{path.name}"),
                        setup=feed(inputs[:runs]),
                    ),
                    Contender(
                        "`Registry(home, store='s3://...').push(FILE, arch=...)`",
                        push,
                        setup=feed_homes(ws, [(path, out.new("home")) for path in inputs[runs:]]),
                        targets=push_target,
                    ),
                    Contender(
                        "reference: `upload_file` without CRC checksums (endpoints refusing them)",
                        lambda path: plain_client.upload_file(
                            str(path), BUCKET, f"settings/{path.name}"
                        ),
                        setup=feed(inputs[:runs]),
                    ),
                ],
                repeats,
            )
            results += compare(
                f"9 · pull · {arch}",
                [
                    Contender(
                        "boto3 `download_file` (baseline)",
                        lambda run: client.download_file(BUCKET, run[0], str(run[1])),
                        setup=feed(
                            [(f"plain/{p.name}", out.new("downloaded.pth")) for p in inputs[:runs]]
                        ),
                    ),
                    Contender(
                        streamed,
                        streamed_get,
                        setup=feed(
                            [(f"plain/{p.name}", out.new("streamed.pth")) for p in inputs[:runs]]
                        ),
                    ),
                    Contender(
                        "reference: the same GET into a file and into a second, fsynced one",
                        streamed_get_and_copy,
                        setup=feed(
                            [
                                (f"plain/{p.name}", out.new("streamed.pth"), out.new("copy.pth"))
                                for p in inputs[:runs]
                            ]
                        ),
                    ),
                    Contender(
                        "`Registry(home, store='s3://...').pull(REF, PATH)`, cold cache",
                        cold_pull,
                        setup=feed(
                            [
                                (home, ref, out.new("cold-home"), out.new("pulled.pth"))
                                for home, ref in pushed
                            ]
                        ),
                        targets=pull_targets if targets else (),
                    ),
                ],
                repeats,
            )
            local_home, local_ref = ws.stocked(arch)
            cached_home, cached_ref = pushed[0]  # a push leaves its blob in the cache
            results += compare(
                f"9 · load · {arch}",
                [
                    Contender(
                        f"`Registry(home).load({local_ref!r})`, local store (baseline)",
                        lambda _: Registry(home=local_home).load(local_ref),
                    ),
                    Contender(
                        f"`Registry(home, store='s3://...').load({cached_ref!r})`, cached",
                        lambda _: Registry(home=cached_home, store=STORE).load(cached_ref),
                        targets=(Target(1.2, "ratio"),) if targets else (),
                    ),
                ],
                repeats,
            )
        finally:
            out.remove()
    return results


@contextlib.contextmanager
def served(command: list[str], env: dict[str, str], first_line: str) -> Iterator[str]:
    """A server subprocess; its base URL, read from the first stdout line holding `first_line`."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if first_line not in line:
            raise RuntimeError(f"{command[0]} did not start: {line!r}")
        yield line
    finally:
        process.terminate()
        process.wait(timeout=30)


def serve(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 10: `GET /api/files/REF` from `registry serve`, against `python -m http.server`."""
    import httpx

    home, ref = ws.stocked(arch)
    reg = Registry(home=home)
    blob = reg.store.path(reg.get(ref).sha256)
    reg.close()
    size = blob.stat().st_size
    client = httpx.Client(timeout=120)

    def download(url: str) -> None:
        received = 0
        with client.stream("GET", url) as response:
            response.raise_for_status()
            for chunk in response.iter_raw(1 << 20):
                received += len(chunk)
        if received != size:
            raise RuntimeError(f"{url}: {received} bytes, not {size}")

    registry_serve = [*ws.registry_command, "serve", "--port", "0"]
    http_server = [
        sys.executable, "-u", "-m", "http.server", "0",
        "--bind", "127.0.0.1", "--directory", str(blob.parent),
    ]  # fmt: skip
    with (
        served(registry_serve, ws.env(home), "http://") as ours,
        served(http_server, ws.env(home), "Serving HTTP") as plain,
    ):
        ours_url = f"{ours.strip().rstrip('/')}/api/files/{ref}"
        plain_url = plain.split("(", 1)[1].split(")", 1)[0].rstrip("/") + f"/{blob.name}"
        try:
            return compare(
                f"10 · {arch}",
                [
                    Contender(
                        "`python -m http.server` of the blob's file (baseline)",
                        lambda _: download(plain_url),
                    ),
                    Contender(
                        f"`registry serve`: `GET /api/files/{ref}` (verified, then sent)",
                        lambda _: download(ours_url),
                        targets=(Target(1.3, "ratio"),) if targets else (),
                    ),
                ],
                repeats,
            )
        finally:
            client.close()
