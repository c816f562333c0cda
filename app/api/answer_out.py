"""An Answer as the REST API shows it, in one JSON body or as server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import asdict
from typing import TypeVar

from starlette.requests import Request

from app.api.errors import error_body
from app.api.schemas import AnswerCitationOut, AnswerOut
from app.chat import TurnEvent, TurnStarted
from app.services import Answer, PromptTooLong, Restart
from retrieval.store import StoreUnavailable
from retrieval.types import Usage

log = logging.getLogger(__name__)
T = TypeVar("T")


def token_counts(usage: Usage) -> dict[str, int]:
    """OpenAI's usage block: tokens in, out and both."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def usage_out(usage: Usage) -> dict[str, object]:
    """Tokens, cost, cache hit, the tier that answered and why, degradation level and time per stage."""
    return {
        **token_counts(usage),
        "cost": round(usage.cost, 8),
        "cache_hit": usage.cache_hit,
        "cache_similarity": usage.cache_similarity,
        "tier": usage.tier,
        "route": usage.route,
        "escalations": usage.escalations,
        "degradation": usage.degradation,
        "by_tier": usage.by_tier,
        "stages_ms": {k: round(v, 2) for k, v in usage.stages_ms.items()},
    }


def citations_out(answer: Answer) -> list[AnswerCitationOut]:
    return [AnswerCitationOut(number=i, **asdict(c)) for i, c in enumerate(answer.citations, start=1)]


def answer_out(answer: Answer, started: TurnStarted | None = None) -> AnswerOut:
    return AnswerOut(
        answer=answer.text,
        extractive=answer.extractive,
        abstained=answer.abstained,
        fallback=answer.fallback,
        attributed=answer.attributed,
        model=answer.model,
        confidence=answer.confidence,
        citations=citations_out(answer),
        usage=usage_out(answer.usage),
        conversation_id=started.conversation_id if started else None,
        message_id=started.message_id if started else None,
    )


async def until_disconnected(items: AsyncGenerator[T, None], request: Request) -> AsyncGenerator[T, None]:
    """Pass items through until the client has gone, then close the source: that closes the upstream model
    request, so the model server stops generating for nobody (uvicorn does not cancel a streaming response)."""
    async with aclosing(items):
        async for item in items:
            if await request.is_disconnected():
                log.info("answer.client_disconnected path=%s", request.url.path)
                return
            yield item


def _event(name: str, data: object) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def sse(events: AsyncGenerator[TurnEvent, None], request: Request) -> AsyncGenerator[str, None]:
    """start → token… (restart) → citations → done; a failure after the start is an `error` event."""
    started: TurnStarted | None = None
    try:
        async for item in until_disconnected(events, request):
            if isinstance(item, TurnStarted):
                started = item
                yield _event("start", asdict(item))
            elif isinstance(item, Restart):
                yield _event("restart", {})
            elif isinstance(item, Answer):
                out = answer_out(item, started)
                yield _event("citations", {"citations": [c.model_dump() for c in out.citations]})
                yield _event("done", out.model_dump(exclude={"citations"}))
            else:
                yield _event("token", {"text": item})
    except PromptTooLong as exc:
        yield _event("error", error_body("context_length_exceeded", str(exc)))
    except StoreUnavailable as exc:
        yield _event("error", error_body("qdrant_unavailable", str(exc), 503, component="qdrant"))
