"""OpenAI-compatible chat completions: point an existing OpenAI client at kb and get cited, grounded answers.

The last user message is the question, earlier user/assistant messages are the conversation. Citations travel
in an extra `citations` field (on the response, and on the last chunk of a stream) that OpenAI clients ignore.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.answer_out import citations_out, token_counts, until_disconnected, usage_out
from app.api.deps import ContainerDep, PrincipalDep
from app.api.errors import ApiError
from app.api.schemas import TAGS_FILTER, tag_filter
from app.chat import answer_flags
from app.services import Answer, PromptTooLong, Restart, StreamItem
from ingestion.catalog import MAX_TAGS

router = APIRouter(prefix="/v1", tags=["openai"])
MAX_MESSAGES = 100
MAX_HISTORY_CHARS = 50_000


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str = ""


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # n, top_p, user, … are accepted and ignored
    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    tags: list[str] | None = Field(None, max_length=MAX_TAGS, description=f"kb extension: {TAGS_FILTER}")

    _tags = field_validator("tags")(tag_filter)


def _models(container: ContainerDep) -> list[str]:
    return [container.settings.chat_model_name]


@router.get("/models")
async def list_models(_: PrincipalDep, container: ContainerDep) -> dict[str, Any]:
    """The model names /v1/chat/completions answers to."""
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "kb"} for m in _models(container)],
    }


def _split(body: ChatCompletionIn, max_chars: int) -> tuple[str, list[dict[str, str]]]:
    """(question, history): the question is the last message, which must be the user's."""
    last = body.messages[-1]
    if last.role != "user" or not last.text.strip():
        raise ApiError(400, "invalid_request", "the last message must be a non-empty user message", param="messages")
    question = last.text.strip()
    if len(question) > max_chars:
        raise ApiError(
            400,
            "context_length_exceeded",
            f"the question has {len(question)} characters; at most {max_chars} are allowed",
            param="messages",
        )
    history = [{"role": m.role, "content": m.text} for m in body.messages[:-1] if m.role in ("user", "assistant")]
    if sum(len(m["content"]) for m in history) > MAX_HISTORY_CHARS:
        raise ApiError(
            400,
            "context_length_exceeded",
            f"the conversation exceeds {MAX_HISTORY_CHARS} characters; send fewer earlier messages",
            param="messages",
        )
    return question, history


def _extra(answer: Answer) -> dict[str, Any]:
    return {
        "citations": [c.model_dump() for c in citations_out(answer)],
        "kb": {**answer_flags(answer), "usage": usage_out(answer.usage)},
    }


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionIn, request: Request, principal: PrincipalDep, container: ContainerDep
) -> dict[str, Any] | StreamingResponse:
    """Retrieval-augmented chat completion in the OpenAI format, streamed when `stream` is true."""
    if body.model not in _models(container):
        raise ApiError(
            404,
            "model_not_found",
            f"the model {body.model!r} does not exist; GET /v1/models lists {_models(container)}",
            param="model",
        )
    question, history = _split(body, container.settings.max_query_chars)
    container.quotas.check(principal)
    try:
        container.answers.check_question(question)
    except PromptTooLong as exc:
        raise ApiError(400, "context_length_exceeded", str(exc), param="messages") from exc
    items = container.chat.reply(
        principal,
        question,
        history,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        tags=body.tags,
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chunks(until_disconnected(items, request), completion_id, created, body.model, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    answer = await _collect(items)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": token_counts(answer.usage),
        **_extra(answer),
    }


async def _collect(items: AsyncGenerator[StreamItem, None]) -> Answer:
    async for item in items:
        if isinstance(item, Answer):
            return item
    raise RuntimeError("the answer stream ended without an answer")


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _chunks(
    items: AsyncGenerator[StreamItem, None], cid: str, created: int, model: str, include_usage: bool
) -> AsyncGenerator[str, None]:
    yield _data(_chunk(cid, created, model, {"role": "assistant", "content": ""}))
    async for item in items:
        if isinstance(item, Restart):
            # A stream cannot take back what it sent: say so, then give the quoted answer.
            note = "\n\n(The model failed mid-answer; quoted from the documents instead:)\n"
            yield _data(_chunk(cid, created, model, {"content": note}))
        elif isinstance(item, Answer):
            yield _data({**_chunk(cid, created, model, {}, item.finish_reason), **_extra(item)})
            if include_usage:
                yield _data({**_chunk(cid, created, model, {}), "choices": [], "usage": token_counts(item.usage)})
        else:
            yield _data(_chunk(cid, created, model, {"content": item}))
    yield "data: [DONE]\n\n"
