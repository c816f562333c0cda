"""A run that breaks any rule is refused before any step applies, naming the rule and the step."""

from __future__ import annotations

from typing import Any

import pytest

from agents.limits import RunLimits
from agents.runner import Step
from retrieval.types import Principal
from tests.agents.conftest import ALICE, READER, World

PUT_A = Step("put_entry", {"key": "a", "value": "1"})
PUT_B = Step("put_entry", {"key": "b", "value": "2"})
DELETE_X = Step("delete_entries", {"keys": ["x"]})
DELETE_XY = Step("delete_entries", {"keys": ["x", "y"]})

CASES: list[tuple[str, list[Step], RunLimits, Principal, str, int]] = [
    ("unknown tool", [PUT_A, Step("drop_database", {})], RunLimits(), ALICE, "unknown_tool", 1),
    ("bad input", [PUT_A, Step("put_entry", {"key": ""})], RunLimits(), ALICE, "input_schema", 1),
    ("missing scope", [Step("summarise", {"estimate": 0, "spend": 0}), PUT_A], RunLimits(), READER, "scope", 1),
    ("too many steps", [PUT_A, PUT_B, PUT_A], RunLimits(max_steps=2), ALICE, "max_steps", 2),
    ("too many writes", [PUT_A, PUT_B], RunLimits(max_writes=1), ALICE, "max_writes", 1),
    ("too many destructive", [PUT_A, DELETE_X, DELETE_X], RunLimits(max_destructive=1), ALICE, "max_destructive", 2),
    ("too many records", [PUT_A, DELETE_XY], RunLimits(max_records=2), ALICE, "max_records", 1),
    (
        "target not allowed",
        [PUT_A, Step("put_entry", {"key": "k", "value": "v", "table": "payroll"})],
        RunLimits(allowed_targets={"table": ["ledger"]}),
        ALICE,
        "allowed_targets",
        1,
    ),
    (
        "host not allowed",
        [
            Step("notify", {"url": "https://hooks.example.com/x", "text": "hi"}),
            Step("notify", {"url": "https://evil.test/x", "text": "hi"}),
        ],
        RunLimits(allowed_targets={"url_host": ["*.example.com"]}),
        ALICE,
        "allowed_targets",
        1,
    ),  # fmt: skip
    (
        "token budget",
        [PUT_A, Step("summarise", {"estimate": 900, "spend": 0})],
        RunLimits(token_budget=500),
        ALICE,
        "token_budget",
        1,
    ),
]


@pytest.mark.parametrize(("steps", "limits", "who", "rule", "step"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_before_anything_applies(
    world: World, steps: list[Step], limits: RunLimits, who: Principal, rule: str, step: int
) -> None:
    run = world.runner.submit(steps, who, limits)

    assert run.status == "refused"
    assert (run.rule, run.failed_step) == (rule, step)
    assert f"step {step}" in run.reason
    assert world.ledger() == {} and world.outbox.read_text() == ""
    assert all(s.status == "pending" for s in run.steps)
    events = world.runner.audit.events(run.id)
    assert [(e.event, e.step, e.principal) for e in events] == [("denied", step, who.name)]
    assert events[0].result["rule"] == rule and events[0].tool == steps[step].tool


def test_refusal_reasons_say_what_is_wrong(world: World) -> None:
    bad: dict[str, Any] = {"key": "a"}
    run = world.runner.submit([Step("put_entry", bad)], ALICE)
    assert run.reason.startswith("step 0 (put_entry): value: Field required")
    run = world.runner.submit([Step("summarise", {"estimate": 1, "spend": 1}), PUT_A], READER)
    assert "needs scope 'ledger:write'" in run.reason and "'rita'" in run.reason
    run = world.runner.submit([Step("frobnicate")], ALICE)
    assert "no tool named 'frobnicate'" in run.reason and "put_entry" in run.reason


def test_an_empty_run_is_refused(world: World) -> None:
    run = world.runner.submit([], ALICE)
    assert (run.status, run.rule, run.failed_step) == ("refused", "no_steps", None)


def test_admin_holds_every_scope(world: World) -> None:
    run = world.runner.submit([PUT_A], Principal("root", (), ("admin",)))
    assert run.status == "succeeded" and world.ledger() == {"a": "1"}


def test_a_dry_run_that_breaks_a_rule_is_refused_too(world: World) -> None:
    run = world.runner.submit([PUT_A, PUT_B], ALICE, RunLimits(max_writes=1), dry_run=True)
    assert (run.status, run.rule, run.failed_step) == ("refused", "max_writes", 1)
    assert all(s.plan is None for s in run.steps)
