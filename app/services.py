"""Search and answer services: what the routes and the CLI call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from anyio import to_thread

from app.citations import CitationFilter, attribute, grounded_share
from app.llm import Generation, LLMUnavailable
from app.load import LoadGovernor, LoadSettings
from app.observability import request_id, stage, tracer
from app.prompt import ABSTAIN_TEXT, Passage, build_messages, order_passages
from app.routing import Policy, Router, RouteSettings, signals
from app.tiers import EXTRACTIVE, Tier, TierSettings
from retrieval.cache import CacheHit, SemanticCache, safe_lookup
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
    """How much evidence an answer uses and when it abstains. Output and window sizes belong to each tier."""

    passages: int = 5
    quote_budget_tokens: int = 120  # extractive: the best sentences within this many tokens
    quote_sentences: int = 4
    relative_floor: float = 0.6  # extractive: quote sentences scoring at least this share of the best one
    context_tokens: int = 1000  # generated: passage text in the prompt, in the served model's tokens
    temperature: float = 0.0
    min_confidence: float = 0.2  # abstain under this calibrated reranker confidence
    # With no reranker: abstain when no kept sentence has at least this cosine to the question. 0.45 is the highest
    # value on a 0.05 grid whose false abstention, averaged over both dev sets, stays at or under 5% (BENCHMARKS.md).
    min_similarity: float = 0.45


class SearchService:
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def search(
        self, principal: Principal, query: str, top_k: int, mode: SearchMode, tags: list[str] | None = None
    ) -> list[Hit]:
        return self.retriever.search(query, principal, mode, top_k, tags=tags)


class _SentenceVectors:
    """The passages' sentence vectors, computed once per answer: the quote made after a generator's context
    (routing, fallback, cascade) compresses the same sentences again and reuses them."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray]) -> None:
        self.embed = embed
        self.vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, np.asarray(self.embed(missing)), strict=True))
        return np.stack([self.vectors[t] for t in texts]) if texts else np.asarray(self.embed([]))


@dataclass
class _Evidence:
    hits: list[Hit]
    context: CompressedContext
    confidence: float | None
    usage: Usage
    calibrated: bool = False  # confidence is the reranker's calibrated probability, not a cosine
    agreement: float | None = None
    vectors: _SentenceVectors | None = None

    @property
    def relevant_enough(self) -> bool:
        return bool(self.context.passages)


class AnswerService:
    """Look in the semantic cache; else retrieve, rerank (when a cross-encoder is configured) and compress,
    then let the routed tier answer: quote the best sentences (the zero-token tier) or generate with a model,
    climbing the cascade when a cheap answer is not grounded. Every answer cites only passages the caller
    may read; under load the governor's level makes each step cheaper."""

    def __init__(
        self,
        retriever: Retriever,
        embedder: TextEmbedder,
        reranker: Reranker,
        tiers: list[Tier] | None = None,
        settings: AnswerSettings | None = None,
        router: RouteSettings | None = None,
        cache: SemanticCache | None = None,
        governor: LoadGovernor | None = None,
    ) -> None:
        self.retriever = retriever
        self.embedder = embedder
        self.reranker = reranker
        self.tiers = tiers or [Tier(TierSettings(name=EXTRACTIVE, kind="extractive"))]
        self.settings = settings or AnswerSettings()
        self.router = Router(self.tiers, router)
        self.cache = cache
        self.governor = governor or LoadGovernor(LoadSettings(enabled=False))
        generating = [t for t in self.tiers if t.generates]
        # Context is compressed once, in the cheapest model's tokens; each tier's window is checked when it fits.
        self.tokens = generating[0].tokens if generating else None

    @property
    def generates(self) -> bool:
        return any(t.generates for t in self.tiers)

    # -- evidence ---------------------------------------------------------------------------------------
    def _evidence(
        self,
        principal: Principal,
        query: str,
        mode: SearchMode,
        generate: bool,
        qvec: list[float],
        level: int,
        tags: list[str] | None = None,
    ) -> _Evidence:
        s = self.settings
        usage = Usage(degradation=level)
        vectors = _SentenceVectors(self.embedder.embed_documents)
        depth = max(s.passages, self.reranker.settings.max_depth) if self.reranker.enabled else s.passages
        with stage(usage, "retrieve"):
            hits = self.retriever.search(query, principal, mode, depth, dense=qvec, tags=tags)
        if not hits:
            return _Evidence([], CompressedContext(), None, usage)
        agreement = self.retriever.agreement(query, hits, mode)
        with stage(usage, "rerank"):
            rerank_depth = max(s.passages, self.reranker.depth_for(len(hits)) // 2) if level >= 1 else None
            ranked = self.reranker.rerank(query, hits, rerank_depth)
        hits = [r.hit for r in ranked][: s.passages]
        with stage(usage, "compress"):
            budget = s.context_tokens // 2 if level >= 2 else s.context_tokens
            context = self._compress(query, qvec, hits, generate, vectors, budget)
        confidence = ranked[0].confidence
        calibrated = confidence is not None
        if confidence is not None:
            relevant = confidence >= s.min_confidence
        else:
            confidence = context.best_similarity
            relevant = confidence >= s.min_similarity
        if not relevant:
            log.info("answer.abstain reason=low_confidence confidence=%.3f", confidence)
            context = CompressedContext(tokens_in=context.tokens_in)
        return _Evidence(hits, context, confidence, usage, calibrated, agreement, vectors)

    def _compress(
        self,
        query: str,
        qvec: list[float],
        hits: list[Hit],
        generate: bool,
        embed: Callable[[list[str]], np.ndarray],
        budget: int | None = None,
    ) -> CompressedContext:
        """The passages' best sentences: a generator's context budget, or the few an extractive answer quotes."""
        s = self.settings
        return compress(
            query,
            hits,
            embed=embed,
            query_vec=qvec,
            count_tokens=self.tokens if generate and self.tokens else self.embedder.count_tokens,
            budget_tokens=(budget or s.context_tokens) if generate else s.quote_budget_tokens,
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

    async def _quoted(self, query: str, qvec: list[float], ev: _Evidence, recompress: bool) -> Answer:
        """The quoted answer; `recompress` when the context was cut for a generator (its budget is larger)."""
        if recompress:
            vectors = ev.vectors or _SentenceVectors(self.embedder.embed_documents)
            with stage(ev.usage, "quote"):
                context = await to_thread.run_sync(self._compress, query, qvec, ev.hits, False, vectors)
            ev = _Evidence(ev.hits, context, ev.confidence, ev.usage, ev.calibrated, ev.agreement, vectors)
        answer = self._quote(ev)
        answer.usage.tier = self.tiers[0].name
        return answer

    def answer(
        self,
        principal: Principal,
        question: str,
        mode: SearchMode = SearchMode.HYBRID,
        history: list[dict[str, str]] | None = None,
        tags: list[str] | None = None,
    ) -> Answer:
        """The whole answer at once (CLI, evals)."""

        async def collect() -> Answer:
            async with aclosing(self.stream(principal, question, mode, history or [], tags=tags)) as items:
                async for item in items:
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
            start, end = kept[0].citation.start_char, kept[-1].citation.end_char
            evidence.append((replace(hit.citation, text=text, start_char=start, end_char=end), text))
        return evidence

    def check_question(self, question: str) -> None:
        """Refuse, before any work, a question that fits no tier's prompt even without passages."""
        generating = [t for t in self.tiers if t.generates]
        errors: list[PromptTooLong] = []
        for tier in generating:
            try:
                self._fit(tier, [], [], question)
                return
            except PromptTooLong as exc:
                errors.append(exc)
        if errors:
            raise errors[-1]

    def _fit(
        self, tier: Tier, evidence: list[tuple[Citation, str]], history: list[dict[str, str]], question: str
    ) -> tuple[list[dict[str, str]], list[Passage]]:
        """Messages (and their numbered passages) that fit the tier's window with its output budget: the oldest
        turns go first, then the lowest-ranked passages (`evidence` is in rank order)."""
        assert tier.tokens is not None
        limit = tier.settings.context_window - tier.settings.max_tokens
        history = list(history)
        while True:
            passages = order_passages(evidence)
            messages = build_messages(passages, history, question)
            used = tier.tokens.chat_tokens(messages)
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
        tags: list[str] | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Text deltas (str), possibly a Restart, and finally the Answer with citations and usage.

        `search_query` is what retrieval looks for (a standalone rewrite of a follow-up); the model answers
        `question` in the light of `history`. `max_tokens` may lower a tier's output budget, never raise it.
        `tags`: retrieve only from documents with at least one of them (the ACL filter applies as always).
        """
        level = self.governor.enter()
        t0, done = time.perf_counter(), False
        try:
            items = self._stream(
                principal, question, mode, history or [], search_query, max_tokens, temperature, level, tags
            )
            async with aclosing(items) as answer_items:
                async for item in answer_items:
                    if isinstance(item, Answer):
                        done = True
                        item.usage.stages_ms["total"] = (time.perf_counter() - t0) * 1000
                    yield item
        finally:
            self.governor.exit((time.perf_counter() - t0) * 1000 if done else None)

    async def _stream(
        self,
        principal: Principal,
        question: str,
        mode: SearchMode,
        history: list[dict[str, str]],
        search_query: str | None,
        max_tokens: int | None,
        temperature: float | None,
        level: int,
        tags: list[str] | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        query = search_query or question
        usage = Usage(degradation=level)
        with stage(usage, "embed"):
            qvec = await to_thread.run_sync(self.embedder.embed_query, query)
        cache = self.cache if self.cache is not None and self.cache.enabled and not history else None
        if cache is not None:
            with stage(usage, "cache"):
                hit = await to_thread.run_sync(safe_lookup, cache, qvec, principal, mode.value, tags)
            if hit is not None:
                answer = _from_cache(hit, usage)
                yield answer.text
                yield answer
                return
        generate = self.generates and level < 4
        ev = await to_thread.run_sync(self._evidence, principal, query, mode, generate, qvec, level, tags)
        ev.usage.stages_ms = {**usage.stages_ms, **ev.usage.stages_ms}
        if not ev.relevant_enough:
            text = ABSTAIN_TEXT if generate else NO_ANSWER
            ev.usage.tier, ev.usage.route = self.tiers[0].name, "abstained:low_confidence"
            yield text
            yield Answer(text, [], ev.hits, extractive=True, confidence=ev.confidence, usage=ev.usage, abstained=True)
            return
        turns = sum(1 for m in history if m.get("role") == "user")
        route = self.router.route(signals(question, ev.confidence, ev.calibrated, ev.agreement, turns), level)
        ev.usage.route = route.reason
        log.info("answer.route tier=%s reason=%s level=%d", self.tiers[route.tier].name, route.reason, level)
        keep = cache if cache is not None and level == 0 else None
        if not self.tiers[route.tier].generates:
            final = await self._quoted(query, qvec, ev, recompress=generate)
            yield final.text
            self._keep(keep, qvec, query, mode, ev.hits, final, tags)
            yield final
        else:
            async with aclosing(
                self._cascade(route.tier, query, qvec, question, history, ev, max_tokens, temperature, level)
            ) as items:
                async for item in items:
                    if isinstance(item, Answer):
                        self._keep(keep, qvec, query, mode, ev.hits, item, tags)
                    yield item

    def _keep(
        self,
        cache: SemanticCache | None,
        qvec: list[float],
        query: str,
        mode: SearchMode,
        hits: list[Hit],
        answer: Answer,
        tags: list[str] | None = None,
    ) -> None:
        """Write a cacheable answer to the cache in the background: the caller gets it without waiting, and a
        caller that stops reading at the answer (the CLI, evals) does not cancel the write. The entry is keyed
        by the tag filter it was made under."""
        if cache is None or not _cacheable(answer):
            return

        def put() -> None:
            try:
                cache.put(qvec, query, mode.value, hits, _to_cache(answer), tags)
            except Exception as exc:  # the engines raise plain runtime errors; the answer is unaffected
                log.warning("cache.put_failed error=%s", exc)

        asyncio.get_running_loop().run_in_executor(None, put)

    async def _cascade(
        self,
        start: int,
        query: str,
        qvec: list[float],
        question: str,
        history: list[dict[str, str]],
        ev: _Evidence,
        max_tokens: int | None,
        temperature: float | None,
        level: int,
    ) -> AsyncGenerator[StreamItem, None]:
        """Generate at `start`; in a cascade, a tier below the top answers silently and is kept only when its
        answer is grounded, else the next tier up answers. An ungrounded top answer is replaced by the quote."""
        cascade = self.router.settings.policy == Policy.CASCADE and level < 3
        evidence = self._evidence_texts(ev.context)
        index: int | None = start
        streamed, unavailable = False, ""
        while index is not None:
            tier = self.tiers[index]
            nxt = self.router.next_tier(index) if cascade else None
            buffered = nxt is not None  # a tier that may be passed over answers silently
            answer: Answer | None = None
            parts: list[str] = []
            try:
                messages, passages = self._fit(tier, evidence, history, question)
                async with aclosing(self._generate(tier, messages, passages, ev, max_tokens, temperature)) as pieces:
                    async for piece in pieces:
                        if isinstance(piece, Answer):
                            answer = piece
                        elif buffered:
                            parts.append(piece)
                        else:
                            streamed = True
                            yield piece
            except (LLMUnavailable, PromptTooLong) as exc:
                unavailable = str(exc)
                ev.usage.escalations.append(f"{tier.name}:unavailable")
                log.warning("llm.failed tier=%s next=%s error=%s", tier.name, nxt or "extractive", exc)
            if answer is not None:
                why = await to_thread.run_sync(self._ungrounded, answer, passages) if cascade else ""
                if not why:
                    if buffered and parts:
                        yield "".join(parts)
                    yield answer
                    return
                ev.usage.escalations.append(f"{tier.name}:{why}")
                log.info("answer.escalate tier=%s why=%s next=%s", tier.name, why, nxt or "extractive")
            index = nxt
        # every tier failed, or none was grounded: the quoted answer, from the same passages
        if streamed:
            yield Restart()
        quote = await self._quoted(query, qvec, ev, recompress=True)
        failed_all = all(e.endswith(":unavailable") for e in ev.usage.escalations)
        quote.fallback = f"llm_unavailable: {unavailable}" if failed_all else f"ungrounded: {ev.usage.escalations[-1]}"
        quote.usage.route = ">".join([ev.usage.route, *ev.usage.escalations, "extractive"])
        yield quote.text
        yield quote

    def _ungrounded(self, answer: Answer, passages: list[Passage]) -> str:
        """Why a generated answer is not grounded ("" when it is): it abstains although passages were found,
        or too few of its sentences are supported by a passage."""
        if answer.abstained:
            return "abstained"
        share = grounded_share(answer.text, passages, self.embedder.embed_documents, self.settings.min_similarity)
        return f"ungrounded({share:.2f})" if share < self.router.settings.min_grounded else ""

    async def _generate(
        self,
        tier: Tier,
        messages: list[dict[str, str]],
        passages: list[Passage],
        ev: _Evidence,
        max_tokens: int | None,
        temperature: float | None,
    ) -> AsyncGenerator[str | Answer, None]:
        """One tier's generated answer: text deltas with valid citation markers, then the Answer."""
        assert tier.llm is not None and tier.tokens is not None
        s = self.settings
        limit = tier.settings.max_tokens
        out_tokens = min(max_tokens or limit, limit)
        cites = CitationFilter(passages)
        done: list[Generation] = []
        text = ""
        t0 = time.perf_counter()
        # Not a current span: the stream yields to its caller, and a span made current would leak into it.
        span = tracer.start_span(
            "generate",
            attributes={"kb.request_id": request_id.get(), "kb.model": tier.llm.settings.model, "kb.tier": tier.name},
        )
        try:
            temp = s.temperature if temperature is None else temperature
            # aclosing: if our caller leaves mid-answer, the upstream request is closed now, not at GC time
            async with aclosing(tier.llm.stream(messages, out_tokens, temp, done.append)) as pieces:
                async for piece in pieces:
                    out = cites.feed(piece)
                    if out:
                        text += out
                        yield out
            tail = cites.flush()
            if tail:
                text += tail
                yield tail
        finally:
            span.end()
            elapsed = (time.perf_counter() - t0) * 1000
            key = "generate" if "generate" not in ev.usage.stages_ms else f"generate:{tier.name}"
            ev.usage.stages_ms[key] = elapsed
        gen = done[0]
        prompt, completion = gen.prompt_tokens, gen.completion_tokens
        if not prompt:  # a server that sends no usage in streams (llama.cpp): count it ourselves
            prompt, completion = tier.tokens.chat_tokens(messages), tier.tokens(gen.text)
        ev.usage.charge(tier.name, prompt, completion, tier.cost(prompt, completion))
        ev.usage.tier = tier.name
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
            model=tier.llm.settings.model,
            first_token_ms=gen.first_token_ms,
            finish_reason="length" if gen.finish_reason == "length" else "stop",
        )


def _cacheable(answer: Answer) -> bool:
    """Only full answers made the normal way are kept: not abstentions, fallbacks or cut-off text."""
    return not (answer.abstained or answer.fallback or answer.finish_reason != "stop" or answer.usage.cache_hit)


def _to_cache(answer: Answer) -> dict[str, Any]:
    return {
        "text": answer.text,
        "citations": [asdict(c) for c in answer.citations],
        "extractive": answer.extractive,
        "attributed": answer.attributed,
        "confidence": answer.confidence,
        "model": answer.model,
        "tier": answer.usage.tier,
    }


def _from_cache(hit: CacheHit, usage: Usage) -> Answer:
    a = hit.answer
    usage.cache_hit, usage.cache_similarity = True, round(hit.similarity, 4)
    usage.tier, usage.route = str(a.get("tier", "")), "cache"
    return Answer(
        str(a.get("text", "")),
        [Citation(**c) for c in a.get("citations", [])],
        hit.hits,
        extractive=bool(a.get("extractive", True)),
        confidence=a.get("confidence"),
        usage=usage,
        attributed=bool(a.get("attributed", False)),
        model=str(a.get("model", "")),
    )


def _abstains(text: str) -> bool:
    head = text.strip().lower().replace("’", "'")
    return head.startswith(ABSTAIN_TEXT.lower()[:12]) or head.startswith("i do not know")
