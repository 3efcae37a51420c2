"""Push and pull of vgg16 through the S3 store, next to boto3's own upload_file/download_file.

    .venv/bin/python bench/s3.py [--runs 3]

Starts moto's S3 server on loopback, writes distinct vgg16 checkpoints (one
weight changed each, so no upload is skipped), and times, interleaved run by
run with os.sync() between, keeping every output:
- push: `Registry.push` to an s3:// store (copy into the cache, hash, check the
  weights against the arch, upload) against `client.upload_file` of the same
  file to the same server;
- pull: `Registry.pull` through a cold cache (download, verify, copy out) against
  `client.download_file` of the same object.
Prints medians with min-max and the ratios. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import boto3
import torch
from moto.server import ThreadedMotoServer
from torchvision import models

from registry import Registry


def timed(action) -> float:
    os.sync()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    client = boto3.client("s3")
    client.create_bucket(Bucket="bench")
    work = Path(tempfile.mkdtemp(prefix="registry-s3-bench-"))
    state = models.vgg16(weights=None).state_dict()
    files = []
    for i in range(2 * runs):  # distinct bytes for every push, registry and baseline alike
        state["classifier.6.bias"][0] = float(i)
        files.append(work / f"vgg16-{i}.pth")
        torch.save(state, files[-1])
    size = files[0].stat().st_size

    times: dict[str, list[float]] = {k: [] for k in ("push", "upload", "pull", "download")}
    refs = []
    for i in range(runs):
        baseline, ours = files[2 * i], files[2 * i + 1]
        times["upload"].append(
            timed(lambda b=baseline: client.upload_file(str(b), "bench", b.name))
        )
        reg = Registry(home=work / f"push-{i}", store="s3://bench/registry")
        times["push"].append(timed(lambda r=reg, o=ours: refs.append(r.push(o, arch="vgg16").ref)))
        reg.close()
    for i in range(runs):
        out = work / f"downloaded-{i}.pth"
        name = files[2 * i].name
        times["download"].append(
            timed(lambda o=out, n=name: client.download_file("bench", n, str(o)))
        )
        cold = Registry(  # the catalog of push i, a cache that has never seen the blob
            home=work / f"pull-{i}", store="s3://bench/registry",
            database_url=f"sqlite:///{work / f'push-{i}' / 'registry.db'}",
        )  # fmt: skip
        times["pull"].append(timed(lambda c=cold, i=i: c.pull(refs[i], work / f"pulled-{i}.pth")))
        cold.close()
    server.stop()

    def show(name: str) -> float:
        values = times[name]
        median = statistics.median(values)
        print(f"{name:9} median {median:6.2f} s  (min {min(values):.2f}, max {max(values):.2f})")
        return median

    print(f"vgg16: {size / 1e6:.0f} MB, {runs} interleaved runs, moto on loopback")
    push, upload, pull, download = (show(n) for n in ("push", "upload", "pull", "download"))
    print(f"push / upload_file     = {push / upload:.2f}")
    print(f"pull / download_file   = {pull / download:.2f}")


if __name__ == "__main__":
    main()
