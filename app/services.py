"""Search and answer services: what the routes and the CLI call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from anyio import to_thread

from app.citations import CitationFilter, attribute
from app.llm import Generation, LLMClient, LLMUnavailable, TokenCounter
from app.observability import request_id, stage, tracer
from app.prompt import ABSTAIN_TEXT, Passage, build_messages, order_passages
from retrieval.compress import CONTEXT_RANK_PRIOR, QUOTE_RANK_PRIOR, CompressedContext, compress
from retrieval.embedder import TextEmbedder
from retrieval.rerank import Reranker
from retrieval.search import Retriever
from retrieval.types import Citation, Hit, Principal, SearchMode, Usage

log = logging.getLogger(__name__)

NO_ANSWER = "I could not find this in the documents you can read."


class PromptTooLong(ValueError):
    """The question (with the fixed prompt) does not fit the model's context window."""


@dataclass
class Answer:
    """An answer with the passages it cites; `extractive` says it is quoted, not generated."""

    text: str
    citations: list[Citation]
    hits: list[Hit]
    extractive: bool = True
    confidence: float | None = None  # reranker's calibrated confidence, else the best sentence's cosine
    usage: Usage = field(default_factory=Usage)
    abstained: bool = False  # nothing readable was relevant enough: the answer says so instead of guessing
    fallback: str = ""  # why a generated answer was replaced by the extractive one ("" when it was not)
    model: str = ""  # the model that generated the text; "" for extractive answers
    first_token_ms: float | None = None
    finish_reason: str = "stop"  # "length" when the output budget cut the answer short
    attributed: bool = False  # the model cited nothing; citations were matched to its sentences afterwards


class Restart:
    """In a stream: discard the text sent so far, what follows replaces it (the LLM failed mid-answer)."""


StreamItem = str | Restart | Answer


@dataclass(frozen=True)
class AnswerSettings:
    """How much evidence an answer uses, how long it may be, and when it abstains."""

    passages: int = 5
    quote_budget_tokens: int = 120  # extractive: the best sentences within this many tokens
    quote_sentences: int = 4
    relative_floor: float = 0.6  # extractive: quote sentences scoring at least this share of the best one
    context_tokens: int = 1000  # generated: passage text in the prompt, in the served model's tokens
    max_tokens: int = 256  # generated: output tokens at most
    context_window: int = 2048  # the served model's context length (vLLM --max-model-len)
    temperature: float = 0.0
    min_confidence: float = 0.2  # abstain under this calibrated reranker confidence
    # With no reranker: abstain when no kept sentence has at least this cosine to the question. 0.45 is the highest
    # value on a 0.05 grid whose false abstention, averaged over both dev sets, stays at or under 5% (BENCHMARKS.md).
    min_similarity: float = 0.45


class SearchService:
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def search(self, principal: Principal, query: str, top_k: int, mode: SearchMode) -> list[Hit]:
        return self.retriever.search(query, principal, mode, top_k)


@dataclass
class _Evidence:
    hits: list[Hit]
    context: CompressedContext
    confidence: float | None
    usage: Usage

    @property
    def relevant_enough(self) -> bool:
        return bool(self.context.passages)


class AnswerService:
    """Retrieve, rerank (when a cross-encoder is configured), compress, then generate with the LLM, or quote
    the best sentences when there is none or it fails. Every answer cites only passages the caller may read."""

    def __init__(
        self,
        retriever: Retriever,
        embedder: TextEmbedder,
        reranker: Reranker,
        llm: LLMClient | None = None,
        tokens: TokenCounter | None = None,
        settings: AnswerSettings | None = None,
    ) -> None:
        self.retriever = retriever
        self.embedder = embedder
        self.reranker = reranker
        self.llm = llm or LLMClient.disabled()
        self.tokens = tokens or TokenCounter("", embedder.count_tokens)
        self.settings = settings or AnswerSettings()

    # -- evidence ---------------------------------------------------------------------------------------
    def _evidence(self, principal: Principal, query: str, mode: SearchMode, generate: bool) -> _Evidence:
        s = self.settings
        usage = Usage()
        depth = max(s.passages, self.reranker.settings.max_depth) if self.reranker.enabled else s.passages
        with stage(usage, "retrieve"):
            hits = self.retriever.search(query, principal, mode, depth)
        if not hits:
            return _Evidence([], CompressedContext(), None, usage)
        with stage(usage, "rerank"):
            ranked = self.reranker.rerank(query, hits)
        hits = [r.hit for r in ranked][: s.passages]
        with stage(usage, "compress"):
            context = self._compress(query, hits, generate)
        confidence = ranked[0].confidence
        if confidence is not None:
            relevant = confidence >= s.min_confidence
        else:
            confidence = context.best_similarity
            relevant = confidence >= s.min_similarity
        if not relevant:
            log.info("answer.abstain reason=low_confidence confidence=%.3f", confidence)
            context = CompressedContext(tokens_in=context.tokens_in)
        return _Evidence(hits, context, confidence, usage)

    def _compress(self, query: str, hits: list[Hit], generate: bool) -> CompressedContext:
        """The passages' best sentences: a generator's context budget, or the few an extractive answer quotes."""
        s = self.settings
        return compress(
            query,
            hits,
            embed=self.embedder.embed_documents,
            query_vec=self.embedder.embed_query(query),
            count_tokens=self.tokens if generate else self.embedder.count_tokens,
            budget_tokens=s.context_tokens if generate else s.quote_budget_tokens,
            rank_prior=CONTEXT_RANK_PRIOR if generate else QUOTE_RANK_PRIOR,
        )

    # -- extractive -------------------------------------------------------------------------------------
    def _quote(self, ev: _Evidence) -> Answer:
        """The few sentences close to the best one, each followed by the number of its passage."""
        s = self.settings
        scores = sorted((k.score for _, kept in ev.context.passages for k in kept), reverse=True)
        floor = max(scores[0] * s.relative_floor, scores[min(len(scores), s.quote_sentences) - 1]) if scores else 0
        parts: list[str] = []
        citations: list[Citation] = []
        for hit, kept in ev.context.passages:
            sentences = [k for k in kept if k.score >= floor]
            if not sentences:
                continue
            citations.append(hit.citation)
            parts.extend(f"{' '.join(k.text.split())} [{len(citations)}]" for k in sentences)
        if not parts:
            return Answer(NO_ANSWER, [], ev.hits, confidence=ev.confidence, usage=ev.usage, abstained=True)
        return Answer(" ".join(parts), citations, ev.hits, confidence=ev.confidence, usage=ev.usage)

    def answer(
        self,
        principal: Principal,
        question: str,
        mode: SearchMode = SearchMode.HYBRID,
        history: list[dict[str, str]] | None = None,
    ) -> Answer:
        """The whole answer at once (CLI, evals): generated when an LLM is configured, else extractive."""
        if not self.llm.enabled:
            return self._quote(self._evidence(principal, question, mode, generate=False))

        async def collect() -> Answer:
            async for item in self.stream(principal, question, mode, history or []):
                if isinstance(item, Answer):
                    return item
            raise RuntimeError("the answer stream ended without an answer")

        return asyncio.run(collect())

    # -- generated --------------------------------------------------------------------------------------
    def _evidence_texts(self, context: CompressedContext) -> list[tuple[Citation, str]]:
        """Each passage's kept sentences as one quoted text with its citation, best-ranked passage first."""
        evidence: list[tuple[Citation, str]] = []
        for hit, kept in context.passages:
            text = " … ".join(" ".join(k.text.split()) for k in kept)
            c = hit.citation
            start, end = kept[0].citation.start_char, kept[-1].citation.end_char
            evidence.append((Citation(c.doc_id, c.path, c.title, c.chunk, text, start, end), text))
        return evidence

    @property
    def prompt_limit(self) -> int:
        """Prompt tokens a request may use: the model's window less the output budget."""
        return self.settings.context_window - self.settings.max_tokens

    def check_question(self, question: str) -> None:
        """Refuse, before any work, a question that cannot fit the prompt even without passages."""
        if self.llm.enabled:
            self._fit([], [], question)

    def _fit(
        self, evidence: list[tuple[Citation, str]], history: list[dict[str, str]], question: str
    ) -> tuple[list[dict[str, str]], list[Passage]]:
        """Messages (and their numbered passages) that fit the window with the output budget: the oldest turns
        go first, then the lowest-ranked passages (`evidence` is in rank order)."""
        limit = self.prompt_limit
        history = list(history)
        while True:
            passages = order_passages(evidence)
            messages = build_messages(passages, history, question)
            used = self.tokens.chat_tokens(messages)
            if used <= limit:
                return messages, passages
            if history:
                history = history[2:] if len(history) > 1 else []
            elif evidence:
                evidence = evidence[:-1]
            else:
                raise PromptTooLong(
                    f"the question takes {used} tokens with the instructions; the model's window leaves "
                    f"{limit} for the prompt. Ask a shorter question."
                )

    async def stream(
        self,
        principal: Principal,
        question: str,
        mode: SearchMode = SearchMode.HYBRID,
        history: list[dict[str, str]] | None = None,
        search_query: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Text deltas (str), possibly a Restart, and finally the Answer with citations and usage.

        `search_query` is what retrieval looks for (a standalone rewrite of a follow-up); the model answers
        `question` in the light of `history`. `max_tokens` may lower the output budget, never raise it.
        """
        query = search_query or question
        generate = self.llm.enabled
        ev = await to_thread.run_sync(self._evidence, principal, query, mode, generate)
        if not ev.relevant_enough:
            yield ABSTAIN_TEXT if generate else NO_ANSWER
            yield Answer(
                ABSTAIN_TEXT if generate else NO_ANSWER,
                [],
                ev.hits,
                extractive=not generate,
                confidence=ev.confidence,
                usage=ev.usage,
                abstained=True,
            )
            return
        if not generate:
            answer = self._quote(ev)
            yield answer.text
            yield answer
            return
        s = self.settings
        out_tokens = min(max_tokens or s.max_tokens, s.max_tokens)
        messages, passages = self._fit(self._evidence_texts(ev.context), history or [], question)
        cites = CitationFilter(passages)
        done: list[Generation] = []
        text = ""
        t0 = time.perf_counter()
        # Not a current span: the stream yields to its caller, and a span made current would leak into it.
        span = tracer.start_span(
            "generate", attributes={"kb.request_id": request_id.get(), "kb.model": self.llm.settings.model}
        )
        try:
            temp = s.temperature if temperature is None else temperature
            # aclosing: if our caller leaves mid-answer, the upstream request is closed now, not at GC time
            async with aclosing(self.llm.stream(messages, out_tokens, temp, done.append)) as pieces:
                async for piece in pieces:
                    out = cites.feed(piece)
                    if out:
                        text += out
                        yield out
            tail = cites.flush()
            if tail:
                text += tail
                yield tail
        except LLMUnavailable as exc:
            log.warning("llm.failed fallback=extractive streamed_chars=%d error=%s", len(text), exc)
            if text:
                yield Restart()
            # The same passages, compressed to the few sentences a quote needs: no second retrieval.
            quote_context = await to_thread.run_sync(self._compress, query, ev.hits, False)
            answer = self._quote(_Evidence(ev.hits, quote_context, ev.confidence, ev.usage))
            answer.fallback = f"llm_unavailable: {exc}"
            yield answer.text
            yield answer
            return
        finally:
            span.end()
        gen = done[0]
        ev.usage.stages_ms["generate"] = (time.perf_counter() - t0) * 1000
        ev.usage.prompt_tokens, ev.usage.completion_tokens = gen.prompt_tokens, gen.completion_tokens
        if not gen.prompt_tokens:  # a server that sends no usage in streams (llama.cpp): count it ourselves
            ev.usage.prompt_tokens = self.tokens.chat_tokens(messages)
            ev.usage.completion_tokens = self.tokens(gen.text)
        text, cited, abstained = text.strip(), cites.cited, _abstains(text)
        attributed = False
        if text and not cited and not abstained:
            embed, floor = self.embedder.embed_documents, s.min_similarity
            text, cited = await to_thread.run_sync(attribute, text, passages, embed, floor)
            attributed = bool(cited)
        yield Answer(
            text,
            [p.citation for p in cited],
            ev.hits,
            extractive=False,
            confidence=ev.confidence,
            usage=ev.usage,
            abstained=abstained,
            attributed=attributed,
            model=self.llm.settings.model,
            first_token_ms=gen.first_token_ms,
            finish_reason="length" if gen.finish_reason == "length" else "stop",
        )


def _abstains(text: str) -> bool:
    head = text.strip().lower().replace("’", "'")
    return head.startswith(ABSTAIN_TEXT.lower()[:12]) or head.startswith("i do not know")
