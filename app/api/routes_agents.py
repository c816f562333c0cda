"""Agent routes: the tools a caller may use, runs (submit, dry-run, approve, reject, replay) and the audit log."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from agents.limits import RunLimits
from agents.runner import Step
from agents.store import RunView, principal_json
from app.agent_proposals import ProposalRefused
from app.api.deps import AdminDep, ContainerDep, PrincipalDep
from app.api.errors import ApiError
from app.container import Container
from retrieval.types import Principal

router = APIRouter(prefix="/v1", tags=["agents"])


class StepIn(BaseModel):
    tool: str = Field(min_length=1, max_length=64)
    input: dict[str, Any] = Field(default_factory=dict)


class RunIn(BaseModel):
    steps: list[StepIn] = Field(max_length=100)
    dry_run: bool = False
    limits: RunLimits | None = None


class ProposeIn(BaseModel):
    request: str = Field(min_length=1, max_length=4000, description="what to do, in the caller's words")
    dry_run: bool = True  # the default: show the plan; POST /v1/runs/{id}/execute runs it
    limits: RunLimits | None = None


class RejectIn(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


def run_out(run: RunView) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "reason": run.reason,
        "rule": run.rule,
        "failed_step": run.failed_step,
        "next_step": run.next_step,
        "dry_run": run.dry_run,
        "principal": principal_json(run.principal),
        "limits": run.limits.model_dump(mode="json"),
        "records_touched": run.records_touched,
        "tokens_spent": run.tokens_spent,
        "compensation_failures": run.compensation_failures,
        "steps": [asdict(s) for s in run.steps],
    }


def _may_see(container: Container, run: RunView, principal: Principal) -> bool:
    return run.principal.name == principal.name or principal.has_scope(container.runner.approve_scope)


def _visible_run(container: Container, run_id: str, principal: Principal) -> RunView:
    run = container.runner.get_run(run_id)
    if not _may_see(container, run, principal):
        raise ApiError(403, "forbidden", f"run {run_id} belongs to another principal; ask an approver or admin")
    return run


@router.get("/tools")
def list_tools(principal: PrincipalDep, container: ContainerDep) -> dict[str, Any]:
    """The tools this caller's scopes allow, with their input schemas and MCP-style annotations."""
    return {"tools": [d.to_dict() for d in container.tools.declarations(principal)]}


def _limits(container: Container, asked: RunLimits | None) -> RunLimits:
    ceiling = container.settings.run_limits
    return asked.within(ceiling) if asked is not None else ceiling


def _refused(run: RunView) -> None:
    if run.status == "refused":
        param = f"steps.{run.failed_step}" if run.failed_step is not None else None
        extra: dict[str, object] = {"rule": run.rule, "step": run.failed_step, "run_id": run.id}
        raise ApiError(400, "run_refused", run.reason, param=param, extra=extra)


@router.post("/runs", status_code=status.HTTP_201_CREATED)
def submit_run(body: RunIn, principal: PrincipalDep, container: ContainerDep) -> dict[str, Any]:
    """Check every step and limit, then run (or only plan, with `dry_run`); a refusal applies nothing."""
    steps = [Step(s.tool, s.input) for s in body.steps]
    run = container.runner.submit(steps, principal, _limits(container, body.limits), dry_run=body.dry_run)
    _refused(run)
    return run_out(run)


@router.post("/runs/propose")
async def propose_run(body: ProposeIn, principal: PrincipalDep, container: ContainerDep) -> dict[str, Any]:
    """The model turns a request into tool calls (only the caller's tools); they become a run, checked like any
    other. `outcome`: `run` (see `run.status`: `dry_run`, `refused` with its rule, ...), `no_tool_call` or
    `invalid` (the model's calls could not be read; nothing ran)."""
    try:
        p = await container.proposer.propose(principal, body.request, _limits(container, body.limits), body.dry_run)
    except ProposalRefused as exc:
        extra: dict[str, object] = {"rule": exc.rule} if exc.rule else {}
        raise ApiError(exc.status, exc.code, exc.message, extra=extra) from None
    return {
        "outcome": p.outcome,
        "run": run_out(p.run) if p.run is not None else None,
        "text": p.text,
        "tool_calls": p.tool_calls,
        "error": p.error,
        "passages": p.passages,
        "usage": {
            "tier": p.tier,
            "model": p.model,
            "prompt_tokens": p.prompt_tokens,
            "completion_tokens": p.completion_tokens,
            "cost": p.cost,
            "total_ms": round(p.total_ms, 1),
        },
    }


@router.post("/runs/{run_id}/execute", status_code=status.HTTP_201_CREATED)
def execute_run(run_id: str, principal: PrincipalDep, container: ContainerDep) -> dict[str, Any]:
    """Run what a dry run planned: a new run, checked again against the caller's scopes and the limits."""
    run = container.runner.execute(run_id, principal)
    _refused(run)
    return run_out(run)


@router.get("/runs")
def list_runs(principal: PrincipalDep, container: ContainerDep, limit: int = 50) -> dict[str, Any]:
    """The newest runs: an approver or admin sees everyone's, anyone else their own."""
    mine = None if principal.has_scope(container.runner.approve_scope) else principal.name
    return {"runs": [run_out(r) for r in container.runner.list_runs(mine, min(max(limit, 1), 200))]}


@router.get("/runs/{run_id}")
def get_run(run_id: str, principal: PrincipalDep, container: ContainerDep) -> dict[str, Any]:
    return run_out(_visible_run(container, run_id, principal))


@router.post("/runs/{run_id}/approve")
def approve_run(run_id: str, principal: PrincipalDep, container: ContainerDep) -> dict[str, Any]:
    """Approve the paused destructive step (scope `approve`); the run carries on with its requester's authority."""
    return run_out(container.runner.approve(run_id, principal))


@router.post("/runs/{run_id}/reject")
def reject_run(run_id: str, body: RejectIn, principal: PrincipalDep, container: ContainerDep) -> dict[str, Any]:
    """Reject the paused step: completed steps are undone in reverse order and the run ends `rolled_back`."""
    return run_out(container.runner.reject(run_id, principal, body.reason))


@router.get("/runs/{run_id}/replay")
def replay_run(run_id: str, principal: PrincipalDep, container: ContainerDep) -> dict[str, Any]:
    """Plan the run's steps again in dry-run and list the steps whose plan differs from the stored one."""
    _visible_run(container, run_id, principal)
    diffs = container.runner.replay(run_id)
    return {"run_id": run_id, "same": not diffs, "differences": [asdict(d) for d in diffs]}


@router.get("/audit")
def audit(
    _: AdminDep, container: ContainerDep, run_id: str | None = None, after_id: int = 0, limit: int = 1000
) -> dict[str, Any]:
    """Audit events in order (of one run, or all) and whether the whole hash chain still holds."""
    rows = container.runner.audit.events(run_id, after_id, min(max(limit, 1), 5000))
    broken = container.runner.audit.verify_chain()
    return {
        "events": [
            {
                "id": e.id,
                "run_id": e.run_id,
                "step": e.step,
                "event": e.event,
                "principal": e.principal,
                "tool": e.tool,
                "input": e.input,
                "result": e.result,
                "at": e.at.isoformat(),
                "prev_hash": e.prev_hash,
                "hash": e.hash,
            }
            for e in rows
        ],
        "head": container.runner.audit.head(),
        "verify": {"ok": broken is None, "broken": asdict(broken) if broken else None},
    }
