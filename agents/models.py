"""The agents' SQL tables: runs, their steps, and the append-only, hash-chained audit log."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands datetimes back without a zone; every time here is UTC."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class AgentRun(Base):
    """One run: who started it, its limits, where it stands and why."""

    __tablename__ = "agent_runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[dict[str, Any]] = mapped_column(JSON)  # {name, groups, scopes, key_id}
    principal_name: Mapped[str] = mapped_column(String(128), index=True)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(24), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    rule: Mapped[str] = mapped_column(String(32), default="")  # the rule a refusal or rollback names
    failed_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    next_step: Mapped[int] = mapped_column(Integer, default=0)
    records_touched: Mapped[int] = mapped_column(Integer, default=0)
    tokens_spent: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AgentStep(Base):
    """One step of a run: the tool and its input, its plan, what it did and how to undo it."""

    __tablename__ = "agent_steps"
    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("agent_runs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    tool: Mapped[str] = mapped_column(String(64))
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(24), default="pending")
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    undo: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    approved_by: Mapped[str] = mapped_column(String(128), default="")
    compensation_attempts: Mapped[int] = mapped_column(Integer, default=0)


class AuditEvent(Base):
    """One audit event. `hash` = sha256 over the canonical JSON of the fields and `prev_hash`; `prev_hash`
    is unique so two writers can never fork the chain."""

    __tablename__ = "agent_audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    event: Mapped[str] = mapped_column(String(24))
    principal: Mapped[str] = mapped_column(String(128))
    tool: Mapped[str] = mapped_column(String(64), default="")
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))


@event.listens_for(AuditEvent, "before_update")
@event.listens_for(AuditEvent, "before_delete")
def _append_only(_mapper: Mapper[Any], _conn: Any, target: AuditEvent) -> None:
    raise PermissionError(f"audit event {target.id} is append-only; it cannot be changed or deleted")


def create_tables(engine: Engine) -> None:
    """Create the agents' tables where missing (app's init_db can instead add `Base.metadata` to its list)."""
    Base.metadata.create_all(engine)
