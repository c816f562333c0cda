"""`python -m evals ingest`: ingestion throughput end to end, against the embedder's raw rate on the same chunks.

The BEIR corpus's documents (text only) are written as .txt files into a scratch source folder and indexed by
the real `IngestPipeline` (SQLite + an embedded Qdrant Edge shard in a temp dir): load, chunk in model tokens,
embed, upsert, optimize. The embedder is wrapped to record the exact texts it was given; after the job those
calls are replayed on the same embedder and timed alone, so end-to-end / raw is the share of the rate that
survives everything around the model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from app.db import init_db
from evals.beir import load_beir
from ingestion import catalog
from ingestion.pipeline import IngestPipeline
from retrieval.embedder import Embedder, TextEmbedder, make_embedder
from retrieval.settings import EmbedderSettings, IndexSettings
from retrieval.versions import EdgeVersions, LiveStore

_SOURCE = "bench"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class _RecordingEmbedder:
    """Forwards everything to the embedder; remembers each embed_documents call and the seconds it took."""

    def __init__(self, inner: TextEmbedder) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.seconds = 0.0

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        vectors = self.inner.embed_documents(texts)
        self.seconds += time.perf_counter() - started
        self.calls.append(list(texts))
        return vectors

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `ingest` on the `python -m evals` subcommands."""
    parser = subparsers.add_parser("ingest", help="documents/s and chunks/s end to end vs the embedder's raw rate")
    parser.add_argument("--dataset", type=Path, required=True, help="BEIR folder (corpus.jsonl is ingested)")
    parser.add_argument("--limit", type=int, default=0, help="ingest the first N corpus documents (0: all)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="embedder backend")
    parser.add_argument("--int8", action="store_true", help="onnx backend: dynamic int8 quantization")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    run(args)
    return 0


def _write_corpus(corpus: dict[str, str], folder: Path) -> None:
    folder.mkdir(parents=True)
    for number, (doc_id, text) in enumerate(corpus.items()):
        (folder / f"{number:06d}-{_UNSAFE.sub('_', doc_id)[:80]}.txt").write_text(text, encoding="utf-8")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Ingest the corpus once, replay the embedding calls alone, print the table, write JSON; return the result."""
    dataset = load_beir(args.dataset)
    corpus = {k: v for k, v in dataset.corpus.items() if v.strip()}
    if args.limit:
        corpus = dict(list(corpus.items())[: args.limit])
    embedder_settings = EmbedderSettings(backend=args.backend, onnx_int8=bool(getattr(args, "int8", False)))
    embedder = make_embedder(embedder_settings)
    started = time.perf_counter()
    embedder.warm_up()  # loading (and a first ONNX export) is start-up cost, not throughput
    embedder.embed_documents(["warm the kernels up"])
    warm_up_s = time.perf_counter() - started
    recorder = _RecordingEmbedder(embedder)

    with tempfile.TemporaryDirectory(prefix="kb-ingest-bench-") as tmp:
        root = Path(tmp)
        _write_corpus(corpus, root / "source")
        settings = IndexSettings(data_dir=root / "data", embedder=embedder_settings)
        store = LiveStore(EdgeVersions(settings))
        sessions = init_db(f"sqlite:///{root / 'kb.sqlite'}")
        pipeline = IngestPipeline(sessions, store, cast(Embedder, recorder), settings)
        started = time.perf_counter()
        pipeline.chunker.split("Imports and sentence models load once per process. They are start-up, too.")
        warm_up_s += time.perf_counter() - started
        with sessions() as db:
            catalog.create_source(db, _SOURCE, str(root / "source"), ["public"])
            job_id = catalog.open_job(db, _SOURCE).id
        started, started_cpu = time.perf_counter(), time.process_time()
        progress = pipeline.run_job(job_id)
        end_to_end_s, end_to_end_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
        store.close()

    if progress["status"] != "succeeded":
        raise RuntimeError(f"ingestion job ended {progress['status']}: {progress}")
    texts = [t for call in recorder.calls for t in call]
    started, started_cpu = time.perf_counter(), time.process_time()
    for call in recorder.calls:  # same texts, same batches as in the pipeline
        embedder.embed_documents(call)
    raw_s, raw_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu

    docs, chunks = int(str(progress["docs_done"])), len(texts)
    result: dict[str, Any] = {
        "benchmark": "ingest",
        "dataset": dataset.name,
        "backend": args.backend + ("-int8" if embedder_settings.onnx_int8 else ""),
        "model": embedder_settings.resolved_model(),
        "cpu_threads": os.cpu_count(),
        "docs": docs,
        "docs_failed": int(str(progress["docs_failed"])),
        "chunks": chunks,
        "embed_calls": len(recorder.calls),
        "chunk_tokens_mean": round(statistics.fmean(embedder.count_tokens(t) for t in texts), 1) if texts else 0.0,
        "warm_up_s": round(warm_up_s, 2),
        "end_to_end_s": round(end_to_end_s, 2),
        "embed_in_pipeline_s": round(recorder.seconds, 2),
        "outside_embed_s": round(end_to_end_s - recorder.seconds, 2),  # load, chunk, upsert, SQL, optimize
        "raw_embed_s": round(raw_s, 2),
        "docs_per_s": round(docs / end_to_end_s, 2),
        "chunks_per_s": round(chunks / end_to_end_s, 2),
        "raw_chunks_per_s": round(chunks / raw_s, 2) if raw_s else 0.0,
        "end_to_end_vs_raw": round(raw_s / end_to_end_s, 3),
        # CPU seconds of this process: the same ratio, far less moved by other tenants of a shared machine.
        "end_to_end_cpu_s": round(end_to_end_cpu_s, 2),
        "raw_embed_cpu_s": round(raw_cpu_s, 2),
        "end_to_end_vs_raw_cpu": round(raw_cpu_s / end_to_end_cpu_s, 3) if end_to_end_cpu_s else 0.0,
    }
    print(format_table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return result


def format_table(result: dict[str, Any]) -> str:
    """One row: the run's rates and how much of the raw embedding rate the pipeline keeps."""
    columns = ["docs/s", "chunks/s", "raw chunks/s", "e2e/raw", "e2e/raw cpu", "non-embed s"]
    values = [
        f"{result['docs_per_s']:.2f}",
        f"{result['chunks_per_s']:.2f}",
        f"{result['raw_chunks_per_s']:.2f}",
        f"{result['end_to_end_vs_raw']:.3f}",
        f"{result['end_to_end_vs_raw_cpu']:.3f}",
        f"{result['outside_embed_s']:.2f}",
    ]
    header = (
        f"{result['dataset']} ingest ({result['docs']} docs, {result['chunks']} chunks of "
        f"{result['chunk_tokens_mean']} tokens on average, {result['cpu_threads']} CPU threads; "
        f"warm-up {result['warm_up_s']} s)"
    )
    lines = [header, f"{'backend':<12}" + "".join(f"{c:>14}" for c in columns)]
    lines.append(f"{result['backend']:<12}" + "".join(f"{v:>14}" for v in values))
    return "\n".join(lines)
