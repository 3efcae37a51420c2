"""Who makes a change, and the events a change sends (SPEC "Audit log", "Webhooks").

A local change is made by `user@host`; a server making a change for a
token's holder runs it inside `acting_as(token name)`. The catalog reads
`actor()` when it writes the change and its audit entry, in one transaction.
"""

from __future__ import annotations

import contextlib
import contextvars
import getpass
import socket
from collections.abc import Iterator

ACTIONS = (
    "push", "import", "alias.set", "alias.delete", "tag.set", "tag.delete", "describe", "delete",
)  # fmt: skip
# The webhook event each action sends.
EVENT_OF = {
    "push": "push",
    "import": "push",
    "alias.set": "alias",
    "alias.delete": "alias",
    "tag.set": "tag",
    "tag.delete": "tag",
    "describe": "describe",
    "delete": "delete",
}
EVENTS = tuple(dict.fromkeys(EVENT_OF.values()))

_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("registry_actor", default=None)


def actor() -> str:
    """Whoever the change is made for: the token's name on a server, else `user@host`."""
    return _actor.get() or user_at_host()


@contextlib.contextmanager
def acting_as(name: str) -> Iterator[None]:
    reset = _actor.set(name)
    try:
        yield
    finally:
        _actor.reset(reset)


def user_at_host() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
