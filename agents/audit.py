"""The append-only audit log: one row per event, each row's hash chained to the one before."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from agents.models import AuditEvent, aware, utcnow

GENESIS = "0" * 64
# `proposed`: where a run's steps came from (an LLM's tool calls, a dry run being executed), before its plan.
EVENTS = frozenset(
    {
        "proposed",
        "planned",
        "approved",
        "rejected",
        "applied",
        "failed",
        "compensated",
        "compensation_failed",
        "denied",
        "finished",
    }
)


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, non-JSON values as strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def as_json(value: Any) -> Any:
    """The value as it will read back from a JSON column, so the hash covers exactly what is stored."""
    return json.loads(canonical(value))


def row_hash(row: AuditEvent) -> str:
    fields = {
        "run_id": row.run_id,
        "step": row.step,
        "event": row.event,
        "principal": row.principal,
        "tool": row.tool,
        "input": row.input,
        "result": row.result,
        "at": aware(row.at).isoformat(),
        "prev_hash": row.prev_hash,
    }
    return hashlib.sha256(canonical(fields).encode()).hexdigest()


@dataclass(frozen=True)
class Broken:
    """The first row whose hash or link does not hold."""

    id: int
    run_id: str
    event: str
    reason: str


class AuditLog:
    """Append and read audit events; there is deliberately no way to change or delete one."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.sessions = sessions
        self.clock = clock

    def append(
        self,
        run_id: str,
        event: str,
        principal: str,
        *,
        step: int | None = None,
        tool: str = "",
        input: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> AuditEvent:
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}; one of {sorted(EVENTS)}")
        # microseconds survive both backends; the hash covers the time as it reads back
        at = self.clock().astimezone(dt.UTC)
        for _attempt in range(20):
            with self.sessions() as db:
                last = db.scalars(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).first()
                row = AuditEvent(
                    run_id=run_id,
                    step=step,
                    event=event,
                    principal=principal,
                    tool=tool,
                    input=as_json(input or {}),
                    result=as_json(result or {}),
                    at=at,
                    prev_hash=last or GENESIS,
                )
                row.hash = row_hash(row)
                db.add(row)
                try:
                    db.commit()
                except IntegrityError:  # another writer linked to the same head first: re-read it
                    db.rollback()
                    continue
                return row
        raise RuntimeError("could not append to the audit log: the chain head kept moving; retry the action")

    def events(self, run_id: str | None = None, after_id: int = 0, limit: int = 1000) -> list[AuditEvent]:
        """Events in the order they were written, optionally of one run, after a given id."""
        query = select(AuditEvent).where(AuditEvent.id > after_id).order_by(AuditEvent.id).limit(limit)
        if run_id is not None:
            query = query.where(AuditEvent.run_id == run_id)
        with self.sessions() as db:
            return list(db.scalars(query))

    def head(self) -> str:
        """The newest hash; publish it elsewhere to also detect rows cut off the end."""
        with self.sessions() as db:
            last = db.scalars(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).first()
        return last or GENESIS

    def verify_chain(self) -> Broken | None:
        """Recompute every hash and link in order; return the first row that does not hold, or None."""
        prev = GENESIS
        with self.sessions() as db:
            for row in db.scalars(select(AuditEvent).order_by(AuditEvent.id).execution_options(yield_per=500)):
                if row.prev_hash != prev:
                    return Broken(row.id, row.run_id, row.event, "prev_hash does not match the row before it")
                if row_hash(row) != row.hash:
                    return Broken(row.id, row.run_id, row.event, "hash does not match the row's fields")
                prev = row.hash
        return None
