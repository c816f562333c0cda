"""Which tier answers: the cheapest one a request needs, from signals retrieval already paid for.

Signals: the retrieval confidence (calibrated reranker, else the best sentence's cosine), how far BM25 and dense
agree on the top hit, the question's length and type, and the conversation's depth. Policies:

- `fixed`: always the most capable generating tier (or the extractive one when there is none);
- `route`: the router's pick, final;
- `cascade`: the router's pick answers first; when its answer is not grounded in the passages (too few of its
  sentences are supported by one, or it abstains although retrieval found evidence) the next tier up answers,
  and when even the top tier is not grounded the answer is the quoted one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from app.tiers import Tier

# English question openers: a lookup asks for a fact a passage states; an explanation asks to reason across it.
_LOOKUP = re.compile(
    r"^(what('s| is| are| does)|who|when|where|which|how (many|much|long|old)|is there|are there|do i|does|can i)\b"
)
_EXPLAIN = re.compile(r"^(why|how (do|does|can|should|would|to)|explain|compare|describe)\b|\b(difference|versus|vs)\b")


class Policy(StrEnum):
    FIXED = "fixed"
    ROUTE = "route"
    CASCADE = "cascade"


@dataclass(frozen=True)
class RouteSettings:
    policy: Policy = Policy.FIXED
    # Quote (the zero-token tier) a short lookup question when retrieval is this sure and both lists agree.
    quote_confidence: float = 0.8  # calibrated reranker confidence
    quote_similarity: float = 0.7  # best sentence cosine, when no reranker runs
    quote_agreement: float = 0.75
    quote_max_words: int = 12
    # Start at the top tier when the request looks hard.
    hard_confidence: float = 0.4
    hard_similarity: float = 0.55
    long_query_words: int = 30
    deep_turns: int = 3  # earlier question/answer pairs in the conversation
    # Cascade: an answer is grounded when at least this share of its sentences is supported by a passage.
    min_grounded: float = 0.5


@dataclass(frozen=True)
class Signals:
    confidence: float | None
    calibrated: bool  # confidence comes from a calibrated reranker, not a cosine
    agreement: float | None  # None outside hybrid search
    words: int
    kind: str  # lookup | explain | other
    turns: int


@dataclass(frozen=True)
class Route:
    tier: int  # index into the tiers, cheapest first
    reason: str


def question_kind(question: str) -> str:
    q = " ".join(question.lower().split())
    if _EXPLAIN.search(q):
        return "explain"
    return "lookup" if _LOOKUP.search(q) else "other"


def signals(question: str, confidence: float | None, calibrated: bool, agreement: float | None, turns: int) -> Signals:
    return Signals(confidence, calibrated, agreement, len(question.split()), question_kind(question), turns)


class Router:
    def __init__(self, tiers: list[Tier], settings: RouteSettings | None = None) -> None:
        self.tiers = tiers
        self.settings = settings or RouteSettings()
        self.generating = [i for i, t in enumerate(tiers) if t.generates]

    def index(self, name: str) -> int:
        for i, t in enumerate(self.tiers):
            if t.name == name:
                return i
        raise ValueError(f"no tier named {name!r}; configured: {[t.name for t in self.tiers]}")

    def _confident(self, s: Signals) -> bool:
        r = self.settings
        if s.confidence is None:
            return False
        floor = r.quote_confidence if s.calibrated else r.quote_similarity
        agree = s.agreement is None or s.agreement >= r.quote_agreement
        return s.confidence >= floor and agree

    def _hard(self, s: Signals) -> str:
        r = self.settings
        floor = r.hard_confidence if s.calibrated else r.hard_similarity
        if s.confidence is not None and s.confidence < floor:
            return "low_confidence"
        if s.words >= r.long_query_words:
            return "long_question"
        if s.turns >= r.deep_turns:
            return "deep_conversation"
        if s.kind == "explain":
            return "explanation"
        return ""

    def route(self, s: Signals, degradation: int = 0) -> Route:
        """The tier to try first. `degradation` 3 caps at the cheapest generating tier, 4 at the quote."""
        if not self.generating:
            return Route(0, "no_llm")
        if degradation >= 4:
            return Route(0, "degraded:extractive_only")
        cheapest, top = self.generating[0], self.generating[-1]
        if degradation >= 3:
            return Route(cheapest, "degraded:cheaper_tier")
        if self.settings.policy == Policy.FIXED:
            return Route(top, "fixed")
        if s.turns == 0 and s.kind != "explain" and s.words <= self.settings.quote_max_words and self._confident(s):
            return Route(0, "confident_lookup")
        hard = self._hard(s)
        if hard:
            return Route(top, hard)
        return Route(cheapest, "default")

    def next_tier(self, current: int) -> int | None:
        """The next generating tier up from `current`, if any (cascade)."""
        later = [i for i in self.generating if i > current]
        return later[0] if later else None
