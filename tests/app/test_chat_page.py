"""The chat page in a real Chromium against a real `kb serve`: sign in, ask, read the cited passage, rate,
reopen a conversation. No LLM is configured here, so answers are quoted from the documents, still streamed."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.app.test_api import make_key
from tests.conftest import SAMPLE, Server, redis_db_url, start_server, wait_job

SCREENS = Path("/tmp/kb-screens")
VACATION = "How many vacation days do I get per year?"
SALARY = "What is the salary range for engineering level 2?"
# A document that carries markup: the page must show it as text, never run it.
CAFETERIA = (
    "Cafeteria <b>menu</b>\n\n"
    "The cafeteria serves lunch from 11:30 to 14:00 on the ground floor "
    '<img src="x" onerror="window.__kbInjected = 1"><script>window.__kbInjected = 2</script> every working day.\n'
)
# Records the text of the newest answer at every change, and whether it was still streaming then.
RECORD_ANSWER_TEXTS = """() => {
  window.__answerTexts = [];
  new MutationObserver(() => {
    const last = [...document.querySelectorAll(".message.assistant")].pop();
    if (!last) return;
    const text = last.querySelector(".answer-text").textContent;
    const streaming = last.classList.contains("streaming");
    const prev = window.__answerTexts[window.__answerTexts.length - 1];
    if (!prev || prev.text !== text || prev.streaming !== streaming) window.__answerTexts.push({text, streaming});
  }).observe(document.querySelector("#thread"),
    {subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ["class"]});
}"""


def index_corpus(server: Server, corpus: Path) -> None:
    with server.client() as admin:
        created = admin.post("/v1/sources", json={"name": "handbook", "path": str(corpus), "acl": ["public"]})
        assert created.status_code == 201, created.text
        done = wait_job(admin, admin.post("/v1/sources/handbook/reindex").json()["id"])
    assert done["status"] == "succeeded" and done["docs_failed"] == 0, done


def serve_corpus(root: Path, redis_db: int, extra_env: dict[str, str] | None = None) -> Server:
    corpus = root / "corpus"
    shutil.copytree(SAMPLE, corpus)
    (corpus / "cafeteria.txt").write_text(CAFETERIA)
    server = start_server(root / "data", redis_db_url(redis_db), extra_env)
    try:
        index_corpus(server, corpus)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: each test signs in as its own user, so their conversations stay apart."""
    srv = serve_corpus(tmp_path_factory.mktemp("chat-page"), 9)
    try:
        yield srv
    finally:
        srv.stop()


def screenshot(page: Page, name: str) -> Path:
    SCREENS.mkdir(parents=True, exist_ok=True)
    path = SCREENS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, path
    return path


def sign_in(page: Page, server: Server, key: str, name: str) -> None:
    page.goto(f"{server.url}/chat")
    page.fill("#api-key", key)
    page.click("#sign-in")
    expect(page.locator("#user-name")).to_have_text(name)
    expect(page.locator("#api-key")).to_be_hidden()


def ask(page: Page, question: str, timeout_ms: float = 5_000) -> None:
    """Type the question, send it with Enter and wait until its answer has finished streaming."""
    before = page.locator(".message.assistant").count()
    page.fill("#question", question)
    page.press("#question", "Enter")
    answer = page.locator(".message.assistant").nth(before)
    expect(answer.locator(".answer-label, .error").first).to_be_visible(timeout=timeout_ms)
    expect(answer).not_to_have_class(re.compile(r"\bstreaming\b"))
    expect(page.locator("#ask")).to_be_enabled()


def test_an_employee_signs_in_asks_reads_the_cited_passage_and_rates_the_answer(page: Page, server: Server) -> None:
    key = make_key(server, "erin")
    page.goto(f"{server.url}/chat")
    page.fill("#api-key", "kb_not-a-real-key")
    page.click("#sign-in")
    expect(page.locator("#sign-in-error")).to_contain_text("unknown or revoked API key")
    expect(page.locator("#app")).to_be_hidden()
    sign_in(page, server, key, "erin")
    expect(page.locator("#sign-in-error")).to_be_hidden()

    page.evaluate(RECORD_ANSWER_TEXTS)
    ask(page, VACATION)
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".answer-text")).to_contain_text("25 vacation days")
    expect(answer.locator(".answer-label")).to_have_text("quoted from the documents")
    streamed = page.evaluate("window.__answerTexts")
    assert any(s["streaming"] and "25 vacation days" in s["text"] for s in streamed), streamed
    expect(page.locator(".message.user .bubble")).to_have_text(VACATION)

    answer.locator('.cite[data-n="1"]').first.click()
    passage = page.locator("#passage")
    expect(passage).to_be_visible()
    expect(page.locator("#passage-title")).to_have_text("Vacation and time off")
    expect(page.locator("#passage-path")).to_contain_text("vacation-policy.md")
    expect(page.locator("#passage-text")).to_contain_text("25 vacation days per calendar year")
    expect(answer.locator(".sources li").first).to_contain_text("vacation-policy.md")

    answer.locator("button.thumb-up").click()
    expect(answer.locator("button.thumb-up")).to_have_attribute("aria-pressed", "true")
    expect(answer.locator("button.thumb-down")).to_have_attribute("aria-pressed", "false")
    with server.client(key) as api:
        conversations = api.get("/v1/conversations").json()["conversations"]
        assert [c["title"] for c in conversations] == [VACATION]
        assert page.evaluate("location.hash") == f"#c={conversations[0]['id']}"
        thread = api.get(f"/v1/conversations/{conversations[0]['id']}").json()
        assert [(m["role"], m["rating"]) for m in thread["messages"]] == [("user", None), ("assistant", 1)]
        assert 'kb_feedback_total{rating="up"} 1.0' in api.get("/metrics").text
    expect(page.locator("#conversations li")).to_have_count(1)
    screenshot(page, "chat-answer-and-passage")

    page.keyboard.press("Escape")
    expect(passage).to_be_hidden()


def test_a_question_someone_asked_before_is_answered_from_the_cache(page: Page, server: Server) -> None:
    with server.client() as c:  # someone else asked it first
        assert c.post("/v1/answer", json={"question": VACATION}).status_code == 200
    sign_in(page, server, make_key(server, "fay"), "fay")
    ask(page, VACATION)
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".answer-text")).to_contain_text("25 vacation days")
    label = answer.locator(".answer-label")
    expect(label).to_have_text("quoted from the documents · answered before, from the cache")
    expect(label).to_have_attribute("title", re.compile(r"tier extractive \(cache\), 0 tokens"))


def test_a_follow_up_stays_in_the_conversation_and_survives_a_reload(page: Page, server: Server) -> None:
    key = make_key(server, "frank")
    sign_in(page, server, key, "frank")
    ask(page, VACATION)
    ask(page, "How many of them carry over into the next year?")
    second = page.locator(".message.assistant").nth(1)
    expect(second.locator(".answer-text")).to_contain_text("five unused vacation days carry over")
    second.locator("button.thumb-down").click()
    expect(second.locator("button.thumb-down")).to_have_attribute("aria-pressed", "true")

    page.reload()
    expect(page.locator("#user-name")).to_have_text("frank")
    conversations = page.locator("#conversations li")
    expect(conversations).to_have_count(1)
    expect(conversations.first).to_contain_text(VACATION)
    expect(page.locator(".message")).to_have_count(4)  # the address keeps the open conversation

    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#welcome")).to_be_visible()
    conversations.first.locator(".conv-open").click()
    expect(page.locator(".message.user .bubble")).to_have_text(
        [VACATION, "How many of them carry over into the next year?"]
    )
    answers = page.locator(".message.assistant")
    expect(answers).to_have_count(2)
    expect(answers.nth(0).locator(".answer-text")).to_contain_text("25 vacation days")
    expect(answers.nth(1).locator("button.thumb-down")).to_have_attribute("aria-pressed", "true")
    expect(answers.nth(0).locator("button.thumb-up")).to_have_attribute("aria-pressed", "false")
    expect(answers.nth(1).locator(".answer-label")).to_have_text("quoted from the documents")
    answers.nth(1).locator("button.cite").first.click()
    expect(page.locator("#passage-path")).to_contain_text("vacation-policy.md")
    expect(page.locator("#passage-text")).to_contain_text("carry over")
    screenshot(page, "chat-reopened-conversation")
    page.set_viewport_size({"width": 400, "height": 800})  # a phone: the passage becomes a bottom sheet
    expect(page.locator("#ask")).to_be_in_viewport()
    expect(page.locator("#passage-close")).to_be_in_viewport()
    screenshot(page, "chat-narrow")
    page.click("#passage-close")
    page.set_viewport_size({"width": 1280, "height": 820})

    page.once("dialog", lambda dialog: dialog.accept())
    conversations.first.locator(".conv-delete").click()
    expect(conversations).to_have_count(0)
    expect(page.locator("#conversations-empty")).to_be_visible()
    with server.client(key) as api:
        assert api.get("/v1/conversations").json()["conversations"] == []


def test_a_user_outside_hr_never_sees_an_hr_passage(browser: Browser, page: Page, server: Server) -> None:
    sign_in(page, server, make_key(server, "olga", groups="eng"), "olga")
    ask(page, SALARY)
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".answer-text")).not_to_contain_text("60,000")
    for cite in answer.locator("button.cite").all():
        cite.click()
        expect(page.locator("#passage-path")).not_to_contain_text("salary-bands")
        expect(page.locator("#passage-text")).not_to_contain_text("60,000")
    expect(answer).not_to_contain_text("salary-bands")
    screenshot(page, "chat-outsider-salary")

    hr_context = browser.new_context(viewport={"width": 1280, "height": 820})
    try:
        hr_page = hr_context.new_page()
        sign_in(hr_page, server, make_key(server, "hana", groups="hr"), "hana")
        ask(hr_page, SALARY)
        hr_answer = hr_page.locator(".message.assistant").last
        expect(hr_answer.locator(".answer-text")).to_contain_text("60,000")
        expect(hr_answer.locator(".sources")).to_contain_text("salary-bands.md")
    finally:
        hr_context.close()


def test_bad_requests_and_markup_in_documents_never_break_the_page(page: Page, server: Server) -> None:
    key = make_key(server, "gus")
    sign_in(page, server, key, "gus")
    ask(page, "Tell me everything. " * 110)  # 2200 characters: the API allows 2000
    failed = page.locator(".message.assistant").last
    expect(failed.locator(".error")).to_contain_text("at most 2000 characters")
    expect(failed.locator(".thumb-up")).to_have_count(0)

    ask(page, "When does the cafeteria serve lunch?")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".answer-text")).to_contain_text('<img src="x" onerror="window.__kbInjected = 1">')
    expect(answer.locator(".sources")).to_contain_text("Cafeteria <b>menu</b>")
    answer.locator("button.cite").first.click()
    expect(page.locator("#passage-title")).to_have_text("Cafeteria <b>menu</b>")
    expect(page.locator("#passage-text")).to_contain_text("<script>")
    assert page.evaluate("window.__kbInjected") is None
    assert page.locator("#thread img, #thread script, #thread b, #passage b").count() == 0
    answer.scroll_into_view_if_needed()
    screenshot(page, "chat-error-and-markup")

    held: list[Route] = []
    page.route("**/v1/answer", lambda route: held.append(route))  # the answer is on its way and never comes
    page.fill("#question", "When does the office open?")
    page.press("#question", "Enter")
    expect(page.locator("#ask")).to_be_disabled()
    page.click("#stop")
    expect(page.locator(".message.assistant").last.locator(".note")).to_have_text("Stopped.")
    expect(page.locator("#ask")).to_be_enabled()
    expect(page.locator("#stop")).to_be_hidden()
    assert len(held) == 1
    page.unroute("**/v1/answer")

    page.evaluate("localStorage.setItem('kb.apiKey', 'kb_revoked')")
    page.reload()
    expect(page.locator("#sign-in-error")).to_contain_text("Please sign in again")
    expect(page.locator("#app")).to_be_hidden()


@pytest.mark.llm
def test_a_generated_answer_streams_token_by_token(page: Page, tmp_path: Path) -> None:
    url = os.environ.get("KB_TEST_LLM_URL")
    if not url:
        pytest.skip("set KB_TEST_LLM_URL, KB_TEST_LLM_MODEL and KB_TEST_LLM_TOKENIZER to an OpenAI-compatible server")
    model = os.environ.get("KB_TEST_LLM_MODEL", "")
    tokenizer = os.environ.get("KB_TEST_LLM_TOKENIZER", "")
    llm_env = {
        "KB_LLM_BASE_URL": url,
        "KB_LLM_MODEL": model,
        "KB_LLM_TOKENIZER": tokenizer,
        "KB_LLM_MAX_TOKENS": "96",
        "KB_LLM_TIMEOUT_SECONDS": "120",
        "HF_HUB_OFFLINE": "1",
    }
    llm_server = serve_corpus(tmp_path, 11, llm_env)
    try:
        sign_in(page, llm_server, make_key(llm_server, "lena"), "lena")
        page.evaluate(RECORD_ANSWER_TEXTS)
        # a CPU model server takes seconds per answer: wait for the end of the stream, not Playwright's 5 s
        ask(page, "How do I request vacation, and how far in advance?", timeout_ms=180_000)
        answer = page.locator(".message.assistant").last
        expect(answer.locator(".answer-label")).to_have_text(f"generated by {model}")
        streamed = [s["text"] for s in page.evaluate("window.__answerTexts") if s["streaming"] and s["text"]]
        assert len(set(streamed)) >= 3, streamed  # the bubble grew token by token, not all at once
        expect(answer.locator(".answer-text")).not_to_be_empty()
        cites = answer.locator("button.cite")
        if cites.count():  # a small model's answer may match no passage closely enough to be cited
            cites.first.click()
            expect(page.locator("#passage-text")).not_to_be_empty()
        screenshot(page, "chat-generated")
    finally:
        llm_server.stop()
