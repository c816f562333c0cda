"""Cost and quality of each tier alone, routed, and cascaded, on the same questions.

`--tiers` is a JSON file in KB_TIERS' format (app/tiers.py). Every configuration answers the same judged
questions (and the other set's, for abstention) through the real AnswerService: each generating tier alone
(`fixed` with only that model), the extractive tier alone, `route` and `cascade` over all tiers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.routing import Policy, RouteSettings
from app.tiers import EXTRACTIVE, TierSettings, parse_tiers
from evals.answers_bench import answer_eval
from evals.beir import load_beir
from retrieval.settings import IndexSettings


def configurations(
    tiers: list[TierSettings], min_grounded: float
) -> list[tuple[str, list[TierSettings], RouteSettings]]:
    extractive = [t for t in tiers if t.kind == EXTRACTIVE]
    models = [t for t in tiers if t.kind != EXTRACTIVE]
    configs = [("extractive alone", extractive, RouteSettings(policy=Policy.FIXED))]
    configs += [(f"{t.name} alone", [*extractive, t], RouteSettings(policy=Policy.FIXED)) for t in models]
    for policy in (Policy.ROUTE, Policy.CASCADE):
        configs.append((policy.value, tiers, RouteSettings(policy=policy, min_grounded=min_grounded)))
    return configs


def routing_eval(args: argparse.Namespace) -> dict[str, Any]:
    tiers = parse_tiers(Path(args.tiers).read_text())
    dataset = load_beir(args.dataset)
    off = load_beir(args.unanswerable) if args.unanswerable else None
    rows = []
    for label, configured, route in configurations(tiers, args.min_grounded):
        if args.only and label not in args.only:
            continue
        result = answer_eval(
            dataset,
            IndexSettings(),
            args.cache_dir,
            limit=args.limit,
            unanswerable=off,
            tiers=configured,
            route=route,
            label=label,
        )
        s = result["summary"]
        row = {"config": label, **{k: s[k] for k in ("token_f1", "rouge_l", "citation_precision", "false_abstention")}}
        row |= {k: s[k] for k in ("abstention_unanswerable", "cost_per_answer", "tiers", "escalated", "total_ms_p50")}
        row["prompt_tokens_mean"], row["completion_tokens_mean"] = s["prompt_tokens_mean"], s["completion_tokens_mean"]
        print(json.dumps(row), flush=True)
        rows.append(row | {"answers": result["answers"]})
    return {
        "dataset": dataset.name,
        "unanswerable_from": off.name if off else None,
        "tiers": [t.model_dump(exclude={"api_key"}) for t in tiers],
        "rows": rows,
    }


def format_routing(result: dict[str, Any]) -> str:
    cols = ["token_f1", "rouge_l", "citation_precision", "false_abstention", "abstention_unanswerable"]
    cols += ["cost_per_answer", "prompt_tokens_mean", "completion_tokens_mean", "total_ms_p50", "escalated", "tiers"]
    lines = [f"| {result['dataset']} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append(f"| {r['config']} | " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def add_parser(sub: Any, cache_default: Path, write: Any) -> None:
    p = sub.add_parser("routing", help="cost per answer and quality: each tier alone, routed, cascaded")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--tiers", type=Path, required=True, help="a JSON file in KB_TIERS' format")
    p.add_argument("--unanswerable", type=Path, default=None, help="another dataset: its questions measure abstention")
    p.add_argument("--limit", type=int, default=None, help="judged questions (and off-topic ones) at most")
    p.add_argument("--min-grounded", type=float, default=RouteSettings.min_grounded)
    p.add_argument("--only", action="append", default=None, help="run only this configuration (repeatable)")
    p.add_argument("--cache-dir", type=Path, default=cache_default)
    p.add_argument("--out", type=Path, default=None)

    def main(args: argparse.Namespace) -> int:
        result = routing_eval(args)
        print(format_routing(result))
        write(args.out, result)
        return 0

    p.set_defaults(func=main)
