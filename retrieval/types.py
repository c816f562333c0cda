"""Domain types every layer passes around instead of dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

PUBLIC_GROUP = "public"


class SearchMode(StrEnum):
    """How a query is scored: lexical, semantic, or both fused in one engine query."""

    BM25 = "bm25"
    DENSE = "dense"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class Principal:
    """Who is asking: the groups they belong to decide which chunks they may read."""

    name: str
    groups: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ("read",)
    key_id: str = ""  # the API key that authenticated the request (quotas count per key); "" in-process

    @property
    def readable_groups(self) -> list[str]:
        """Groups used in the engine's ACL filter: the caller's own plus `public`."""
        return sorted({*self.groups, PUBLIC_GROUP})

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class Chunk:
    """A piece of a document as stored in the index (the point's payload)."""

    doc_id: str
    source: str
    ordinal: int
    text: str
    content_hash: str
    acl: tuple[str, ...]
    title: str = ""
    path: str = ""
    section: str = ""
    start_char: int = 0
    end_char: int = 0
    tags: tuple[str, ...] = ()  # the document's tags (front matter or an admin's override)

    def payload(self) -> dict[str, Any]:
        return {
            "doc_id": self.doc_id,
            "source": self.source,
            "ordinal": self.ordinal,
            "text": self.text,
            "content_hash": self.content_hash,
            "acl": list(self.acl),
            "title": self.title,
            "path": self.path,
            "section": self.section,
            "start_char": self.start_char,
            "end_char": self.end_char,
            "tags": list(self.tags),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Chunk:
        return cls(
            doc_id=str(payload["doc_id"]),
            source=str(payload.get("source", "")),
            ordinal=int(payload.get("ordinal", 0)),
            text=str(payload.get("text", "")),
            content_hash=str(payload.get("content_hash", "")),
            acl=tuple(payload.get("acl", ()) or ()),
            title=str(payload.get("title", "")),
            path=str(payload.get("path", "")),
            section=str(payload.get("section", "")),
            start_char=int(payload.get("start_char", 0)),
            end_char=int(payload.get("end_char", 0)),
            tags=tuple(payload.get("tags", ()) or ()),  # points indexed before tags existed have none
        )


@dataclass(frozen=True)
class Citation:
    """Where a piece of evidence came from, precise enough to show the passage."""

    doc_id: str
    path: str
    title: str
    chunk: int
    text: str
    start_char: int = 0
    end_char: int = 0
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Citations come back from JSON (cache, conversations) with a list; keep the value hashable.
        object.__setattr__(self, "tags", tuple(self.tags))


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk with its score in the mode that found it."""

    chunk: Chunk
    score: float
    point_id: str = ""

    @property
    def citation(self) -> Citation:
        return Citation(
            doc_id=self.chunk.doc_id,
            path=self.chunk.path,
            title=self.chunk.title,
            chunk=self.chunk.ordinal,
            text=self.chunk.text,
            start_char=self.chunk.start_char,
            end_char=self.chunk.end_char,
            tags=self.chunk.tags,
        )


@dataclass
class Usage:
    """What an answer cost and how it was made: tokens in and out, cost, the tier that answered and why,
    whether the semantic cache answered, the degradation level it ran at, and time spent per stage (ms)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    stages_ms: dict[str, float] = field(default_factory=dict)
    cost: float = 0.0
    tier: str = ""
    route: str = ""  # why that tier: the router's reason, "cache", or an escalation chain
    cache_hit: bool = False
    cache_similarity: float | None = None
    degradation: int = 0
    escalations: list[str] = field(default_factory=list)  # cascade: "<tier>:<why>" for each tier passed over
    by_tier: dict[str, dict[str, float]] = field(default_factory=dict)  # tokens and cost of each tier called

    def charge(self, tier: str, prompt_tokens: int, completion_tokens: int, cost: float) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost += cost
        row = self.by_tier.setdefault(tier, {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0})
        row["prompt_tokens"] += prompt_tokens
        row["completion_tokens"] += completion_tokens
        row["cost"] += cost
