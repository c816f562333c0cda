"""Search and answer routes: translate HTTP to the services, nothing more."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.api.deps import ContainerDep, PrincipalDep
from app.api.schemas import AnswerIn, AnswerOut, CitationOut, HitOut, SearchIn, SearchOut

router = APIRouter(prefix="/v1", tags=["query"])


@router.post("/search", response_model=SearchOut)
async def search(body: SearchIn, principal: PrincipalDep, container: ContainerDep) -> SearchOut:
    """Hybrid (or bm25 / dense) search over the chunks the caller may read."""
    hits = await run_in_threadpool(container.search.search, principal, body.query.strip(), body.top_k, body.mode)
    return SearchOut(
        query=body.query,
        mode=body.mode,
        hits=[
            HitOut(
                doc_id=h.chunk.doc_id,
                path=h.chunk.path,
                title=h.chunk.title,
                score=h.score,
                text=h.chunk.text,
                acl=list(h.chunk.acl),
                citation=CitationOut(**asdict(h.citation)),
            )
            for h in hits
        ],
    )


@router.post("/answer", response_model=AnswerOut)
async def answer(body: AnswerIn, principal: PrincipalDep, container: ContainerDep) -> AnswerOut:
    """An extractive answer: the best sentences of the top passages, each with its citation."""
    result = await run_in_threadpool(container.answers.answer, principal, body.question.strip(), body.mode)
    return AnswerOut(
        answer=result.text,
        extractive=result.extractive,
        confidence=result.confidence,
        citations=[CitationOut(**asdict(c)) for c in result.citations],
        usage={"prompt_tokens": 0, "completion_tokens": 0, "stages_ms": result.usage.stages_ms},
    )
