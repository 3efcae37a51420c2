"""The SQL catalog's team records, inside the caller's transaction: tokens, the audit log,
webhooks and their outbox.

`record_change` is called by every write in the same transaction as the
change, so the log and the outbox hold exactly the changes that committed.
Deliverers claim due events with FOR UPDATE SKIP LOCKED (PostgreSQL; SQLite
has one writer at a time already), so servers side by side never send one
event twice at once.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from registry import audit
from registry.errors import InvalidReferenceError, NotFoundError
from registry.records import AuditEntry, Delivery, HookInfo, ModelVersion, TokenInfo
from registry.tables import AuditEntry as AuditRow
from registry.tables import Delivery as DeliveryRow
from registry.tables import Hook, Token
from registry.tokens import matches


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment.astimezone(timezone.utc) if moment else None
    return moment.replace(tzinfo=timezone.utc)


# -- the audit log and the outbox ------------------------------------------------------------


def record_change(
    s: Session, action: str, ref: str, version: ModelVersion, details: dict[str, Any]
) -> None:
    """Log a change and queue its event for every hook that wants it, in its transaction."""
    now = datetime.now(timezone.utc)
    who = audit.actor()
    name = version.name
    s.add(AuditRow(at=now, actor=who, action=action, model=name, ref=ref, details=details))
    event = audit.EVENT_OF[action]
    wanted = [
        hook.id
        for hook in s.scalars(select(Hook))
        if event in hook.events and matches(name, hook.models)
    ]
    if not wanted:
        return
    body = {
        "id": uuid.uuid4().hex,
        "event": event,
        "action": action,
        "at": now.isoformat(),
        "actor": who,
        "ref": ref,
        "version": version.to_json(),
    }
    for hook_id in wanted:
        s.add(DeliveryRow(event_id=body["id"], hook_id=hook_id, body=body, attempts=0, due_at=now))


def log(s: Session, model: str | None, limit: int | None) -> list[AuditEntry]:
    query = select(AuditRow).order_by(AuditRow.id.desc())
    if model is not None:
        query = query.where(AuditRow.model == model)
    if limit is not None:
        query = query.limit(limit)
    return [
        AuditEntry(_utc(r.at), r.actor, r.action, r.ref, dict(r.details))  # type: ignore[arg-type]
        for r in s.scalars(query)
    ]


# -- tokens ----------------------------------------------------------------------------------


def _token(row: Token) -> TokenInfo:
    return TokenInfo(
        row.name,
        row.scope,
        tuple(row.models),
        _utc(row.created_at),  # type: ignore[arg-type]
        _utc(row.expires_at),
        _utc(row.last_used_at),
    )


def add_token(s: Session, info: TokenInfo, digest: str) -> None:
    if s.scalar(select(Token.id).where(Token.name == info.name)) is not None:
        raise InvalidReferenceError(info.name, "token name", "a token of that name exists")
    s.add(
        Token(
            name=info.name,
            digest=digest,
            scope=info.scope,
            models=list(info.models),
            created_at=info.created_at,
            expires_at=info.expires_at,
        )
    )


def tokens(s: Session) -> list[TokenInfo]:
    return [_token(row) for row in s.scalars(select(Token).order_by(Token.name))]


def revoke_token(s: Session, name: str) -> None:
    gone = s.execute(delete(Token).where(Token.name == name))
    if gone.rowcount == 0:  # type: ignore[attr-defined]  # a CursorResult
        raise NotFoundError(f"token {name!r}", "see `registry token ls`")


def find_token(s: Session, digest: str) -> TokenInfo | None:
    """The token whose secret has this digest (found by its unique index), if any."""
    row = s.scalar(select(Token).where(Token.digest == digest))
    return _token(row) if row is not None else None


def touch_token(s: Session, name: str, now: datetime) -> None:
    s.execute(update(Token).where(Token.name == name).values(last_used_at=now))


# -- webhooks --------------------------------------------------------------------------------


def add_hook(s: Session, hook: HookInfo) -> HookInfo:
    row = Hook(
        url=hook.url,
        events=list(hook.events),
        models=list(hook.models),
        secret_env=hook.secret_env,
        created_at=hook.created_at,
    )
    s.add(row)
    s.flush()
    return _hook(row, 0)


def _hook(row: Hook, pending: int) -> HookInfo:
    return HookInfo(
        row.id,
        row.url,
        tuple(row.events),
        tuple(row.models),
        row.secret_env,
        _utc(row.created_at),  # type: ignore[arg-type]
        row.last_status,
        _utc(row.last_attempt_at),
        pending,
    )


def hooks(s: Session) -> list[HookInfo]:
    pending = dict(
        s.execute(
            select(DeliveryRow.hook_id, func.count(DeliveryRow.id))
            .where(DeliveryRow.due_at.is_not(None))
            .group_by(DeliveryRow.hook_id)
        ).all()
    )
    rows = s.scalars(select(Hook).order_by(Hook.id))
    return [_hook(row, pending.get(row.id, 0)) for row in rows]


def remove_hook(s: Session, hook_id: int) -> None:
    s.execute(delete(DeliveryRow).where(DeliveryRow.hook_id == hook_id))
    gone = s.execute(delete(Hook).where(Hook.id == hook_id))
    if gone.rowcount == 0:  # type: ignore[attr-defined]  # a CursorResult
        raise NotFoundError(f"hook {hook_id}", "see `registry hook ls`")


def claim_deliveries(s: Session, now: datetime, lease: timedelta, limit: int) -> list[Delivery]:
    """Due events, each leased to this deliverer until `now + lease` (a deliverer that dies
    leaves them due again then: at-least-once); rows another deliverer holds are skipped."""
    query = (
        select(DeliveryRow, Hook)
        .join(Hook, Hook.id == DeliveryRow.hook_id)
        .where(DeliveryRow.due_at.is_not(None), DeliveryRow.due_at <= now)
        .order_by(DeliveryRow.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=DeliveryRow)
    )
    claimed = []
    for row, hook in s.execute(query).all():
        row.attempts += 1
        row.due_at = now + lease
        claimed.append(Delivery(row.id, hook.id, hook.url, hook.secret_env, row.body, row.attempts))
    return claimed


def any_due(s: Session, now: datetime) -> bool:
    """Whether some event is due: read first, so an idle deliverer takes no write lock."""
    due = select(DeliveryRow.id).where(DeliveryRow.due_at.is_not(None), DeliveryRow.due_at <= now)
    return s.scalar(due.limit(1)) is not None


def finish_delivery(
    s: Session, delivery: Delivery, status: str, retry_at: datetime | None, now: datetime
) -> None:
    """Record an attempt: delivered (`retry_at` None) or due again at `retry_at`. An attempt
    that outlived its lease, the event claimed again since, records nothing: the newer
    attempt's outcome is the one that counts."""
    row = s.get(DeliveryRow, delivery.id, with_for_update=True)
    if row is None or row.attempts != delivery.attempts:  # its hook removed, or claimed again
        return
    row.due_at = retry_at
    row.last_status = status
    s.execute(
        update(Hook).where(Hook.id == row.hook_id).values(last_status=status, last_attempt_at=now)
    )
