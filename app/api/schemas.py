"""Request and response models of the REST API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.settings import MAX_ADAPT_MINUTES
from ingestion.catalog import MAX_TAGS, validate_tags
from retrieval.types import SearchMode

TAGS_FILTER = "only documents with at least one of these tags (case is ignored); the ACL filter applies as always"


def tag_filter(tags: list[str] | None) -> list[str] | None:
    """A request's tag filter as the index matches it; an empty list is no filter."""
    if tags is None:
        return None
    return validate_tags(tags) or None


class SourceIn(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="lowercase id, e.g. 'handbook'")
    kind: Literal["directory", "upload", "web"] = "directory"
    path: str = Field(default="", description="directory the server reads (kind=directory)")
    url: str = Field(default="", description="start page or sitemap (kind=web)")
    max_depth: int = Field(default=1, ge=0, le=5, description="web: links followed from the start page")
    max_pages: int = Field(default=200, ge=1, le=10_000, description="web: page requests per crawl")
    acl: list[str] = Field(default_factory=lambda: ["public"], description="groups that may read it")


class SourcePatch(BaseModel):
    path: str | None = None
    url: str | None = None
    max_depth: int | None = Field(default=None, ge=0, le=5)
    max_pages: int | None = Field(default=None, ge=1, le=10_000)
    acl: list[str] | None = None


class SourceOut(BaseModel):
    name: str
    kind: str
    path: str
    acl: list[str]
    options: dict[str, int] = {}


class JobOut(BaseModel):
    id: str
    source: str
    kind: str
    status: str
    docs_per_second: float
    chunks_per_second: float
    eta_seconds: float | None
    docs_total: int
    docs_done: int
    docs_failed: int
    docs_skipped: int
    docs_deleted: int
    chunks_indexed: int
    chunks_embedded: int
    error: str
    detail: dict[str, Any] = {}  # adapt jobs: fraction done, stage, and at the end the comparison report
    created_at: str | None
    finished_at: str | None
    failures: list[dict[str, str]] = []


class AdaptIn(BaseModel):
    minutes: float | None = Field(
        None, gt=0, le=MAX_ADAPT_MINUTES, description="training time budget; default KB_ADAPT_BUDGET_SECONDS"
    )


class RerankerOut(BaseModel):
    model: str  # the cross-encoder in use; empty: reranking is off
    source: str  # configured (KB_RERANK_MODEL) | adapted (promoted by `kb adapt`) | none
    pairs_per_second: float


class SearchIn(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)
    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(default=10, ge=1, le=100)
    mode: SearchMode = SearchMode.HYBRID
    tags: list[str] | None = Field(None, max_length=MAX_TAGS, description=TAGS_FILTER)

    _tags = field_validator("tags")(tag_filter)


class CitationOut(BaseModel):
    doc_id: str
    path: str
    title: str
    chunk: int
    text: str
    start_char: int
    end_char: int
    tags: list[str] = []


class HitOut(BaseModel):
    doc_id: str
    path: str
    title: str
    score: float
    text: str
    acl: list[str]
    tags: list[str]
    citation: CitationOut


class SearchOut(BaseModel):
    query: str
    mode: SearchMode
    hits: list[HitOut]


class AnswerIn(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)
    question: str = Field(min_length=1, max_length=2000)
    mode: SearchMode = SearchMode.HYBRID
    stream: bool = Field(False, description="server-sent events: start, token…, citations, done")
    conversation_id: str | None = Field(None, max_length=32, description="continue this conversation")
    tags: list[str] | None = Field(None, max_length=MAX_TAGS, description=TAGS_FILTER)

    _tags = field_validator("tags")(tag_filter)


class AnswerCitationOut(CitationOut):
    number: int  # the [n] marker in the answer


class AnswerOut(BaseModel):
    answer: str
    extractive: bool
    abstained: bool = False
    fallback: str = ""  # why the extractive answer replaced a generated one
    attributed: bool = False  # the model cited nothing; each sentence was matched to its closest passage
    model: str = ""
    confidence: float | None = None
    citations: list[AnswerCitationOut]
    usage: dict[str, object]
    conversation_id: str | None = None
    message_id: str | None = None


class FeedbackIn(BaseModel):
    message_id: str = Field(min_length=1, max_length=32)
    rating: Literal[1, -1] = Field(description="1: thumbs up, -1: thumbs down")
    comment: str = Field("", max_length=2000)
