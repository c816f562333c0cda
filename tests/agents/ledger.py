"""Small real tools for the tests: they change rows of a `ledger` SQL table or lines of an outbox file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, Field
from sqlalchemy import String, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from agents.tools import Applied, Plan, Target, Tool, ToolContext


class LedgerBase(DeclarativeBase):
    pass


class Entry(LedgerBase):
    __tablename__ = "ledger"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


def read_ledger(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as db:
        return {e.key: e.value for e in db.scalars(select(Entry))}


class PutInput(BaseModel):
    key: str = Field(min_length=1, max_length=64)
    value: str
    table: str = "ledger"  # which table the step says it touches (checked against allowed targets)


class PutEntry(Tool[PutInput]):
    """Set a ledger entry; undo restores the value it had (or removes it)."""

    name = "put_entry"
    description = "Set the value of a ledger entry."
    input_model = PutInput
    scope = "ledger:write"
    effect = "write"
    idempotent = True

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def targets(self, input: PutInput) -> list[Target]:
        return [Target("table", input.table)]

    def _current(self, key: str) -> str | None:
        with self.sessions() as db:
            entry = db.get(Entry, key)
            return entry.value if entry else None

    def plan(self, input: PutInput, ctx: ToolContext) -> Plan:
        return Plan(f"set {input.key} to {input.value!r}", {"key": input.key, "before": self._current(input.key)})

    def apply(self, input: PutInput, ctx: ToolContext) -> Applied:
        with self.sessions() as db:
            entry = db.get(Entry, input.key)
            before = entry.value if entry else None
            if entry is None:
                db.add(Entry(key=input.key, value=input.value))
            else:
                entry.value = input.value
            db.commit()
        return Applied({"key": input.key, "value": input.value}, {"key": input.key, "before": before})

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        with self.sessions() as db:
            entry = db.get(Entry, undo["key"])
            if undo["before"] is None:
                if entry is not None:
                    db.delete(entry)
            elif entry is None:
                db.add(Entry(key=undo["key"], value=undo["before"]))
            else:
                entry.value = undo["before"]
            db.commit()


class StubbornPut(PutEntry):
    """A put whose undo fails its first `failures` tries (a flaky network, a locked row)."""

    name = "stubborn_put"

    def __init__(self, sessions: sessionmaker[Session], failures: int = 0) -> None:
        super().__init__(sessions)
        self.failures = failures
        self.tries = 0

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        self.tries += 1
        if self.tries <= self.failures:
            raise ConnectionError(f"ledger unavailable (try {self.tries})")
        super().compensate(undo, ctx)


class DeleteInput(BaseModel):
    keys: list[str] = Field(min_length=1)


class DeleteEntries(Tool[DeleteInput]):
    """Delete ledger entries; undo puts them back."""

    name = "delete_entries"
    description = "Delete ledger entries by key."
    input_model = DeleteInput
    scope = "ledger:delete"
    effect = "destructive"

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def targets(self, input: DeleteInput) -> list[Target]:
        return [Target("table", "ledger")]

    def records(self, input: DeleteInput) -> int:
        return len(input.keys)

    def plan(self, input: DeleteInput, ctx: ToolContext) -> Plan:
        return Plan(f"delete {len(input.keys)} entries", {"rows": self._rows(input.keys)})

    def _rows(self, keys: list[str]) -> dict[str, str]:
        with self.sessions() as db:
            return {e.key: e.value for e in db.scalars(select(Entry).where(Entry.key.in_(keys)))}

    def apply(self, input: DeleteInput, ctx: ToolContext) -> Applied:
        rows = self._rows(input.keys)
        with self.sessions() as db:
            db.execute(delete(Entry).where(Entry.key.in_(input.keys)))
            db.commit()
        return Applied({"deleted": sorted(rows)}, {"rows": rows}, records=len(rows))

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        with self.sessions() as db:
            db.add_all(Entry(key=k, value=v) for k, v in undo["rows"].items())
            db.commit()


class RetagInput(BaseModel):
    prefix: str
    value: str
    expected: int = Field(ge=0)  # how many entries the caller believes the prefix matches


class RetagPrefix(Tool[RetagInput]):
    """Set every entry whose key starts with a prefix; it touches as many as match, whatever was expected."""

    name = "retag_prefix"
    description = "Set the value of every ledger entry whose key starts with a prefix."
    input_model = RetagInput
    scope = "ledger:write"
    effect = "write"

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def records(self, input: RetagInput) -> int:
        return input.expected

    def plan(self, input: RetagInput, ctx: ToolContext) -> Plan:
        return Plan(f"set entries {input.prefix}* to {input.value!r}")

    def apply(self, input: RetagInput, ctx: ToolContext) -> Applied:
        with self.sessions() as db:
            entries = list(db.scalars(select(Entry).where(Entry.key.startswith(input.prefix))))
            before = {e.key: e.value for e in entries}
            for e in entries:
                e.value = input.value
            db.commit()
        return Applied({"changed": sorted(before)}, {"before": before}, records=len(before))

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        with self.sessions() as db:
            for key, value in undo["before"].items():
                entry = db.get(Entry, key)
                if entry is not None:
                    entry.value = value
            db.commit()


class SummaryInput(BaseModel):
    estimate: int = Field(ge=0)  # tokens the step expects to spend
    spend: int = Field(ge=0)  # tokens it really spends (as an LLM's usage block would report)


class Summarise(Tool[SummaryInput]):
    """A read step that spends tokens, like an LLM summary."""

    name = "summarise"
    description = "Summarise the ledger."
    input_model = SummaryInput
    scope = "ledger:read"
    effect = "read"
    idempotent = True

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def tokens(self, input: SummaryInput) -> int:
        return input.estimate

    def plan(self, input: SummaryInput, ctx: ToolContext) -> Plan:
        return Plan("summarise the ledger")

    def apply(self, input: SummaryInput, ctx: ToolContext) -> Applied:
        return Applied({"entries": len(read_ledger(self.sessions))}, {}, tokens=input.spend)


class ExplodeInput(BaseModel):
    message: str = "disk full"


class Explode(Tool[ExplodeInput]):
    """A write step that always fails when applied."""

    name = "explode"
    description = "Fail."
    input_model = ExplodeInput
    scope = "ledger:write"
    effect = "write"

    def plan(self, input: ExplodeInput, ctx: ToolContext) -> Plan:
        return Plan("write something")

    def apply(self, input: ExplodeInput, ctx: ToolContext) -> Applied:
        raise OSError(input.message)

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        raise AssertionError("a step that never applied is never compensated")


class NotifyInput(BaseModel):
    url: str
    text: str


class Notify(Tool[NotifyInput]):
    """An outbound call, recorded as a line in an outbox file; undo removes the line."""

    name = "notify"
    description = "Send a notification to a URL."
    input_model = NotifyInput
    scope = "notify"
    effect = "write"
    open_world = True

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    def targets(self, input: NotifyInput) -> list[Target]:
        return [Target("url_host", urlparse(input.url).hostname or "")]

    def plan(self, input: NotifyInput, ctx: ToolContext) -> Plan:
        return Plan(f"POST to {input.url}", {"url": input.url})

    def apply(self, input: NotifyInput, ctx: ToolContext) -> Applied:
        line = f"{ctx.run_id} {input.url} {input.text}"
        with self.outbox.open("a") as f:
            f.write(line + "\n")
        return Applied({"sent": input.url}, {"line": line})

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        lines = self.outbox.read_text().splitlines()
        lines.remove(undo["line"])
        self.outbox.write_text("".join(line + "\n" for line in lines))


class DyingPut(PutEntry):
    """Sets the entry, then kills its process before returning: a crash between a step's effect and its record."""

    name = "dying_put"
    description = "Set a ledger entry, then die (tests the crash between apply and its record)."

    def apply(self, input: PutInput, ctx: ToolContext) -> Applied:
        super().apply(input, ctx)
        os._exit(3)
