"""`registry serve`: the JSON API over HTTP, from a real server in a subprocess on 127.0.0.1:0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import TINY, Server, tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import Registry
from registry.cli import cli

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

TOKEN = "t0ken-never-shown"
PREFIXES = ["/api/refs/", "/api/models/", "/api/files/", "/api/diff?a=", "/refs/", "/models/",
            "/diff?a=", "/"]  # fmt: skip


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[tuple[Server, Path]]:
    """A home with a base model, a fine-tune of it, a namespaced model, served without a token."""
    home = tmp_path_factory.mktemp("served")
    reg = Registry(home=home)
    model = tiny(0)
    reg.push(model, name="base", tags={"xss": "<script>alert(1)</script>"}, **TINY)
    with torch.no_grad():
        model.head.weight.mul_(2)
    reg.push(model, name="base", aliases=["production"], parent="base@v1", **TINY)
    reg.push(model, name="team/detector", **TINY)
    reg.push(model, name="team/tensors", **TINY)  # a name that looks like a sub-resource
    reg.close()
    server = Server(home)
    yield server, home
    server.stop()


def cli_json(home: Path, *args: str) -> object:
    result = CliRunner().invoke(cli, ["--home", str(home), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def get(server: Server, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(server.url + path, timeout=30, **kwargs)


def test_every_api_route_answers_as_the_cli_json(served: tuple[Server, Path]) -> None:
    server, home = served
    routes = {
        "/api/models": ["ls"],
        "/api/models/base": ["ls", "base"],
        "/api/models/team/detector": ["ls", "team/detector"],
        "/api/refs/base@v2": ["show", "base@v2"],
        "/api/refs/base@production": ["show", "base@production"],
        "/api/refs/team/detector@v1": ["show", "team/detector@v1"],
        "/api/refs/base@v2/lineage": ["lineage", "base@v2"],
        "/api/diff?a=base@v1&b=base@v2": ["diff", "base@v1", "base@v2"],
        "/api/diff?a=base@v2": ["diff", "base@v2"],
    }
    for path, command in routes.items():
        response = get(server, path)
        assert response.status_code == 200, (path, response.text)
        assert response.json() == cli_json(home, *command), path
    tensors = get(server, "/api/refs/base%40v1/tensors").json()
    assert tensors == cli_json(home, "show", "base@v1", "--tensors")["tensors"]  # type: ignore[index]
    assert get(server, "/api/refs/team/tensors").json()["ref"] == "team/tensors@v1"
    namespaced = get(server, "/api/refs/team/tensors/tensors").json()
    assert namespaced == cli_json(home, "show", "team/tensors", "--tensors")["tensors"]  # type: ignore[index]


def test_files_are_the_pushed_bytes_with_etag_name_and_range(
    served: tuple[Server, Path],
) -> None:
    server, home = served
    version = Registry(home=home).get("team/detector@v1")
    pushed = Registry(home=home).pull(version.ref, home.parent / "pulled.pt").read_bytes()
    response = get(server, "/api/files/team/detector@v1")
    assert response.status_code == 200
    assert response.content == pushed
    assert response.headers["etag"] == f'"{version.sha256}"'
    assert response.headers["content-disposition"] == 'attachment; filename="detector-v1.pt"'
    part = get(server, "/api/files/team/detector@v1", headers={"Range": "bytes=10-99"})
    assert (part.status_code, part.content) == (206, pushed[10:100])
    assert part.headers["content-range"] == f"bytes 10-99/{len(pushed)}"
    head = httpx.head(server.url + "/api/files/team/detector@v1")
    assert (head.status_code, head.content) == (200, b"")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/refs/nothing@v1", 404),
        ("/api/refs/base@v9", 404),
        ("/api/models/nothing", 404),
        ("/api/files/base@v9", 404),
        ("/api/refs/Bad!Name", 400),
        ("/api/refs/base@", 400),
        ("/api/diff", 400),
        ("/api/diff?a=base@v1&b=..", 400),
        ("/api/files/..%2F..%2Fetc%2Fpasswd", 400),
        ("/api/files/%2e%2e/%2e%2e/etc/passwd", 400),
        ("/api/files/base@v1%00.pt", 400),
        ("/api/refs/%2Fetc%2Fpasswd", 400),
        ("/api/nothing", 404),
    ],
)
def test_bad_requests_get_json_errors(served: tuple[Server, Path], path: str, status: int) -> None:
    response = get(served[0], path)
    assert response.status_code == status, response.text
    assert set(response.json()) <= {"error", "kind"} and "error" in response.json()


def test_other_methods_get_405(served: tuple[Server, Path]) -> None:
    for method, path in [("PATCH", "/api/refs/base@v1"), ("POST", "/api/models"),
                         ("PUT", "/api/diff"), ("DELETE", "/api/files/base@v1")]:  # fmt: skip
        response = httpx.request(method, served[0].url + path)
        assert response.status_code == 405, (method, path)
        assert response.json() == {"error": "this route does not take that method"}
        assert "GET" in response.headers["allow"]


def test_writes_without_a_token_get_401(served: tuple[Server, Path]) -> None:
    for method, path in [("POST", "/api/refs/base@v1/tags"), ("DELETE", "/api/refs/base@v1"),
                         ("PUT", "/api/models/base/aliases/x"), ("POST", "/api/push")]:  # fmt: skip
        response = httpx.request(method, served[0].url + path, json={})
        assert response.status_code == 401, (method, path)
        assert "needs a token with write scope" in response.json()["error"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
    query=st.text(max_size=30),
    prefix=st.sampled_from(PREFIXES),
)
def test_no_path_or_query_gets_a_500(
    served: tuple[Server, Path], path: str, query: str, prefix: str
) -> None:
    from urllib.parse import quote

    url = served[0].url + prefix + quote(path, safe="/@%?&=") + "&q=" + quote(query)
    response = httpx.get(url, timeout=30)
    assert response.status_code < 500 or response.status_code in (502, 503), url
    assert response.status_code != 500
    assert "Traceback" not in response.text


def test_a_tampered_blob_is_not_sent(tmp_path: Path, tiny_model) -> None:
    reg = Registry(home=tmp_path / "home")
    version = reg.push(tiny_model, **TINY)
    blob = reg.store.path(version.sha256)  # type: ignore[attr-defined]
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    server = Server(tmp_path / "home")
    try:
        response = get(server, f"/api/files/{version.ref}")
        assert response.status_code == 502
        assert "does not match" in response.json()["error"] or "hash" in response.json()["error"]
        assert bytes(data) not in response.content
    finally:
        server.stop()


def test_a_token_guards_every_request_and_is_never_shown(tmp_path: Path, tiny_model) -> None:
    Registry(home=tmp_path / "home").push(tiny_model, **TINY)
    server = Server(tmp_path / "home", "--token", TOKEN)
    try:
        assert get(server, "/api/models").status_code == 401
        wrong = get(server, "/api/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and set(wrong.json()) <= {"error", "kind"}
        right = get(server, "/api/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200 and right.json()[0]["name"] == "tinynet"
        with httpx.Client(base_url=server.url, follow_redirects=True) as browser:
            login = browser.get(f"/?token={TOKEN}")  # follows the redirect to /
            assert login.status_code == 200 and "tinynet" in login.text
            assert TOKEN not in str(login.url)
            assert browser.get("/api/refs/tinynet@v1").status_code == 200
        assert get(server, "/", cookies={"registry_token": "nope"}).status_code == 401
    finally:
        output = server.stop()
    assert server.process.returncode == 0
    assert TOKEN not in output


def test_a_non_loopback_host_needs_a_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "registry", "--home", str(tmp_path), "serve", "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "Error: serving on 0.0.0.0 reaches other machines: a token is needed "
        "(--token or REGISTRY_SERVE_TOKEN, or tokens made with `registry token create`)\n"
    )


def test_sigterm_and_sigint_stop_it_cleanly(tmp_path: Path) -> None:
    for stop in (signal.SIGTERM, signal.SIGINT):
        server = Server(tmp_path / "home")
        assert get(server, "/api/models").json() == []
        output = server.stop(stop)
        assert server.process.returncode == 0, output
        assert "Traceback" not in output
    assert not list((tmp_path / "home").glob("**/tmp/*"))


def test_the_page_escapes_what_it_prints(served: tuple[Server, Path]) -> None:
    page = get(served[0], "/refs/base@v1")
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_pages_have_titles_and_link_from_the_top(served: tuple[Server, Path]) -> None:
    server = served[0]
    top = get(server, "/")
    assert "<title>Models · registry</title>" in top.text
    assert 'href="/models/team/detector"' in top.text
    model = get(server, "/models/base")
    assert 'href="/refs/base@v2"' in model.text and "<title>base · registry</title>" in model.text
    version = get(server, "/refs/base@v2")
    assert 'href="/api/files/base@v2"' in version.text and "head.weight" in version.text
    assert get(server, "/?q=team").text.count('href="/models/') == 2
    assert "no parent" in get(server, "/refs/base@v1").text


def test_starting_serve_does_not_slow_ls() -> None:
    probe = textwrap.dedent(
        """
        import sys
        from registry.cli import cli
        try:
            cli(["ls"], prog_name="registry")
        except SystemExit:
            pass
        print(sorted(m for m in ("starlette", "uvicorn", "jinja2", "httpx") if m in sys.modules))
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.splitlines()[-1] == "[]", result.stderr
