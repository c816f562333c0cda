"""Document-level scoring of chunk rankings, with ranx computing the metrics."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from ranx import Qrels, Run, evaluate

METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@20", "recall@100")


def doc_ranking(chunk_doc_ids: Iterable[str]) -> dict[str, float]:
    """Documents ranked by their best chunk, from chunk hits' doc ids listed best first.

    A document scores its best chunk (max aggregation), i.e. its first appearance. The run's scores encode
    that rank (1/rank) so ranx never breaks a tie by document id, which in BEIR sets can give the answer away.
    """
    ranked = list(dict.fromkeys(chunk_doc_ids))
    return {doc_id: 1.0 / (rank + 1) for rank, doc_id in enumerate(ranked)}


def score_run(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """ndcg@10, mrr@10, recall@10/20/100 averaged over the judged queries (a query with no hits scores 0)."""
    full_run = {qid: run.get(qid) or {} for qid in qrels}
    # ranx rejects empty rankings; a query with no hits gets a placeholder id that is never relevant.
    full_run = {qid: docs or {"__no_hit__": 0.0} for qid, docs in full_run.items()}
    scores = evaluate(Qrels(qrels), Run(full_run), list(METRICS), make_comparable=True)
    assert isinstance(scores, dict)
    return {name: round(float(value), 4) for name, value in scores.items()}


def percentile_ms(samples: list[float], q: float) -> float:
    """The q-th percentile of latencies given in seconds, in milliseconds."""
    return round(float(np.percentile(np.asarray(samples) * 1000.0, q)), 2) if samples else 0.0
