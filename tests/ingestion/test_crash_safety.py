"""A worker killed mid-job, or a broker restarted mid-job, loses nothing and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestion.chunking import Chunker
from retrieval.embedder import Embedder
from tests.conftest import SAMPLE, SHARED_EVAL, free_port, redis_db_url, start_server, wait_job

FAST_RECOVERY = {"KB_JOB_STALE_SECONDS": "6", "KB_JOB_WATCHDOG_SECONDS": "1", "KB_BROKER_VISIBILITY_TIMEOUT": "20"}


def write_corpus(dest: Path, n: int) -> Path:
    """`n` real documentation sections as text files (the sample corpus repeated if the dev set is absent)."""
    dest.mkdir(parents=True)
    source = SHARED_EVAL / "django_faq" / "corpus.jsonl"
    texts: list[str] = []
    if source.exists():
        with source.open() as fh:
            texts = [json.loads(line)["text"] for _, line in zip(range(n * 3), fh, strict=False)]
        texts = [t for t in texts if len(t) > 400][:n]
    while len(texts) < n:
        texts.append(f"Copy {len(texts)}. " + (SAMPLE / "vacation-policy.md").read_text())
    for i, text in enumerate(texts):
        (dest / f"doc{i:03d}.txt").write_text(text)
    return dest


def expected_chunks(folder: Path, embedder: Embedder) -> int:
    chunker = Chunker(embedder.count_tokens, 200, 30)
    return sum(len(chunker.split(p.read_text().strip())) for p in folder.iterdir())


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_of_the_worker_process_mid_job(tmp_path: Path, embedder: Embedder) -> None:
    corpus = write_corpus(tmp_path / "corpus", 60)
    expected = expected_chunks(corpus, embedder)
    broker = redis_db_url(10)
    server = start_server(tmp_path / "data", broker, FAST_RECOVERY)
    try:
        with server.client() as admin:
            admin.post("/v1/sources", json={"name": "big", "path": str(corpus)}).raise_for_status()
            job_id = admin.post("/v1/sources/big/reindex").json()["id"]
            wait_for(lambda: admin.get(f"/v1/jobs/{job_id}").json()["chunks_indexed"] > 0, 120, "first chunks")
            partial = admin.get(f"/v1/jobs/{job_id}").json()
        assert partial["status"] == "running" and partial["chunks_indexed"] < expected
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    finally:
        server.stop()
    restarted = start_server(tmp_path / "data", broker, FAST_RECOVERY)
    try:
        with restarted.client() as admin:
            done = wait_job(admin, job_id, timeout=240)
            stats = admin.get("/v1/index").json()
        assert done["status"] == "succeeded" and done["docs_failed"] == 0
        assert stats["points"] == stats["chunks_expected"] == expected
        assert stats["documents"] == 60
    finally:
        restarted.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL)
    wait_for(lambda: _redis_up(port), 10, "private redis")
    yield port, proc
    proc.terminate()


def _redis_up(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port).ping())
    except redis.ConnectionError:
        return False


def test_redis_restarted_mid_job_loses_no_job(tmp_path: Path, embedder: Embedder, private_redis) -> None:  # type: ignore[no-untyped-def]
    port, redis_proc = private_redis
    first = write_corpus(tmp_path / "first", 30)
    second = write_corpus(tmp_path / "second", 10)
    env = {**FAST_RECOVERY, "KB_WORKER_CONCURRENCY": "1"}
    server = start_server(tmp_path / "data", f"redis://127.0.0.1:{port}/0", env)
    try:
        with server.client() as admin:
            for name, folder in (("first", first), ("second", second)):
                admin.post("/v1/sources", json={"name": name, "path": str(folder)}).raise_for_status()
            job1 = admin.post("/v1/sources/first/reindex").json()["id"]
            wait_for(lambda: admin.get(f"/v1/jobs/{job1}").json()["status"] == "running", 60, "job 1 running")
            job2 = admin.post("/v1/sources/second/reindex").json()["id"]  # waits in Redis behind job 1
            redis_proc.kill()  # Redis keeps nothing on disk: job 2's message is gone
            redis_proc.wait()
            restarted = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
            )
            try:
                wait_for(lambda: _redis_up(port), 10, "redis back")
                one, two = wait_job(admin, job1, 240), wait_job(admin, job2, 240)
                stats = admin.get("/v1/index").json()
            finally:
                restarted.terminate()
        assert one["status"] == two["status"] == "succeeded"
        assert (
            stats["points"]
            == stats["chunks_expected"]
            == expected_chunks(first, embedder) + expected_chunks(second, embedder)
        )
        assert "job.requeue" in server.log.read_text()
    finally:
        server.stop()
