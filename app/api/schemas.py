"""Request and response models of the REST API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from retrieval.types import SearchMode


class SourceIn(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="lowercase id, e.g. 'handbook'")
    path: str = Field(min_length=1, description="directory the server reads")
    acl: list[str] = Field(default_factory=lambda: ["public"], description="groups that may read it")


class SourcePatch(BaseModel):
    path: str | None = None
    acl: list[str] | None = None


class SourceOut(BaseModel):
    name: str
    kind: str
    path: str
    acl: list[str]


class JobOut(BaseModel):
    id: str
    source: str
    status: str
    docs_total: int
    docs_done: int
    docs_failed: int
    docs_skipped: int
    docs_deleted: int
    chunks_indexed: int
    chunks_embedded: int
    error: str
    created_at: str | None
    finished_at: str | None
    failures: list[dict[str, str]] = []


class SearchIn(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)
    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(default=10, ge=1, le=100)
    mode: SearchMode = SearchMode.HYBRID


class CitationOut(BaseModel):
    doc_id: str
    path: str
    title: str
    chunk: int
    text: str
    start_char: int
    end_char: int


class HitOut(BaseModel):
    doc_id: str
    path: str
    title: str
    score: float
    text: str
    acl: list[str]
    citation: CitationOut


class SearchOut(BaseModel):
    query: str
    mode: SearchMode
    hits: list[HitOut]


class AnswerIn(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)
    question: str = Field(min_length=1, max_length=2000)
    mode: SearchMode = SearchMode.HYBRID


class AnswerOut(BaseModel):
    answer: str
    extractive: bool
    citations: list[CitationOut]
    usage: dict[str, object]
