"""Answers as a user and an integrator see them: streamed events, conversations, feedback, the OpenAI API.

No model server here (make e2e covers generation): answers are extractive, and a model server that hangs
or refuses shows that the answer falls back to quoting, never to an error.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Server, make_key, sample_server

VACATION = "How many vacation days do I get per year?"


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, object]]]:
    """Parse a text/event-stream body into (event, data) pairs."""
    events = []
    for block in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sample_server(tmp_path_factory.mktemp("answers") / "data", 10) as srv:
        yield srv


def test_an_answer_streams_as_events_and_is_kept_in_the_conversation(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/answer", json={"question": VACATION, "stream": True})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
        names = [e for e, _ in events]
        assert names[0] == "start" and names[-2:] == ["citations", "done"] and "token" in names
        start, citations, done = events[0][1], events[-2][1]["citations"], events[-1][1]
        streamed = "".join(str(d["text"]) for e, d in events if e == "token")
        assert streamed == done["answer"] and "25 vacation days" in streamed and "[1]" in streamed
        assert done["extractive"] is True and done["abstained"] is False
        assert citations[0]["number"] == 1 and citations[0]["doc_id"] == "handbook:vacation-policy.md"
        assert "25 vacation days" in citations[0]["text"]

        stored = c.get(f"/v1/conversations/{start['conversation_id']}").json()
        assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
        assert stored["messages"][0]["content"] == VACATION and stored["title"] == VACATION
        assert stored["messages"][1]["status"] == "ok" and stored["messages"][1]["id"] == start["message_id"]
        assert stored["messages"][1]["citations"][0]["doc_id"] == "handbook:vacation-policy.md"


def test_a_follow_up_is_searched_together_with_the_question_it_follows(server: Server) -> None:
    with server.client() as c:
        first = c.post("/v1/answer", json={"question": VACATION}).json()
        follow = c.post(
            "/v1/answer", json={"question": "When do they expire?", "conversation_id": first["conversation_id"]}
        )
        assert follow.status_code == 200
        body = follow.json()
        assert body["conversation_id"] == first["conversation_id"]
        assert "March 31st" in body["answer"]
        stored = c.get(f"/v1/conversations/{first['conversation_id']}").json()["messages"]
        assert len(stored) == 4 and stored[2]["content"] == "When do they expire?"
        listed = c.get("/v1/conversations").json()["conversations"]
        assert listed[0]["id"] == first["conversation_id"]


def test_a_question_nothing_readable_answers_is_answered_with_i_dont_know(server: Server) -> None:
    outsider = make_key(server, "visitor-abstain")
    with server.client(outsider) as c:
        body = c.post("/v1/answer", json={"question": "What is the salary range for engineering level 2?"}).json()
        assert all(ct["doc_id"] != "handbook:salary-bands.md" for ct in body["citations"])
        assert "60,000" not in body["answer"]
        off_topic = c.post("/v1/answer", json={"question": "Which volcano erupted in Iceland in 2010?"}).json()
        assert off_topic["abstained"] is True and off_topic["citations"] == []


def test_conversations_and_feedback_belong_to_their_user_and_feedback_shows_in_metrics(server: Server) -> None:
    alice, bob = make_key(server, "alice"), make_key(server, "bob")
    with server.client(alice) as a, server.client(bob) as b:
        answer = a.post("/v1/answer", json={"question": VACATION}).json()
        conv, msg = answer["conversation_id"], answer["message_id"]
        assert b.get(f"/v1/conversations/{conv}").status_code == 404
        assert b.post("/v1/answer", json={"question": "and?", "conversation_id": conv}).status_code == 404
        assert b.post("/v1/feedback", json={"message_id": msg, "rating": 1}).status_code == 404
        assert b.get("/v1/conversations").json()["conversations"] == []

        assert a.post("/v1/feedback", json={"message_id": msg, "rating": -1}).status_code == 204
        assert a.post("/v1/feedback", json={"message_id": msg, "rating": 1, "comment": "right"}).status_code == 204
        bad = a.post("/v1/feedback", json={"message_id": msg, "rating": 5})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "rating"
        assert a.get(f"/v1/conversations/{conv}").json()["messages"][1]["rating"] == 1
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'kb_feedback_total{rating="up"} 1.0' in metrics and 'kb_feedback_total{rating="down"} 0.0' in metrics
        assert 'kb_answers_total{kind="extractive"}' in metrics

        assert b.delete(f"/v1/conversations/{conv}").status_code == 404
        assert a.delete(f"/v1/conversations/{conv}").status_code == 204
        assert a.get(f"/v1/conversations/{conv}").status_code == 404


def test_the_official_openai_client_works_unchanged(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.admin_key, max_retries=0)
    assert [m.id for m in client.models.list()] == ["kb"]

    reply = client.chat.completions.create(model="kb", messages=[{"role": "user", "content": VACATION}])
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason == "stop"
    content = reply.choices[0].message.content or ""
    assert "25 vacation days" in content
    citations = (reply.model_extra or {})["citations"]
    assert citations[0]["doc_id"] == "handbook:vacation-policy.md" and "[1]" in content

    chunks = list(
        client.chat.completions.create(
            model="kb",
            messages=[{"role": "user", "content": VACATION}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == content
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    last_choice = [ch for ch in chunks if ch.choices][-1]
    assert last_choice.choices[0].finish_reason == "stop"
    assert (last_choice.model_extra or {})["citations"][0]["doc_id"] == "handbook:vacation-policy.md"

    # history: a follow-up in OpenAI messages is searched with the question before it
    follow = client.chat.completions.create(
        model="kb",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": VACATION},
            {"role": "assistant", "content": content},
            {"role": "user", "content": "When do they expire?"},
        ],
    )
    assert "March 31st" in (follow.choices[0].message.content or "")


def test_the_openai_endpoint_refuses_bad_requests_in_the_openai_error_format(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.admin_key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.code == "model_not_found" and "GET /v1/models" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="kb", messages=[])
    assert empty.value.code == "invalid_request" and empty.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as last:
        client.chat.completions.create(model="kb", messages=[{"role": "assistant", "content": "hello"}])
    assert "last message" in last.value.message
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model="kb", messages=[{"role": "user", "content": "vacation " * 400}])
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="kb", messages=[{"role": "user", "content": "x"}], temperature=9)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="kb_wrong", max_retries=0).models.list()
    raw = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {server.admin_key}", "Content-Type": "application/json"},
    )
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_an_outsider_gets_no_hr_text_through_the_openai_endpoint(server: Server) -> None:
    outsider = make_key(server, "visitor-openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=outsider, max_retries=0)
    reply = client.chat.completions.create(
        model="kb", messages=[{"role": "user", "content": "What is the salary range for engineering level 2?"}]
    )
    assert "60,000" not in (reply.choices[0].message.content or "")
    assert all(c["doc_id"] != "handbook:salary-bands.md" for c in (reply.model_extra or {})["citations"])


class BlackHole:
    """A TCP server that accepts connections and never answers: a model server that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_hanging_model_server_gives_the_quoted_answer_marked_as_such_never_an_error(tmp_path: Path) -> None:
    hole = BlackHole()
    env = {
        "KB_LLM_BASE_URL": f"http://127.0.0.1:{hole.port}/v1",
        "KB_LLM_MODEL": "smollm2-135m",
        "KB_LLM_TIMEOUT_SECONDS": "1",
        "KB_LLM_MAX_RETRIES": "0",
        "KB_LLM_CONTEXT_WINDOW": "600",
    }
    try:
        with sample_server(tmp_path / "data", 11, env) as srv, srv.client() as c:
            body = c.post("/v1/answer", json={"question": VACATION}).json()
            assert body["extractive"] is True and body["fallback"].startswith("llm_unavailable")
            assert "25 vacation days" in body["answer"] and body["citations"]
            events = sse_events(c.post("/v1/answer", json={"question": VACATION, "stream": True}))
            assert events[-1][0] == "done" and events[-1][1]["fallback"].startswith("llm_unavailable")
            # the question is kept in the conversation whatever happened to the generation
            stored = c.get(f"/v1/conversations/{body['conversation_id']}").json()["messages"]
            assert stored[0]["content"] == VACATION and stored[1]["meta"]["fallback"].startswith("llm_unavailable")
            # a question that cannot fit the model's window is refused before any work
            too_long = c.post("/v1/answer", json={"question": "vacation days " * 140})
            assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
            client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=srv.admin_key, max_retries=0)
            reply = client.chat.completions.create(model="kb", messages=[{"role": "user", "content": VACATION}])
            assert "25 vacation days" in (reply.choices[0].message.content or "")
            assert (reply.model_extra or {})["kb"]["fallback"].startswith("llm_unavailable")
            assert 'kb_answers_total{kind="fallback"} 3.0' in httpx.get(f"{srv.url}/metrics").text
    finally:
        hole.close()
