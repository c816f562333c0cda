"""Admins train a reranker from their own documents (`kb adapt`) as a job on a real `kb serve` with Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.container import Container
from app.settings import Settings
from tests.conftest import REPO, SHARED_EVAL, Server, make_key, redis_db_url, start_server, wait_job


def documentation(corpus: Path, docs: int = 40) -> Path:
    """The sample handbook plus real documentation sections (django_faq's haystack) as text files."""
    source = SHARED_EVAL / "django_faq" / "corpus.jsonl"
    if not source.exists():
        pytest.skip(f"{source} is missing: adaptation needs a corpus of real documents")
    with source.open() as fh:
        rows = [json.loads(line) for line in fh]
    kept = [r for r in rows if "-faq-" not in r["_id"] and len(r["text"].split()) >= 60][:docs]
    for row in kept:
        (corpus / f"{row['_id']}.txt").write_text(row["text"])
    return corpus


@pytest.fixture
def server(tmp_path: Path, corpus: Path) -> Iterator[Server]:
    corpus = documentation(corpus)
    # A small, quick reranker: one layer of the packaged MiniLM, a handful of pairs.
    extra = {"KB_ADAPT_LAYERS": "1", "KB_ADAPT_MAX_PAIRS": "200"}
    server = start_server(tmp_path / "data", redis_db_url(10), extra_env=extra)
    try:
        with server.client() as admin:
            admin.post("/v1/sources", json={"name": "handbook", "path": str(corpus), "acl": ["public", "hr"]})
            job = admin.post("/v1/sources/handbook/reindex").json()
            assert wait_job(admin, job["id"], timeout=300)["status"] == "succeeded"
        yield server
    finally:
        server.stop()


def test_adapt_runs_as_a_job_reports_the_comparison_and_switches_only_if_better(server: Server) -> None:
    with server.client() as admin:
        assert admin.get("/v1/reranker").json()["source"] == "none"
        queued = admin.post("/v1/reranker/adapt", json={"minutes": 0.15})
        assert queued.status_code == 202, queued.text
        assert queued.json()["kind"] == "adapt"
        again = admin.post("/v1/reranker/adapt", json={})
        assert again.status_code == 409 and "still running" in again.json()["error"]["message"]

        done = wait_job(admin, queued.json()["id"], timeout=300)

        assert done["status"] == "succeeded", done
        report = done["detail"]["report"]
        assert done["detail"]["fraction"] == 1.0
        assert report["pairs"] > 0 and report["holdout"] >= 10
        assert report["training"]["steps"] > 0
        assert report["replaced"] == (report["after"]["mrr"] > report["before"]["mrr"])
        now = admin.get("/v1/reranker").json()
        if report["replaced"]:
            assert now == {**now, "source": "adapted", "model": report["model_path"]}
        else:
            assert now["source"] == "none", "a model that ranks worse must not be put in use"
        answer = admin.post("/v1/answer", json={"question": "How many vacation days do I get?"})
        assert answer.status_code == 200 and answer.json()["citations"]


def test_adapt_needs_an_admin_and_a_sane_budget(server: Server) -> None:
    reader = make_key(server, "reader", "public")
    with server.client(reader) as c:
        assert c.post("/v1/reranker/adapt", json={}).status_code == 403
    with server.client() as admin:
        bad = admin.post("/v1/reranker/adapt", json={"minutes": -1})
        assert bad.status_code == 422 and "minutes" in bad.json()["error"]["message"]
    cli = subprocess.run(
        [sys.executable, "-m", "app.cli", "adapt", "--minutes", "0"], cwd=REPO, env=server.env, capture_output=True
    )
    assert cli.returncode == 2 and b"--minutes" in cli.stderr


def test_a_promoted_reranker_is_used_by_answers_at_once(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    container = Container(Settings(data_dir=tmp_path / "data"))  # type: ignore[call-arg]
    try:
        assert not container.reranker.enabled
        container.adapter.on_promoted(tiny_cross_encoder)
        assert container.reranker.enabled and container.reranker.settings.model == str(tiny_cross_encoder)
        assert container.reranker.score("q", ["a passage"]).shape == (1,)
    finally:
        container.close()


def test_an_adaptation_cancelled_while_queued_never_trains(tmp_path: Path) -> None:
    from ingestion import catalog

    container = Container(Settings(data_dir=tmp_path / "data"))  # type: ignore[call-arg]
    try:
        with container.sessions() as db:
            job_id = catalog.open_adapt(db, 60.0).id
            catalog.cancel_job(db, job_id)

        ended = container.adapter.run_job(job_id)

        assert ended["status"] == "cancelled"
        assert not (tmp_path / "data" / "models").exists(), "nothing was trained"
    finally:
        container.close()
