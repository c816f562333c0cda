"""State in SQL works the same on SQLite (default) and PostgreSQL (deployment)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.auth import create_key, resolve_key
from app.conversations import ConversationStore
from app.db import init_db
from app.quotas import SqlCounter
from ingestion import catalog
from ingestion.catalog import NotFound
from ingestion.models import Document
from retrieval.types import Citation
from tests.conftest import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        yield init_db(f"sqlite:///{tmp_path / 'kb.sqlite'}")
        return
    with postgres_database("kb_test") as url:
        made = init_db(url)
        try:
            yield made
        finally:
            made.kw["bind"].dispose()


def test_keys_sources_jobs_and_documents_round_trip(sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        new = create_key(db, "hr-bot", ["hr", "public"])
        assert resolve_key(db, new.key) is not None
        assert resolve_key(db, new.key + "x") is None
        principal = resolve_key(db, new.key)
        assert principal is not None and principal.groups == ("hr", "public") and principal.scopes == ("read",)
        source = catalog.create_source(db, "handbook", "/srv/handbook", ["hr", "eng", "hr"])
        assert source.acl == ["eng", "hr"]
        with pytest.raises(catalog.Conflict):
            catalog.create_source(db, "handbook", "/srv/other", ["eng"])
    with sessions() as db:
        job = catalog.open_job(db, "handbook")
        db.add(Document(id="handbook:a.md", source_id="handbook", path="/srv/handbook/a.md", acl=["hr"]))
        db.commit()
        future = job.created_at + dt.timedelta(seconds=1)
        assert catalog.stale_jobs(db, future) == [job.id]
        assert catalog.stale_jobs(db, job.created_at - dt.timedelta(seconds=1)) == []
        with pytest.raises(catalog.CatalogError) as bad:
            catalog.update_source(db, "handbook", acl=["bad group!"])
        assert bad.value.field == "acl"
    with sessions() as db:
        assert db.get(Document, "handbook:a.md").acl == ["hr"]  # type: ignore[union-attr]
        assert catalog.get_job(db, job.id).progress()["status"] == "queued"


def test_a_database_from_before_a_new_nullable_column_is_upgraded_in_place(sessions: sessionmaker[Session]) -> None:
    engine = sessions.kw["bind"]
    with sessions() as db:
        catalog.create_source(db, "handbook", "/srv/handbook", ["eng"])
        old_job = catalog.open_job(db, "handbook").id
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs DROP COLUMN detail"))  # as the previous version created it

    upgraded = init_db(engine.url.render_as_string(hide_password=False))

    with upgraded() as db:
        assert catalog.get_job(db, old_job).progress()["detail"] == {}
        adapt = catalog.open_adapt(db, 60.0)
        assert catalog.get_job(db, adapt.id).detail == {"time_budget_s": 60.0}
        with pytest.raises(catalog.Conflict):
            catalog.open_adapt(db, 60.0)  # one adaptation at a time
    upgraded.kw["bind"].dispose()


def test_conversations_turns_and_feedback_round_trip(sessions: sessionmaker[Session]) -> None:
    store = ConversationStore(sessions)
    conv = store.open("alice", None, "How many vacation days do I get?")
    assert store.open("alice", conv, "ignored") == conv
    with pytest.raises(NotFound):
        store.open("bob", conv, "not yours")
    store.add_question(conv, "How many vacation days do I get?", "How many vacation days do I get?")
    answer = store.start_answer(conv)
    cite = Citation("handbook:vacation.md", "vacation.md", "Vacation", 0, "25 days", 0, 7)
    store.finish_answer(answer, "25 days [1].", "ok", [cite], {"extractive": True})
    store.add_question(conv, "Do they expire?", "How many vacation days do I get? Do they expire?")
    failed = store.start_answer(conv)
    store.finish_answer(failed, "", "failed", [], {})

    # the failed answer is not history for the model, but the question that preceded it is kept
    assert store.history(conv) == [
        {"role": "user", "content": "How many vacation days do I get?"},
        {"role": "assistant", "content": "25 days [1]."},
        {"role": "user", "content": "Do they expire?"},
    ]
    store.rate("alice", answer, -1)
    store.rate("alice", answer, 1, "right")
    with pytest.raises(NotFound):
        store.rate("bob", answer, 1)
    assert store.feedback_counts() == {"up": 1, "down": 0}
    shown = store.get("alice", conv)
    assert [m["status"] for m in shown["messages"]] == ["ok", "ok", "ok", "failed"]
    assert shown["messages"][1]["rating"] == 1 and shown["messages"][1]["citations"][0]["doc_id"] == cite.doc_id
    assert [c["id"] for c in store.list("alice")] == [conv] and store.list("bob") == []
    store.delete("alice", conv)
    assert store.list("alice") == [] and store.feedback_counts() == {"up": 0, "down": 0}


def test_token_counters_add_up_with_an_upsert(sessions: sessionmaker[Session]) -> None:
    counter = SqlCounter(sessions)
    assert counter.used("k1", "2026-12-01") == 0
    assert counter.add("k1", "2026-12-01", 300) == 300
    assert counter.add("k1", "2026-12-01", 200) == 500
    assert counter.add("k1", "2026-12-02", 7) == 7 and counter.add("k2", "2026-12-01", 1) == 1
    assert counter.used("k1", "2026-12-01") == 500
