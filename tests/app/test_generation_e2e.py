"""Generated answers against a real model server (vLLM, or llama.cpp's server): `make e2e` starts one and sets
KB_TEST_LLM_URL / KB_TEST_LLM_MODEL / KB_TEST_LLM_TOKENIZER; without them these tests are skipped."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from app.llm import TokenCounter
from app.prompt import build_messages, order_passages
from retrieval.types import Citation
from tests.app.test_answers_api import VACATION, sse_events
from tests.conftest import SAMPLE, Server, sample_server

LLM_URL = os.environ.get("KB_TEST_LLM_URL", "")
LLM_MODEL = os.environ.get("KB_TEST_LLM_MODEL", "")
LLM_TOKENIZER = os.environ.get("KB_TEST_LLM_TOKENIZER", "")
VLLM = os.environ.get("KB_TEST_LLM_BACKEND", "vllm") == "vllm"  # vLLM's /metrics show what the server did
pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(not LLM_URL, reason="needs a model server: run `make e2e` (sets KB_TEST_LLM_URL)"),
]


# A kb serve that asks the model server; no cache: these tests ask the same question and look at each generation.
LLM_ENV = {
    "KB_LLM_BASE_URL": LLM_URL,
    "KB_LLM_MODEL": LLM_MODEL,
    "KB_LLM_TOKENIZER": LLM_TOKENIZER,
    "KB_LLM_TIMEOUT_SECONDS": "120",
    "KB_CACHE_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**LLM_ENV, "KB_LLM_MAX_TOKENS": "96"}
    with sample_server(tmp_path_factory.mktemp("llm") / "data", 12, env) as srv:
        yield srv


def server_metric(name: str) -> float:
    """A counter or gauge of the model server's Prometheus /metrics, summed over its labels."""
    text = httpx.get(LLM_URL.removesuffix("/v1") + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(rf"{re.escape(name)}[{{ ]", line)
    )


def test_a_generated_answer_streams_token_by_token_and_cites_real_passages(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/answer", json={"question": VACATION, "stream": True}, timeout=300)
    events = sse_events(r)
    tokens = [d["text"] for e, d in events if e == "token"]
    done = events[-1][1]
    assert events[-1][0] == "done", events[-3:]
    assert done["extractive"] is False and done["fallback"] == "" and done["model"] == LLM_MODEL
    assert len(tokens) >= 5, tokens  # it streamed, not one block at the end
    streamed = "".join(str(t) for t in tokens).strip()
    if done["attributed"]:  # the model cited nothing; the final text adds the matched markers
        assert re.sub(r" \[\d+\]", "", str(done["answer"])) == streamed and events[-2][1]["citations"]
    else:
        assert streamed == done["answer"]
    usage = done["usage"]
    assert usage["prompt_tokens"] > 100 and 0 < usage["completion_tokens"] <= 96
    citations = events[-2][1]["citations"]
    numbers = {int(n) for n in re.findall(r"\[(\d+)\]", str(done["answer"]))}
    assert numbers <= {c["number"] for c in citations}  # every marker left points at a listed passage
    sample_docs = {f"handbook:{p.name}" for p in SAMPLE.iterdir()}
    assert all(c["doc_id"] in sample_docs and c["text"] for c in citations)


def test_the_openai_client_gets_a_generated_cited_answer(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.admin_key, max_retries=0, timeout=300)
    reply = client.chat.completions.create(model="kb", messages=[{"role": "user", "content": VACATION}])
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens > 100 and reply.usage.completion_tokens > 0
    extra = reply.model_extra or {}
    assert extra["kb"]["extractive"] is False and isinstance(extra["citations"], list)
    stream = client.chat.completions.create(
        model="kb", messages=[{"role": "user", "content": VACATION}], stream=True, max_tokens=16
    )
    pieces = [ch.choices[0].delta.content for ch in stream if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) >= 3


def test_an_off_topic_question_gets_i_dont_know_without_asking_the_model(server: Server) -> None:
    before = server_metric("vllm:request_success_total") if VLLM else None
    with server.client() as c:
        body = c.post("/v1/answer", json={"question": "Which volcano erupted in Iceland in 2010?"}, timeout=300).json()
    assert body["abstained"] is True and body["citations"] == [] and "don't know" in body["answer"]
    if before is not None:
        assert server_metric("vllm:request_success_total") == before


def test_a_client_that_disconnects_stops_generation_upstream(server: Server) -> None:
    with (
        server.client() as c,
        c.stream(
            "POST",
            "/v1/answer",
            json={"question": VACATION + " Explain every rule in detail.", "stream": True},
            timeout=300,
        ) as r,
    ):
        started = None
        for line in r.iter_lines():
            if line.startswith("data: ") and started is None:
                started = json.loads(line[6:])
            if line == "event: token":
                break  # the first token arrived: leave mid-answer
    assert started is not None
    deadline = time.time() + 20
    while time.time() < deadline:
        with server.client() as c:
            msg = c.get(f"/v1/conversations/{started['conversation_id']}").json()["messages"][-1]
        if msg["status"] != "pending" and (not VLLM or server_metric("vllm:num_requests_running") == 0):
            break
        time.sleep(0.5)
    assert msg["status"] == "cancelled"  # kept, marked as cut short
    if VLLM:
        assert server_metric("vllm:num_requests_running") == 0  # the model server stopped generating


def test_prompt_token_counts_match_the_servers_own() -> None:
    counter = TokenCounter(LLM_TOKENIZER, lambda t: len(t.split()))
    assert counter.exact
    passages = order_passages([(Citation("d", "p.md", "Vacation", 0, ""), "Every employee gets 25 vacation days.")])
    messages = build_messages(passages, [], VACATION)
    client = openai.OpenAI(base_url=LLM_URL, api_key="none", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model=LLM_MODEL, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert reply.usage is not None and reply.usage.prompt_tokens == counter.chat_tokens(messages)


@pytest.mark.skipif(not VLLM, reason="reads vLLM's prefix-cache counters")
def test_two_different_questions_reuse_the_cached_prompt_prefix(server: Server) -> None:
    with server.client() as c:
        c.post("/v1/answer", json={"question": VACATION}, timeout=300)
        hits_before = server_metric("vllm:prefix_cache_hits_total")
        body = c.post("/v1/answer", json={"question": "When do carried-over vacation days expire?"}, timeout=300)
    assert body.json()["extractive"] is False
    assert server_metric("vllm:prefix_cache_hits_total") > hits_before  # the shared rules and passages were reused


def test_a_follow_up_is_rewritten_by_the_model_and_the_rewrite_counts_in_the_usage(server: Server) -> None:
    with server.client() as c:
        first = c.post("/v1/answer", json={"question": VACATION}, timeout=300).json()
        follow = {"question": "When do they expire?", "conversation_id": first["conversation_id"], "stream": True}
        events = sse_events(c.post("/v1/answer", json=follow, timeout=300))
    start, done = events[0][1], events[-1][1]
    assert start["search_query"] and events[-1][0] == "done"
    usage = done["usage"]
    assert usage["stages_ms"]["rewrite"] > 0  # the model rewrote the follow-up before retrieval
    assert usage["prompt_tokens"] > first["usage"]["prompt_tokens"] // 2


def tier(name: str, price_in: float, price_out: float) -> dict[str, object]:
    return {
        "name": name,
        "base_url": LLM_URL,
        "model": LLM_MODEL,
        "tokenizer": LLM_TOKENIZER,
        "price_in_per_1k": price_in,
        "price_out_per_1k": price_out,
        "max_tokens": 48,
        "timeout_seconds": 120,
    }


# Not the module server's Redis DB (12): two kb serve processes on one broker DB take each other's jobs.
TIERED_DB = 4


def tiered_env(routing: str, min_grounded: float) -> dict[str, str]:
    return {
        # the same served model twice, priced apart: the cascade's mechanics, not two models' quality
        "KB_TIERS": json.dumps([tier("big", 1.0, 4.0), tier("small", 0.1, 0.4)]),
        "KB_ROUTING": routing,
        "KB_ROUTE_MIN_GROUNDED": str(min_grounded),
        "KB_ROUTE_QUOTE_SIMILARITY": "1.01",  # never quote first, never jump to the top: start at the small tier
        "KB_ROUTE_HARD_SIMILARITY": "0",
        "HF_HUB_OFFLINE": "1",
    }


def test_a_cascade_escalates_an_ungrounded_answer_and_charges_each_tier(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """No answer can be grounded at a required share above 1: the small tier answers silently, the big one
    streams, and both give way to the quoted answer; usage shows every call and its cost."""
    env = tiered_env("cascade", 1.01)
    with sample_server(tmp_path_factory.mktemp("cascade") / "data", TIERED_DB, env) as srv, srv.client() as c:
        events = sse_events(c.post("/v1/answer", json={"question": VACATION, "stream": True}, timeout=300))
        again = c.post("/v1/answer", json={"question": VACATION}, timeout=300).json()
    names = [e for e, _ in events]
    done = events[-1][1]
    usage = done["usage"]
    assert "restart" in names  # the big tier's streamed text was replaced
    assert [e.split(":")[0] for e in usage["escalations"]] == ["small", "big"], usage
    assert all(":ungrounded(" in e or e.endswith(":abstained") for e in usage["escalations"])
    assert done["extractive"] is True and str(done["fallback"]).startswith("ungrounded")
    assert "25 vacation days" in str(done["answer"]) and usage["tier"] == "extractive"
    small, big = usage["by_tier"]["small"], usage["by_tier"]["big"]
    assert small["prompt_tokens"] > 100 and big["prompt_tokens"] > 100
    expected = sum(
        r["prompt_tokens"] / 1000 * pi + r["completion_tokens"] / 1000 * po
        for r, pi, po in [(small, 0.1, 0.4), (big, 1.0, 4.0)]
    )
    assert usage["cost"] == pytest.approx(expected, rel=1e-6)
    assert usage["prompt_tokens"] == small["prompt_tokens"] + big["prompt_tokens"]
    assert again["usage"]["cache_hit"] is False  # a fallback answer is never cached


def test_an_accepted_cheap_answer_stops_the_cascade_and_a_repeat_costs_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with sample_server(tmp_path_factory.mktemp("cheap") / "data", TIERED_DB, tiered_env("cascade", 0.0)) as srv:
        with srv.client() as c:
            first = c.post("/v1/answer", json={"question": VACATION}, timeout=300).json()
            repeat = c.post("/v1/answer", json={"question": VACATION}, timeout=300).json()
        metrics = httpx.get(f"{srv.url}/metrics").text  # noqa: SIM117
    usage = first["usage"]
    assert first["extractive"] is False and usage["tier"] == "small" and usage["escalations"] == []
    assert set(usage["by_tier"]) == {"small"} and usage["cost"] > 0
    assert repeat["usage"]["cache_hit"] is True and repeat["usage"]["cost"] == 0
    assert repeat["usage"]["prompt_tokens"] == 0 and repeat["answer"] == first["answer"]
    assert 'kb_cost_total{tier="small"}' in metrics and 'kb_cost_total{tier="big"}' not in metrics
    assert 'kb_llm_tokens_total{tier="small",type="prompt"}' in metrics
