"""Run state lives in SQL: another process (a new engine on the same database) sees and carries on a run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from agents.errors import InvalidRunState, RunNotFound
from agents.limits import RunLimits
from agents.registry import Registry
from agents.runner import Runner, Step
from tests.agents.conftest import ALICE, APPROVER, World
from tests.agents.ledger import DeleteEntries, DyingPut, PutEntry
from tests.conftest import REPO


def test_a_paused_run_is_approved_from_another_process(any_world: World) -> None:
    any_world.seed(x="1")
    limits = RunLimits(max_records=5, allowed_targets={"table": ["ledger"]})
    steps = [Step("put_entry", {"key": "a", "value": "1"}), Step("delete_entries", {"keys": ["x"]})]
    run = any_world.runner.submit(steps, ALICE, limits)
    assert run.status == "awaiting_approval"

    # a second process: its own engine, sessions and registry over the same database
    url = any_world.sessions.kw["bind"].url.render_as_string(hide_password=False)
    other_sessions = sessionmaker(create_engine(url), expire_on_commit=False)
    other = Runner(Registry([PutEntry(other_sessions), DeleteEntries(other_sessions)]), other_sessions)
    seen = other.get_run(run.id)
    assert seen.principal == ALICE and seen.limits == limits and seen.next_step == 1
    assert [s.status for s in seen.steps] == ["applied", "awaiting_approval"]
    assert seen.steps[0].undo == {"key": "a", "before": None}

    done = other.approve(run.id, APPROVER)

    assert done.status == "succeeded" and any_world.ledger() == {"a": "1"}
    assert any_world.runner.get_run(run.id).status == "succeeded"
    assert other.audit.verify_chain() is None
    other_sessions.kw["bind"].dispose()


def test_an_unknown_run_id_is_a_clear_error(world: World) -> None:
    with pytest.raises(RunNotFound):
        world.runner.get_run("nope")


def test_runs_are_listed_newest_first_per_principal(world: World) -> None:
    first = world.runner.submit([Step("put_entry", {"key": "a", "value": "1"})], ALICE)
    second = world.runner.submit([Step("put_entry", {"key": "b", "value": "2"})], ALICE, dry_run=True)
    world.runner.submit([Step("put_entry", {"key": "c", "value": "3"})], APPROVER)  # refused: no scope

    assert [r.id for r in world.runner.list_runs("alice")] == [second.id, first.id]
    assert [r.status for r in world.runner.list_runs()] == ["refused", "dry_run", "succeeded"]


def test_a_run_left_running_by_a_dead_process_is_rolled_back_on_recovery(world: World) -> None:
    world.seed(x="1")
    steps = [Step("put_entry", {"key": "a", "value": "1"}), Step("delete_entries", {"keys": ["x"]})]
    run = world.runner.submit(steps, ALICE)
    with pytest.raises(InvalidRunState):
        world.runner.recover(run.id)  # paused, not interrupted
    world.runner.store.set_run(run.id, status="running")  # as if the approving process died mid-step

    recovered = world.runner.recover(run.id)

    assert (recovered.status, recovered.rule, recovered.failed_step) == ("rolled_back", "interrupted", 1)
    assert world.ledger() == {"x": "1"}


CRASHING_PROCESS = """
import sys
from agents.runner import Runner, Step
from tests.agents.conftest import ALICE, make_sessions
from tests.agents.ledger import DyingPut, PutEntry
from agents.registry import Registry

sessions = make_sessions(sys.argv[1])
runner = Runner(Registry([PutEntry(sessions), DyingPut(sessions)]), sessions)
runner.submit([Step("put_entry", {"key": "a", "value": "1"}), Step("dying_put", {"key": "b", "value": "2"})], ALICE)
"""


def test_a_step_its_process_died_inside_is_reported_for_a_person_not_taken_as_never_run(world: World) -> None:
    url = world.sessions.kw["bind"].url.render_as_string(hide_password=False)
    died = subprocess.run([sys.executable, "-c", CRASHING_PROCESS, url], cwd=REPO, capture_output=True, text=True)
    assert died.returncode == 3, died.stderr  # the process really died inside the second step's apply
    assert world.ledger() == {"a": "1", "b": "2"}  # and that step's effect is real
    (left,) = world.runner.list_runs()
    assert left.status == "running" and [s.status for s in left.steps] == ["applied", "applying"]

    recovered = Runner(Registry([PutEntry(world.sessions), DyingPut(world.sessions)]), world.sessions).recover(left.id)

    assert recovered.status == "rollback_failed" and recovered.compensation_failures == [1]
    assert [s.status for s in recovered.steps] == ["compensated", "compensation_failed"]
    assert "died while this step was applying" in recovered.steps[1].error
    assert "undo them by hand" in recovered.reason
    assert world.ledger() == {"b": "2"}  # the recorded step is undone; the other is left for the person
