"""The approvals panel of the chat page in a real Chromium against a real `kb serve`: a writer's agent run stops
at a destructive step, an approver approves or rejects it on the page, and someone without the scope sees nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.app.test_agents_api import found, key
from tests.app.test_chat_page import screenshot, sign_in
from tests.conftest import Server, sample_server

MARKUP = '<img src="x" onerror="window.__kbInjected = 1">'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sample_server(tmp_path_factory.mktemp("approvals-page") / "data", 5) as srv:
        yield srv


def writer_key(server: Server) -> str:
    return key(server, "wendy", "eng", "notes")


def approver_key(server: Server) -> str:
    return key(server, "bob", "ops", "approve")


def submit(client: httpx.Client, steps: list[dict[str, Any]]) -> dict[str, Any]:
    resp = client.post("/v1/runs", json={"steps": steps})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def create_note(client: httpx.Client, name: str, text: str) -> None:
    done = submit(client, [{"tool": "create_note", "input": {"name": name, "title": name, "text": text}}])
    assert done["status"] == "succeeded", done


def delete_run(client: httpx.Client, name: str, before: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    paused = submit(client, [*(before or []), {"tool": "delete_note", "input": {"name": name}}])
    assert paused["status"] == "awaiting_approval", paused
    return paused


def test_an_approver_approves_one_delete_and_rejects_another_on_the_page(page: Page, server: Server) -> None:
    with server.client(writer_key(server)) as w, server.client(approver_key(server)) as a:
        create_note(w, "kiosk", "The Andromeda kiosk in the lobby prints visitor badges.")
        assert "notes:kiosk.md" in found(w, "Andromeda kiosk visitor badges")
        first = delete_run(w, "kiosk")

        sign_in(page, server, approver_key(server), "bob")
        panel = page.locator("#approvals")
        expect(panel).to_be_visible()
        expect(page.locator("#approvals-title")).to_contain_text("Waiting for your approval")
        item = panel.locator(f'.approval-run[data-id="{first["id"]}"]')
        expect(item.locator(".approval-who")).to_have_text("wendy")
        expect(item.locator(".approval-step")).to_have_count(1)
        paused = item.locator(".approval-step.paused")
        expect(paused.locator(".approval-tool")).to_have_text("delete_note")
        expect(paused.locator(".approval-summary")).to_have_text("delete note 'kiosk'")

        item.locator("button.approve").click()
        expect(item).to_have_count(0)
        expect(page.locator("#approvals-status")).to_have_text("Approved wendy's run; it succeeded.")
        approved = a.get(f"/v1/runs/{first['id']}").json()
        assert approved["status"] == "succeeded" and approved["steps"][0]["approved_by"] == "bob", approved
        assert "notes:kiosk.md" not in found(w, "Andromeda kiosk visitor badges")

        # A run that arrives while the page is open shows up on the 10-second refresh, markup and all as text.
        create_note(w, "dock", "Deliveries for the Cassiopeia building use loading dock four.")
        search = {"tool": "search_kb", "input": {"query": f"Cassiopeia dock {MARKUP}"}}
        second = delete_run(w, "dock", before=[search])
        item = panel.locator(f'.approval-run[data-id="{second["id"]}"]')
        expect(item).to_be_visible(timeout=15_000)
        steps = item.locator(".approval-step")
        expect(steps).to_have_count(2)
        expect(steps.nth(0)).not_to_have_class("approval-step paused")
        expect(steps.nth(0).locator(".approval-summary")).to_contain_text(MARKUP)
        expect(steps.nth(1)).to_have_class("approval-step paused")
        assert page.evaluate("window.__kbInjected") is None
        assert panel.locator("img, script").count() == 0

        item.locator("button.reject").click()
        item.locator("button.reject-send").click()  # no reason yet: asked for one, nothing sent
        expect(item.locator(".error")).to_have_text("Give a reason for the rejection.")
        assert a.get(f"/v1/runs/{second['id']}").json()["status"] == "awaiting_approval"
        page.wait_for_timeout(11_000)  # a timed refresh must not wipe the reason box
        item.locator(".reject-reason").fill("dock four is still in use")
        screenshot(page, "chat-approvals-reject")
        item.locator("button.reject-send").click()
        expect(item).to_have_count(0)
        expect(page.locator("#approvals-status")).to_have_text("Rejected wendy's run; it rolled back.")
        expect(page.locator("#approvals-empty")).to_be_visible()
        rejected = a.get(f"/v1/runs/{second['id']}").json()
        assert (rejected["status"], rejected["rule"]) == ("rolled_back", "rejected"), rejected
        assert "dock four is still in use" in rejected["reason"]
        # the read-only search needs no undo; the delete never ran
        assert [s["status"] for s in rejected["steps"]] == ["applied", "rejected"], rejected["steps"]
        assert "notes:dock.md" in found(w, "Cassiopeia loading dock four")


def test_a_failed_approval_is_shown_on_the_run(page: Page, server: Server) -> None:
    with server.client(writer_key(server)) as w:
        create_note(w, "atrium", "The Perseus atrium hosts the Friday town hall.")
        paused = delete_run(w, "atrium")
    sign_in(page, server, approver_key(server), "bob")
    item = page.locator(f'.approval-run[data-id="{paused["id"]}"]')
    expect(item).to_be_visible()
    with server.client(approver_key(server)) as a:  # decided elsewhere while the page still shows it
        assert a.post(f"/v1/runs/{paused['id']}/reject", json={"reason": "done over REST"}).status_code == 200
    item.locator("button.approve").click()
    expect(item.locator(".error")).not_to_be_empty()
    expect(item.locator(".error")).to_be_visible()


def test_a_user_without_the_approve_scope_sees_no_panel(page: Page, server: Server) -> None:
    with server.client(writer_key(server)) as w:
        create_note(w, "lockers", "The Draco gym lockers are emptied every Friday evening.")
        delete_run(w, "lockers")
    sign_in(page, server, writer_key(server), "wendy")
    page.wait_for_timeout(500)
    expect(page.locator("#approvals")).to_be_hidden()
    expect(page.locator(".approval-run")).to_have_count(0)


def test_do_it_is_offered_to_a_writer_only_and_says_why_it_cannot_plan_without_a_model(
    page: Page, server: Server
) -> None:
    sign_in(page, server, key(server, "rita", "eng", ""), "rita")
    expect(page.locator("#act")).to_be_hidden()  # only read: no tool that changes anything
    page.click("#sign-out")

    sign_in(page, server, writer_key(server), "wendy")
    expect(page.locator("#act")).to_be_visible()
    page.fill("#question", "Write a note that the Lyra kitchen closes at four")
    page.click("#act")
    card = page.locator(".agent-card")
    expect(card.locator(".agent-head")).to_have_text("Could not plan that.")
    expect(card.locator(".error")).to_contain_text("proposing a run needs a model")
    expect(page.locator(".message.user").last).to_have_text("Write a note that the Lyra kitchen closes at four")
    expect(card.locator("button.agent-run")).to_have_count(0)
