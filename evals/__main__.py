"""`python -m evals <benchmark>`: quality and speed benchmarks over BEIR-format datasets."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from evals.agent_bench import add_parser as add_agent_parser
from evals.cache_bench import add_parser as add_cache_parser
from evals.ingest_bench import add_parser as add_ingest_parser
from evals.load_bench import add_parser as add_load_parser
from evals.routing_bench import add_parser as add_routing_parser
from retrieval.adapt import AdaptSettings
from retrieval.rerank import RerankSettings
from retrieval.settings import IndexSettings

DEFAULT_CACHE = Path(".cache/evals")


def _modes(value: str) -> list[str]:
    from evals.retrieval_bench import EVAL_MODES

    modes = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [m for m in modes if m not in EVAL_MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {unknown or value!r}; choose from {', '.join(EVAL_MODES)}")
    return modes


def _adapt_settings(args: argparse.Namespace) -> AdaptSettings:
    return AdaptSettings(time_budget_s=args.adapt_minutes * 60.0, num_layers=args.adapt_layers)


def _write(path: Path | None, payload: Any) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def _retrieval(args: argparse.Namespace) -> int:
    from evals.beir import load_beir
    from evals.retrieval_bench import benchmark, format_table

    results = []
    for path in args.dataset:
        result = benchmark(
            load_beir(path),
            IndexSettings(),
            args.cache_dir,
            args.modes,
            reference=not args.no_reference,
            rerank=RerankSettings(
                model=args.rerank_model or "", max_depth=args.rerank_depth, latency_budget_ms=args.rerank_budget_ms
            ),
            adapt_settings=_adapt_settings(args),
        )
        print(format_table(result), end="\n\n")
        results.append(result)
    _write(args.out, results[0] if len(results) == 1 else results)
    return 0


def _fusion(args: argparse.Namespace) -> int:
    from evals.beir import load_beir
    from evals.fusion_sweep import format_sweep, sweep, worst_case

    results = [sweep(load_beir(path), IndexSettings(), args.cache_dir) for path in args.dataset]
    print(format_sweep(results))
    _write(args.out, {"datasets": results, "worst_case": worst_case(results) if len(results) > 1 else []})
    return 0


def _compress(args: argparse.Namespace) -> int:
    from evals.beir import load_beir
    from evals.compress_bench import compression_curve, format_curve

    results = []
    for path in args.dataset:
        result = compression_curve(
            load_beir(path),
            IndexSettings(),
            args.cache_dir,
            passages=args.passages,
            rerank=RerankSettings(model=args.rerank_model or ""),
            rank_prior=args.rank_prior,
        )
        print(format_curve(result), end="\n\n")
        results.append(result)
    _write(args.out, results[0] if len(results) == 1 else results)
    return 0


def _rerank_speed(args: argparse.Namespace) -> int:
    from evals.beir import load_beir
    from evals.rerank_speed import format_speed, rerank_speed

    result = rerank_speed(load_beir(args.dataset), IndexSettings(), args.cache_dir, args.model, args.queries)
    print(format_speed(result))
    _write(args.out, result)
    return 0


def _answers(args: argparse.Namespace) -> int:
    from app.llm import LLMSettings
    from evals.answers_bench import answer_eval, format_answers
    from evals.beir import load_beir

    llm = None
    if args.llm_url or args.llm:
        url = args.llm_url or os.environ.get("KB_TEST_LLM_URL") or os.environ.get("KB_LLM_BASE_URL", "")
        model = args.llm_model or os.environ.get("KB_TEST_LLM_MODEL") or os.environ.get("KB_LLM_MODEL", "")
        tokenizer = args.llm_tokenizer or os.environ.get("KB_TEST_LLM_TOKENIZER") or os.environ.get("KB_LLM_TOKENIZER")
        if not (url and model):
            raise SystemExit("--llm needs a server: --llm-url and --llm-model, or KB_TEST_LLM_URL / KB_TEST_LLM_MODEL")
        llm = LLMSettings(
            base_url=url,
            model=model,
            tokenizer=tokenizer or model,
            timeout_s=args.llm_timeout,
            frequency_penalty=args.llm_frequency_penalty,
        )
    off = load_beir(args.unanswerable) if args.unanswerable else None
    result = answer_eval(
        load_beir(args.dataset),
        IndexSettings(),
        args.cache_dir,
        llm=llm,
        limit=args.limit,
        unanswerable=off,
        rerank=RerankSettings(model=args.rerank_model or ""),
    )
    print(format_answers([result]))
    _write(args.out, result)
    return 0


def _concurrency(value: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"--concurrency takes positive integers like 1,4, not {value!r}")
    return levels


def _serving(args: argparse.Namespace) -> int:
    from evals.serving_bench import ServerUnavailable, ServingSettings, format_table, run

    url = args.url or os.environ.get("KB_TEST_LLM_URL", "")
    model = args.model or os.environ.get("KB_TEST_LLM_MODEL", "")
    if not (url and model):
        raise SystemExit(
            "serving needs a server: --url and --model (or KB_TEST_LLM_URL / KB_TEST_LLM_MODEL); "
            "start the local one with `bash deploy/local/llm_server.sh start`"
        )
    if not 0.0 <= args.shared_prefix < 1.0 or args.prompt_tokens < 1 or args.requests < 1:
        raise SystemExit("--shared-prefix must lie in [0, 1); --prompt-tokens and --requests at least 1")
    settings = ServingSettings(
        url=url,
        model=model,
        api_key=args.api_key or os.environ.get("KB_LLM_API_KEY") or "none",
        requests=args.requests,
        concurrency=args.concurrency,
        prompt_tokens=args.prompt_tokens,
        max_tokens=args.max_tokens,
        shared_prefix=args.shared_prefix,
        tokenizer=args.tokenizer or "",
        timeout_s=args.timeout,
    )
    try:
        result = run(settings)
    except ServerUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    print(format_table(result))
    _write(args.out, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the subcommand and run it; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m evals", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log indexing progress")
    sub = parser.add_subparsers(dest="command", required=True)

    retrieval = sub.add_parser("retrieval", help="nDCG/MRR/recall and latency of bm25, dense, hybrid (+ rank-bm25)")
    retrieval.add_argument("--dataset", type=Path, action="append", required=True, help="BEIR folder (repeatable)")
    retrieval.add_argument(
        "--modes",
        type=_modes,
        default="bm25,dense,hybrid",
        help="any of " + ", ".join(("bm25", "dense", "hybrid", "hybrid_rerank")),
    )
    retrieval.add_argument("--out", type=Path, help="write the result as JSON here")
    retrieval.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where indexed shards are kept")
    retrieval.add_argument("--no-reference", action="store_true", help="skip the rank-bm25 reference row")
    retrieval.add_argument("--rerank-model", help="CrossEncoder for hybrid_rerank; default: train one (kb adapt)")
    retrieval.add_argument("--rerank-depth", type=int, default=RerankSettings.max_depth, help="most hits reranked")
    retrieval.add_argument("--rerank-budget-ms", type=float, default=RerankSettings.latency_budget_ms)
    retrieval.add_argument("--adapt-minutes", type=float, default=10.0, help="training budget when adapting")
    retrieval.add_argument("--adapt-layers", type=int, default=AdaptSettings.num_layers, help="layers kept")
    retrieval.set_defaults(func=_retrieval)

    fusion = sub.add_parser("fusion", help="hybrid quality over RRF k x BM25 weight, the adaptive rule and DBSF")
    fusion.add_argument("--dataset", type=Path, action="append", required=True, help="BEIR folder (repeatable)")
    fusion.add_argument("--out", type=Path, help="write the curve as JSON here")
    fusion.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where indexed shards are kept")
    fusion.set_defaults(func=_fusion)
    comp = sub.add_parser("compress", help="tokens kept vs reference-answer words kept, per context budget")
    comp.add_argument("--dataset", type=Path, action="append", required=True, help="BEIR folder (repeatable)")
    comp.add_argument("--passages", type=int, default=5, help="top passages compressed per query")
    comp.add_argument("--rerank-model", help="rerank the passages with this CrossEncoder first")
    comp.add_argument("--rank-prior", type=float, help="compress()'s passage-rank prior (default: its own)")
    comp.add_argument("--out", type=Path, help="write the curve as JSON here")
    comp.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where indexed shards are kept")
    comp.set_defaults(func=_compress)
    speed = sub.add_parser("rerank-speed", help="cross-encoder pairs/s: torch vs ONNX Runtime fp32 and int8")
    speed.add_argument("--dataset", type=Path, required=True, help="BEIR folder the pairs come from")
    speed.add_argument("--model", help="CrossEncoder folder; default: MiniLM-L6 with a fresh head (speed only)")
    speed.add_argument("--queries", type=int, default=20, help="questions, each with its top 20 hybrid hits")
    speed.add_argument("--out", type=Path, help="write the result as JSON here")
    speed.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where indexed shards are kept")
    speed.set_defaults(func=_rerank_speed)
    ans = sub.add_parser("answers", help="answer F1 / ROUGE-L, citation precision, abstention, latency, tokens")
    ans.add_argument("--dataset", type=Path, required=True, help="BEIR folder whose queries have metadata.answer")
    ans.add_argument("--unanswerable", type=Path, help="BEIR folder whose questions this corpus cannot answer")
    ans.add_argument("--limit", type=int, help="at most this many questions of each set")
    ans.add_argument("--llm", action="store_true", help="generate with the server in KB_TEST_LLM_* / KB_LLM_*")
    ans.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8011/v1")
    ans.add_argument("--llm-model", help="served model name")
    ans.add_argument("--llm-tokenizer", help="the served model's tokenizer (name or folder)")
    ans.add_argument("--llm-timeout", type=float, default=120.0, help="seconds to wait for a token")
    ans.add_argument("--llm-frequency-penalty", type=float, default=0.0, help="OpenAI frequency_penalty")
    ans.add_argument("--rerank-model", help="rerank with this CrossEncoder first")
    ans.add_argument("--out", type=Path, help="write the summary and every answer as JSON here")
    ans.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where indexed shards are kept")
    ans.set_defaults(func=_answers)
    add_ingest_parser(sub)
    add_cache_parser(sub, DEFAULT_CACHE, _write)
    add_load_parser(sub, _write)
    add_routing_parser(sub, DEFAULT_CACHE, _write)
    add_agent_parser(sub, _write)
    srv = sub.add_parser("serving", help="TTFT, latency, tok/s and prefix-cache hits of a model server per concurrency")
    srv.add_argument("--url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8011/v1 (or KB_TEST_LLM_URL)")
    srv.add_argument("--model", help="served model name (or KB_TEST_LLM_MODEL)")
    srv.add_argument("--api-key", help="the server's API key (or KB_LLM_API_KEY)")
    srv.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    srv.add_argument("--concurrency", type=_concurrency, default=(1, 4), help="levels, e.g. 1,4,16")
    srv.add_argument("--prompt-tokens", type=int, default=1000, help="about this many prompt tokens per request")
    srv.add_argument("--max-tokens", type=int, default=64, help="output tokens at most per request")
    srv.add_argument("--shared-prefix", type=float, default=0.8, help="share of the prompt every request shares")
    srv.add_argument("--tokenizer", help="count prompt tokens with this tokenizer (default: 1.3 per word)")
    srv.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a token")
    srv.add_argument("--json", "--out", dest="out", type=Path, help="write the result as JSON here")
    srv.set_defaults(func=_serving)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
