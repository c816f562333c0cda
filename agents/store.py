"""Runs and steps in SQL, read back as plain views so any process can show or resume a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from agents.errors import InvalidRunState, RunNotFound
from agents.limits import RunLimits
from agents.models import AgentRun, AgentStep, utcnow
from retrieval.types import Principal


@dataclass(frozen=True)
class StepView:
    """One step as stored."""

    position: int
    tool: str
    input: dict[str, Any]
    status: str
    plan: dict[str, Any] | None
    result: dict[str, Any] | None
    undo: dict[str, Any] | None
    error: str
    approved_by: str
    compensation_attempts: int


@dataclass(frozen=True)
class RunView:
    """One run as stored: status, why, which step, and its steps."""

    id: str
    principal: Principal
    limits: RunLimits
    dry_run: bool
    status: str
    reason: str
    rule: str
    failed_step: int | None
    next_step: int
    records_touched: int
    tokens_spent: int
    steps: list[StepView] = field(default_factory=list)

    @property
    def compensation_failures(self) -> list[int]:
        """Steps whose undo failed after every retry; someone must fix these by hand."""
        return [s.position for s in self.steps if s.status == "compensation_failed"]


def principal_json(p: Principal) -> dict[str, Any]:
    return {"name": p.name, "groups": list(p.groups), "scopes": list(p.scopes), "key_id": p.key_id}


class RunStore:
    """Create, read and change runs and steps; each call is one transaction."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def create(
        self,
        run_id: str,
        principal: Principal,
        limits: RunLimits,
        dry_run: bool,
        steps: list[tuple[str, dict[str, Any]]],
        tokens_spent: int = 0,
    ) -> None:
        with self.sessions() as db:
            db.add(
                AgentRun(
                    id=run_id,
                    principal=principal_json(principal),
                    principal_name=principal.name,
                    limits=limits.model_dump(mode="json"),
                    dry_run=dry_run,
                    status="planning",
                    tokens_spent=tokens_spent,
                )
            )
            db.flush()
            db.add_all(AgentStep(run_id=run_id, position=i, tool=t, input=inp) for i, (t, inp) in enumerate(steps))
            db.commit()

    def get(self, run_id: str) -> RunView:
        with self.sessions() as db:
            run = db.get(AgentRun, run_id)
            if run is None:
                raise RunNotFound(f"no run {run_id!r}")
            steps = db.scalars(select(AgentStep).where(AgentStep.run_id == run_id).order_by(AgentStep.position))
            p = run.principal
            return RunView(
                id=run.id,
                principal=Principal(p["name"], tuple(p["groups"]), tuple(p["scopes"]), p.get("key_id", "")),
                limits=RunLimits.model_validate(run.limits),
                dry_run=run.dry_run,
                status=run.status,
                reason=run.reason,
                rule=run.rule,
                failed_step=run.failed_step,
                next_step=run.next_step,
                records_touched=run.records_touched,
                tokens_spent=run.tokens_spent,
                steps=[
                    StepView(
                        s.position,
                        s.tool,
                        s.input,
                        s.status,
                        s.plan,
                        s.result,
                        s.undo,
                        s.error,
                        s.approved_by,
                        s.compensation_attempts,
                    )
                    for s in steps
                ],
            )

    def list(self, principal: str | None = None, limit: int = 50) -> list[RunView]:
        """The newest runs first, optionally only those one principal started."""
        query = select(AgentRun.id).order_by(AgentRun.created_at.desc()).limit(limit)
        if principal is not None:
            query = query.where(AgentRun.principal_name == principal)
        with self.sessions() as db:
            ids = list(db.scalars(query))
        return [self.get(run_id) for run_id in ids]

    def set_run(self, run_id: str, **values: Any) -> None:
        with self.sessions() as db:
            db.execute(update(AgentRun).where(AgentRun.id == run_id).values(updated_at=utcnow(), **values))
            db.commit()

    def set_step(self, run_id: str, position: int, **values: Any) -> None:
        with self.sessions() as db:
            db.execute(
                update(AgentStep).where(AgentStep.run_id == run_id, AgentStep.position == position).values(**values)
            )
            db.commit()

    def claim(self, run_id: str, expected: str, new: str) -> None:
        """Move a run from `expected` to `new` status, or fail if someone else moved it first."""
        with self.sessions() as db:
            moved = db.execute(
                update(AgentRun)
                .where(AgentRun.id == run_id, AgentRun.status == expected)
                .values(status=new, updated_at=utcnow())
            )
            db.commit()
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            current = self.get(run_id).status
            raise InvalidRunState(f"run {run_id} is {current!r}, not {expected!r}; get the run to see where it is")
