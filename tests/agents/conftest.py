"""A runner over real SQL (SQLite, and PostgreSQL where asked) with the ledger tools registered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from agents.models import create_tables
from agents.registry import Registry
from agents.runner import RetryPolicy, Runner
from retrieval.types import Principal
from tests.agents.ledger import (
    DeleteEntries,
    Entry,
    Explode,
    LedgerBase,
    Notify,
    PutEntry,
    RetagPrefix,
    StubbornPut,
    Summarise,
    read_ledger,
)
from tests.conftest import postgres_database

ALICE = Principal("alice", ("eng",), ("read", "ledger:read", "ledger:write", "ledger:delete", "notify"))
READER = Principal("rita", ("eng",), ("read", "ledger:read"))
APPROVER = Principal("bob", ("ops",), ("read", "approve"))
ADMIN = Principal("root", (), ("admin",))


def make_sessions(url: str) -> sessionmaker[Session]:
    engine = create_engine(url)
    create_tables(engine)
    LedgerBase.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def sqlite_sessions(path: Path) -> sessionmaker[Session]:
    return make_sessions(f"sqlite:///{path / 'agents.sqlite'}")


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return sqlite_sessions(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """SQLite, then a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield sqlite_sessions(tmp_path)
        return
    with postgres_database("kb_agents") as url:
        made = make_sessions(url)
        try:
            yield made
        finally:
            made.kw["bind"].dispose()


@dataclass
class World:
    """The runner, its tools, and what they act on."""

    sessions: sessionmaker[Session]
    outbox: Path
    stubborn: StubbornPut
    runner: Runner
    sleeps: list[float] = field(default_factory=list)

    def ledger(self) -> dict[str, str]:
        return read_ledger(self.sessions)

    def seed(self, **entries: str) -> None:
        with self.sessions() as db:
            db.add_all(Entry(key=k, value=v) for k, v in entries.items())
            db.commit()

    def registry(self) -> Registry:
        return self.runner.registry


def build_world(sessions: sessionmaker[Session], tmp_path: Path) -> World:
    outbox = tmp_path / "outbox.txt"
    outbox.write_text("")
    stubborn = StubbornPut(sessions)
    registry = Registry(
        [
            PutEntry(sessions),
            stubborn,
            DeleteEntries(sessions),
            RetagPrefix(sessions),
            Summarise(sessions),
            Explode(),
            Notify(outbox),
        ]
    )
    sleeps: list[float] = []
    runner = Runner(registry, sessions, retry=RetryPolicy(attempts=3, backoff_s=0.1), sleep=sleeps.append)
    return World(sessions, outbox, stubborn, runner, sleeps)


@pytest.fixture
def world(sessions: sessionmaker[Session], tmp_path: Path) -> World:
    return build_world(sessions, tmp_path)


@pytest.fixture
def any_world(any_sessions: sessionmaker[Session], tmp_path: Path) -> World:
    return build_world(any_sessions, tmp_path)
