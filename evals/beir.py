"""Load a BEIR-format folder: corpus.jsonl, queries.jsonl and qrels/test.tsv."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


class DatasetError(Exception):
    """The folder is not a readable BEIR dataset; the message says which file is missing or malformed."""


@dataclass(frozen=True)
class BeirDataset:
    """A retrieval benchmark: documents, questions and which documents answer which question.

    Only each document's `text` is kept: titles, ids and paths are never retrieval signals (in the dev sets
    titles such as "FAQ: The admin, section 3" would give the answer away).
    """

    name: str
    path: Path
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus_sha256: str

    @property
    def judged_queries(self) -> dict[str, str]:
        """Queries that have at least one relevant document (the others cannot be scored)."""
        return {qid: text for qid, text in self.queries.items() if any(s > 0 for s in self.qrels.get(qid, {}).values())}


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing: a BEIR folder needs corpus.jsonl, queries.jsonl and qrels/test.tsv")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number} is not JSON: {exc}") from exc
    return rows


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing: a BEIR folder needs qrels/test.tsv")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) < 3 or row[0] == "query-id":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def load_beir(path: Path | str, split: str = "test") -> BeirDataset:
    """Read the dataset at `path`; raise DatasetError naming the bad file otherwise."""
    root = Path(path)
    corpus_file = root / "corpus.jsonl"
    corpus = {str(row["_id"]): str(row.get("text") or "") for row in _read_jsonl(corpus_file)}
    queries = {str(row["_id"]): str(row.get("text") or "") for row in _read_jsonl(root / "queries.jsonl")}
    qrels = _read_qrels(root / "qrels" / f"{split}.tsv")
    qrels = {qid: docs for qid, docs in qrels.items() if qid in queries}
    if not qrels:
        raise DatasetError(f"{root}: no qrels match a query id in queries.jsonl")
    digest = hashlib.sha256(corpus_file.read_bytes()).hexdigest()
    return BeirDataset(
        name=root.resolve().name, path=root, corpus=corpus, queries=queries, qrels=qrels, corpus_sha256=digest
    )


def reference_answers(dataset: BeirDataset) -> dict[str, str]:
    """Query id -> reference answer text from queries.jsonl `metadata.answer`, where the dataset has one."""
    out: dict[str, str] = {}
    for row in _read_jsonl(dataset.path / "queries.jsonl"):
        metadata = row.get("metadata")
        if isinstance(metadata, dict) and metadata.get("answer"):
            out[str(row["_id"])] = str(metadata["answer"])
    return out
