"""Webhook delivery: each `registry serve` sends its catalog's queued events (SPEC "Webhooks").

A change queues its event in the outbox in the change's own transaction
(`catalogs.team.record_change`), so an event exists exactly when its change
committed. A deliverer thread claims the oldest due event, leasing it for
`lease_s()` (a deliverer that dies leaves it due again then), POSTs the JSON
body with `X-Registry-Signature: sha256=<HMAC-SHA256 of the body>` (the
secret read from the server's environment, never from the catalog), and
records the outcome: a 2xx is delivered; anything else is tried again after
a backoff that doubles up to an hour, GIVE_UP_AFTER times. Delivery is at
least once; the body's `id` lets a receiver drop repeats. Servers side by
side each run one deliverer; the claim skips rows another holds (FOR UPDATE
SKIP LOCKED). Events are claimed one at a time, so that a lease covers one
attempt: the last events of a batch could wait past their lease, and another
server would send them while this one still does.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from registry.errors import RegistryError

if TYPE_CHECKING:
    from registry.catalogs import Catalog
    from registry.records import Delivery

GIVE_UP_AFTER = 25  # attempts: with the backoff capped at an hour, about a day
MAX_BACKOFF_S = 3600.0
log = logging.getLogger("registry.hooks")


def _setting(name: str, default: float) -> float:
    """A tuning knob from the environment (tests shorten them); a bad value keeps the default."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def poll_s() -> float:
    return _setting("REGISTRY_HOOK_POLL_S", 1.0)


def backoff_s(attempts: int) -> float:
    """How long after its `attempts`-th failed attempt an event is tried again."""
    base = _setting("REGISTRY_HOOK_BACKOFF_S", 5.0)
    return float(min(base * 2 ** min(attempts - 1, 30), MAX_BACKOFF_S))


def timeout_s() -> float:
    return _setting("REGISTRY_HOOK_TIMEOUT_S", 10.0)


def lease_s() -> float:
    """How long a claimed event is this deliverer's: never less than an attempt can take
    (connecting, sending and waiting for the answer, each up to `timeout_s()`)."""
    return max(_setting("REGISTRY_HOOK_LEASE_S", 120.0), 3 * timeout_s())


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@contextlib.contextmanager
def delivering(catalog: Catalog) -> Iterator[None]:
    """Deliver the catalog's due events on a thread while the block runs."""
    stop = threading.Event()
    thread = threading.Thread(target=_run, args=(catalog, stop), name="registry-hooks", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=timeout_s() + 5)


def _run(catalog: Catalog, stop: threading.Event) -> None:
    import httpx

    with httpx.Client(follow_redirects=False) as http:
        while not stop.is_set():
            try:
                claimed = catalog.claim_deliveries(timedelta(seconds=lease_s()), 1)
            except RegistryError as exc:  # the catalog is busy or away: try again later
                log.warning("webhooks: cannot claim events: %s", exc)
                claimed = []
            for delivery in claimed:
                deliver(catalog, http, delivery)
            if not claimed:
                stop.wait(poll_s())


def deliver(catalog: Catalog, http: object, delivery: Delivery) -> None:
    """One attempt at one event, and its outcome recorded."""
    import httpx

    assert isinstance(http, httpx.Client)
    body = json.dumps(delivery.body, sort_keys=True).encode()
    headers = {
        "content-type": "application/json",
        "user-agent": "registry-webhooks",
        "x-registry-event": str(delivery.body.get("event")),
        "x-registry-delivery": str(delivery.body.get("id")),
    }
    status = ""
    if delivery.secret_env is not None:
        secret = os.environ.get(delivery.secret_env)
        if not secret:
            status = f"not sent: {delivery.secret_env} is not set on the server"
        else:
            headers["x-registry-signature"] = signature(body, secret)
    delivered = False
    if not status:
        try:
            answer = http.post(delivery.url, content=body, headers=headers, timeout=timeout_s())
            status = str(answer.status_code)
            delivered = answer.is_success
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.HTTPError as exc:
            status = f"failed: {type(exc).__name__}"
        except (httpx.InvalidURL, UnicodeError) as exc:  # a URL httpx (or IDNA) cannot send to
            status = f"failed: bad URL: {exc}"
    retry_at = None
    if not delivered:
        if delivery.attempts >= GIVE_UP_AFTER:
            status = f"gave up after {delivery.attempts} attempts: {status}"
        else:
            retry_at = datetime.now(timezone.utc) + timedelta(seconds=backoff_s(delivery.attempts))
    try:
        catalog.finish_delivery(delivery, status, retry_at)
    except RegistryError as exc:  # its lease runs out and it is sent again: at least once
        log.warning("webhooks: cannot record delivery %s: %s", delivery.id, exc)
