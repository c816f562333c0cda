"""SQL engine and sessions (SQLite by default, PostgreSQL in deployment); creates every package's tables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.models import Base as AppBase
from ingestion.models import Base as IngestionBase


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            # WAL lets the CLI (keys) and the server write the same file; FKs for cascades.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def init_db(url: str) -> sessionmaker[Session]:
    engine = make_engine(url)
    IngestionBase.metadata.create_all(engine)
    AppBase.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)
