"""Small assertions shared by the tests."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
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


class Server:
    """A `registry serve` subprocess over `home` on 127.0.0.1:0, and the URL it printed first.

    Its log goes to a file, not a pipe, so it never stalls on a full one; none of
    this environment's REGISTRY_* settings reach it (the user's models do, by
    PYTHONPATH). `stop()` and `kill()` give back all it wrote.
    """

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        command = [sys.executable, "-m", "registry", "--home", str(home), "serve", "--port", "0"]
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115  # closed by _finish
        self._output: str | None = None
        self.process = subprocess.Popen(
            [*command, *args], stdout=subprocess.PIPE, stderr=self._log, text=True, env=env
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip().rstrip("/")
        if not self.url.startswith("http://127.0.0.1:"):
            raise AssertionError(f"the server printed no URL first: {self.url!r} {self.kill()}")

    def stop(self, stop_signal: int = signal.SIGTERM) -> str:
        """Send `stop_signal` unless it has exited; wait for it; all it wrote."""
        if self.process.poll() is None:
            self.process.send_signal(stop_signal)
        return self._finish()

    def kill(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        return self._finish()

    def _finish(self) -> str:
        if self._output is None:
            out, _ = self.process.communicate(timeout=30)
            self._log.seek(0)
            self._output = out + self._log.read()
            self._log.close()
        return self._output
