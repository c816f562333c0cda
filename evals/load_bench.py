"""Load test: answer latency under rising concurrency, with adaptive degradation on and off.

It starts a real `kb serve` on 127.0.0.1 with the sample corpus (and, with --llm-url, a model tier), sends
`rounds x concurrency` questions at each concurrency level through the REST API, and reports p50/p95 latency,
errors and how answers were made (the degradation level and tier from each usage block). The semantic cache
is off, so every answer does the full work. Bounded: a wall-clock limit per level and per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "How many vacation days do I get per year?",
    "Can I carry unused vacation days over to next year?",
    "What is the limit for a hotel night on a business trip?",
    "How do I report a lost laptop?",
    "When is the office open?",
    "What do I need to do in my first week?",
    "Who approves my expense report?",
    "How long must my password be?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KbServer:
    def __init__(self, env: dict[str, str], timeout_s: float = 180.0) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="kb-load-"))
        self.env = {**os.environ, "KB_DATA_DIR": str(self.dir), "KB_PORT": str(self.port), "KB_LOG_LEVEL": "WARNING"}
        self.env.update(env)
        self.log = self.dir / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--sample"],
            cwd=REPO,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.key = self._wait(timeout_s)

    def _wait(self, timeout_s: float) -> str:
        deadline = time.time() + timeout_s
        key_file = self.dir / "admin.key"
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kb serve exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                if key_file.exists() and httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    key = key_file.read_text().strip()
                    index = httpx.get(f"{self.url}/v1/index", headers={"Authorization": f"Bearer {key}"}).json()
                    if index.get("documents", 0) >= 6 and index["points"] == index["chunks_expected"]:
                        return key  # the sample corpus (6 documents) is in
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"kb serve did not become ready with the sample corpus in {timeout_s:.0f}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _level(url: str, key: str, concurrency: int, n: int, timeout_s: float, budget_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    levels: Counter[int] = Counter()
    tiers: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    queue = list(range(n))
    deadline = time.perf_counter() + budget_s

    async def worker(client: httpx.AsyncClient) -> None:
        while queue and time.perf_counter() < deadline:
            i = queue.pop()
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/answer", json={"question": QUESTIONS[i % len(QUESTIONS)]})
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            ms = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                errors[str(r.status_code)] += 1
                continue
            usage = r.json()["usage"]
            latencies.append(ms)
            levels[int(usage["degradation"])] += 1
            tiers[str(usage["tier"])] += 1

    headers = {"Authorization": f"Bearer {key}"}
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "answers": len(latencies),
        "unsent": len(queue),
        "errors": dict(errors),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "p95_ms": round(float(np.percentile(latencies, 95)), 1) if latencies else None,
        "answers_per_s": round(len(latencies) / wall, 2) if wall else 0.0,
        "levels": {str(k): v for k, v in sorted(levels.items())},
        "tiers": dict(tiers),
    }


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    base = {"KB_CACHE_ENABLED": "false", "KB_DEGRADE_INFLIGHT": args.inflight, "KB_DEGRADE_P95_MS": args.p95_ms}
    if args.llm_url:
        tier = {
            "name": "llm",
            "base_url": args.llm_url,
            "model": args.llm_model,
            "tokenizer": args.llm_tokenizer or args.llm_model,
            "max_tokens": args.max_tokens,
            "timeout_seconds": args.request_timeout,
        }
        base["KB_TIERS"] = json.dumps([tier])
    results: dict[str, Any] = {"settings": {k: v for k, v in base.items() if k != "KB_TIERS"}, "runs": []}
    for degrade in ("false", "true"):
        server = KbServer({**base, "KB_DEGRADE_ENABLED": degrade})
        try:
            for c in args.concurrency:
                row = asyncio.run(
                    _level(server.url, server.key, c, c * args.rounds, args.request_timeout, args.level_budget)
                )
                row["degradation"] = "on" if degrade == "true" else "off"
                print(json.dumps(row), flush=True)
                results["runs"].append(row)
        finally:
            server.stop()
    return results


def format_load(results: dict[str, Any]) -> str:
    lines = [
        "| degradation | concurrency | answers | p50 ms | p95 ms | answers/s | levels (count) | tiers | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['degradation']} | {r['concurrency']} | {r['answers']} | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['answers_per_s']} | {r['levels']} | {r['tiers']} | {r['errors'] or '-'} |"
        )
    return "\n".join(lines)


def add_parser(sub: Any, write: Any) -> None:
    p = sub.add_parser("load", help="p95 latency under rising concurrency, adaptive degradation on vs off")
    p.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--rounds", type=int, default=3, help="questions per worker at each level")
    p.add_argument("--inflight", default="2,3,4,5", help="KB_DEGRADE_INFLIGHT for the run with degradation on")
    p.add_argument("--p95-ms", default="", help="KB_DEGRADE_P95_MS for the run with degradation on")
    p.add_argument("--llm-url", default=os.environ.get("KB_TEST_LLM_URL", ""))
    p.add_argument("--llm-model", default=os.environ.get("KB_TEST_LLM_MODEL", ""))
    p.add_argument("--llm-tokenizer", default=os.environ.get("KB_TEST_LLM_TOKENIZER", ""))
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--level-budget", type=float, default=240.0, help="seconds at most per concurrency level")
    p.add_argument("--out", type=Path, default=None)

    def main(args: argparse.Namespace) -> int:
        results = run_load(args)
        print(format_load(results))
        write(args.out, results)
        return 0

    p.set_defaults(func=main)
