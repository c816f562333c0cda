"""Run limits and the check of a whole plan against them, before anything executes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field

from agents.tools import Effect, Target


class RunLimits(BaseModel):
    """How far one run may reach. `allowed_targets`, when set, lists per kind the ids or glob patterns
    (`*.example.com`) a step may touch; a kind it does not name is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int = Field(default=10, ge=0)
    max_writes: int = Field(default=5, ge=0)  # steps whose effect is write or destructive
    max_records: int = Field(default=100, ge=0)  # records touched over the whole run
    max_destructive: int = Field(default=1, ge=0)
    allowed_targets: dict[str, list[str]] | None = None
    token_budget: int | None = Field(default=None, ge=0)

    def within(self, ceiling: RunLimits) -> RunLimits:
        """These limits, no looser than the operator's `ceiling`: a request can tighten limits, never widen them.

        Counts take the smaller value; a target pattern is kept only where a ceiling pattern of its kind covers it.
        """
        budget = (
            self.token_budget
            if ceiling.token_budget is None
            else min(self.token_budget or ceiling.token_budget, ceiling.token_budget)
        )
        targets = self.allowed_targets if ceiling.allowed_targets is None else ceiling.allowed_targets
        if ceiling.allowed_targets is not None and self.allowed_targets is not None:
            targets = {
                kind: [
                    p for p in patterns if any(fnmatchcase(p.lower(), c.lower()) for c in ceiling.allowed_targets[kind])
                ]
                for kind, patterns in self.allowed_targets.items()
                if kind in ceiling.allowed_targets
            }
        return RunLimits(
            max_steps=min(self.max_steps, ceiling.max_steps),
            max_writes=min(self.max_writes, ceiling.max_writes),
            max_records=min(self.max_records, ceiling.max_records),
            max_destructive=min(self.max_destructive, ceiling.max_destructive),
            allowed_targets=targets,
            token_budget=budget,
        )


@dataclass(frozen=True)
class StepCost:
    """What one planned step declares: its effect, targets, records and expected tokens."""

    effect: Effect
    targets: Sequence[Target]
    records: int
    tokens: int = 0


@dataclass(frozen=True)
class Violation:
    """The first rule a plan breaks, and at which step (0-based)."""

    rule: str
    step: int
    message: str


def target_allowed(limits: RunLimits, target: Target) -> bool:
    if limits.allowed_targets is None:
        return True
    patterns = limits.allowed_targets.get(target.kind)
    if patterns is None:
        return False
    value = target.id.lower() if target.kind == "url_host" else target.id
    return any(fnmatchcase(value, p.lower() if target.kind == "url_host" else p) for p in patterns)


def check_plan(limits: RunLimits, steps: Sequence[StepCost], tokens_spent: int = 0) -> Violation | None:
    """Walk the steps adding up what they declare; return the first limit crossed, or None."""
    writes = destructive = records = 0
    tokens = tokens_spent
    for i, step in enumerate(steps):
        if i + 1 > limits.max_steps:
            return Violation("max_steps", i, f"step {i} is over: {len(steps)} steps; max_steps={limits.max_steps}")
        if step.effect != "read":
            writes += 1
            if writes > limits.max_writes:
                return Violation("max_writes", i, f"step {i} is write number {writes}; max_writes={limits.max_writes}")
        if step.effect == "destructive":
            destructive += 1
            if destructive > limits.max_destructive:
                return Violation(
                    "max_destructive",
                    i,
                    f"step {i} is destructive step {destructive}; max_destructive={limits.max_destructive}",
                )
        records += step.records
        if records > limits.max_records:
            return Violation(
                "max_records", i, f"by step {i} the run touches {records} records; max_records={limits.max_records}"
            )
        for target in step.targets:
            if not target_allowed(limits, target):
                return Violation("allowed_targets", i, f"step {i} touches {target.kind} {target.id!r}, not allowed")
        tokens += step.tokens
        if limits.token_budget is not None and tokens > limits.token_budget:
            return Violation(
                "token_budget", i, f"by step {i} the run expects {tokens} tokens; token_budget={limits.token_budget}"
            )
    return None
