"""`make demo`: the PyTorch tutorial's save/load workflow, through the registry.

Runs in ./demo-home (gitignored) on the embedded SQLite default, and checks
that the pulled file is bit-identical and the loaded model is in eval mode
and computes exactly what the original does.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo-home"
REGISTRY = [sys.executable, "-m", "registry"]


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(*args: str) -> str:
    print("$ registry " + " ".join(args), flush=True)
    started = time.perf_counter()
    out = subprocess.run([*REGISTRY, *args], check=True, capture_output=True, text=True).stdout
    print(out.rstrip() + f"\n   ({time.perf_counter() - started:.1f} s)", flush=True)
    return out.strip()


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    os.chdir(DEMO)
    os.environ["REGISTRY_HOME"] = str(DEMO / "registry")
    for name in ("REGISTRY_DATABASE_URL", "REGISTRY_STORE"):
        os.environ.pop(name, None)

    import torch
    from torchvision import models

    import registry

    step("Build torchvision vgg16 (weights=None) and save it as the tutorial does")
    torch.manual_seed(0)
    model = models.vgg16(weights=None)
    torch.save(model.state_dict(), "model_weights.pth")
    size = Path("model_weights.pth").stat().st_size
    print(f"torch.save(model.state_dict(), 'model_weights.pth')  # {size / 1e6:.0f} MB")

    step("Push it: the registry checks the weights fit vgg16, stores them by SHA-256")
    run("push", "model_weights.pth", "--arch", "vgg16", "--tag", "source=tutorial")

    step("List and inspect the catalog")
    run("ls")
    run("show", "vgg16@v1")

    step("Pull it back: verified against its SHA-256, written atomically")
    pulled = run("pull", "vgg16@v1")
    assert filecmp.cmp("model_weights.pth", pulled, shallow=False), "pulled file differs"
    print(f"check: {pulled} is bit-identical to model_weights.pth")

    step("Load it with the Python API: registry.load('vgg16@v1')")
    started = time.perf_counter()
    loaded = registry.load("vgg16@v1")
    print(f"registry.load took {time.perf_counter() - started:.2f} s (weights verified)")
    assert not any(m.training for m in loaded.modules()), "model is not in eval mode"
    print("check: every submodule is in eval mode")
    model.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        same = torch.equal(model(x), loaded(x))
    assert same, "outputs differ"
    print("check: outputs equal the original model's on a random batch")

    step(f"Done. The demo's registry lives in {DEMO / 'registry'}")


if __name__ == "__main__":
    main()
