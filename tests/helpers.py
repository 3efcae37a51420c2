"""Small assertions shared by the tests."""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import torch

MARKER = "pwned.marker"


class Payload:
    """Unpickling this runs a shell command that creates MARKER in the current folder."""

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(Path.cwd() / MARKER))}",))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def outputs_equal(a: torch.nn.Module, b: torch.nn.Module, shape=(2, 3, 32, 32)) -> bool:
    x = torch.randn(shape)
    with torch.inference_mode():
        return torch.equal(a.eval()(x), b(x))


def all_eval(model: torch.nn.Module) -> bool:
    return not any(m.training for m in model.modules())


@contextlib.contextmanager
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, over real HTTP; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
