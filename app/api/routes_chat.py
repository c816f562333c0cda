"""Conversations and feedback of the caller: list, reopen, delete, rate an answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from app.api.deps import ContainerDep, PrincipalDep
from app.api.schemas import FeedbackIn

router = APIRouter(prefix="/v1", tags=["chat"])


@router.get("/me")
async def me(principal: PrincipalDep) -> dict[str, Any]:
    """Who the key belongs to (the chat page shows it after sign-in)."""
    return {"name": principal.name, "groups": list(principal.groups), "scopes": list(principal.scopes)}


@router.get("/conversations")
async def list_conversations(
    principal: PrincipalDep, container: ContainerDep, limit: int = Query(50, ge=1, le=500)
) -> dict[str, Any]:
    """The caller's conversations, most recent first."""
    return {"conversations": await run_in_threadpool(container.conversations.list, principal.name, limit)}


@router.get("/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, principal: PrincipalDep, container: ContainerDep) -> dict[str, Any]:
    """One conversation with every turn, its citations and the caller's ratings."""
    return await run_in_threadpool(container.conversations.get, principal.name, conversation_id)


@router.delete("/conversations/{conversation_id}", status_code=204)
async def delete_conversation(conversation_id: str, principal: PrincipalDep, container: ContainerDep) -> None:
    await run_in_threadpool(container.conversations.delete, principal.name, conversation_id)


@router.post("/feedback", status_code=204)
async def feedback(body: FeedbackIn, principal: PrincipalDep, container: ContainerDep) -> None:
    """Thumbs up or down on one of the caller's answers; rating again replaces it. Counted in /metrics."""
    await run_in_threadpool(container.conversations.rate, principal.name, body.message_id, body.rating, body.comment)
