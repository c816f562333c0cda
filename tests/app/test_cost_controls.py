"""Cost controls as an operator sees them: the semantic cache, the usage block, degradation under load, /metrics.

A real `kb serve` on the sample corpus; no model server here except one that hangs (make e2e runs real ones).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.test_answers_api import BlackHole
from tests.conftest import SAMPLE, Server, index_corpus, make_key, redis_db_url, start_server, wait_job

VACATION = "How many vacation days do I get per year?"
SALARY = "When do salary reviews happen?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("cost")
    corpus = root / "corpus"
    shutil.copytree(SAMPLE, corpus)
    srv = start_server(root / "data", redis_db_url(8))
    try:
        index_corpus(srv, corpus)
        yield srv, corpus
    finally:
        srv.stop()


def ask(c: httpx.Client, question: str) -> dict[str, object]:
    r = c.post("/v1/answer", json={"question": question})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_a_repeated_question_is_answered_from_the_cache_and_the_usage_block_says_so(
    server: tuple[Server, Path],
) -> None:
    srv, _ = server
    with srv.client() as c:
        first = ask(c, VACATION)
        usage = first["usage"]
        assert isinstance(usage, dict)
        assert usage["cache_hit"] is False and usage["tier"] == "extractive" and usage["route"] == "no_llm"
        assert usage["cost"] == 0 and usage["degradation"] == 0 and usage["prompt_tokens"] == 0
        assert {"embed", "cache", "retrieve", "compress", "total"} <= set(usage["stages_ms"])
        again = ask(c, VACATION)
        hit = again["usage"]
        assert isinstance(hit, dict)
        assert hit["cache_hit"] is True and hit["route"] == "cache" and hit["cache_similarity"] >= 0.98
        assert "retrieve" not in hit["stages_ms"] and hit["stages_ms"]["cache"] < 1000
        assert again["answer"] == first["answer"] and again["citations"] == first["citations"]
        other = ask(c, "Who do I contact about a stolen laptop?")
        assert other["usage"]["cache_hit"] is False  # type: ignore[index]
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert 'kb_cache_requests_total{result="hit"} 1.0' in metrics
    assert 'kb_cache_requests_total{result="miss"}' in metrics
    assert 'kb_route_total{reason="cache",tier="extractive"} 1.0' in metrics
    assert "kb_degradation_level 0.0" in metrics


def test_the_cache_never_gives_one_user_an_answer_from_documents_another_may_not_read(
    server: tuple[Server, Path],
) -> None:
    srv, _ = server
    hr_key, staff_key = make_key(srv, "hana", "hr"), make_key(srv, "sam", "")
    with srv.client(hr_key) as hr, srv.client(staff_key) as staff:
        answer = ask(hr, SALARY)
        assert "April" in str(answer["answer"])
        assert any(c["doc_id"].endswith("salary-bands.md") for c in answer["citations"])  # type: ignore[attr-defined, index]
        assert ask(hr, SALARY)["usage"]["cache_hit"] is True  # type: ignore[index]
        theirs = ask(staff, SALARY)
        assert theirs["usage"]["cache_hit"] is False  # type: ignore[index]
        assert "April" not in str(theirs["answer"])
        assert not any(c["doc_id"].endswith("salary-bands.md") for c in theirs["citations"])  # type: ignore[attr-defined, index]


def test_reindexing_a_changed_document_invalidates_its_cached_answers(server: tuple[Server, Path]) -> None:
    srv, corpus = server
    question = "How many days may I work from home each week?"
    with srv.client() as c:
        ask(c, question)
        assert ask(c, question)["usage"]["cache_hit"] is True  # type: ignore[index]
        policy = corpus / "office.txt"
        policy.write_text(policy.read_text() + "\nFrom 2027 staff may work from home up to four days each week.\n")
        job = c.post("/v1/sources/handbook/reindex")
        assert wait_job(c, job.json()["id"])["status"] == "succeeded"
        fresh = ask(c, question)
        assert fresh["usage"]["cache_hit"] is False  # type: ignore[index]


def test_under_load_answers_degrade_to_quotes_instead_of_waiting_on_the_model(tmp_path: Path) -> None:
    """Every answer counts as load (thresholds of 1 in flight): level 4 quotes the passages at once, where a
    normal answer would wait out the hanging model's timeout."""
    hole = BlackHole()
    env = {
        "KB_LLM_BASE_URL": f"http://127.0.0.1:{hole.port}/v1",
        "KB_LLM_MODEL": "smollm2-135m",
        "KB_LLM_TIMEOUT_SECONDS": "20",
        "KB_LLM_MAX_RETRIES": "0",
        "KB_DEGRADE_INFLIGHT": "1,1,1,1",
        "KB_DEGRADE_RECOVER_SECONDS": "60",
    }
    srv = start_server(tmp_path / "data", redis_db_url(7), env)
    try:
        index_corpus(srv, SAMPLE)
        with srv.client() as c:
            body = ask(c, VACATION)
        usage = body["usage"]
        assert isinstance(usage, dict)
        assert usage["degradation"] == 4 and usage["route"] == "degraded:extractive_only"
        assert body["extractive"] is True and "25 vacation days" in str(body["answer"]) and not body["fallback"]
        assert usage["stages_ms"]["total"] < 15000  # it did not wait for the model's 20 s timeout
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'kb_degradation_changes_total{direction="up",level="extractive_only"} 1.0' in metrics
        assert 'kb_route_total{reason="degraded:extractive_only",tier="extractive"} 1.0' in metrics
        log = srv.log.read_text()
        assert "load.degrade up level=4 (extractive_only)" in log
    finally:
        srv.stop()
        hole.close()


def test_concurrent_answers_are_counted_in_flight(server: tuple[Server, Path]) -> None:
    srv, _ = server
    results: list[int] = []

    def one(i: int) -> None:
        with srv.client() as c:
            results.append(
                c.post("/v1/answer", json={"question": f"What is the expense limit for item {i}?"}).status_code
            )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4
    assert "kb_answers_in_flight 0.0" in httpx.get(f"{srv.url}/metrics").text
