"""One chat turn: rewrite a follow-up into a standalone query, answer it, and keep both turns in SQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import asdict, dataclass

from app.conversations import ConversationStore, standalone_query
from app.llm import Generation, LLMUnavailable
from app.prompt import rewrite_messages
from app.quotas import Quotas
from app.services import Answer, AnswerService, Restart, StreamItem
from app.tiers import Tier
from retrieval.types import Principal, SearchMode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnStarted:
    """First event of a turn: where it is stored and what retrieval searched for."""

    conversation_id: str
    message_id: str
    search_query: str


TurnEvent = TurnStarted | StreamItem


def answer_flags(answer: Answer) -> dict[str, object]:
    """How an answer was made: quoted or generated, abstained, fallen back, citations matched afterwards."""
    return {
        "extractive": answer.extractive,
        "abstained": answer.abstained,
        "fallback": answer.fallback,
        "attributed": answer.attributed,
        "confidence": answer.confidence,
    }


def answer_meta(answer: Answer) -> dict[str, object]:
    """What is kept of an answer besides its text and citations."""
    return {**answer_flags(answer), "model": answer.model, "usage": asdict(answer.usage)}


class ChatService:
    """Multi-turn answers. The question is stored before anything can fail; the answer when it ends
    (`ok`), fails (`failed`) or the caller leaves mid-stream (`cancelled`)."""

    def __init__(
        self,
        answers: AnswerService,
        store: ConversationStore,
        rewriter: Tier | None = None,
        on_answer: Callable[[Answer], None] | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.answers = answers
        self.store = store
        self.rewriter = rewriter if rewriter is not None and rewriter.generates else None
        self.on_answer = on_answer or (lambda _: None)
        self.quotas = quotas or Quotas()

    async def standalone(self, history: list[dict[str, str]], question: str) -> tuple[str, Generation | None]:
        """A follow-up rewritten to stand alone: by the LLM when there is one (its call is returned, so its
        tokens count in the answer's usage), by a rule otherwise."""
        if not history:
            return question, None
        if self.rewriter is not None and self.rewriter.llm is not None:
            try:
                gen = await self.rewriter.llm.complete(rewrite_messages(history, question), max_tokens=64)
                rewritten = gen.text.strip().splitlines()[0].strip().strip('"') if gen.text.strip() else ""
                return (rewritten if 3 <= len(rewritten) <= 500 else standalone_query(history, question)), gen
            except LLMUnavailable as exc:
                log.warning("chat.rewrite_failed fallback=rule error=%s", exc)
        return standalone_query(history, question), None

    def _finished(self, principal: Principal, answer: Answer, rewrite: Generation | None) -> None:
        if rewrite is not None and self.rewriter is not None:
            tier, p, c = self.rewriter, rewrite.prompt_tokens, rewrite.completion_tokens
            answer.usage.charge(tier.name, p, c, tier.cost(p, c))
            answer.usage.stages_ms["rewrite"] = rewrite.total_ms
        self.on_answer(answer)
        self.quotas.charge(principal, answer.usage.prompt_tokens + answer.usage.completion_tokens)

    async def reply(
        self,
        principal: Principal,
        question: str,
        history: list[dict[str, str]],
        mode: SearchMode = SearchMode.HYBRID,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tags: list[str] | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """A stateless turn: the caller sends the history (the OpenAI-compatible endpoint)."""
        query, rewrite = await self.standalone(history, question)
        items = self.answers.stream(principal, question, mode, history, query, max_tokens, temperature, tags)
        async with aclosing(items):
            async for item in items:
                if isinstance(item, Answer):
                    self._finished(principal, item, rewrite)
                yield item

    async def turn(
        self,
        principal: Principal,
        question: str,
        conversation_id: str | None = None,
        mode: SearchMode = SearchMode.HYBRID,
        tags: list[str] | None = None,
    ) -> AsyncGenerator[TurnEvent, None]:
        """TurnStarted, then the answer stream (text deltas, maybe a Restart, the Answer); `tags` narrows
        retrieval to documents with at least one of them."""
        conv = self.store.open(principal.name, conversation_id, question)
        history = self.store.history(conv)
        query, rewrite = await self.standalone(history, question)
        self.store.add_question(conv, question, query)
        message_id = self.store.start_answer(conv)
        yield TurnStarted(conv, message_id, query)
        text, status = "", "failed"
        answer: Answer | None = None
        try:
            items = self.answers.stream(principal, question, mode, history, search_query=query, tags=tags)
            async with aclosing(items):
                async for item in items:
                    if isinstance(item, Answer):
                        answer, status = item, "ok"
                        self._finished(principal, item, rewrite)
                    elif isinstance(item, Restart):
                        text = ""
                    else:
                        text += item
                    yield item
        except (GeneratorExit, asyncio.CancelledError):
            status = "cancelled"  # the caller disconnected: the partial answer is kept as such
            raise
        finally:
            if answer is not None:
                meta = answer_meta(answer)
                self.store.finish_answer(message_id, answer.text, status, answer.citations, meta)
            else:
                self.store.finish_answer(message_id, text, status, [], {})
                log.warning("chat.turn_ended status=%s conversation=%s message=%s", status, conv, message_id)
