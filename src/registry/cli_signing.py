"""The `registry` commands of signed versions (SPEC "Signed versions"): `keys generate`, and
`verify --signature`'s report, each a thin skin over `signing` or `Registry`, as in `cli`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from registry.cli import _print, cli, json_option

if TYPE_CHECKING:
    from registry.api import Registry


@cli.group()
def keys() -> None:
    """Key pairs that sign versions (push --sign) and that reads trust (--trusted-key)."""


@keys.command()
@click.argument("folder", type=click.Path(file_okay=False))
@json_option
def generate(folder: str, as_json: bool) -> None:
    """Write a new ECDSA P-256 key pair into FOLDER: private.pem (yours alone) and public.pem.

    Sign with private.pem (push --sign); give public.pem to the machines that
    should trust it (REGISTRY_TRUSTED_KEYS). Existing keys are never overwritten.
    """
    from registry import signing

    pair = signing.generate(folder)
    found = {
        "private_key": str(pair.private),
        "public_key": str(pair.public),
        "fingerprint": pair.fingerprint,
    }
    if as_json:
        _print(found, True)
        return
    click.echo(f"private key: {pair.private} (keep it secret)")
    click.echo(f"public key:  {pair.public}")
    click.echo(f"fingerprint: {pair.fingerprint}")


def verify_signatures(
    reg: Registry, ref: str | None, trusted_keys: tuple[str, ...], as_json: bool
) -> None:
    """`registry verify --signature`: one line per version; exit 1 unless all are valid."""
    checks = reg.verify_signatures(ref, trusted_keys=trusted_keys)
    if as_json:
        _print([c.to_json() for c in checks], True)
    else:
        for c in checks:
            if c.status == "valid":
                by = "a trusted key" if c.trusted else "the key it names (none trusted given)"
                click.echo(f"{c.ref}: signature valid, by {by}: {c.signed_by}")
            else:
                click.echo(f"{c.ref}: {c.status}: {c.problem}")
    if any(c.status != "valid" for c in checks):
        sys.exit(1)
