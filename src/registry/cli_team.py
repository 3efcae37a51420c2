"""The `registry` commands of a team (SPEC "A team through its server"): describe, log,
token and hook, each a thin skin over one `Registry` method, as in `cli`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from registry import audit
from registry.cli import _print, _table, _when, cli, complete_names, complete_refs, json_option

if TYPE_CHECKING:
    from registry.api import Registry


@cli.command()
@click.argument("ref", shell_complete=complete_refs)
@click.argument("description")
@json_option
@click.pass_obj
def describe(reg: Registry, ref: str, description: str, as_json: bool) -> None:
    """Set the description (markdown) of version REF; `-` reads it from standard input."""
    text = sys.stdin.read() if description == "-" else description
    version = reg.describe(ref, text)
    _print(version.to_json() if as_json else f"described {version.ref}", as_json)


@cli.command(name="log")
@click.argument("name", required=False, shell_complete=complete_names)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
@json_option
@click.pass_obj
def log_(reg: Registry, name: str | None, limit: int | None, as_json: bool) -> None:
    """Who changed what, newest first: every push, import, alias, tag, description and rm."""
    entries = reg.log(name, limit)
    if as_json:
        _print([e.to_json() for e in entries], True)
        return
    rows = [[_when(e.at), e.actor, e.action, e.ref, _details(e.details)] for e in entries]
    _table(["WHEN", "WHO", "ACTION", "REF", "DETAILS"], rows)


def _details(details: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in details.items() if v not in (None, "", [], {}))


@cli.group()
def token() -> None:
    """Tokens of a team server: make, list, revoke (needs the catalog itself)."""


@token.command(name="create")
@click.argument("name")
@click.option(
    "--scope", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True,
    help="read: every GET; write: also push, import, aliases, tags, descriptions; admin: also rm.",
)  # fmt: skip
@click.option(
    "--models", "models", multiple=True, metavar="PATTERN",
    help="Only model names matching PATTERN (fnmatch, e.g. 'team/*'); repeatable.",
)  # fmt: skip
@click.option("--expires", metavar="DURATION", help="Stop working after e.g. 90d, 12h, 30m, 2w.")
@json_option
@click.pass_obj
def token_create(
    reg: Registry,
    name: str,
    scope: str,
    models: tuple[str, ...],
    expires: str | None,
    as_json: bool,
) -> None:
    """Make token NAME and print its secret, once: only its digest is kept."""
    info, secret = reg.create_token(name, scope, models, expires)
    if as_json:
        _print({**info.to_json(), "token": secret}, True)
    else:
        click.echo(secret)


@token.command(name="ls")
@json_option
@click.pass_obj
def token_ls(reg: Registry, as_json: bool) -> None:
    """List the tokens: name, scope, models, created, expires, last used (never the secret)."""
    found = reg.tokens()
    if as_json:
        _print([t.to_json() for t in found], True)
        return
    rows = [
        [t.name, t.scope, ",".join(t.models) or "*", _when(t.created_at), _when(t.expires_at),
         _when(t.last_used_at)]
        for t in found
    ]  # fmt: skip
    _table(["NAME", "SCOPE", "MODELS", "CREATED", "EXPIRES", "LAST USED"], rows)


@token.command(name="revoke")
@click.argument("name")
@json_option
@click.pass_obj
def token_revoke(reg: Registry, name: str, as_json: bool) -> None:
    """Revoke token NAME: servers refuse it from its next request on."""
    reg.revoke_token(name)
    _print({"name": name, "revoked": True} if as_json else f"revoked {name}", as_json)


@cli.group()
def hook() -> None:
    """Webhooks every `registry serve` of this catalog calls after a change (needs the catalog)."""


@hook.command(name="add")
@click.argument("url")
@click.option(
    "--events", default=",".join(audit.EVENTS), show_default=True,
    help="Comma-separated events: " + ", ".join(audit.EVENTS) + ".",
)  # fmt: skip
@click.option(
    "--models", "models", multiple=True, metavar="PATTERN",
    help="Only changes to model names matching PATTERN (fnmatch); repeatable.",
)  # fmt: skip
@click.option(
    "--secret-env", metavar="VAR",
    help="The server's environment variable holding the HMAC secret (never stored).",
)  # fmt: skip
@json_option
@click.pass_obj
def hook_add(
    reg: Registry,
    url: str,
    events: str,
    models: tuple[str, ...],
    secret_env: str | None,
    as_json: bool,
) -> None:
    """Have each server POST matching changes to URL, signed with the secret in VAR."""
    wanted = [e.strip() for e in events.split(",") if e.strip()]
    added = reg.add_hook(url, wanted, models, secret_env)
    _print(added.to_json() if as_json else f"hook {added.id} -> {added.url}", as_json)


@hook.command(name="ls")
@json_option
@click.pass_obj
def hook_ls(reg: Registry, as_json: bool) -> None:
    """List the webhooks, each with its last delivery's status and events still waiting."""
    found = reg.hooks()
    if as_json:
        _print([h.to_json() for h in found], True)
        return
    rows = [
        [str(h.id), h.url, ",".join(h.events), ",".join(h.models) or "*",
         h.last_status or "-", _when(h.last_attempt_at), str(h.pending)]
        for h in found
    ]  # fmt: skip
    _table(["ID", "URL", "EVENTS", "MODELS", "LAST STATUS", "LAST TRY", "WAITING"], rows)


@hook.command(name="rm")
@click.argument("hook_id", metavar="ID", type=int)
@json_option
@click.pass_obj
def hook_rm(reg: Registry, hook_id: int, as_json: bool) -> None:
    """Remove webhook ID and the events still waiting for it."""
    reg.remove_hook(hook_id)
    _print({"id": hook_id, "removed": True} if as_json else f"removed hook {hook_id}", as_json)
