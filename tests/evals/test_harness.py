"""The retrieval benchmark runs end to end on any BEIR folder, writes its JSON, and indexes a corpus once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.__main__ import main
from evals.beir import load_beir
from evals.index import build_index
from retrieval.embedder import Embedder
from retrieval.settings import IndexSettings

LONG_TAIL = " ".join(
    f"Section {i} of the handbook covers office plants, printer queues and the weekly rota in some detail."
    for i in range(40)
)
DOCS = {
    "d0": "Volcanoes erupt when magma from the Earth's mantle rises through the crust and escapes as lava and ash.",
    "d1": "To reset your VPN password, open the self-service portal, choose 'Forgot password', follow the link.",
    "d2": "The cafeteria serves lunch from noon until two o'clock; vegetarian dishes are marked with a green leaf.",
    "d3": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose and oxygen.",
    "d4": "Expense reports must be filed within thirty days, with scanned receipts attached for every item.",
    "d5": "The parking garage closes at midnight; after that, use the side entrance with your badge.",
    # The answer sits far into a long document, so it lands in a later chunk: documents score their best chunk.
    "d6": LONG_TAIL + " The fire assembly point is the north car park, beside the flagpole.",
    "d7": "Our quarterly all-hands meeting takes place in the main auditorium and is streamed for remote staff.",
    "d8": "Chess openings such as the Sicilian Defence aim to contest the centre of the board asymmetrically.",
    "d9": "The coffee machine on the third floor is descaled every Friday morning by the facilities team.",
}
QUERIES = {
    "q1": ("How do I reset my VPN password?", "d1"),
    "q2": ("Why do volcanoes erupt lava and ash?", "d0"),
    "q3": ("Where is the fire assembly point?", "d6"),
}
METRICS = {"ndcg@10", "mrr@10", "recall@10", "recall@20", "recall@100", "p50_ms", "p95_ms"}


def write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as handle:
        for doc_id, text in DOCS.items():
            # The title names the answer: the harness must not read it.
            handle.write(json.dumps({"_id": doc_id, "title": f"answer to {doc_id}", "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as handle:
        for qid, (text, _) in QUERIES.items():
            handle.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{qid}\t{doc}\t1" for qid, (_, doc) in QUERIES.items()]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_benchmark_writes_every_mode_and_finds_obvious_answers(tmp_path: Path) -> None:
    dataset = write_beir(tmp_path / "tiny")
    out = tmp_path / "results.json"

    code = main(
        [
            "retrieval",
            "--dataset",
            str(dataset),
            "--modes",
            "bm25,dense,hybrid",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )

    assert code == 0
    result = json.loads(out.read_text())
    assert result["dataset"] == "tiny"
    assert result["queries"] == 3
    assert result["chunks"] > len(DOCS), "the long document should have been split into several chunks"
    assert set(result["modes"]) == {"bm25", "dense", "hybrid", "bm25_ref"}
    for mode, row in result["modes"].items():
        assert set(row) == METRICS, mode
        assert row["recall@10"] == 1.0, f"{mode} missed an obvious answer: {row}"
        assert row["mrr@10"] == 1.0, f"{mode} did not rank an obvious answer first: {row}"
    assert 0.0 <= result["bm25_overlap@10"] <= 1.0
    assert result["bm25_overlap@10_lucene_idf"] == 1.0


def test_index_is_built_once_and_reused(tmp_path: Path, embedder: Embedder) -> None:
    dataset = load_beir(write_beir(tmp_path / "tiny"))
    settings = IndexSettings()

    store = build_index(dataset, settings, tmp_path / "cache", embedder=embedder)
    chunks, embedded = store.count(), embedder.texts_embedded
    store.close()
    again = build_index(dataset, settings, tmp_path / "cache", embedder=embedder)

    assert again.count() == chunks
    assert embedder.texts_embedded == embedded, "a cached index must not embed the corpus again"
    again.close()


def test_hybrid_rerank_mode_reports_its_stages_and_reranker(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    dataset = write_beir(tmp_path / "tiny")
    out = tmp_path / "rerank.json"

    code = main(
        [
            "retrieval", "--dataset", str(dataset), "--modes", "hybrid,hybrid_rerank", "--no-reference",
            "--rerank-model", str(tiny_cross_encoder), "--rerank-depth", "5", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"),
        ]
    )  # fmt: skip

    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["modes"]) == {"hybrid", "hybrid_rerank"}
    assert set(result["modes"]["hybrid_rerank"]) == METRICS
    # A reranker only reorders the head: recall deep in the list is the hybrid's.
    assert result["modes"]["hybrid_rerank"]["recall@100"] == result["modes"]["hybrid"]["recall@100"]
    stages = result["stages"]["hybrid_rerank"]
    assert set(stages) == {"retrieve", "rerank"}
    assert stages["rerank"]["p50_ms"] > 0
    assert result["rerank"]["model"] == str(tiny_cross_encoder)
    assert result["rerank"]["max_depth"] == 5
    assert result["rerank"]["pairs_per_second"] > 0


def test_unknown_mode_is_refused_with_the_choices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["retrieval", "--dataset", str(tmp_path), "--modes", "hybrid,colbert"])
    assert "hybrid_rerank" in capsys.readouterr().err


def with_answers(dataset: Path) -> Path:
    """Give every query its relevant document's text as the reference answer (queries.jsonl metadata)."""
    rows = [json.loads(line) for line in (dataset / "queries.jsonl").read_text().splitlines()]
    with (dataset / "queries.jsonl").open("w") as handle:
        for row in rows:
            answer = DOCS[QUERIES[row["_id"]][1]]
            handle.write(json.dumps({**row, "metadata": {"answer": answer}}) + "\n")
    return dataset


def test_compression_curve_keeps_answers_within_budget(tmp_path: Path) -> None:
    dataset = with_answers(write_beir(tmp_path / "tiny"))
    out = tmp_path / "compress.json"

    code = main(
        [
            "compress",
            "--dataset",
            str(dataset),
            "--passages",
            "3",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )

    assert code == 0
    result = json.loads(out.read_text())
    assert result["queries"] == 3 and result["queries_with_answer_in_passages"] == 3
    curve = {row["budget_fraction"]: row for row in result["curve"]}
    for fraction, row in curve.items():
        assert row["tokens_kept"] <= fraction + 1e-9, row
    assert curve[1.0]["answer_words_kept"] == 1.0, "with the whole budget nothing is dropped"
    kept = [curve[f]["answer_words_kept"] for f in sorted(curve)]
    assert kept[0] < 1.0, "at 10% of the tokens some answer words must be gone"
    assert curve[0.4]["answer_words_kept"] > curve[0.1]["answer_words_kept"]


def test_compression_curve_needs_reference_answers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metadata.answer"):
        main(["compress", "--dataset", str(write_beir(tmp_path / "tiny")), "--cache-dir", str(tmp_path / "c")])
