"""The `kb` CLI end to end: on a bare machine (in-process) and against a running server (HTTP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, Server


def kb(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, check=check
    )


def test_cli_on_a_bare_machine_ingests_searches_and_answers(tmp_path: Path, corpus: Path) -> None:
    env = {**os.environ, "KB_DATA_DIR": str(tmp_path / "data"), "KB_PORT": "9"}  # no server there
    ingested = kb(env, "ingest", str(corpus), "--source", "handbook", "--acl", "public", "--wait")
    assert "succeeded: 6 indexed" in ingested.stdout
    hits = json.loads(kb(env, "search", "meal allowance abroad", "--json").stdout)["hits"]
    assert hits[0]["doc_id"] == "handbook:expenses.md"
    assert set(hits[0]) == {"doc_id", "path", "score", "text", "acl"}
    outsider = json.loads(kb(env, "search", "salary bands", "--mode", "bm25", "--json").stdout)["hits"]
    assert all(h["doc_id"] != "handbook:salary-bands.md" for h in outsider)
    insider = json.loads(kb(env, "search", "salary bands", "--mode", "bm25", "--groups", "hr", "--json").stdout)
    assert insider["hits"][0]["doc_id"] == "handbook:salary-bands.md"
    answer = json.loads(kb(env, "answer", "How do I report a lost laptop?", "--json").stdout)
    assert "security@example.com" in answer["answer"]
    assert answer["citations"][0]["doc_id"] == "handbook:security.md"
    assert set(answer["citations"][0]) == {"doc_id", "path", "text"}
    again = kb(env, "ingest", str(corpus), "--source", "handbook", "--wait")
    assert "(6 unchanged)" in again.stdout and "0 chunks embedded" in again.stdout
    missing = kb(env, "ingest", str(tmp_path / "nope"), "--source", "x", check=False)
    assert missing.returncode == 2 and "not a directory" in missing.stderr


def test_cli_talks_to_a_running_server(kb_server: Server, corpus: Path) -> None:
    env = {**kb_server.env, "KB_URL": kb_server.url}
    out = kb(env, "ingest", str(corpus), "--source", "handbook", "--acl", "public", "--wait")
    assert f"queued on {kb_server.url}" in out.stdout and "succeeded" in out.stdout
    hits = json.loads(kb(env, "search", "salary ranges for engineering levels", "--groups", "hr", "--json").stdout)
    assert hits["hits"][0]["doc_id"] == "handbook:salary-bands.md"
    key = json.loads(kb(env, "keys", "create", "alice", "--groups", "eng").stdout)
    assert key["key"].startswith("kb_") and key["scopes"] == ["read"]
    as_alice = {**env, "KB_API_KEY": key["key"]}
    denied = kb(as_alice, "search", "salary", "--groups", "hr", "--json", check=False)
    assert denied.returncode == 2 and "403" in denied.stderr
    answer = json.loads(kb(as_alice, "answer", "When is the office open?", "--json").stdout)
    assert "7:00" in answer["answer"] and answer["citations"][0]["doc_id"] == "handbook:office.txt"
