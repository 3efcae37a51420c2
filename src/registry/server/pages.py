"""The web page: models, a model's versions, one version, a diff, and the forms that change
a version (templates/, static/).

    GET  /?q=TEXT&tag=KEY=VALUE&page=N      models, by name and by a tag one of their versions has
    GET  /models/NAME?tag=KEY=VALUE&page=N  a model's versions, newest first
    GET  /refs/REF                          one version; its forms for a write token's cookie
    POST /refs/REF/aliases                  alias=A: point A at REF, made or moved
    POST /refs/REF/aliases/delete           alias=A: remove A from REF's model
    POST /refs/REF/tags                     key=K, value=V: set tag K on REF
    POST /refs/REF/tags/delete              key=K: remove tag K from REF
    POST /refs/REF/description              description=TEXT: REF's description (markdown)

Rendered with Jinja2, autoescaped; everything it needs is served by the
registry itself. A caller sees only the models its token reaches; lists
come PAGE_SIZE to a page. A description is markdown: markdown-it renders
it with raw HTML off, so HTML in it shows as text, and nh3 cleans what
markdown made.

The forms are the login cookie's way to write (the JSON API takes only the
header), and each of them is guarded against other sites, which a browser
would send the cookie for: a POST whose Origin (or, lacking one, Referer)
names another host than its Host is refused, and so is one whose `csrf`
field is not `csrf_token(the cookie's token)`, an HMAC a page of another
site cannot compute, as it can read neither the HttpOnly cookie nor this
page. Derived from the token, it needs no state: every server behind one
address checks it alike. A refused form changes nothing (403); a change
runs as the token's name (`audit.acting_as`) and redirects (303) back to
the version's page.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from registry import audit, refs
from registry.errors import AccessDeniedError, InvalidReferenceError, NotFoundError, RegistryError
from registry.server.access import COOKIE, Caller, caller
from registry.server.answers import checked_ref, error, quote_ref, registry_error, registry_errors

if TYPE_CHECKING:
    from markupsafe import Markup
    from starlette.requests import Request
    from starlette.responses import Response

    from registry.api import Registry
    from registry.records import ModelVersion

T = TypeVar("T")
Form = dict[str, str]

MANIFEST_OPEN_UP_TO = 40  # tensors listed open; a longer manifest starts collapsed
PAGE_SIZE = 50  # models or versions a page
MAX_FORM = 1 << 20  # bytes of a form: a 64 Ki-character description, percent-encoded
MAX_FIELDS = 8  # fields of a form: each has at most three, and `csrf`
CSRF_MESSAGE = b"registry-csrf"
_PAGE_NUMBER = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class Pager:
    """Which page of a list is shown, of how many, and links to its neighbours that keep the
    request's other query parameters."""

    number: int
    count: int
    total: int
    previous: str | None
    next: str | None


class Pages:
    def __init__(self, reg: Registry, templates: Any) -> None:
        self.reg, self.templates = reg, templates

    def _render(self, request: Request, template: str, **context: Any) -> Response:
        return self.templates.TemplateResponse(  # type: ignore[no-any-return]
            request, template, {"quote": quote_ref, **context}
        )

    @registry_errors
    def models(self, request: Request) -> Response:
        query = request.query_params.get("q", "").strip()
        tag, tags = tag_filter(request)
        principal = caller(request).principal
        models = [
            m for m in self.reg.models() if query.lower() in m.name and principal.reaches(m.name)
        ]
        if tags:
            tagged = {v.name for v in self.reg.search(tags=tags)}
            models = [m for m in models if m.name in tagged]
        shown, pager = paged(request, models)
        return self._render(request, "models.html", models=shown, pager=pager, query=query, tag=tag)

    @registry_errors
    def model(self, request: Request) -> Response:
        name = refs.validate_name(request.path_params["name"])
        caller(request).require("read", name)
        tag, tags = tag_filter(request)
        shown, pager = paged(request, self.reg.versions(name, tags=tags or None))
        return self._render(request, "model.html", name=name, versions=shown, pager=pager, tag=tag)

    @registry_errors
    def version(self, request: Request) -> Response:
        ref = checked_ref(request.path_params["ref"])
        caller(request).require("read", refs.parse_ref(ref).name)
        version = self.reg.get(ref)
        tensors = self.reg.tensors(version.ref)
        lineage = self.reg.lineage(version.ref)
        descendants = [pair for child in lineage.descendants for pair in child.walk()]
        parent_diff = parent_problem = None
        if version.parent is None:
            parent_problem = "no parent"
        else:
            try:
                parent_diff = self.reg.diff(version.ref)
            except NotFoundError:
                parent_problem = f"its parent {version.parent} was deleted"
        fields = version.to_json()
        del fields["signature"]  # pages of base64; `signed_by` names the key
        return self._render(
            request,
            "version.html",
            version=version,
            fields=fields,
            description=rendered(version.description),
            forms=self._forms(request, version.name),
            tensors=tensors,
            collapsed=len(tensors) > MANIFEST_OPEN_UP_TO,
            lineage=lineage,
            ancestors=list(reversed(lineage.ancestors)),
            descendants=descendants,
            files_collapsed=len(version.files or ()) > MANIFEST_OPEN_UP_TO,
            diff=parent_diff,
            parent_problem=parent_problem,
        )

    def _forms(self, request: Request, name: str) -> dict[str, Any] | None:
        """What the version page's forms need, shown only to a caller who may send them: a
        write token reaching model `name`, in the login cookie; None for anyone else."""
        who, token = caller(request), request.cookies.get(COOKIE)
        if not who.by_cookie or token is None:
            return None
        try:
            who.require("write", name)
        except AccessDeniedError:
            return None
        summary = next((m for m in self.reg.models() if m.name == name), None)
        pairs = [each.partition("=") for each in summary.aliases] if summary else []
        aliases = [(alias, f"{name}@{number}") for alias, _, number in pairs]
        return {"csrf": csrf_token(token), "aliases": aliases}

    @registry_errors
    def diff(self, request: Request) -> Response:
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        for each in (a, b):
            if each:
                caller(request).require("read", refs.parse_ref(checked_ref(each)).name)
        found = self.reg.diff(checked_ref(a), checked_ref(b) if b else None)
        return self._render(request, "diff.html", diff=found)

    # -- the forms ---------------------------------------------------------------------------

    async def set_alias(self, request: Request) -> Response:
        def change(ref: str, form: Form) -> ModelVersion:
            return self.reg.set_alias(ref, field(form, "alias"))

        return await self._change(request, "move the aliases of", change)

    async def delete_alias(self, request: Request) -> Response:
        def change(ref: str, form: Form) -> ModelVersion:
            version = self.reg.get(ref)  # first: `ref` may name the alias deleted
            self.reg.delete_alias(version.name, field(form, "alias"))
            return version

        return await self._change(request, "delete the aliases of", change)

    async def set_tag(self, request: Request) -> Response:
        def change(ref: str, form: Form) -> ModelVersion:
            return self.reg.set_tags(ref, {field(form, "key"): field(form, "value")})

        return await self._change(request, "tag", change)

    async def delete_tag(self, request: Request) -> Response:
        def change(ref: str, form: Form) -> ModelVersion:
            return self.reg.set_tags(ref, {}, delete=[field(form, "key")])

        return await self._change(request, "untag", change)

    async def describe(self, request: Request) -> Response:
        def change(ref: str, form: Form) -> ModelVersion:
            # A browser sends a textarea's line breaks as CRLF.
            return self.reg.describe(ref, field(form, "description").replace("\r\n", "\n"))

        return await self._change(request, "describe", change)

    async def _change(
        self, request: Request, action: str, change: Callable[[str, Form], ModelVersion]
    ) -> Response:
        """Check that this form came from this registry's page and that its caller may do
        `action` to the model; make the change as the caller; back to the version's page."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import RedirectResponse

        try:
            same_origin(request)
            form = await read_form(request)
            who = form_caller(request, form)
            ref = checked_ref(request.path_params["ref"])
            who.require("write", refs.parse_ref(ref).name, action)

            def run() -> ModelVersion:
                with audit.acting_as(who.principal.name):
                    return change(ref, form)

            version = await run_in_threadpool(run)
        except RegistryError as exc:
            return registry_error(request, exc)
        except ValueError as exc:  # a form this page does not send
            return error(request, 400, f"invalid form: {exc}", "InvalidReferenceError")
        return RedirectResponse(f"/refs/{quote_ref(version.ref)}", status_code=303)


def csrf_token(token: str) -> str:
    """The `csrf` field of every form the holder of `token` is shown: HMAC-SHA256 of a fixed
    message keyed by the token itself (not by its SHA-256, which the catalog keeps)."""
    key = token.encode("utf-8", "surrogateescape")
    return hmac.new(key, CSRF_MESSAGE, hashlib.sha256).hexdigest()


def same_origin(request: Request) -> None:
    """Refuse (403) a POST that names, in Origin or else Referer, a host other than its
    Host: a form of another site, of another port of this one, or of an opaque origin
    (`null`). Host and port are compared, not the scheme: a proxy in front may speak https
    to the browser and http here (it must pass the Host header on)."""
    named = request.headers.get("origin", request.headers.get("referer"))
    if named is None:
        return
    host = request.headers.get("host", "")
    found = urlsplit(named).netloc
    if not host or found.lower() != host.lower():
        raise AccessDeniedError(
            f"this form was sent from {found or 'an unnamed origin'}, not from {host}: "
            "only the registry's own page may change it"
        )


async def read_form(request: Request) -> Form:
    """The fields of the page's form (urlencoded), at most MAX_FORM bytes of them."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ValueError("the page's forms are sent as application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise ValueError(f"a form is at most {MAX_FORM >> 10} KiB")
    pairs = parse_qsl(
        body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FIELDS
    )
    return dict(pairs)


def form_caller(request: Request, form: Form) -> Caller:
    """The caller, logged in by the cookie, if the form carries the cookie's `csrf`; else
    AccessDeniedError (401 without a login, 403 with a missing or wrong `csrf`)."""
    who, token = caller(request), request.cookies.get(COOKIE)
    if not who.by_cookie or token is None:
        raise AccessDeniedError(
            "the page's forms need a login: open /?token=TOKEN with a write token", 401
        )
    sent = form.get("csrf", "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(sent, csrf_token(token).encode("ascii")):
        raise AccessDeniedError(
            "the form's CSRF token is missing or wrong: reload the page and send it again"
        )
    return who


def field(form: Form, name: str) -> str:
    try:
        return form[name]
    except KeyError:
        raise ValueError(f"it lacks the field {name!r}") from None


# -- what the lists are asked for ------------------------------------------------------------


def tag_filter(request: Request) -> tuple[str, dict[str, str]]:
    """`?tag=KEY=VALUE` as typed, and as the tags to search for (none when it is empty)."""
    typed = request.query_params.get("tag", "").strip()
    if not typed:
        return "", {}
    key, found, value = typed.partition("=")
    if not found:
        raise InvalidReferenceError(typed, "tag filter", "give KEY=VALUE, such as stage=prod")
    key = refs.validate_tag_key(key.strip())
    return typed, {key: refs.validate_tag_value(key, value.strip())}


def paged(request: Request, items: Sequence[T]) -> tuple[Sequence[T], Pager]:
    """The `?page=N` (from 1) of `items`, PAGE_SIZE a page, and its Pager; a page number
    past the last is refused (400), except page 1 of an empty list."""
    count = max(1, -(-len(items) // PAGE_SIZE))
    asked = request.query_params.get("page", "1")
    if not _PAGE_NUMBER.fullmatch(asked) or not 1 <= int(asked) <= count:
        rule = f"give a page number from 1 to {count}"
        raise InvalidReferenceError(asked, "page", rule)
    number = int(asked)
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "page"]

    def link(to: int) -> str:
        query = urlencode(kept + ([("page", str(to))] if to > 1 else []))
        return quote_ref(request.url.path) + (f"?{query}" if query else "")

    start = (number - 1) * PAGE_SIZE
    pager = Pager(
        number,
        count,
        len(items),
        link(number - 1) if number > 1 else None,
        link(number + 1) if number < count else None,
    )
    return items[start : start + PAGE_SIZE], pager


def rendered(markdown: str) -> Markup:
    """A description's markdown as HTML: raw HTML in it stays text (markdown-it's `html`
    off), and nh3 cleans what markdown made of anything that runs. Images are dropped:
    one would make every reader's browser fetch from another host."""
    import nh3
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    html = MarkdownIt("commonmark", {"html": False}).render(markdown)
    tags = set(nh3.ALLOWED_TAGS) - {"img"}
    return Markup(nh3.clean(html, tags=tags, link_rel="noopener noreferrer nofollow"))
