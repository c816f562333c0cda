"""The audit log is append-only and hash-chained: it verifies, and any edited or removed row is found."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text

from agents.audit import GENESIS
from agents.models import AuditEvent
from agents.runner import Step
from tests.agents.conftest import ALICE, APPROVER, World


def two_runs(world: World) -> list[AuditEvent]:
    world.seed(x="1")
    world.runner.submit([Step("put_entry", {"key": "a", "value": "1"}), Step("explode", {})], ALICE)
    run = world.runner.submit([Step("delete_entries", {"keys": ["x"]})], ALICE)
    world.runner.approve(run.id, APPROVER)
    return world.runner.audit.events()


def test_the_chain_verifies_and_links_every_row(any_world: World) -> None:
    rows = two_runs(any_world)

    assert [r.event for r in rows] == [
        "planned", "planned", "applied", "failed", "compensated", "finished",
        "planned", "approved", "applied", "finished",
    ]  # fmt: skip
    assert rows[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:], strict=False))
    assert any_world.runner.audit.verify_chain() is None
    assert any_world.runner.audit.head() == rows[-1].hash


def test_a_row_edited_in_the_database_is_detected(any_world: World) -> None:
    rows = two_runs(any_world)
    target = next(r for r in rows if r.event == "approved")
    with any_world.sessions() as db:  # someone with database access covers their tracks
        db.execute(text("UPDATE agent_audit SET principal = 'alice' WHERE id = :id"), {"id": target.id})
        db.commit()

    broken = any_world.runner.audit.verify_chain()

    assert broken is not None and broken.id == target.id and broken.event == "approved"
    assert "hash does not match" in broken.reason


def test_a_row_deleted_from_the_middle_is_detected(any_world: World) -> None:
    rows = two_runs(any_world)
    with any_world.sessions() as db:
        db.execute(text("DELETE FROM agent_audit WHERE id = :id"), {"id": rows[3].id})
        db.commit()

    broken = any_world.runner.audit.verify_chain()

    assert broken is not None and broken.id == rows[4].id and "prev_hash" in broken.reason


def test_the_orm_refuses_to_change_or_delete_an_event(world: World) -> None:
    two_runs(world)
    with world.sessions() as db:
        row = db.scalars(select(AuditEvent).limit(1)).one()
        row.result = {"forged": True}
        with pytest.raises(PermissionError, match="append-only"):
            db.commit()
    with world.sessions() as db:
        db.delete(db.scalars(select(AuditEvent).limit(1)).one())
        with pytest.raises(PermissionError):
            db.commit()
    assert world.runner.audit.verify_chain() is None


def test_unknown_events_are_refused(world: World) -> None:
    with pytest.raises(ValueError, match="unknown audit event"):
        world.runner.audit.append("r1", "deleted_everything", "alice")


def test_concurrent_writers_never_fork_the_chain(any_world: World) -> None:
    audit = any_world.runner.audit

    def write(name: str) -> None:
        for i in range(15):
            audit.append(f"run-{name}", "planned", name, step=i)

    threads = [threading.Thread(target=write, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(audit.events()) == 45 and audit.verify_chain() is None
