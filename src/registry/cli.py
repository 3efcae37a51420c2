"""The `registry` command: click commands, each a thin skin over one `Registry` method."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

from registry import DISTRIBUTION, jsontext, progress_bars, refs
from registry.errors import NotFoundError, RegistryError
from registry.records import ModelSummary, ModelVersion

if TYPE_CHECKING:  # imported when a command runs: completion and --help skip SQLAlchemy
    from registry.api import Registry

MAX_INDENT = 32  # levels of a lineage tree drawn as indentation


class RegistryGroup(click.Group):
    """Turns a RegistryError into `Error: <message>` on stderr and exit 1, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RegistryError as exc:
            if os.environ.get("REGISTRY_DEBUG"):
                raise
            raise click.ClickException(str(exc)) from exc


TRUSTED_KEY = ("--trusted-key", "trusted_keys")  # before the command, or after it
TRUSTED_KEY_TYPE: dict[str, Any] = {
    "multiple": True,
    "type": click.Path(dir_okay=False),
    "metavar": "PEM",
}


@click.group(cls=RegistryGroup)
@click.option("--home", type=click.Path(file_okay=False), help="Home folder [env REGISTRY_HOME].")
@click.option(
    "--database-url",
    help="Catalog URL, sqlite:///... or postgresql://... [env REGISTRY_DATABASE_URL].",
)
@click.option("--store", help="Blob store: a folder or s3://BUCKET[/PREFIX] [env REGISTRY_STORE].")
@click.option(
    "--cache",
    type=click.Path(file_okay=False),
    help="Local cache of an s3:// store's or a server's blobs [env REGISTRY_CACHE; "
    "default HOME/cache].",
)
@click.option(
    "--remote",
    metavar="URL",
    help="Work through a `registry serve` at URL instead of a catalog and store "
    "[env REGISTRY_REMOTE; token from REGISTRY_TOKEN].",
)
@click.option(
    *TRUSTED_KEY,
    **TRUSTED_KEY_TYPE,
    help="Read only versions this public key signed (repeatable) "
    "[env REGISTRY_TRUSTED_KEYS, comma-separated].",
)
@click.version_option(package_name=DISTRIBUTION, prog_name="registry")
@click.pass_context
def cli(
    ctx: click.Context,
    home: str | None,
    database_url: str | None,
    store: str | None,
    cache: str | None,
    remote: str | None,
    trusted_keys: tuple[str, ...],
) -> None:
    """A model registry for PyTorch: versioned, verified checkpoints, rebuilt in eval mode."""
    from registry.api import Registry

    ctx.obj = Registry(
        home=home,
        database_url=database_url,
        store=store,
        cache=cache,
        remote=remote,
        progress=progress_bars.terminal,
        trusted_keys=trusted_keys or None,  # none given: REGISTRY_TRUSTED_KEYS
    )


def complete_names(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Model names starting with what was typed (see `registry.completion`)."""
    from registry import completion

    return [CompletionItem(n) for n in completion.names(ctx.find_root().params, incomplete)]


def complete_refs(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Model names, then `NAME@vN` and `NAME@ALIAS` once an `@` is typed."""
    from registry import completion

    found = completion.references(ctx.find_root().params, incomplete)
    return [CompletionItem(ref) for ref in found]


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(command)


def trusted_key_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--trusted-key` after a command: the keys it adds to the registry's own."""
    help = "Read only versions signed by this public key or another trusted one (repeatable)."
    return click.option(*TRUSTED_KEY, **TRUSTED_KEY_TYPE, help=help)(command)


def key_values(
    what: str,
) -> Callable[[click.Context, click.Parameter, Sequence[str]], dict[str, Any]]:
    """A click callback turning repeated K=V options into a dict."""

    def parse(
        _ctx: click.Context, _param: click.Parameter, values: Sequence[str]
    ) -> dict[str, Any]:
        pairs = {}
        for text in values:
            try:
                key, value = refs.parse_key_value(text, what)
            except RegistryError as exc:
                raise click.BadParameter(str(exc)) from None
            if what == "--arg" and not key.isidentifier():  # a builder's keyword argument
                raise click.BadParameter(f"{text!r}: KEY must be a Python identifier")
            pairs[key] = _json_or_string(value) if what == "--arg" else value
        return pairs

    return parse


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True))
@click.option(
    "--arch",
    help="torchvision model name (vgg16, resnet50, ...) or package.module:callable "
    "[required for a file; a transformers folder's comes from its config.json].",
)
@click.option("--name", help="Model name [default: the arch name].")
@click.option(
    "--arg",
    "arch_args",
    multiple=True,
    callback=key_values("--arg"),
    metavar="K=V",
    help="Keyword argument for the arch builder, e.g. num_classes=10 (JSON values).",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    callback=key_values("--tag"),
    metavar="K=V",
    help="Tag to set on the version.",
)
@click.option("--alias", "aliases", multiple=True, help="Alias to point at the version.")
@click.option("--description", default="", help="Free text stored with the version.")
@click.option("--key", help="Entry of a training checkpoint dict that holds the state_dict.")
@click.option(
    "--strip-prefix",
    metavar="PREFIX",
    help="Take the weights under this key prefix, e.g. model. of a Lightning checkpoint "
    "[default: found when exactly one prefix fits].",
)
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Read a whole-model pickle (torch.save(model)); this runs code from the file.",
)
@click.option(
    "--parent", metavar="REF", help="The version this one was fine-tuned or derived from."
)
@click.option(
    "--check-input",
    metavar="SHAPE",
    help="Record the model's output on a seeded input of this shape, e.g. 1,3,224,224, "
    "for `registry check`.",
)
@click.option(
    "--sign",
    type=click.Path(dir_okay=False),
    metavar="KEY",
    help="Sign the version with this private key (from `registry keys generate`).",
)
@json_option
@click.pass_obj
def push(reg: Registry, /, file: str, as_json: bool, **options: Any) -> None:
    """Register checkpoint FILE (or folder) as the model's next version; print NAME@vN sha256:<hex>.

    FILE is a torch.save'd state_dict or training checkpoint, a PyTorch Lightning
    .ckpt, or a .safetensors file. A folder is pushed whole: a transformers
    save_pretrained folder, sharded weights with an index, a PEFT adapter
    (with --parent), a torch.distributed.checkpoint folder, or any other files.
    """
    if options["arch"] is None and not os.path.isdir(file):
        raise click.UsageError("Missing option '--arch' (a file needs its model's builder).")
    version = reg.push(file, **options)  # each option is named as Registry.push's keyword
    if not version.is_new:
        click.echo(f"{version.ref} already holds these bytes; no new version made", err=True)
    _print(version.to_json() if as_json else f"{version.ref} sha256:{version.sha256}", as_json)


@cli.command()
@click.argument("ref", shell_complete=complete_refs)
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    help="Destination file or folder [default: ./NAME-vN.<ext>; a folder version: ./NAME-vN/].",
)
@click.option("--no-verify", is_flag=True, help="Skip checking the bytes against their SHA-256.")
@click.option(
    "--format",
    "format_",
    type=click.Choice(["original", "safetensors"]),
    default="original",
    show_default=True,
    help="original: the pushed file, bit-exact; safetensors: the weights converted.",
)
@click.option(
    "--with-signature",
    is_flag=True,
    help="Also write the version's model signing signature beside it, NAME-vN.sig.",
)
@trusted_key_option
@json_option
@click.pass_obj
def pull(
    reg: Registry,
    ref: str,
    output: str | None,
    no_verify: bool,
    format_: str,
    with_signature: bool,
    trusted_keys: tuple[str, ...],
    as_json: bool,
) -> None:
    """Write REF's checkpoint file (or folder), bit-exact and verified; print its path.

    -o - writes the file to stdout (a folder version's files as a tar).
    """
    version = reg.get(ref)  # resolved once: the file and the JSON name the same version
    if output == "-":
        if format_ != "original" or with_signature:
            raise click.UsageError("-o - writes the original file alone; pull to a file instead")
        verify = not no_verify
        reg.write_to(version.ref, sys.stdout.buffer, verify=verify, trusted_keys=trusted_keys)
        return
    path = reg.pull(
        version.ref,
        output,
        verify=not no_verify,
        format=format_,
        trusted_keys=trusted_keys,
        with_signature=with_signature,
    )
    found: dict[str, Any] = {"path": str(path), "ref": version.ref, "format": format_}
    if with_signature:
        from registry.signatures import signature_path

        found["signature"] = str(signature_path(path, version.files is not None))
    if as_json:
        _print(found, True)
        return
    click.echo(path)
    if with_signature:
        click.echo(found["signature"])


def _input_shape(ctx: click.Context, param: click.Parameter, text: str | None) -> Any:
    """--input-shape as a shape, by the rule (and size cap) of behaviour checks."""
    from registry import behaviour

    try:
        return behaviour.parse_shape(text, "input shape") if text is not None else None
    except RegistryError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.argument("ref", shell_complete=complete_refs)
@click.option(
    "--input-shape",
    callback=_input_shape,
    help="Run one forward pass on zeros of this shape, e.g. 1,3,224,224.",
)
@click.option("--device", help="Device to load onto, e.g. cpu or cuda [default: cpu].")
@click.option("--no-verify", is_flag=True, help="Skip checking the bytes against their SHA-256.")
@click.option(
    "--trust-arch",
    is_flag=True,
    help="Call the recorded builder even if it is a function, not an nn.Module class.",
)
@click.option("--check", is_flag=True, help="Rerun the behaviour check recorded at push.")
@click.option("--merge", is_flag=True, help="For a PEFT adapter: merge it into its base model.")
@trusted_key_option
@json_option
@click.pass_obj
def load(
    reg: Registry,
    ref: str,
    input_shape: tuple[int, ...] | None,
    device: str | None,
    no_verify: bool,
    trust_arch: bool,
    check: bool,
    merge: bool,
    trusted_keys: tuple[str, ...],
    as_json: bool,
) -> None:
    """Rebuild REF's model with its weights in eval mode and report on it."""
    from registry import behaviour
    from registry.architectures import count_params

    version = reg.get(ref)
    model = reg.load(
        version.ref,
        device=device,
        verify=not no_verify,
        trust_arch=trust_arch,
        check=check,
        merge=merge,
        trusted_keys=trusted_keys,
    )
    result: dict[str, Any] = {
        "ref": version.ref,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "num_params": count_params(model),
        "training": model.training,
    }
    if check:
        result["behaviour"] = "matches"  # else reg.load raised
    if input_shape is not None:
        result["output_shape"] = behaviour.output_shapes(model, input_shape, device)
    if as_json:
        _print(result, True)
        return
    click.echo(f"{version.ref}: {result['class']}, {result['num_params']:,} parameters, eval mode")
    if check:
        click.echo("behaviour matches the check recorded at push")
    if input_shape is not None:
        click.echo(f"output shape: {result['output_shape']}")


@cli.command(name="ls")
@click.argument("name", required=False, shell_complete=complete_names)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    callback=key_values("--tag"),
    metavar="K=V",
    help="Only versions with this tag (with NAME).",
)
@click.option("--arch", help="Only versions of this arch (with NAME).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many versions (with NAME).")
@json_option
@click.pass_obj
def ls(
    reg: Registry,
    name: str | None,
    tags: dict[str, Any],
    arch: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List models, or with NAME the versions of one model, newest first."""
    if name is None:
        if tags or arch or limit:
            raise click.UsageError("--tag, --arch and --limit filter the versions of one NAME")
        summaries = reg.models()
        if as_json:
            _print([m.to_json() for m in summaries], True)
        else:
            _table(
                ["NAME", "VERSIONS", "LATEST", "SIZE", "UPDATED", "ALIASES"],
                [_summary_row(m) for m in summaries],
            )
        return
    versions = reg.versions(name, arch=arch, tags=tags, limit=limit)
    if as_json:
        _print([v.to_json() for v in versions], True)
    else:
        _table(
            ["REF", "SHA256", "SIZE", "ARCH", "CREATED", "ALIASES", "TAGS"],
            [_version_row(v) for v in versions],
        )


@cli.command()
@click.argument("ref", shell_complete=complete_refs)
@click.option("--tensors", is_flag=True, help="Also list every tensor: name, dtype, shape.")
@json_option
@click.pass_obj
def show(reg: Registry, ref: str, tensors: bool, as_json: bool) -> None:
    """Print every recorded field of REF (a deleted parent is marked so)."""
    version = reg.get(ref)
    data = version.to_json()
    listed = reg.tensors(version.ref) if tensors else []
    if as_json:
        if tensors:
            data["tensors"] = [t.to_json() for t in listed]
        _print(data, True)
        return
    if version.parent is not None and not _exists(reg, version.parent):
        data["parent"] = f"{version.parent} (deleted)"
    del data["files"]  # a folder's are listed below, one per line
    del data["signature"]  # pages of base64: `signed_by` names the key, --json has it whole
    width = max(map(len, data))
    for key, value in data.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        click.echo(f"{key + ':':<{width + 1}} {text}")
    if version.files is not None:
        click.echo(f"files: {len(version.files)}")
        _table(
            ["  PATH", "SIZE", "SHA256"],
            [[f"  {f.path}", _human_size(f.size), f.sha256[:12]] for f in version.files],
        )
    if tensors:
        click.echo(f"tensors: {len(listed)}")
        _table(
            ["  NAME", "DTYPE", "SHAPE"],
            [[f"  {t.name}", t.dtype, "x".join(map(str, t.shape)) or "scalar"] for t in listed],
        )


@cli.command()
@click.argument("ref", shell_complete=complete_refs)
@json_option
@click.pass_obj
def lineage(reg: Registry, ref: str, as_json: bool) -> None:
    """Print REF's ancestors back to the root and its descendants as an indented tree."""
    found = reg.lineage(ref)
    if as_json:
        click.echo(jsontext.dumps(found.to_json()))  # nests thousands deep
        return
    for depth, ancestor in enumerate(reversed(found.ancestors)):
        click.echo(f"{_indent(depth)}{ancestor.ref}{' (deleted)' if ancestor.deleted else ''}")
    base = len(found.ancestors)
    click.echo(f"{_indent(base)}{found.ref}  <-")
    for child in found.descendants:
        for depth, node in child.walk():
            mark = " (deleted)" if node.deleted else ""
            click.echo(f"{_indent(base + 1 + depth)}{node.ref}{mark}")


def _indent(depth: int) -> str:
    """Two spaces a level; past MAX_INDENT levels the depth is written, not drawn."""
    if depth <= MAX_INDENT:
        return "  " * depth
    return "  " * MAX_INDENT + f"[{depth}] "


@cli.command()
@click.argument("a", shell_complete=complete_refs)
@click.argument("b", required=False, shell_complete=complete_refs)
@json_option
@click.pass_obj
def diff(reg: Registry, a: str, b: str | None, as_json: bool) -> None:
    """Compare versions A (older) and B (newer) tensor by tensor; with A alone, its parent and A.

    Tensors with equal recorded digests are identical without reading the
    blobs; the others are read one at a time and measured (max_abs, rel_l2).
    """
    from registry.diffing import grouped

    found = reg.diff(a, b)
    if as_json:
        _print(found.to_json(), True)
        return
    click.echo(f"diff {found.a} {found.b}")
    _table([], [[f"  {name}", status, detail] for name, status, detail in grouped(found)])
    click.echo(", ".join(f"{n} {status}" for status, n in found.summary.items()))


@cli.command()
@click.argument("ref", shell_complete=complete_refs)
@click.option(
    "--trust-arch",
    is_flag=True,
    help="Call the recorded builder even if it is a function, not an nn.Module class.",
)
@json_option
@click.pass_obj
def check(reg: Registry, ref: str, trust_arch: bool, as_json: bool) -> None:
    """Rebuild REF and rerun the check input recorded at push; exit 1 if the output differs."""
    from registry.errors import BehaviourMismatchError

    result = reg.check(ref, trust_arch=trust_arch)
    if as_json:
        _print(result.to_json(), True)
    if not result.matches:
        raise BehaviourMismatchError(result.ref, result.max_abs_diff, result.detail)
    if not as_json:
        click.echo(f"{result.ref}: behaviour matches (max abs diff {result.max_abs_diff:.3g})")


@cli.command()
@click.argument("ref_or_name", shell_complete=complete_refs)
@click.argument("alias")
@click.option("--delete", is_flag=True, help="Remove ALIAS from model REF_OR_NAME instead.")
@json_option
@click.pass_obj
def alias(reg: Registry, ref_or_name: str, alias: str, delete: bool, as_json: bool) -> None:
    """Point ALIAS at version REF (creating or moving it), or remove it with --delete NAME ALIAS."""
    if delete:
        reg.delete_alias(ref_or_name, alias)
        removed = {"name": ref_or_name, "alias": alias, "deleted": True}
        _print(removed if as_json else f"removed {ref_or_name}@{alias}", as_json)
        return
    version = reg.set_alias(ref_or_name, alias)
    _print(version.to_json() if as_json else f"{version.name}@{alias} -> {version.ref}", as_json)


@cli.command()
@click.argument("ref", shell_complete=complete_refs)
@click.argument("tags", nargs=-1, callback=key_values("tag"), metavar="K=V...")
@click.option("--delete", "delete_keys", multiple=True, metavar="K", help="Remove tag K.")
@json_option
@click.pass_obj
def tag(
    reg: Registry, ref: str, tags: dict[str, Any], delete_keys: tuple[str, ...], as_json: bool
) -> None:
    """Set tags K=V on version REF, or remove them with --delete K: all of them, or none."""
    if not tags and not delete_keys:
        raise click.UsageError("give K=V tags to set or --delete K")
    version = reg.set_tags(ref, tags, delete=delete_keys)
    shown = " ".join(f"{k}={v}" for k, v in version.tags.items()) or "(no tags)"
    _print(version.to_json() if as_json else f"{version.ref} {shown}", as_json)


@cli.command()
@click.argument("ref", shell_complete=complete_refs)
@json_option
@click.pass_obj
def rm(reg: Registry, ref: str, as_json: bool) -> None:
    """Delete version REF (its number is never reused; `registry gc` reclaims the blob)."""
    deleted = reg.delete(ref)
    _print(deleted.to_json() if as_json else f"deleted {deleted.ref}", as_json)


@cli.command()
@click.argument("ref", required=False, shell_complete=complete_refs)
@click.option(
    "--signature",
    is_flag=True,
    help="Check signatures instead, reading no file: exit 1 unless each is valid (by a "
    "trusted key, where any are given).",
)
@trusted_key_option
@json_option
@click.pass_obj
def verify(
    reg: Registry, ref: str | None, signature: bool, trusted_keys: tuple[str, ...], as_json: bool
) -> None:
    """Re-hash the blobs of REF (or of every version); exit 1 if any is missing or corrupt."""
    if signature:
        from registry.cli_signing import verify_signatures

        verify_signatures(reg, ref, trusted_keys, as_json)
        return
    if trusted_keys:
        raise click.UsageError("--trusted-key goes with --signature")
    problems = reg.verify(ref)
    if as_json:
        _print([p.to_json() for p in problems], True)
    else:
        for p in problems:
            actual = f"sha256:{p.actual}" if p.actual else "nothing"
            click.echo(f"{p.ref}: {p.status}: expected sha256:{p.expected}, found {actual}")
        if not problems:
            click.echo(f"{'all blobs' if ref is None else ref} verified")
    if problems:
        sys.exit(1)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@json_option
@click.pass_obj
def gc(reg: Registry, dry_run: bool, as_json: bool) -> None:
    """Delete blobs that no version references, and temp files of interrupted writes."""
    result = reg.gc(dry_run=dry_run)
    if as_json:
        _print({**result.to_json(), "dry_run": dry_run}, True)
        return
    verb = "would reclaim" if dry_run else "reclaimed"
    click.echo(
        f"{verb} {result.blobs} blobs and {result.temp_files} temp files, "
        f"{_human_size(result.bytes)}"
    )


@cli.command()
@click.argument("refs", nargs=-1, metavar="REF...", shell_complete=complete_refs)
@click.option("--all", "everything", is_flag=True, help="Export every version.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Bundle file to write, or - for standard output.",
)
@json_option
@click.pass_obj
def export(
    reg: Registry, refs: tuple[str, ...], everything: bool, output: str, as_json: bool
) -> None:
    """Write versions REF... (or --all) and their checkpoints to a bundle (a tar file)."""
    if bool(refs) == everything:
        raise click.UsageError("give REF... or --all, not both or neither")
    to_stdout = output == "-"
    destination = sys.stdout.buffer if to_stdout else output
    versions = reg.export_bundle(None if everything else list(refs), destination)
    if to_stdout:  # stdout holds the bundle: say what went into it on stderr
        click.echo(f"exported {len(versions)} versions", err=True)
    elif as_json:
        _print([v.to_json() for v in versions], True)
    else:
        click.echo(f"exported {len(versions)} versions to {output}")


@cli.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@trusted_key_option
@json_option
@click.pass_obj
def import_(reg: Registry, file: str, trusted_keys: tuple[str, ...], as_json: bool) -> None:
    """Record the versions of bundle FILE (- for standard input); print NAME@vN for each."""
    source = sys.stdin.buffer if file == "-" else file
    versions = reg.import_bundle(source, trusted_keys=trusted_keys)
    if as_json:
        _print([{**v.to_json(), "imported": v.is_new} for v in versions], True)
        return
    for v in versions:
        click.echo(v.ref if v.is_new else f"{v.ref} (exists)")


@cli.group()
def cache() -> None:
    """The local cache of a remote (s3://) store's blobs."""


@cache.command()
@click.option(
    "--max-size",
    default="0",
    show_default=True,
    help="Keep at most this much, e.g. 10GB or 500MB; the least recently used go first.",
)
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@json_option
@click.pass_obj
def prune(reg: Registry, max_size: str, dry_run: bool, as_json: bool) -> None:
    """Remove cached blobs, least recently used first, until the cache is at most --max-size.

    Temp files left by fills whose process died are removed too.
    """
    result = reg.prune_cache(_parse_size(max_size), dry_run=dry_run)
    if as_json:
        fields = {"blobs": result.blobs, "temp_files": result.temp_files, "bytes": result.bytes}
        _print({**fields, "dry_run": dry_run}, True)
        return
    verb = "would remove" if dry_run else "removed"
    temps = f", {result.temp_files} dead temp files" if result.temp_files else ""
    click.echo(f"{verb} {result.blobs} cached blobs{temps}, {_human_size(result.bytes)}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
    help="Port to listen on; 0 picks a free one.",
)  # fmt: skip
@click.option(
    "--token",
    envvar="REGISTRY_SERVE_TOKEN",
    help="A read token every request may carry [env REGISTRY_SERVE_TOKEN].",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
    show_default=True, help="How much the server logs (each request at info; never a token).",
)  # fmt: skip
@click.pass_obj
def serve(reg: Registry, host: str, port: int, token: str | None, log_level: str) -> None:
    """Serve a web page and HTTP API over this registry; print the URL first.

    Tokens made with `registry token create` may read, write or administer
    it through the API; --token is one read token. Each server also delivers
    the catalog's webhook events.
    """
    from registry import server

    server.serve(reg, host, port, token, log_level)


@cli.group()
def db() -> None:
    """Catalog schema: run migrations, print the revision."""


@db.command()
@json_option
@click.pass_obj
def upgrade(reg: Registry, as_json: bool) -> None:
    """Migrate the catalog to the newest schema."""
    revision = reg.upgrade()
    if as_json:
        _print({"database_url": reg.safe_database_url, "revision": revision}, True)
    else:
        click.echo(f"catalog {reg.safe_database_url} at revision {revision}")


@db.command()
@json_option
@click.pass_obj
def current(reg: Registry, as_json: bool) -> None:
    """Print the catalog's schema revision ("none" for an empty database)."""
    revision = reg.schema_revision()
    _print({"revision": revision} if as_json else revision or "none", as_json)


def main() -> None:
    cli(prog_name="registry")


def _print(data: Any, as_json: bool) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False) if as_json else data)


def _exists(reg: Registry, ref: str) -> bool:
    try:
        reg.get(ref)
    except NotFoundError:
        return False
    return True


def _json_or_string(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_size(text: str) -> int:
    """`10GB`, `500MB`, `1.5G`, `1000`: bytes, in units of 1000 as `ls` prints sizes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if match is None:
        raise click.BadParameter(f"{text!r}: expected a size such as 10GB or 500MB")
    return int(float(match[1]) * 1000 ** "_KMGT".index(match[2]))


def _summary_row(m: ModelSummary) -> list[str]:
    latest = f"v{m.latest_version}" if m.latest_version else "-"
    return [
        m.name,
        str(m.num_versions),
        latest,
        _human_size(m.size),
        _when(m.updated_at),
        ",".join(m.aliases),
    ]


def _version_row(v: ModelVersion) -> list[str]:
    return [
        v.ref,
        v.sha256[:12],
        _human_size(v.size),
        v.arch,
        _when(v.created_at),
        ",".join(v.aliases),
        ",".join(f"{k}={value}" for k, value in v.tags.items()),
    ]


def _table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell; no header line when `headers` is empty."""
    lines = [headers, *rows] if headers else rows
    if not lines:
        return
    widths = [max(len(str(c)) for c in column) for column in zip(*lines, strict=True)]
    for row in lines:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _human_size(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    scaled, units = size / 1000, ["kB", "MB", "GB"]
    while scaled >= 1000 and len(units) > 1:
        scaled, units = scaled / 1000, units[1:]
    return f"{scaled:.1f} {units[0]}"


# Registered by importing them: describe, log, token, hook; keys.
from registry import cli_signing, cli_team  # noqa: E402, F401
