"""Figure 14: what signing a version costs at push, and insisting on a signature at load.

A signed push signs two small statements with the version's digests, which
the push knows already: no byte of the file is read again. A load that
insists on a signature (`trusted_keys=`) checks both envelopes with the
trusted key and compares what they list with the catalog's record before it
reads anything, then reads as a verified load does. `verify_signatures`
checks one version's signature without reading its file.
"""

from __future__ import annotations

from pathlib import Path

from figures import Workspace, feed_homes
from harness import Contender, Result, Target, compare

from registry import Registry
from registry.signing import generate


def signed(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    runs = repeats + 1
    pair = generate(ws.root / f"keys-{arch}")
    trusted = [pair.public]
    inputs = ws.variants(arch, 2 * runs)
    home = ws.fresh_home()
    reg = Registry(home=home)
    ref = reg.push(ws.checkpoint(arch), arch=arch, sign=pair.private).ref
    reg.close()

    def push(run: tuple[Path, Path], sign: bool) -> None:
        path, fresh = run
        Registry(home=fresh).push(path, arch=arch, sign=pair.private if sign else None)

    homes = [ws.root / f"signed-push-{i}" for i in range(2 * runs)]

    results = compare(
        f"14 · push · {arch}",
        [
            Contender(
                "`Registry(home).push(FILE, arch=...)` (baseline)",
                lambda run: push(run, sign=False),
                setup=feed_homes(ws, list(zip(inputs[:runs], homes[:runs], strict=True))),
            ),
            Contender(
                "`Registry(home).push(FILE, arch=..., sign=KEY)`",
                lambda run: push(run, sign=True),
                setup=feed_homes(ws, list(zip(inputs[runs:], homes[runs:], strict=True))),
                targets=(Target(1.05, "ratio"),) if targets else (),
            ),
        ],
        repeats,
    )
    results += compare(
        f"14 · load · {arch}",
        [
            Contender(
                f"`Registry(home).load({ref!r})`, verified (baseline)",
                lambda _: Registry(home=home).load(ref),
            ),
            Contender(
                f"`Registry(home).load({ref!r}, trusted_keys=[PUBLIC])`",
                lambda _: Registry(home=home).load(ref, trusted_keys=trusted),
                targets=(Target(1.05, "ratio"),) if targets else (),
            ),
            Contender(
                f"`Registry(home).verify_signatures({ref!r}, trusted_keys=[PUBLIC])`",
                lambda _: Registry(home=home).verify_signatures(ref, trusted_keys=trusted),
            ),
        ],
        repeats,
    )
    return results
