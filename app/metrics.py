"""Prometheus metrics: requests by route, answers by kind, time per stage, tokens, confidence, errors, feedback."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from app.agent_proposals import Proposal
from app.load import LEVELS, LoadGovernor
from app.services import Answer


class _FeedbackCollector(Collector):
    """Thumbs up/down read from SQL at scrape time: right across restarts and several API processes."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("kb_feedback", "Ratings users gave answers", labels=["rating"])
        for rating, n in self._counts().items():
            family.add_metric([rating], n)
        yield family


class AnswerMetrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, feedback_counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.answers = Counter("kb_answers", "Answers by how they were made", ["kind"], registry=self.registry)
        self.tokens = Counter(
            "kb_llm_tokens", "Tokens the models read and wrote, by tier", ["type", "tier"], registry=self.registry
        )
        self.cost = Counter(
            "kb_cost", "What answers cost (tier prices per 1k tokens), by tier", ["tier"], registry=self.registry
        )
        self.cache = Counter(
            "kb_cache_requests", "Semantic cache lookups by result", ["result"], registry=self.registry
        )
        self.routes = Counter(
            "kb_route",
            "Answers by the tier that answered and why it was chosen",
            ["tier", "reason"],
            registry=self.registry,
        )
        self.escalations = Counter(
            "kb_cascade_escalations",
            "Tiers passed over by the cascade, and why",
            ["tier", "why"],
            registry=self.registry,
        )
        self.degradation = Gauge(
            "kb_degradation_level", "Load degradation level (0 normal .. 4 extractive only)", registry=self.registry
        )
        self.degradation_steps = Counter(
            "kb_degradation_changes",
            "Changes of the degradation level, by direction and new level",
            ["direction", "level"],
            registry=self.registry,
        )
        self.inflight = Gauge("kb_answers_in_flight", "Answers being made now in this process", registry=self.registry)
        self.first_token = Histogram(
            "kb_answer_first_token_seconds",
            "Time from the question to the answer's first generated token",
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.requests = Histogram(
            "kb_request_seconds",
            "Request latency by route template, method and status (streamed bodies until their end)",
            ["route", "method", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.stages = Histogram(
            "kb_stage_seconds",
            "Time per answer stage: retrieve, rerank, compress, generate",
            ["stage"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.confidence = Histogram(
            "kb_retrieval_confidence",
            "Confidence in the best passage (calibrated reranker, else best sentence cosine)",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=self.registry,
        )
        self.proposals = Counter(
            "kb_agent_proposals", "Runs the model was asked to propose, by outcome", ["outcome"], registry=self.registry
        )
        self.errors = Counter("kb_errors", "Error responses by code", ["code"], registry=self.registry)
        self.registry.register(_FeedbackCollector(feedback_counts))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).observe(seconds)

    def watch_load(self, governor: LoadGovernor) -> None:
        """Read the level and in-flight count at scrape time (tick: an idle server recovers too)."""
        self.degradation.set_function(lambda: float(governor.tick()))
        self.inflight.set_function(lambda: float(governor.inflight))

    def degradation_changed(self, old: int, new: int, why: str) -> None:
        self.degradation_steps.labels("up" if new > old else "down", LEVELS[new]).inc()

    def count_error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def observe_proposal(self, proposal: Proposal) -> None:
        """A model's run proposal: its outcome, and its tokens and cost under its tier like an answer's."""
        status = proposal.run.status if proposal.run is not None else ""
        self.proposals.labels(proposal.outcome if status != "refused" else "refused").inc()
        self.tokens.labels("prompt", proposal.tier).inc(proposal.prompt_tokens)
        self.tokens.labels("completion", proposal.tier).inc(proposal.completion_tokens)
        self.cost.labels(proposal.tier).inc(proposal.cost)

    def observe(self, answer: Answer) -> None:
        if answer.abstained:
            kind = "abstained"
        elif answer.fallback:
            kind = "fallback"
        else:
            kind = "extractive" if answer.extractive else "generated"
        u = answer.usage
        self.answers.labels("cached" if u.cache_hit else kind).inc()
        if u.cache_hit or "cache" in u.stages_ms:
            self.cache.labels("hit" if u.cache_hit else "miss").inc()
        for tier, row in u.by_tier.items():
            self.tokens.labels("prompt", tier).inc(row["prompt_tokens"])
            self.tokens.labels("completion", tier).inc(row["completion_tokens"])
            self.cost.labels(tier).inc(row["cost"])
        self.routes.labels(u.tier or "extractive", u.route.split(">")[0] or "none").inc()
        for step in u.escalations:
            tier, _, why = step.partition(":")
            self.escalations.labels(tier, why.split("(")[0]).inc()
        if answer.first_token_ms is not None:
            self.first_token.observe(answer.first_token_ms / 1000)
        for name, ms in answer.usage.stages_ms.items():
            self.stages.labels(name).observe(ms / 1000)
        if answer.confidence is not None:
            self.confidence.observe(answer.confidence)
