"""Run proposals: how often a real model's tool calls make a usable plan, per way of asking it.

Each request of evals/agent_requests.json goes through the real RunProposer of a Container built on a fresh
data dir (the sample corpus indexed, the seed notes created through the create_note tool), as a principal with
the `notes` scope. Every proposal is a dry run: nothing it proposes is applied. Per configuration (tool_choice,
strict schemas) the table gives the share of requests where the model called a tool, where its calls could be
read, where the runner admitted the plan (not refused), where the first tool is the one the request asks for,
the planted requests that proposed delete_note (none may be applied), and latency and tokens per proposal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from agents.limits import RunLimits
from agents.runner import Step
from app.agent_proposals import ProposalSettings, RunProposer
from app.container import Container
from app.settings import Settings
from ingestion import catalog
from retrieval.types import PUBLIC_GROUP, Principal

REQUESTS = Path(__file__).with_name("agent_requests.json")
WRITER = Principal("eval-writer", ("eng",), ("read", "notes"))
CONFIGS: list[tuple[str, ProposalSettings]] = [
    ("required + strict, 3 passages", ProposalSettings(tool_choice="required", strict_tools=True, context_passages=3)),
    ("required + strict, no passages", ProposalSettings(tool_choice="required", strict_tools=True, context_passages=0)),
    ("required, loose, 3 passages", ProposalSettings(tool_choice="required", strict_tools=False, context_passages=3)),
    ("auto + strict, 3 passages", ProposalSettings(tool_choice="auto", strict_tools=True, context_passages=3)),
]


def _container(data_dir: Path, args: argparse.Namespace, notes: list[dict[str, str]]) -> Container:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=data_dir,
        llm_base_url=args.llm_url,
        llm_model=args.llm_model,
        llm_tokenizer=args.llm_tokenizer,
        llm_timeout_seconds=180.0,
        cache_enabled=False,
    )
    container = Container(settings)
    container.warm_up()
    with container.sessions() as db:
        catalog.create_source(db, "handbook", str(settings.sample_dir.resolve()), [PUBLIC_GROUP])
        job_id = catalog.open_job(db, "handbook").id
    container.run_inline(job_id)
    steps = [Step("create_note", {"name": n["name"], "title": n["title"], "text": n["text"]}) for n in notes]
    seeded = container.runner.submit(steps, WRITER, RunLimits(max_writes=len(steps), max_steps=len(steps)))
    if seeded.status != "succeeded":
        raise RuntimeError(f"seeding the notes failed: {seeded.reason}")
    return container


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else 0.0


async def _run_config(proposer: RunProposer, requests: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for item in requests:
        p = await proposer.propose(WRITER, item["request"], RunLimits(), dry_run=True)
        steps = p.run.steps if p.run is not None else []
        rows.append(
            {
                "request": item["request"],
                "expected": item["tool"],
                "outcome": p.outcome,
                "status": p.run.status if p.run is not None else "",
                "rule": p.run.rule if p.run is not None else "",
                "tools": [s.tool for s in steps],
                "inputs": [s.input for s in steps],
                "applied": [s.tool for s in steps if s.status == "applied"],
                "planted": bool(item.get("planted")),
                "error": p.error,
                "ms": round(p.total_ms, 1),
                "tokens": p.prompt_tokens + p.completion_tokens,
            }
        )
    for tier in proposer.tier and [proposer.tier] or []:
        if tier.llm is not None:
            await tier.llm.close()  # its connections belong to this event loop, which asyncio.run closes next
    n = len(rows)
    called = [r for r in rows if r["outcome"] != "no_tool_call"]
    planted = [r for r in rows if r["planted"]]
    return {
        "requests": n,
        "tool_called": round(len(called) / n, 3),
        "readable": round(sum(r["outcome"] == "run" for r in rows) / n, 3),
        "admitted": round(sum(r["status"] == "dry_run" for r in rows) / n, 3),
        "right_first_tool": round(sum(bool(r["tools"]) and r["tools"][0] == r["expected"] for r in rows) / n, 3),
        "planted_proposed_delete": sum("delete_note" in r["tools"] for r in planted),
        "planted_requests": len(planted),
        "applied_steps": sum(len(r["applied"]) for r in rows),
        "p50_ms": _pct([r["ms"] for r in rows], 50),
        "p95_ms": _pct([r["ms"] for r in rows], 95),
        "tokens_mean": round(float(np.mean([r["tokens"] for r in rows])), 1),
        "rows": rows,
    }


def agent_eval(args: argparse.Namespace) -> dict[str, Any]:
    spec = json.loads(REQUESTS.read_text())
    requests = spec["requests"][: args.limit] if args.limit else spec["requests"]
    results = []
    with tempfile.TemporaryDirectory(prefix="kb-agent-eval-") as tmp:
        container = _container(Path(tmp) / "data", args, spec["seed_notes"])
        try:
            for label, settings in CONFIGS:
                if args.only and label not in args.only:
                    continue
                c = container
                proposer = RunProposer(c.tiers, c.tools, c.runner, c.retriever, settings)
                result = asyncio.run(_run_config(proposer, requests))
                results.append({"config": label, **result})
                print(f"{label}: {json.dumps({k: v for k, v in result.items() if k != 'rows'})}", flush=True)
        finally:
            container.close()
    return {"model": args.llm_model, "url": args.llm_url, "configs": results}


def format_table(result: dict[str, Any]) -> str:
    head = (
        "| configuration | tool called | readable | admitted | right first tool | planted → delete proposed "
        "| steps applied | p50 ms | p95 ms | tokens |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["configs"]:
        lines.append(
            f"| {c['config']} | {c['tool_called']:.2f} | {c['readable']:.2f} | {c['admitted']:.2f} "
            f"| {c['right_first_tool']:.2f} | {c['planted_proposed_delete']}/{c['planted_requests']} "
            f"| {c['applied_steps']} | {c['p50_ms']:.0f} | {c['p95_ms']:.0f} | {c['tokens_mean']:.0f} |"
        )
    return "\n".join(lines)


def add_parser(sub: Any, write: Any) -> None:
    p = sub.add_parser("agent", help="run proposals by a real model: usable plans per way of asking")
    p.add_argument("--llm-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8011/v1")
    p.add_argument("--llm-model", required=True)
    p.add_argument("--llm-tokenizer", default="", help="the served model's tokenizer folder (token budgets)")
    p.add_argument("--limit", type=int, default=0, help="only the first N requests")
    p.add_argument("--only", action="append", default=[], help="only this configuration (repeatable)")
    p.add_argument("--out", type=Path, default=Path("results/agent-proposals.json"))

    def run(args: argparse.Namespace) -> int:
        result = agent_eval(args)
        print(format_table(result))
        write(args.out, result)
        return 0

    p.set_defaults(func=run)
