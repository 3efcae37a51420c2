"""The web page: models, a model's versions, one version, a diff (templates/, static/).

Rendered with Jinja2, autoescaped; everything it needs is served by the
registry itself. A caller sees only the models its token reaches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from registry import refs
from registry.errors import NotFoundError
from registry.server.access import caller
from registry.server.answers import checked_ref, quote_ref, registry_errors

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from registry.api import Registry

MANIFEST_OPEN_UP_TO = 40  # tensors listed open; a longer manifest starts collapsed


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
        principal = caller(request).principal
        models = [
            m for m in self.reg.models() if query.lower() in m.name and principal.reaches(m.name)
        ]
        return self._render(request, "models.html", models=models, query=query)

    @registry_errors
    def model(self, request: Request) -> Response:
        name = refs.validate_name(request.path_params["name"])
        caller(request).require("read", name)
        return self._render(request, "model.html", name=name, versions=self.reg.versions(name))

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
        return self._render(
            request,
            "version.html",
            version=version,
            fields=fields,
            tensors=tensors,
            collapsed=len(tensors) > MANIFEST_OPEN_UP_TO,
            lineage=lineage,
            ancestors=list(reversed(lineage.ancestors)),
            descendants=descendants,
            files_collapsed=len(version.files or ()) > MANIFEST_OPEN_UP_TO,
            diff=parent_diff,
            parent_problem=parent_problem,
        )

    @registry_errors
    def diff(self, request: Request) -> Response:
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        for each in (a, b):
            if each:
                caller(request).require("read", refs.parse_ref(checked_ref(each)).name)
        found = self.reg.diff(checked_ref(a), checked_ref(b) if b else None)
        return self._render(request, "diff.html", diff=found)
