"""SQL engine and sessions (SQLite by default, PostgreSQL in deployment); creates every package's tables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Table, create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from agents.models import Base as AgentsBase
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


class SchemaOutdated(RuntimeError):
    """The database was created by an older version whose tables lack columns this version needs."""


def _add_nullable_columns(engine: Engine, table: Table, columns: list[Column[Any]]) -> None:
    """Columns added since a database was made, when nullable, are added in place (old rows read NULL)."""
    for column in columns:
        kind = column.type.compile(dialect=engine.dialect)
        with engine.begin() as conn:
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind} NULL'))


def init_db(url: str) -> sessionmaker[Session]:
    """Create missing tables, add new nullable columns, and refuse, with what to do, any other outdated table."""
    engine = make_engine(url)
    inspector = inspect(engine)
    for metadata in (IngestionBase.metadata, AppBase.metadata, AgentsBase.metadata):
        for table in metadata.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            present = {c["name"] for c in inspector.get_columns(table.name)}
            missing = sorted(c.name for c in table.columns if c.name not in present)
            _add_nullable_columns(engine, table, [c for c in table.columns if c.name in missing and c.nullable])
            missing = sorted(c.name for c in table.columns if c.name in missing and not c.nullable)
            if missing:
                raise SchemaOutdated(
                    f"table {table.name!r} in {engine.url!r} lacks columns {missing}: it was made by an older "
                    "version. Point KB_DATABASE_URL / KB_DATA_DIR at a fresh location and re-ingest."
                )
        metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)
