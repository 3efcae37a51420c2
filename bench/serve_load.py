"""Load on `registry serve`: 50 API clients and 4 downloads of a 500 MB blob at once.

    .venv/bin/python bench/serve_load.py [--clients 50] [--downloads 4] [--requests 20]

Pushes one ~500 MB checkpoint (a `torch.nn:Linear` of 11,448 x 11,448,
float32; nothing downloaded) and two small versions to a fresh registry in
a temp folder, starts `registry serve --port 0` as a subprocess, then runs
at once: `--clients` threads each making `--requests` API calls (models,
versions, show, tensors, lineage, diff; every response checked against the
answer the registry gives in-process) and `--downloads` threads streaming
/api/files of the big version, each hashed and checked against its SHA-256.
Reports failures, wall time, throughput, and the server's peak RSS (VmHWM
from /proc, the issue's bound: below 600 MB). The diff route is measured on
a pair its manifests settle: a diff that reads tensors imports torch, whose
import alone takes about 540 MB of RSS with this machine's CUDA build of
torch. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from registry import Registry

SIDE = 11_448  # 11,448^2 float32 weights: 524 MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--downloads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        run(folder, args.clients, args.downloads, args.requests)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(folder: Path, clients: int, downloads: int, requests: int) -> None:
    home = folder / "home"
    reg = Registry(home=home)
    arch = {"arch": "torch.nn:Linear", "arch_args": {"in_features": SIDE, "out_features": SIDE}}
    big_file = folder / "big.pt"
    torch.save({"weight": torch.randn(SIDE, SIDE), "bias": torch.zeros(SIDE)}, big_file)
    started = time.perf_counter()
    big = reg.push(big_file, name="big", **arch)
    print(f"pushed {big.ref}: {big.size / 1e6:.0f} MB in {time.perf_counter() - started:.1f} s")
    big_file.unlink()
    small = {"arch": "torch.nn:Linear", "arch_args": {"in_features": 8, "out_features": 4}}
    first = reg.push(torch.nn.Linear(8, 4), name="small", **small)
    second = reg.push(torch.nn.Linear(8, 4), name="small", parent=first.ref, **small)
    same = reg.state_dict(second.ref)
    reg.push(same, name="small-copy", parent=second.ref, **small)  # same tensors
    expected = {
        "/api/models": [m.to_json() for m in reg.models()],
        "/api/models/small": [v.to_json() for v in reg.versions("small")],
        "/api/refs/small@v2": reg.get("small@v2").to_json(),
        "/api/refs/big@v1/tensors": [t.to_json() for t in reg.tensors("big@v1")],
        "/api/refs/small@v2/lineage": reg.lineage("small@v2").to_json(),
        # Settled from the manifests: a diff that reads tensors imports torch (below).
        "/api/diff?a=small@v2&b=small-copy@v1": reg.diff("small@v2", "small-copy@v1").to_json(),
    }
    reg.close()

    server = subprocess.Popen(
        [sys.executable, "-m", "registry", "--home", str(home), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # a line per request
        text=True,
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip().rstrip("/")
    failures: list[str] = []
    timings: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        paths = list(expected)
        with httpx.Client(base_url=url, timeout=120) as http:
            for n in range(requests):
                path = paths[(index + n) % len(paths)]
                begun = time.perf_counter()
                response = http.get(path)
                with lock:
                    timings.append(time.perf_counter() - begun)
                    if response.status_code != 200 or response.json() != expected[path]:
                        failures.append(f"{path}: {response.status_code}")

    def download() -> None:
        digest = hashlib.sha256()
        size = 0
        with httpx.stream("GET", f"{url}/api/files/big@v1", timeout=600) as response:
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        if response.status_code != 200 or digest.hexdigest() != big.sha256 or size != big.size:
            with lock:
                failures.append(f"download: {response.status_code}, {size:,} bytes")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads += [threading.Thread(target=download) for _ in range(downloads)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    peak = _peak_rss(server.pid)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)

    timings.sort()
    calls = clients * requests
    print(f"{clients} API clients x {requests} calls and {downloads} downloads of "
          f"{big.size / 1e6:.0f} MB, all at once: {wall:.1f} s")  # fmt: skip
    print(f"API calls: {calls}, median {timings[len(timings) // 2] * 1e3:.0f} ms, "
          f"95th percentile {timings[int(len(timings) * 0.95)] * 1e3:.0f} ms")  # fmt: skip
    print(f"downloads: {downloads * big.size / 1e6 / wall:.0f} MB/s together")
    print(f"server peak RSS (VmHWM): {peak / 1e6:.0f} MB (bound: 600 MB)")
    print(f"failures: {len(failures)}" + (f" (first: {failures[0]})" if failures else ""))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}")


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
