"""What the tests share: the tiny model and its checkpoint, small assertions, servers."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

MARKER = "pwned.marker"

# The one tiny model: `tiny_models:TinyNet` (tests/conftest.py writes `tiny_models` into the
# models folder that this process and every subprocess of the suite import) at these
# arguments, 145 parameters. The `tiny_model` fixture is tiny(0).
TINY_ARCH = "tiny_models:TinyNet"
TINY_ARGS = {"width": 4, "num_classes": 5}
TINY = {"arch": TINY_ARCH, "arch_args": TINY_ARGS}  # push(..., **TINY)
TINY_CLI = ["--arch", TINY_ARCH, "--arg", "width=4", "--arg", "num_classes=5"]  # `push`
# An nn.Linear(4, 3), the model of a test that needs no user module at all.
LINEAR_ARGS = {"in_features": 4, "out_features": 3}
LINEAR = ["--arch", "torch.nn:Linear", "--arg", "in_features=4", "--arg", "out_features=3"]


def tiny(seed: int = 0, **args: int) -> torch.nn.Module:
    """A TinyNet drawn from `seed`, in eval mode: TINY_ARGS, unless `args` say otherwise."""
    import tiny_models

    torch.manual_seed(seed)
    return tiny_models.TinyNet(**{**TINY_ARGS, **args}).eval()


def tiny_file(folder: Path, seed: int, args: Mapping[str, int] = TINY_ARGS) -> Path:
    """torch.save a seeded TinyNet's state_dict into `folder`; distinct seeds, distinct bytes."""
    path = folder / f"tiny-{seed}-{args['num_classes']}.pth"
    torch.save(tiny(seed, **args).state_dict(), path)
    return path


def linear_file(folder: Path, seed: int, in_features: int = 4, out_features: int = 3) -> Path:
    """torch.save a seeded nn.Linear's state_dict into `folder` (the file name is part of the
    bytes torch writes: the same seed and shape give the same bytes)."""
    torch.manual_seed(seed)
    path = folder / f"linear-{seed}-{in_features}x{out_features}.pth"
    torch.save(torch.nn.Linear(in_features, out_features).state_dict(), path)
    return path


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

    `args` follow `serve` (`--token T`); `options` go before it (`--database-url U`).
    Its log goes to a file, not a pipe, so it never stalls on a full one; none of
    this environment's REGISTRY_* settings reach it (the user's models do, by
    PYTHONPATH), only those in `env`, which it adds. `stop()` and `kill()` give back
    all it wrote, the URL line included.
    """

    def __init__(
        self,
        home: Path,
        *args: str,
        options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        environment.update(env or {})
        command = [sys.executable, "-m", "registry", "--home", str(home), *options]
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115  # closed by _finish
        self._output: str | None = None
        self.process = subprocess.Popen(
            [*command, "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self._log, text=True, env=environment,
        )  # fmt: skip
        assert self.process.stdout is not None
        self._first = self.process.stdout.readline()
        self.url = self._first.strip().rstrip("/")
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
            self._output = self._first + out + self._log.read()
            self._log.close()
        return self._output


def log_so_far(server: Server) -> str:
    """What a running server has written to its log so far."""
    fd = server._log.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
