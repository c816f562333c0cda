"""The limit checker walks a whole plan and names the first rule it breaks and the step that breaks it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.limits import RunLimits, StepCost, check_plan, target_allowed
from agents.tools import Target

READ = StepCost("read", [], 0)
WRITE = StepCost("write", [Target("table", "ledger")], 1)
DESTROY = StepCost("destructive", [Target("table", "ledger")], 3)


@pytest.mark.parametrize(
    ("limits", "steps", "rule", "step"),
    [
        (RunLimits(max_steps=2), [READ, READ, READ], "max_steps", 2),
        (RunLimits(max_writes=1), [READ, WRITE, READ, WRITE], "max_writes", 3),
        (RunLimits(max_destructive=1), [DESTROY, WRITE, DESTROY], "max_destructive", 2),
        (RunLimits(max_destructive=0), [WRITE, DESTROY], "max_destructive", 1),
        (RunLimits(max_records=4), [WRITE, DESTROY, WRITE], "max_records", 2),
        (RunLimits(allowed_targets={"table": ["audit"]}), [READ, WRITE], "allowed_targets", 1),
        (RunLimits(token_budget=100), [StepCost("read", [], 0, 60), StepCost("read", [], 0, 60)], "token_budget", 1),
    ],
)
def test_first_violation_names_rule_and_step(limits: RunLimits, steps: list[StepCost], rule: str, step: int) -> None:
    violation = check_plan(limits, steps)
    assert violation is not None
    assert (violation.rule, violation.step) == (rule, step)
    assert str(step) in violation.message


def test_a_plan_within_every_limit_passes() -> None:
    limits = RunLimits(max_steps=3, max_writes=2, max_records=4, max_destructive=1, token_budget=10)
    assert check_plan(limits, [READ, WRITE, DESTROY]) is None


def test_tokens_already_spent_count_against_the_budget() -> None:
    assert check_plan(RunLimits(token_budget=100), [StepCost("read", [], 0, 30)], tokens_spent=50) is None
    violation = check_plan(RunLimits(token_budget=100), [StepCost("read", [], 0, 30)], tokens_spent=80)
    assert violation is not None and violation.rule == "token_budget"


def test_allowed_targets_match_ids_and_host_patterns_and_refuse_unlisted_kinds() -> None:
    limits = RunLimits(allowed_targets={"url_host": ["hooks.example.com", "*.corp.example"], "source": ["notes"]})
    assert target_allowed(limits, Target("url_host", "HOOKS.example.com"))
    assert target_allowed(limits, Target("url_host", "ci.corp.example"))
    assert not target_allowed(limits, Target("url_host", "corp.example.evil.com"))
    assert target_allowed(limits, Target("source", "notes"))
    assert not target_allowed(limits, Target("source", "handbook"))
    assert not target_allowed(limits, Target("document", "notes:a.md"))  # kind not listed
    assert target_allowed(RunLimits(), Target("document", "anything"))  # no allow-list set


def test_limits_reject_negative_values() -> None:
    with pytest.raises(ValidationError):
        RunLimits(max_steps=-1)


def test_a_request_can_tighten_the_operators_limits_but_never_widen_them() -> None:
    ceiling = RunLimits(max_steps=5, max_writes=2, token_budget=1000, allowed_targets={"url_host": ["*.example.com"]})
    wide = RunLimits(
        max_steps=50,
        max_writes=1,
        max_destructive=9,
        token_budget=None,
        allowed_targets={"url_host": ["api.example.com", "evil.com", "*.evil.com"], "source": ["notes"]},
    )
    got = wide.within(ceiling)
    assert (got.max_steps, got.max_writes, got.max_destructive, got.token_budget) == (5, 1, 1, 1000)
    assert got.allowed_targets == {"url_host": ["api.example.com"]}  # kinds and hosts the ceiling does not cover go
    assert RunLimits(token_budget=10).within(RunLimits()).token_budget == 10
    assert RunLimits().within(RunLimits(allowed_targets={"source": ["notes"]})).allowed_targets == {"source": ["notes"]}
