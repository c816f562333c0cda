"""`kb adapt` on a benchmark corpus: train a reranker on pairs mined from the eval index, cached per index."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evals.beir import BeirDataset
from evals.index import index_root
from ingestion.adapt_job import engine_negatives
from retrieval.adapt import AdaptSettings, adapt
from retrieval.embedder import Embedder
from retrieval.search import Retriever
from retrieval.settings import IndexSettings
from retrieval.store_edge import EdgeStore
from retrieval.types import Principal

log = logging.getLogger(__name__)

REPORT = "adapt-report.json"


def adapted_reranker(
    dataset: BeirDataset,
    settings: IndexSettings,
    cache_dir: Path,
    store: EdgeStore,
    embedder: Embedder,
    adapt_settings: AdaptSettings,
    retrain: bool = False,
) -> dict[str, Any]:
    """The adaptation report for this index and these settings, training once (the model is cached beside
    the index). The report's `candidate_path` is the trained model, promoted or not."""
    models_dir = index_root(dataset, settings, cache_dir) / "models"
    report_file = models_dir / REPORT
    wanted = asdict(adapt_settings)
    if report_file.is_file() and not retrain:
        cached = json.loads(report_file.read_text())
        if cached.get("settings") == wanted and Path(cached["candidate_path"]).is_dir():
            log.info("eval.adapt.cached dataset=%s path=%s", dataset.name, cached["candidate_path"])
            return dict(cached)
    retriever = Retriever(store, embedder, settings)
    report = adapt(
        list(store.chunks()),
        engine_negatives(retriever, Principal("eval", ())),
        embedder.settings.resolved_model(),
        models_dir,
        adapt_settings,
        embedder=embedder,
    )
    report["settings"] = wanted
    report_file.write_text(json.dumps(report, indent=1) + "\n")
    return report
