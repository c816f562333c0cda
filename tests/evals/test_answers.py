"""The answer eval scores answers against reference answers, checks citations against the qrels, and counts
abstentions on questions the corpus cannot answer."""

from __future__ import annotations

import json
from pathlib import Path

from evals.__main__ import main
from evals.answers_bench import rouge_l, token_f1
from tests.evals.test_harness import with_answers, write_beir

OFF_TOPIC = {
    "o1": ("What temperature should sourdough bread be baked at?", "Bake sourdough at 230 degrees."),
    "o2": ("Who won the 1998 football world cup?", "France won the 1998 world cup."),
}


def write_off_topic(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"x{q}", "text": answer}) + "\n" for q, (_, answer) in OFF_TOPIC.items())
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": text}) + "\n" for q, (text, _) in OFF_TOPIC.items())
    )
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\tx{q}\t1\n" for q in OFF_TOPIC)
    )
    return root


def test_token_f1_and_rouge_ignore_case_punctuation_articles_and_citation_markers() -> None:
    assert token_f1("The assembly point: the North car park [1].", "assembly point, north car park") == 1.0
    assert token_f1("no overlap here", "something else") == 0.0
    assert 0 < token_f1("north car park by the gate", "the north car park") < 1
    assert rouge_l("north car park [2]", "north car park") == 1.0


def test_extractive_answers_are_scored_cited_and_off_topic_questions_abstain(tmp_path: Path) -> None:
    dataset = with_answers(write_beir(tmp_path / "tiny"))
    off = write_off_topic(tmp_path / "off")
    out = tmp_path / "answers.json"

    code = main(
        ["answers", "--dataset", str(dataset), "--unanswerable", str(off), "--out", str(out)]
        + ["--cache-dir", str(tmp_path / "cache")]
    )

    assert code == 0
    result = json.loads(out.read_text())
    s = result["summary"]
    assert result["generator"] == "extractive" and s["answerable"] == 3 and s["unanswerable"] == 2
    assert s["citation_precision"] == 1.0 and s["answers_with_citation"] == 1.0 and s["false_abstention"] == 0
    assert s["token_f1"] > 0.5  # the answers quote the relevant documents
    assert s["abstention_unanswerable"] == 1.0
    rows = {r["qid"]: r for r in result["answers"]}
    assert rows["off:o1"]["abstained"] and rows["off:o1"]["cited"] == 0
    assert rows["q3"]["cited_relevant"] == rows["q3"]["cited"] >= 1 and "flagpole" in rows["q3"]["answer"]
    assert s["total_ms_p50"] > 0 and s["completion_tokens_mean"] == 0
