"""`python -m evals <benchmark>`: quality and speed benchmarks over BEIR-format datasets."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from evals.ingest_bench import add_parser as add_ingest_parser
from retrieval.settings import IndexSettings
from retrieval.types import SearchMode

DEFAULT_CACHE = Path(".cache/evals")


def _modes(value: str) -> list[SearchMode]:
    try:
        return [SearchMode(name.strip()) for name in value.split(",") if name.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; choose from {', '.join(m.value for m in SearchMode)}") from exc


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
            load_beir(path), IndexSettings(), args.cache_dir, args.modes, reference=not args.no_reference
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


def main(argv: list[str] | None = None) -> int:
    """Parse the subcommand and run it; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m evals", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log indexing progress")
    sub = parser.add_subparsers(dest="command", required=True)

    retrieval = sub.add_parser("retrieval", help="nDCG/MRR/recall and latency of bm25, dense, hybrid (+ rank-bm25)")
    retrieval.add_argument("--dataset", type=Path, action="append", required=True, help="BEIR folder (repeatable)")
    retrieval.add_argument("--modes", type=_modes, default=_modes("bm25,dense,hybrid"))
    retrieval.add_argument("--out", type=Path, help="write the result as JSON here")
    retrieval.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where indexed shards are kept")
    retrieval.add_argument("--no-reference", action="store_true", help="skip the rank-bm25 reference row")
    retrieval.set_defaults(func=_retrieval)

    fusion = sub.add_parser("fusion", help="hybrid quality over RRF k x BM25 weight, the adaptive rule and DBSF")
    fusion.add_argument("--dataset", type=Path, action="append", required=True, help="BEIR folder (repeatable)")
    fusion.add_argument("--out", type=Path, help="write the curve as JSON here")
    fusion.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where indexed shards are kept")
    fusion.set_defaults(func=_fusion)
    add_ingest_parser(sub)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
