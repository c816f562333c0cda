"""Runs: admit a whole plan or refuse it, dry-run, pause for approval, roll back in reverse, replay."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session, sessionmaker

from agents.audit import AuditLog, as_json
from agents.errors import ApprovalDenied, InvalidRunState, UnknownTool
from agents.limits import RunLimits, StepCost, check_plan
from agents.registry import Registry
from agents.store import RunStore, RunView
from agents.tools import Tool, ToolContext
from retrieval.types import Principal


@dataclass(frozen=True)
class Step:
    """One step a caller asks for: a tool by name and its input."""

    tool: str
    input: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing compensation is retried, and the back-off between tries."""

    attempts: int = 3
    backoff_s: float = 0.5
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        return self.backoff_s * self.factor ** (attempt - 1)


@dataclass(frozen=True)
class PlanDiff:
    """A step whose plan today differs from the one stored when the run was planned."""

    position: int
    tool: str
    stored: dict[str, Any] | None
    current: dict[str, Any]


class _Refusal(Exception):
    def __init__(self, rule: str, step: int | None, message: str) -> None:
        super().__init__(message)
        self.rule, self.step, self.message = rule, step, message


_DIED_APPLYING = "the process died while this step was applying: check what it did and undo that by hand"


def _schema_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors())


class Runner:
    """Runs steps of registered tools for a principal, within limits, recorded in SQL and the audit log.

    Approval: a principal with `approve_scope` (or admin) approves or rejects a paused destructive step; that
    includes the run's own principal unless `allow_self_approval=False`. The run's principal may always reject
    (cancel) their own paused run. Steps always run with the run's principal, never the approver's."""

    def __init__(
        self,
        registry: Registry,
        sessions: sessionmaker[Session],
        *,
        retry: RetryPolicy | None = None,
        approve_scope: str = "approve",
        allow_self_approval: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = registry
        self.store = RunStore(sessions)
        self.audit = AuditLog(sessions)
        self.retry = retry or RetryPolicy()
        self.approve_scope = approve_scope
        self.allow_self_approval = allow_self_approval
        self.sleep = sleep

    def submit(
        self,
        steps: Sequence[Step],
        principal: Principal,
        limits: RunLimits | None = None,
        *,
        dry_run: bool = False,
        tokens_spent: int = 0,
        origin: dict[str, Any] | None = None,
    ) -> RunView:
        """Check every step and limit, plan them, then run (or, with `dry_run`, only return the plans).

        `tokens_spent`: what making the plan already cost (an LLM's proposal), counted against the token budget.
        `origin`: where the steps came from (the model and its raw tool calls, a dry run), kept in the audit log."""
        limits = limits or RunLimits()
        run_id = uuid.uuid4().hex
        self.store.create(run_id, principal, limits, dry_run, [(s.tool, as_json(s.input)) for s in steps], tokens_spent)
        if origin is not None:
            self.audit.append(run_id, "proposed", principal.name, result=origin)
        try:
            plans = self._admit(run_id, steps, principal, limits, tokens_spent)
        except _Refusal as refusal:
            self.store.set_run(
                run_id, status="refused", rule=refusal.rule, reason=refusal.message, failed_step=refusal.step
            )
            step = steps[refusal.step] if refusal.step is not None else None
            self.audit.append(
                run_id,
                "denied",
                principal.name,
                step=refusal.step,
                tool=step.tool if step else "",
                input=step.input if step else {},
                result={"rule": refusal.rule, "reason": refusal.message},
            )
            return self.store.get(run_id)
        for i, plan in enumerate(plans):
            self.store.set_step(run_id, i, status="planned", plan=plan)
            self.audit.append(
                run_id, "planned", principal.name, step=i, tool=steps[i].tool, input=steps[i].input, result=plan
            )
        if dry_run:
            self.store.set_run(run_id, status="dry_run")
            self.audit.append(run_id, "finished", principal.name, result={"status": "dry_run"})
            return self.store.get(run_id)
        self.store.set_run(run_id, status="running")
        return self._advance(run_id)

    def execute(self, run_id: str, principal: Principal) -> RunView:
        """Run what a dry run planned, as a new run by the same principal with the same limits. Everything is
        checked again (with the principal's scopes as they are now), since the data may have changed since."""
        dry = self.store.get(run_id)
        if dry.status != "dry_run":
            raise InvalidRunState(f"run {run_id} is {dry.status!r}; only a dry run can be executed")
        if dry.principal.name != principal.name:
            raise ApprovalDenied(f"run {run_id} was planned by {dry.principal.name!r}; only they can execute it")
        steps = [Step(s.tool, s.input) for s in dry.steps]
        origin = {"by": "dry_run", "run_id": run_id}
        return self.submit(steps, principal, dry.limits, tokens_spent=dry.tokens_spent, origin=origin)

    def get_run(self, run_id: str) -> RunView:
        return self.store.get(run_id)

    def list_runs(self, principal: str | None = None, limit: int = 50) -> list[RunView]:
        return self.store.list(principal, limit)

    def approve(self, run_id: str, approver: Principal) -> RunView:
        """Approve the paused destructive step and carry on with the run."""
        run = self._paused(run_id, approver, cancelling=False)
        self.store.claim(run_id, "awaiting_approval", "running")
        self.store.set_step(run_id, run.next_step, approved_by=approver.name)
        step = run.steps[run.next_step]
        self.audit.append(run_id, "approved", approver.name, step=step.position, tool=step.tool, input=step.input)
        return self._advance(run_id)

    def reject(self, run_id: str, approver: Principal, reason: str) -> RunView:
        """Reject the paused step: completed steps are compensated and the run ends `rolled_back`."""
        run = self._paused(run_id, approver, cancelling=True)
        self.store.claim(run_id, "awaiting_approval", "rolling_back")
        step = run.steps[run.next_step]
        self.store.set_step(run_id, step.position, status="rejected", error=reason)
        self.audit.append(
            run_id,
            "rejected",
            approver.name,
            step=step.position,
            tool=step.tool,
            input=step.input,
            result={"reason": reason},
        )
        why = f"step {step.position} ({step.tool}) rejected by {approver.name}: {reason}"
        return self._rollback(run_id, step.position, "rejected", why)

    def recover(self, run_id: str) -> RunView:
        """Roll back a run a dead process left `running` or `rolling_back` (call it only for such runs).
        A step the process died inside (`applying`) cannot be undone from a record it never wrote: it is reported
        as a compensation failure for a person to check, and the run ends `rollback_failed`."""
        run = self.store.get(run_id)
        if run.status not in {"running", "rolling_back"}:
            raise InvalidRunState(f"run {run_id} is {run.status!r}; only an interrupted run can be recovered")
        why = f"run interrupted at step {run.next_step}; rolled back on recovery"
        return self._rollback(run_id, run.next_step, "interrupted", why)

    def replay(self, run_id: str) -> list[PlanDiff]:
        """Re-plan the stored steps in dry-run; return the steps whose plan differs from the stored one."""
        run = self.store.get(run_id)
        diffs = []
        for s in run.steps:
            ctx = ToolContext(run.principal, run_id, s.position, dry_run=True)
            try:
                tool = self.registry.get(s.tool)
                current = self._plan(tool, tool.input_model.model_validate(s.input), ctx)
            except Exception as exc:  # tools are arbitrary code; a plan that fails now is a difference
                current = {"error": f"{type(exc).__name__}: {exc}"}
            if current != s.plan:
                diffs.append(PlanDiff(s.position, s.tool, s.plan, current))
        return diffs

    def _admit(
        self, run_id: str, steps: Sequence[Step], principal: Principal, limits: RunLimits, tokens_spent: int
    ) -> list[dict[str, Any]]:
        """Every check that must pass before anything executes; the plans of all steps when they do."""
        if not steps:
            raise _Refusal("no_steps", None, "a run needs at least one step")
        parsed: list[tuple[Tool[Any], BaseModel]] = []
        for i, step in enumerate(steps):
            try:
                tool = self.registry.get(step.tool)
            except UnknownTool as exc:
                raise _Refusal("unknown_tool", i, f"step {i}: {exc}") from None
            try:
                data = tool.input_model.model_validate(step.input)
            except ValidationError as exc:
                raise _Refusal("input_schema", i, f"step {i} ({tool.name}): {_schema_errors(exc)}") from None
            if not principal.has_scope(tool.scope):
                raise _Refusal(
                    "scope", i, f"step {i} ({tool.name}) needs scope {tool.scope!r}, which {principal.name!r} lacks"
                )
            parsed.append((tool, data))
        costs = [StepCost(t.effect, t.targets(d), t.records(d), t.tokens(d)) for t, d in parsed]
        violation = check_plan(limits, costs, tokens_spent)
        if violation is not None:
            raise _Refusal(violation.rule, violation.step, violation.message)
        plans = []
        for i, (tool, data) in enumerate(parsed):
            try:
                plans.append(self._plan(tool, data, ToolContext(principal, run_id, i, dry_run=True)))
            except Exception as exc:  # a plan that cannot be made is a refusal, before anything applies
                raise _Refusal("plan", i, f"step {i} ({tool.name}) cannot be planned: {exc}") from None
        return plans

    @staticmethod
    def _plan(tool: Tool[Any], data: BaseModel, ctx: ToolContext) -> dict[str, Any]:
        plan = tool.plan(data, ctx)
        record = {
            "summary": plan.summary,
            "details": plan.details,
            "effect": tool.effect,
            "targets": [{"kind": t.kind, "id": t.id} for t in tool.targets(data)],
            "records": tool.records(data),
        }
        return dict(as_json(record))

    def _paused(self, run_id: str, approver: Principal, cancelling: bool) -> RunView:
        run = self.store.get(run_id)
        if run.status != "awaiting_approval":
            raise InvalidRunState(f"run {run_id} is {run.status!r}; only a run awaiting approval can be decided")
        own = approver.name == run.principal.name
        may = approver.has_scope(self.approve_scope) and (self.allow_self_approval or not own)
        if not may and not (cancelling and own):
            self.audit.append(
                run_id,
                "denied",
                approver.name,
                step=run.next_step,
                tool=run.steps[run.next_step].tool,
                result={"rule": "approve_scope", "reason": "approver may not decide this run"},
            )
            raise ApprovalDenied(
                f"{approver.name!r} may not approve run {run_id}: it needs scope {self.approve_scope!r}"
                + ("" if self.allow_self_approval else " and someone other than the run's principal")
            )
        return run

    def _advance(self, run_id: str) -> RunView:
        """Apply steps from `next_step` on, stopping at an unapproved destructive step."""
        run = self.store.get(run_id)
        records, tokens = run.records_touched, run.tokens_spent
        who = run.principal.name
        for s in run.steps[run.next_step :]:
            ctx = ToolContext(run.principal, run_id, s.position)
            try:
                tool = self.registry.get(s.tool)
                data = tool.input_model.model_validate(s.input)
                if tool.effect == "destructive" and not s.approved_by:
                    self.store.set_step(run_id, s.position, status="awaiting_approval")
                    self.store.set_run(run_id, status="awaiting_approval", next_step=s.position)
                    return self.store.get(run_id)
                # Marked first: a process that dies inside apply leaves the step `applying`, which recovery
                # reports for a person to check instead of taking it as never run.
                self.store.set_step(run_id, s.position, status="applying")
                applied = tool.apply(data, ctx)
            except Exception as exc:  # tools are arbitrary code: any failure rolls the run back
                error = f"{type(exc).__name__}: {exc}"
                self.store.set_step(run_id, s.position, status="failed", error=error)
                self.audit.append(
                    run_id, "failed", who, step=s.position, tool=s.tool, input=s.input, result={"error": error}
                )
                return self._rollback(
                    run_id, s.position, "step_failed", f"step {s.position} ({s.tool}) failed: {error}"
                )
            touched = tool.records(data) if applied.records is None else applied.records
            records, tokens = records + touched, tokens + applied.tokens
            result, undo = as_json(applied.result), as_json(applied.undo)
            self.store.set_step(run_id, s.position, status="applied", result=result, undo=undo)
            self.store.set_run(run_id, next_step=s.position + 1, records_touched=records, tokens_spent=tokens)
            self.audit.append(
                run_id,
                "applied",
                who,
                step=s.position,
                tool=s.tool,
                input=s.input,
                result={"result": result, "undo": undo, "records": touched, "tokens": applied.tokens},
            )
            over = self._over_limit(run.limits, records, tokens)
            if over is not None:
                rule, why = over
                return self._rollback(run_id, s.position, rule, f"step {s.position} ({s.tool}) {why}")
        self.store.set_run(run_id, status="succeeded")
        self.audit.append(run_id, "finished", who, result={"status": "succeeded"})
        return self.store.get(run_id)

    @staticmethod
    def _over_limit(limits: RunLimits, records: int, tokens: int) -> tuple[str, str] | None:
        if records > limits.max_records:
            return "max_records", f"brought records touched to {records}; max_records={limits.max_records}"
        if limits.token_budget is not None and tokens > limits.token_budget:
            return "token_budget", f"brought tokens spent to {tokens}; token_budget={limits.token_budget}"
        return None

    def _rollback(self, run_id: str, failed_step: int, rule: str, reason: str) -> RunView:
        """Compensate applied steps in reverse order, retrying each; report every undo that still fails."""
        self.store.set_run(run_id, status="rolling_back")
        run = self.store.get(run_id)
        failures = []
        for s in reversed([s for s in run.steps if s.status in {"applied", "applying"}]):
            ctx = ToolContext(run.principal, run_id, s.position)
            tool: Tool[Any] | None = None
            try:
                tool = self.registry.get(s.tool)
            except UnknownTool as exc:
                error, attempt = str(exc), 0
            if tool is not None and tool.effect == "read":
                continue
            if s.status == "applying":  # only after a crash: the step may have done anything and left no undo
                error, attempt = _DIED_APPLYING, 0
            elif tool is not None:
                error, attempt = self._compensate(tool, s.undo or {}, ctx)
            if error:
                failures.append(s.position)
            event = "compensation_failed" if error else "compensated"
            outcome: dict[str, Any] = {"error": error, "attempts": attempt} if error else {"attempts": attempt}
            kept = {"error": error} if error else {}
            self.store.set_step(run_id, s.position, status=event, compensation_attempts=attempt, **kept)
            self.audit.append(
                run_id, event, run.principal.name, step=s.position, tool=s.tool, input=s.undo, result=outcome
            )
        status = "rollback_failed" if failures else "rolled_back"
        if failures:
            reason += f"; compensation failed for steps {sorted(failures)}: undo them by hand"
        self.store.set_run(run_id, status=status, rule=rule, reason=reason, failed_step=failed_step)
        self.audit.append(
            run_id,
            "finished",
            run.principal.name,
            result={"status": status, "rule": rule, "reason": reason, "compensation_failed": failures},
        )
        return self.store.get(run_id)

    def _compensate(self, tool: Tool[Any], undo: dict[str, Any], ctx: ToolContext) -> tuple[str, int]:
        """Try the undo up to `retry.attempts` times; the last error ("" when it worked) and the attempts used."""
        error = ""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                tool.compensate(undo, ctx)
                return "", attempt
            except Exception as exc:  # retried, then reported: never dropped
                error = f"{type(exc).__name__}: {exc}"
                if attempt < self.retry.attempts:
                    self.sleep(self.retry.delay(attempt))
        return error, self.retry.attempts
