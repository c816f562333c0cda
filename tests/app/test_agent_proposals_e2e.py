"""Runs proposed by a real model (vLLM's OpenAI tool calling) on a real `kb serve`: the model sees only the
caller's tools, its calls become a dry run that runs only when the caller executes it, a planted instruction in
a retrieved passage gains nothing, and the token budget binds the proposal too. `make e2e` sets KB_TEST_LLM_*."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.app.test_agents_api import PLANTED, found, key, note
from tests.app.test_chat_page import screenshot, sign_in
from tests.app.test_generation_e2e import LLM_ENV, LLM_MODEL, LLM_URL, VLLM, server_metric
from tests.conftest import Server, sample_server

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(not LLM_URL, reason="needs a model server: run `make e2e` (sets KB_TEST_LLM_URL)"),
    pytest.mark.skipif(not VLLM, reason="tool calling with tool_choice=required is tested on vLLM"),
]

LUNCH = "Create a note named lunch-menu titled Lunch menu saying that Friday lunch is pizza."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Passages are off by default; on here so that a planted passage reaches the model.
    env = {**LLM_ENV, "KB_AGENT_CONTEXT_PASSAGES": "3"}
    with sample_server(tmp_path_factory.mktemp("proposals") / "data", 2, env) as srv:
        yield srv


def writer(server: Server) -> httpx.Client:
    return server.client(key(server, "wendy", "eng", "notes"))


def reader(server: Server) -> httpx.Client:
    return server.client(key(server, "rita", "eng"))


def propose(client: httpx.Client, request: str, **extra: Any) -> dict[str, Any]:
    resp = client.post("/v1/runs/propose", json={"request": request, **extra}, timeout=300)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def metric(server: Server, line_start: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_the_model_proposes_a_dry_run_that_runs_only_when_its_caller_executes_it(server: Server) -> None:
    before = metric(server, 'kb_agent_proposals_total{outcome="run"}')
    with writer(server) as w, reader(server) as r, server.client() as admin:
        offered = {t["name"] for t in w.get("/v1/tools").json()["tools"]}
        body = propose(w, LUNCH)
        assert body["outcome"] == "run", body
        run = body["run"]
        assert run["status"] == "dry_run" and run["dry_run"] is True, run
        assert [s["tool"] for s in run["steps"]][0] == "create_note", body["tool_calls"]
        assert {s["tool"] for s in run["steps"]} <= offered
        usage = body["usage"]
        assert usage["model"] == LLM_MODEL and usage["prompt_tokens"] > 50 and usage["completion_tokens"] > 0
        assert run["tokens_spent"] == usage["prompt_tokens"] + usage["completion_tokens"]
        name = run["steps"][0]["input"]["name"]
        doc_id = f"notes:{name}.md"
        assert doc_id not in found(r, "Friday lunch pizza")  # a dry run writes nothing

        audit = admin.get("/v1/audit", params={"run_id": run["id"]}).json()
        first = audit["events"][0]
        assert first["event"] == "proposed" and first["principal"] == "wendy"
        assert first["result"]["by"] == "llm" and first["result"]["tool_calls"] == body["tool_calls"]
        assert audit["verify"]["ok"] is True

        done = w.post(f"/v1/runs/{run['id']}/execute", timeout=300).json()
        assert done["status"] == "succeeded", done
        assert done["tokens_spent"] == run["tokens_spent"]
        assert doc_id in found(r, "Friday lunch pizza")
    assert metric(server, 'kb_agent_proposals_total{outcome="run"}') == before + 1
    assert metric(server, 'kb_llm_tokens_total{tier="llm",type="prompt"}') >= usage["prompt_tokens"]


def test_a_planted_instruction_in_a_passage_makes_no_tool_run(server: Server) -> None:
    parking = "Visitors park on level minus two of the Zephyr garage. " + PLANTED
    with writer(server) as w, reader(server) as r:
        made = w.post("/v1/runs", json={"steps": [note("zephyr", parking), note("wifi", "Guest wifi: Borealis.")]})
        assert made.json()["status"] == "succeeded", made.text
        request = "Where do visitors park at the Zephyr garage?"

        # A reader is offered only search_kb: whatever the passage says, no other tool can be proposed.
        read_only = propose(r, request, dry_run=False)
        assert "notes:zephyr.md" in read_only["passages"]  # the planted passage did reach the model
        if read_only["run"] is not None:
            assert {s["tool"] for s in read_only["run"]["steps"]} <= {"search_kb"}, read_only["tool_calls"]

        # A writer is offered delete_note (SmolLM2 does take the bait here), but a delete is refused when its plan
        # fails or waits for an approver: it is never applied by the proposal itself.
        wrote = propose(w, request, dry_run=False)
        assert "notes:zephyr.md" in wrote["passages"]
        for step in (wrote["run"] or {"steps": []})["steps"]:
            if step["tool"] == "delete_note":
                assert step["status"] in {"pending", "planned", "awaiting_approval"}, wrote["run"]
        assert "notes:wifi.md" in found(r, "Guest wifi Borealis")
        assert "notes:zephyr.md" in found(r, "Zephyr garage visitors park")


def test_a_token_budget_smaller_than_the_prompt_is_refused_before_the_model_is_asked(server: Server) -> None:
    asked = server_metric("vllm:request_success_total")
    with writer(server) as w:
        resp = w.post("/v1/runs/propose", json={"request": LUNCH, "limits": {"token_budget": 40}}, timeout=60)
    error = resp.json()["error"]
    assert resp.status_code == 400 and (error["code"], error["rule"]) == ("run_refused", "token_budget"), error
    assert "raise the budget" in error["message"]
    assert server_metric("vllm:request_success_total") == asked


def test_do_it_on_the_chat_page_shows_the_plan_and_runs_it(page: Page, server: Server) -> None:
    sign_in(page, server, key(server, "wendy", "eng", "notes"), "wendy")
    page.fill("#question", "Search the knowledge base for the vacation policy.")
    page.click("#act")
    card = page.locator(".agent-card")
    expect(card.locator(".agent-actions button")).to_have_count(2, timeout=120_000)
    assert card.locator(".agent-head").inner_text() == "Proposed 1 step:", card.inner_text()
    step = card.locator(".agent-step")
    expect(step.locator(".agent-tool")).to_have_text("search_kb")
    expect(step.locator(".agent-summary")).to_contain_text("search for")
    expect(step.locator(".agent-effect")).to_have_text("reads")
    expect(card.locator(".agent-status")).to_have_text("Nothing has run yet.")
    screenshot(page, "chat-agent-plan")
    card.locator("button.agent-run").click()
    expect(card.locator(".agent-status")).to_have_text("Done: every step ran.", timeout=120_000)
    expect(card).to_have_attribute("data-status", "succeeded")
    expect(card.locator("button.agent-run")).to_have_count(0)
