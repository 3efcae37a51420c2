"""`Registry.diff` of vgg16 against a fine-tune of its last layer, next to loading both files.

    .venv/bin/python bench/diff.py [--runs 7]

Writes two vgg16 checkpoints (torchvision, weights=None, seed 0: nothing
downloaded) the tutorial's way: v1, and a fine-tune in which only
`classifier.6` changed. Pushes both to a fresh registry in a temp folder, the
second with `parent=` the first, then times, interleaved round by round (the
order rotated each round) with an untimed os.sync() before every run:
- baseline: plain `torch.load(path, weights_only=True)` of both files, full
  loads (no mmap), what comparing them in plain torch starts with;
- subject: `reg.diff(v1, v2)` on a Registry whose engine is open, which
  settles 30 of vgg16's 32 tensors from the manifests' digests and reads only
  classifier.6's two tensors from the memory-mapped blobs.
Each runs once untimed first. Files are warm in the page cache for both sides
(dropping it needs root). Prints medians with min-max and the ratio; the
issue's target is at most 0.2x. The temp folder is removed at the end. Not
part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision import models

from registry import Registry

TARGET = 0.2


def timed(action: Callable[[], object]) -> float:
    os.sync()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    work = Path(tempfile.mkdtemp(prefix="registry-diff-bench-"))
    try:
        torch.manual_seed(0)
        model = models.vgg16(weights=None)
        v1_path, v2_path = work / "v1.pth", work / "v2.pth"
        torch.save(model.state_dict(), v1_path)
        with torch.no_grad():  # the fine-tune: a new last layer, everything else untouched
            model.classifier[6].weight.add_(0.01 * torch.randn_like(model.classifier[6].weight))
            model.classifier[6].bias.add_(0.01)
        torch.save(model.state_dict(), v2_path)
        del model
        size = v1_path.stat().st_size + v2_path.stat().st_size

        reg = Registry(home=work / "home")
        v1 = reg.push(v1_path, arch="vgg16").ref
        v2 = reg.push(v2_path, arch="vgg16", parent=v1).ref
        summary = reg.diff(v1, v2).summary
        assert summary["identical"] == 30 and summary["changed"] == 2, summary

        def load_both() -> None:
            for path in (v1_path, v2_path):
                torch.load(path, weights_only=True, mmap=False)

        contenders: dict[str, Callable[[], object]] = {
            "torch.load both files": load_both,
            f"reg.diff('{v1}', '{v2}')": lambda: reg.diff(v1, v2),
        }
        for action in contenders.values():  # warm-up, untimed
            action()
        gc.collect()
        times: dict[str, list[float]] = {label: [] for label in contenders}
        labels = list(contenders)
        for round_ in range(runs):
            shift = round_ % len(labels)
            for label in labels[shift:] + labels[:shift]:
                times[label].append(timed(contenders[label]))
        reg.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"vgg16: 2 checkpoints, {size / 1e6:.0f} MB in all, {runs} interleaved runs, warm page "
        f"cache; torch {torch.__version__}, {os.cpu_count()} cores, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    medians = {}
    for label, values in times.items():
        medians[label] = statistics.median(values)
        print(
            f"{label:44} median {medians[label] * 1e3:7.1f} ms"
            f"  (min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f})"
        )
    baseline, subject = (medians[label] for label in labels)
    ratio = subject / baseline
    verdict = "pass" if ratio <= TARGET else "FAIL"
    print(f"diff / torch.load both = {ratio:.3f}x (target <= {TARGET}x: {verdict})")


if __name__ == "__main__":
    main()
