"""Prometheus metrics of answers: how they were made, tokens, time to first token, and users' feedback."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

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
        self.tokens = Counter("kb_llm_tokens", "Tokens the LLM read and wrote", ["type"], registry=self.registry)
        self.first_token = Histogram(
            "kb_answer_first_token_seconds",
            "Time from the question to the answer's first generated token",
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.registry.register(_FeedbackCollector(feedback_counts))

    def observe(self, answer: Answer) -> None:
        if answer.abstained:
            kind = "abstained"
        elif answer.fallback:
            kind = "fallback"
        else:
            kind = "extractive" if answer.extractive else "generated"
        self.answers.labels(kind).inc()
        self.tokens.labels("prompt").inc(answer.usage.prompt_tokens)
        self.tokens.labels("completion").inc(answer.usage.completion_tokens)
        if answer.first_token_ms is not None:
            self.first_token.observe(answer.first_token_ms / 1000)
