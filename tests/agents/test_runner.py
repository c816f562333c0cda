"""Runs as a user lives them: dry-run, success, approval, rejection, rollback, compensation failure, replay."""

from __future__ import annotations

import pytest

from agents.errors import ApprovalDenied, InvalidRunState
from agents.limits import RunLimits
from agents.runner import Runner, Step
from retrieval.types import Principal
from tests.agents.conftest import ADMIN, ALICE, APPROVER, World
from tests.agents.ledger import Entry


def events(world: World, run_id: str) -> list[tuple[str, int | None]]:
    return [(e.event, e.step) for e in world.runner.audit.events(run_id)]


def test_dry_run_returns_each_plan_and_touches_nothing(world: World) -> None:
    world.seed(x="old")
    steps = [
        Step("put_entry", {"key": "a", "value": "1"}),
        Step("delete_entries", {"keys": ["x"]}),
        Step("notify", {"url": "https://hooks.example.com/done", "text": "done"}),
    ]
    run = world.runner.submit(steps, ALICE, dry_run=True)

    assert run.status == "dry_run"
    assert [s.plan["effect"] for s in run.steps if s.plan] == ["write", "destructive", "write"]
    assert run.steps[0].plan == {
        "summary": "set a to '1'",
        "details": {"key": "a", "before": None},
        "effect": "write",
        "targets": [{"kind": "table", "id": "ledger"}],
        "records": 1,
    }
    assert run.steps[1].plan is not None and run.steps[1].plan["details"] == {"rows": {"x": "old"}}
    assert run.steps[2].plan is not None and run.steps[2].plan["targets"] == [
        {"kind": "url_host", "id": "hooks.example.com"}
    ]
    assert world.ledger() == {"x": "old"} and world.outbox.read_text() == ""
    assert events(world, run.id) == [("planned", 0), ("planned", 1), ("planned", 2), ("finished", None)]


def test_a_run_within_its_limits_applies_every_step(world: World) -> None:
    steps = [
        Step("put_entry", {"key": "a", "value": "1"}),
        Step("notify", {"url": "https://hooks.example.com/done", "text": "a is set"}),
    ]
    run = world.runner.submit(
        steps, ALICE, RunLimits(allowed_targets={"table": ["ledger"], "url_host": ["*.example.com"]})
    )

    assert run.status == "succeeded" and [s.status for s in run.steps] == ["applied", "applied"]
    assert run.records_touched == 2
    assert run.steps[0].result == {"key": "a", "value": "1"}
    assert world.ledger() == {"a": "1"} and "a is set" in world.outbox.read_text()
    assert events(world, run.id) == [("planned", 0), ("planned", 1), ("applied", 0), ("applied", 1), ("finished", None)]


def test_a_destructive_step_waits_for_approval(world: World) -> None:
    world.seed(x="1", y="2")
    steps = [Step("put_entry", {"key": "a", "value": "1"}), Step("delete_entries", {"keys": ["x", "y"]})]
    run = world.runner.submit(steps, ALICE, RunLimits(max_records=3))

    assert run.status == "awaiting_approval" and run.next_step == 1
    assert [s.status for s in run.steps] == ["applied", "awaiting_approval"]
    assert world.ledger() == {"a": "1", "x": "1", "y": "2"}  # nothing deleted yet

    with pytest.raises(ApprovalDenied, match="needs scope 'approve'"):
        world.runner.approve(run.id, Principal("mallory", (), ("read", "ledger:write")))
    assert world.runner.get_run(run.id).status == "awaiting_approval"

    done = world.runner.approve(run.id, APPROVER)
    assert done.status == "succeeded" and done.steps[1].approved_by == "bob"
    assert world.ledger() == {"a": "1"}
    assert [(e.event, e.principal) for e in world.runner.audit.events(run.id)][-4:] == [
        ("denied", "mallory"),
        ("approved", "bob"),
        ("applied", "alice"),  # the step runs with the requester's authority, not the approver's
        ("finished", "alice"),
    ]
    with pytest.raises(InvalidRunState):
        world.runner.approve(run.id, APPROVER)


def test_self_approval_needs_the_approve_scope_and_can_be_switched_off(world: World) -> None:
    carol = Principal("carol", (), ("ledger:delete", "approve"))
    world.seed(x="1")
    run = world.runner.submit([Step("delete_entries", {"keys": ["x"]})], carol)
    assert world.runner.approve(run.id, carol).status == "succeeded"

    strict = Runner(world.registry(), world.sessions, allow_self_approval=False)
    world.seed(y="1")
    run = strict.submit([Step("delete_entries", {"keys": ["y"]})], carol)
    with pytest.raises(ApprovalDenied, match="someone other than"):
        strict.approve(run.id, carol)
    assert strict.approve(run.id, ADMIN).status == "succeeded"


def test_rejection_rolls_back_the_completed_steps(world: World) -> None:
    world.seed(a="old", x="1")
    steps = [
        Step("put_entry", {"key": "a", "value": "new"}),
        Step("put_entry", {"key": "b", "value": "2"}),
        Step("delete_entries", {"keys": ["x"]}),
    ]
    run = world.runner.submit(steps, ALICE)
    assert run.status == "awaiting_approval" and world.ledger() == {"a": "new", "b": "2", "x": "1"}

    run = world.runner.reject(run.id, APPROVER, "x is still in use")

    assert run.status == "rolled_back" and run.rule == "rejected" and run.failed_step == 2
    assert run.reason == "step 2 (delete_entries) rejected by bob: x is still in use"
    assert [s.status for s in run.steps] == ["compensated", "compensated", "rejected"]
    assert world.ledger() == {"a": "old", "x": "1"}
    assert events(world, run.id)[-4:] == [("rejected", 2), ("compensated", 1), ("compensated", 0), ("finished", None)]


def test_the_requester_may_cancel_but_not_approve_without_the_scope(world: World) -> None:
    world.seed(x="1")
    run = world.runner.submit([Step("delete_entries", {"keys": ["x"]})], ALICE)
    with pytest.raises(ApprovalDenied):
        world.runner.approve(run.id, ALICE)
    assert world.runner.reject(run.id, ALICE, "changed my mind").status == "rolled_back"
    assert world.ledger() == {"x": "1"}


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_a_failing_step_rolls_back_the_steps_before_it_in_reverse(world: World, position: int) -> None:
    world.seed(a="old")
    steps = [
        Step("put_entry", {"key": "a", "value": "new"}),
        Step("notify", {"url": "https://hooks.example.com/x", "text": "a changed"}),
        Step("put_entry", {"key": "b", "value": "2"}),
    ]
    steps.insert(position, Step("explode", {"message": "disk full"}))
    run = world.runner.submit(steps, ALICE)

    assert run.status == "rolled_back" and run.rule == "step_failed" and run.failed_step == position
    assert run.reason == f"step {position} (explode) failed: OSError: disk full"
    assert world.ledger() == {"a": "old"} and world.outbox.read_text() == ""
    assert [s.status for s in run.steps] == ["compensated"] * position + ["failed"] + ["planned"] * (3 - position)
    undone = [step for event, step in events(world, run.id) if event == "compensated"]
    assert undone == list(reversed(range(position)))


def test_more_records_touched_than_allowed_rolls_back_mid_run(world: World) -> None:
    world.seed(**{"team-1": "a", "team-2": "b", "team-3": "c"})
    steps = [
        Step("put_entry", {"key": "z", "value": "1"}),
        Step("retag_prefix", {"prefix": "team-", "value": "x", "expected": 1}),
    ]
    run = world.runner.submit(steps, ALICE, RunLimits(max_records=3))  # admitted: 1 + 1 expected

    assert run.status == "rolled_back" and run.rule == "max_records" and run.failed_step == 1
    assert "brought records touched to 4; max_records=3" in run.reason
    assert world.ledger() == {"team-1": "a", "team-2": "b", "team-3": "c"}


def test_spending_past_the_token_budget_rolls_back_mid_run(world: World) -> None:
    steps = [Step("put_entry", {"key": "a", "value": "1"}), Step("summarise", {"estimate": 100, "spend": 900})]
    run = world.runner.submit(steps, ALICE, RunLimits(token_budget=500))

    assert run.status == "rolled_back" and run.rule == "token_budget" and run.tokens_spent == 900
    assert world.ledger() == {}


def test_a_flaky_compensation_is_retried_with_back_off(world: World) -> None:
    world.stubborn.failures = 2
    steps = [Step("stubborn_put", {"key": "a", "value": "1"}), Step("explode", {})]
    run = world.runner.submit(steps, ALICE)

    assert run.status == "rolled_back" and run.steps[0].compensation_attempts == 3
    assert world.sleeps == [0.1, 0.2] and world.ledger() == {}


def test_a_compensation_that_keeps_failing_is_reported_and_the_rest_still_undone(world: World) -> None:
    world.stubborn.failures = 99
    steps = [
        Step("put_entry", {"key": "a", "value": "1"}),
        Step("stubborn_put", {"key": "b", "value": "2"}),
        Step("put_entry", {"key": "c", "value": "3"}),
        Step("explode", {}),
    ]
    run = world.runner.submit(steps, ALICE)

    assert run.status == "rollback_failed" and run.compensation_failures == [1]
    assert "compensation failed for steps [1]" in run.reason and run.reason.startswith("step 3 (explode) failed")
    assert run.steps[1].error == "ConnectionError: ledger unavailable (try 3)"
    assert world.stubborn.tries == 3 and world.ledger() == {"b": "2"}  # only the stubborn step's write remains
    failed = [e for e in world.runner.audit.events(run.id) if e.event == "compensation_failed"]
    assert [(e.step, e.result["attempts"]) for e in failed] == [(1, 3)]
    assert events(world, run.id)[-4:] == [
        ("compensated", 2),
        ("compensation_failed", 1),
        ("compensated", 0),
        ("finished", None),
    ]


def test_replay_shows_what_changed_since_the_run_was_planned(world: World) -> None:
    world.seed(x="1", y="2")
    steps = [Step("put_entry", {"key": "a", "value": "1"}), Step("delete_entries", {"keys": ["x", "y"]})]
    run = world.runner.submit(steps, ALICE, RunLimits(max_records=3), dry_run=True)
    assert world.runner.replay(run.id) == []

    with world.sessions() as db:  # the world moves on: someone else sets `a` and deletes `y`
        db.add(Entry(key="a", value="9"))
        db.delete(db.get(Entry, "y"))
        db.commit()
    diffs = world.runner.replay(run.id)

    assert [d.position for d in diffs] == [0, 1]
    assert diffs[0].stored is not None and diffs[0].stored["details"]["before"] is None
    assert diffs[0].current["details"]["before"] == "9"
    assert diffs[1].current["details"] == {"rows": {"x": "1"}}
    assert world.ledger() == {"a": "9", "x": "1"}  # replay is a dry run


def test_executing_a_dry_run_runs_its_plan_as_a_new_run_checked_again(world: World) -> None:
    steps = [Step("put_entry", {"key": "a", "value": "1"}), Step("put_entry", {"key": "b", "value": "2"})]
    dry = world.runner.submit(steps, ALICE, RunLimits(max_writes=2, token_budget=500), dry_run=True, tokens_spent=120)
    assert dry.status == "dry_run" and world.ledger() == {}

    run = world.runner.execute(dry.id, ALICE)
    assert run.id != dry.id and run.status == "succeeded" and world.ledger() == {"a": "1", "b": "2"}
    assert run.limits == dry.limits and run.tokens_spent == 120  # the proposal's tokens stay on the bill
    assert [(e.event, e.result) for e in world.runner.audit.events(run.id)][0] == (
        "proposed",
        {"by": "dry_run", "run_id": dry.id},
    )
    with pytest.raises(InvalidRunState, match="only a dry run"):
        world.runner.execute(run.id, ALICE)


def test_only_the_planner_may_execute_a_dry_run_and_with_the_scopes_they_hold_now(world: World) -> None:
    dry = world.runner.submit([Step("put_entry", {"key": "a", "value": "1"})], ALICE, dry_run=True)
    with pytest.raises(ApprovalDenied, match="only they can execute it"):
        world.runner.execute(dry.id, ADMIN)

    demoted = Principal("alice", ("eng",), ("read", "ledger:read"))  # her key lost ledger:write since the plan
    run = world.runner.execute(dry.id, demoted)
    assert run.status == "refused" and run.rule == "scope" and world.ledger() == {}


def test_the_origin_of_proposed_steps_is_audited_before_their_plan(world: World) -> None:
    origin = {"by": "llm", "model": "m", "tool_calls": [{"name": "put_entry", "arguments": '{"key": "a"}'}]}
    run = world.runner.submit(
        [Step("put_entry", {"key": "a", "value": "1"})], ALICE, dry_run=True, tokens_spent=40, origin=origin
    )
    assert [(e.event, e.principal) for e in world.runner.audit.events(run.id)] == [
        ("proposed", "alice"),
        ("planned", "alice"),
        ("finished", "alice"),
    ]
    assert world.runner.audit.events(run.id)[0].result == origin
    assert world.runner.audit.verify_chain() is None


def test_a_proposal_that_already_spent_the_budget_is_refused_before_any_step(world: World) -> None:
    run = world.runner.submit(
        [Step("summarise", {"estimate": 1, "spend": 1})], ALICE, RunLimits(token_budget=100), tokens_spent=100
    )
    assert run.status == "refused" and run.rule == "token_budget", run.reason
