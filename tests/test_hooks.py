"""Webhooks (SPEC "Webhooks"): each change's event POSTed, signed, to every matching hook,
at least once, through failures, restarts and kills, never for a change that rolled back,
and never by two servers at once.

The receivers are real HTTP servers on loopback (`Receiver`), recording every request; the
senders are real `registry serve` subprocesses with their poll, backoff, timeout and lease
shortened (`KNOBS`). Changes are made by a local Registry over the servers' catalog, as a
person with catalog access would, except where a token's change through a server is meant.
docs/reliability.md ("Webhooks") maps each guarantee to its test here.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import TINY, TINY_ARGS, Server, tiny
from sqlalchemy import text

from registry import ArchitectureMismatchError, InvalidReferenceError, Registry, audit
from registry.catalogs import team
from registry.cli import cli

pytest.importorskip("httpx")
pytest.importorskip("starlette")

SECRET = "hook-s3cret"
TIMEOUT_S = 0.5
LEASE_S = 1.5  # the least a timeout of TIMEOUT_S allows: three times it
KNOBS = {
    "REGISTRY_HOOK_POLL_S": "0.05",
    "REGISTRY_HOOK_BACKOFF_S": "0.1",
    "REGISTRY_HOOK_TIMEOUT_S": str(TIMEOUT_S),
    "REGISTRY_HOOK_LEASE_S": str(LEASE_S),
    "HOOK_SECRET": SECRET,
}
HANG = "hang"  # an answer: keep the request open until the sender hangs up
ME = audit.user_at_host()  # the actor of a local change


@dataclass
class Request:
    """One POST as the receiver saw it, and how (and when) it ended."""

    headers: dict[str, str]
    raw: bytes
    attempt: int  # how many requests have carried this event's id, this one included
    started: float  # time.monotonic()
    ended: float | None = None
    answered: int | str | None = None  # the status sent, or "hung up" (the sender went)

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.raw)  # type: ignore[no-any-return]

    @property
    def id(self) -> str:
        return str(self.body["id"])


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every request and answers as `answer`
    says: a status (after `delay` seconds) or HANG. `stop()` takes it down (connections are
    refused), `start()` brings it back on the same port."""

    answer: Callable[[Request], int | str] = lambda request: 200
    delay: float = 0.0
    seen: list[Request] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        serve = self._server.serve_forever
        threading.Thread(target=serve, args=(0.05,), daemon=True).start()  # quick to stop

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers["content-length"]))
        with self._changed:
            event_id = json.loads(raw)["id"]
            attempt = 1 + sum(r.id == event_id for r in self.seen)
            headers = {k.lower(): v for k, v in handler.headers.items()}
            request = Request(headers, raw, attempt, time.monotonic())
            self.seen.append(request)
            self._changed.notify_all()
        answer = self.answer(request)
        if answer == HANG:  # until the sender's timeout (or its death) closes the connection
            select.select([handler.connection], [], [], 30)
            answer = "hung up"
        else:
            time.sleep(self.delay)
            handler.send_response(int(answer))
            handler.send_header("content-length", "0")
            handler.end_headers()
        with self._changed:
            request.ended, request.answered = time.monotonic(), answer
            self._changed.notify_all()

    def wait_for(self, count: int, ended: bool = True, timeout: float = 15.0) -> list[Request]:
        """The first `count` requests, each answered or hung up on (unless not `ended`)."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: (
                    len(self.seen) >= count
                    and (not ended or all(r.ended for r in self.seen[:count]))
                ),
                timeout,
            ):
                raise AssertionError(f"{len(self.seen)} requests, not {count}: {self.bodies()}")
            return self.seen[:count]

    def settled(self, count: int) -> list[Request]:
        """Exactly `count` requests, and no more after the senders have had time to retry."""
        self.wait_for(count)
        time.sleep(10 * float(KNOBS["REGISTRY_HOOK_POLL_S"]))
        return self.exactly(count)

    def exactly(self, count: int) -> list[Request]:
        """Exactly `count` requests (once another receiver's later events have settled)."""
        seen = self.wait_for(count)
        assert len(self.seen) == count, self.bodies()
        return seen

    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.seen]


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def receiver(
        answer: Callable[[Request], int | str] = lambda r: 200, delay: float = 0.0
    ) -> Receiver:
        made.append(Receiver(answer, delay))
        return made[-1]

    yield receiver
    for each in made:
        each.stop()


@dataclass
class Site:
    """One catalog and store, the servers over it and a local Registry on it."""

    url: str
    store: Path
    root: Path

    def local(self) -> Registry:
        return Registry(home=self.root / "local", database_url=self.url, store=self.store)

    def serve(self, name: str = "server") -> Server:
        """A `registry serve` in a home of its own, over this catalog, with KNOBS."""
        options = ["--database-url", self.url, "--store", str(self.store)]
        return Server(self.root / name, options=options, env=KNOBS)

    def cli(self, *args: str) -> tuple[int, str]:
        options = ["--database-url", self.url, "--store", str(self.store)]
        result = CliRunner().invoke(cli, [*options, *args])
        return result.exit_code, result.output

    def hooks(self) -> list[dict[str, Any]]:
        code, out = self.cli("hook", "ls", "--json")
        assert code == 0, out
        return json.loads(out)  # type: ignore[no-any-return]

    def hook(self, hook_id: int) -> dict[str, Any]:
        return next(h for h in self.hooks() if h["id"] == hook_id)

    def until(self, hook_id: int, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """`hook ls --json`'s row of `hook_id` once `done` holds for it."""
        deadline = time.monotonic() + 15
        while not done(hook := self.hook(hook_id)):
            assert time.monotonic() < deadline, hook
            time.sleep(0.02)
        return hook


@pytest.fixture
def site(database_url: str, tmp_path: Path) -> Site:
    return Site(database_url, tmp_path / "blobs", tmp_path)


@pytest.fixture
def sqlite(tmp_path: Path) -> Site:
    """A SQLite catalog, for what does not depend on the database."""
    return Site(f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path / "blobs", tmp_path)


def signed(request: Request, secret: str = SECRET) -> bool:
    digest = hmac.new(secret.encode(), request.raw, hashlib.sha256).hexdigest()
    return request.headers.get("x-registry-signature") == f"sha256={digest}"


def overlapping(requests: list[Request]) -> list[tuple[str, float, float]]:
    """Requests for one event that were open at the same time: (its id, one's end, the
    next one's start)."""
    found = []
    for event_id in {r.id for r in requests}:
        sent = sorted((r for r in requests if r.id == event_id), key=lambda r: r.started)
        for a, b in itertools.pairwise(sent):
            assert a.ended is not None
            if b.started < a.ended:
                found.append((event_id, a.ended, b.started))
    return found


# -- what is sent ----------------------------------------------------------------------------


def test_each_change_posts_its_event_signed_to_the_hooks_that_want_it(
    site: Site, receivers: Callable[..., Receiver]
) -> None:
    every, pushes, others, unsigned = receivers(), receivers(), receivers(), receivers()
    reg = site.local()
    code, out = site.cli("hook", "add", every.url, "--secret-env", "HOOK_SECRET")
    assert (code, out) == (0, f"hook 1 -> {every.url}\n")
    site.cli("hook", "add", pushes.url, "--events", "push", "--models", "team/*",
                "--secret-env", "HOOK_SECRET")  # fmt: skip
    reg.add_hook(others.url, ["alias", "tag"], ["other*"], "HOOK_SECRET")
    reg.add_hook(unsigned.url, ["describe", "delete"])
    secret = reg.create_token("ci-bot", "write")[1]
    server = site.serve()
    try:
        expected: list[tuple[str, str, str, str, dict[str, Any]]] = []

        def changed(action: str, ref: str, actor: str = ME) -> None:
            shown = reg.get(ref).to_json()  # `show --json` as the change left it
            expected.append((audit.EVENT_OF[action], action, ref, actor, shown))

        reg.push(tiny(0), name="team/a", **TINY)
        changed("push", "team/a@v1")
        reg.push(tiny(1), name="team/a", **TINY)
        changed("push", "team/a@v2")
        reg.set_alias("team/a@v1", "production")
        changed("alias.set", "team/a@v1")
        reg.set_alias("team/a@v2", "production")  # moved
        changed("alias.set", "team/a@v2")
        reg.set_tags("team/a@v2", {"stage": "qa"})
        changed("tag.set", "team/a@v2")
        client = Registry(home=site.root / "client", remote=server.url, token=secret)
        client.set_tags("team/a@v2", {"owner": "ci"})  # through the server: its token acts
        changed("tag.set", "team/a@v2", actor="ci-bot")
        reg.delete_tag("team/a@v2", "stage")
        changed("tag.delete", "team/a@v2")
        reg.describe("team/a@v1", "the first")
        changed("describe", "team/a@v1")
        changed("delete", "team/a@v1")  # shown before it goes
        reg.delete("team/a@v1")
        reg.push(tiny(2), name="other", **TINY)  # a model only `every` and `others` follow
        changed("push", "other@v1")
        reg.set_alias("other@v1", "staging")
        changed("alias.set", "other@v1")
        reg.delete_alias("other", "staging")
        changed("alias.delete", "other@v1")

        got = every.settled(len(expected))  # the others' events are among its, in order
        assert [
            (r.body["event"], r.body["action"], r.body["ref"], r.body["actor"], r.body["version"])
            for r in got
        ] == expected
        assert all(signed(r) and not signed(r, "another secret") for r in got)
        assert all(r.headers["content-type"] == "application/json" for r in got)
        assert len({r.id for r in got}) == len(got)
        for r in got:
            assert set(r.body) == {"id", "event", "action", "at", "actor", "ref", "version"}
            at = datetime.fromisoformat(r.body["at"])
            assert abs((datetime.now(timezone.utc) - at).total_seconds()) < 120

        by_ref = {(r.body["action"], r.body["ref"]): r for r in got}
        assert [(r.body["ref"], r.id) for r in pushes.exactly(2)] == [
            ("team/a@v1", by_ref["push", "team/a@v1"].id),  # one event, one id, every hook
            ("team/a@v2", by_ref["push", "team/a@v2"].id),
        ]
        assert all(signed(r) for r in pushes.seen)
        assert [r.body["action"] for r in others.exactly(2)] == ["alias.set", "alias.delete"]
        assert [r.body["action"] for r in unsigned.exactly(2)] == ["describe", "delete"]
        assert not any("x-registry-signature" in r.headers for r in unsigned.seen)

        listed = site.hooks()
        assert [(h["last_status"], h["pending"]) for h in listed] == [("200", 0)] * 4
        assert listed[1]["events"] == ["push"] and listed[1]["models"] == ["team/*"]
        assert listed[1]["secret_env"] == "HOOK_SECRET" and listed[3]["secret_env"] is None
    finally:
        reg.close()
        server.stop()


def test_a_hook_whose_secret_the_server_lacks_sends_nothing_unsigned(
    sqlite: Site, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()
    reg = sqlite.local()
    hook = reg.add_hook(receiver.url, ["push"], secret_env="NOT_ON_THE_SERVER")
    server = sqlite.serve()
    try:
        reg.push(tiny(0), name="m", **TINY)
        listed = sqlite.until(hook.id, lambda h: h["last_status"] is not None)
        assert listed["last_status"] == "not sent: NOT_ON_THE_SERVER is not set on the server"
        assert listed["pending"] == 1  # kept, and tried again once the server has it
        assert receiver.seen == []
    finally:
        server.stop()
        reg.close()


def test_a_hook_with_a_url_that_cannot_be_sent_to_stops_no_other(
    sqlite: Site, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()
    reg = sqlite.local()
    with pytest.raises(InvalidReferenceError, match="invalid hook URL"):
        reg.add_hook("http://127.0.0.1:notaport/hook", ["push"])  # refused when added...
    bad = reg.add_hook("http://127.0.0.1:1/hook", ["push"])
    with reg.engine.begin() as conn:  # ...so it is one an older registry let in
        conn.execute(
            text("UPDATE hooks SET url = 'http://127.0.0.1:notaport/hook' WHERE id = :id"),
            {"id": bad.id},
        )
    reg.add_hook(receiver.url, ["push"])
    server = sqlite.serve()
    try:
        reg.push(tiny(0), name="m", **TINY)
        reg.push(tiny(1), name="m", **TINY)
        assert [r.body["ref"] for r in receiver.wait_for(2)] == ["m@v1", "m@v2"]
        tried = sqlite.until(bad.id, lambda h: h["last_status"] is not None)
        assert tried["last_status"] == "failed: bad URL: Invalid port: 'notaport'"
        assert tried["pending"] == 2  # both kept: tried again, with backoff
    finally:
        server.stop()
        reg.close()


# -- at least once: failures, timeouts, receivers away ---------------------------------------


def test_a_receiver_that_fails_then_recovers_gets_the_same_event_again(
    sqlite: Site, receivers: Callable[..., Receiver]
) -> None:
    status = {"now": 500}
    receiver = receivers(lambda r: status["now"])
    reg = sqlite.local()
    hook = reg.add_hook(receiver.url, ["push"])
    server = sqlite.serve()
    try:
        reg.push(tiny(0), name="m", **TINY)
        failing = sqlite.until(hook.id, lambda h: h["last_status"] == "500")
        assert failing["pending"] == 1 and failing["last_attempt_at"] is not None
        status["now"] = 200
        recovered = sqlite.until(hook.id, lambda h: h["last_status"] == "200")
        assert recovered["pending"] == 0
        seen = receiver.settled(len(receiver.seen))
        assert [r.answered for r in seen] == [500] * (len(seen) - 1) + [200]
        assert len(seen) >= 2 and len({r.raw for r in seen}) == 1  # the same event, same id
        gaps = [b.started - a.ended for a, b in itertools.pairwise(seen) if a.ended]
        backoff = float(KNOBS["REGISTRY_HOOK_BACKOFF_S"])  # doubling after each failure
        assert all(gap >= 0.9 * backoff * 2**n for n, gap in enumerate(gaps)), gaps
    finally:
        server.stop()
        reg.close()


def test_a_receiver_that_hangs_past_the_timeout_is_tried_again(
    sqlite: Site, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda r: HANG if r.attempt == 1 else 200)
    reg = sqlite.local()
    hook = reg.add_hook(receiver.url, ["push"])
    server = sqlite.serve()
    try:
        reg.push(tiny(0), name="m", **TINY)
        hung, answered = receiver.settled(2)
        assert (hung.answered, answered.answered, hung.raw) == ("hung up", 200, answered.raw)
        assert hung.ended is not None and hung.ended - hung.started < TIMEOUT_S + 1
        assert sqlite.until(hook.id, lambda h: h["pending"] == 0)["last_status"] == "200"
    finally:
        server.stop()
        reg.close()


def test_a_receiver_that_is_down_gets_the_event_when_it_is_back(
    sqlite: Site, receivers: Callable[..., Receiver]
) -> None:
    receiver, removed = receivers(), receivers()
    receiver.stop()
    removed.stop()
    reg = sqlite.local()
    hook = reg.add_hook(receiver.url, ["push"])
    gone = reg.add_hook(removed.url, ["push"])
    server = sqlite.serve()
    try:
        reg.push(tiny(0), name="m", **TINY)
        down = sqlite.until(hook.id, lambda h: h["last_status"] is not None)
        assert down["last_status"] == "failed: ConnectError" and down["pending"] == 1
        sqlite.until(gone.id, lambda h: h["last_status"] is not None)
        assert sqlite.cli("hook", "rm", str(gone.id)) == (0, f"removed hook {gone.id}\n")
        receiver.start()
        removed.start()
        (back,) = receiver.settled(1)
        assert (back.body["ref"], back.answered) == ("m@v1", 200)
        assert removed.seen == []  # a removed hook's waiting events went with it
        assert sqlite.until(hook.id, lambda h: h["pending"] == 0)["last_status"] == "200"
    finally:
        server.stop()
        reg.close()


# -- restarts and kills ----------------------------------------------------------------------


def test_events_outlive_servers_queued_with_none_running_and_leased_by_a_killed_one(
    site: Site, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda r: HANG if r.body["ref"] == "m@v2" and r.attempt == 1 else 200)
    reg = site.local()
    hook = reg.add_hook(receiver.url, ["push"])
    try:
        reg.push(tiny(0), name="m", **TINY)  # no server runs: the event waits in the outbox
        assert (site.hook(hook.id)["pending"], receiver.seen) == (1, [])
        first = site.serve("first")
        (queued,) = receiver.wait_for(1)
        assert (queued.body["ref"], queued.answered) == ("m@v1", 200)

        reg.push(tiny(1), name="m", **TINY)  # its first attempt hangs: in flight, leased
        in_flight = receiver.wait_for(2, ended=False)[1]
        first.kill()  # SIGKILL, mid-request
        second = site.serve("second")
        try:
            _, hung, resent = receiver.settled(3)
            assert hung is in_flight and hung.answered == "hung up"
            assert (resent.raw, resent.answered) == (hung.raw, 200)  # the same event
            assert resent.started - hung.started >= LEASE_S * 0.9  # once its lease ran out
            assert site.hook(hook.id)["pending"] == 0
        finally:
            second.stop()
    finally:
        reg.close()


# -- only what committed ---------------------------------------------------------------------


def test_a_change_that_rolled_back_sends_nothing(
    site: Site,
    receivers: Callable[..., Receiver],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    receiver = receivers()
    reg = site.local()
    hook = reg.add_hook(receiver.url)
    reg.push(tiny(0), name="m", **TINY)
    server = site.serve()
    try:
        with pytest.raises(ArchitectureMismatchError):  # refused: its weights are of width 4
            reg.push(tiny(1), name="m", arch=TINY["arch"], arch_args={**TINY_ARGS, "width": 7})
        record_change = team.record_change

        def queued_then_failed(*args: Any) -> None:
            record_change(*args)  # its event is in the outbox, in the change's transaction
            raise RuntimeError("the change fails after its event is queued")

        monkeypatch.setattr(team, "record_change", queued_then_failed)
        with pytest.raises(RuntimeError):
            reg.set_alias("m@v1", "production")
        monkeypatch.undo()
        reg.describe("m@v1", "after the failures")
        assert [r.body["action"] for r in receiver.settled(2)] == ["push", "describe"]
        assert site.hook(hook.id)["pending"] == 0
        assert [e.action for e in reg.log("m")] == ["describe", "push"]
        assert reg.get("m@v1").aliases == ()
    finally:
        server.stop()
        reg.close()


# -- servers side by side --------------------------------------------------------------------


def test_two_servers_never_send_one_event_at_the_same_time(
    site: Site, receivers: Callable[..., Receiver]
) -> None:
    # Every first attempt hangs until the sender gives up, so deliveries are slow and
    # both servers claim while the other sends; an event claimed twice would overlap.
    receiver = receivers(lambda r: HANG if r.attempt == 1 else 200, delay=0.05)
    reg = site.local()
    hook = reg.add_hook(receiver.url)
    reg.push(tiny(0), name="m", **TINY)
    changes = 6
    servers = [site.serve("a"), site.serve("b")]
    try:
        for n in range(changes):
            reg.set_tags("m@v1", {"n": str(n)})
        receiver.wait_for(2 * (1 + changes))
        assert overlapping(receiver.seen) == []
        seen = receiver.settled(2 * (1 + changes))
        by_id: dict[str, list[int | str | None]] = {}
        for r in seen:
            by_id.setdefault(r.id, []).append(r.answered)
        assert list(by_id.values()) == [["hung up", 200]] * (1 + changes)
        assert site.hook(hook.id)["pending"] == 0
    finally:
        for server in servers:
            server.stop()
        reg.close()
