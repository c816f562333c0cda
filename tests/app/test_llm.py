"""The LLM client fails fast and clearly when the model server is unreachable; token counts fall back to the
embedder's tokenizer, with a warning, when the served model's tokenizer is not available."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.llm import LLMClient, LLMSettings, LLMUnavailable, TokenCounter
from tests.conftest import free_port


def test_a_server_that_is_not_listening_raises_llm_unavailable_at_once() -> None:
    client = LLMClient(LLMSettings(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", max_retries=0))

    async def ask() -> None:
        async for _ in client.stream([{"role": "user", "content": "hi"}], max_tokens=4):
            pass

    started = time.perf_counter()
    with pytest.raises(LLMUnavailable, match="APIConnectionError"):
        asyncio.run(ask())
    assert time.perf_counter() - started < 5


def test_no_base_url_means_no_llm() -> None:
    assert not LLMClient.disabled().enabled
    assert not LLMSettings(base_url="http://vllm:8000/v1").enabled  # a model name is needed too


def test_token_counts_fall_back_to_the_given_counter_when_the_tokenizer_cannot_load(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    counter = TokenCounter(str(tmp_path / "no-such-tokenizer"), lambda text: len(text.split()))
    assert counter("one two three") == 3 and not counter.exact
    assert counter.chat_tokens([{"role": "user", "content": "one two"}]) == 2 + 4 + 2
    assert "KB_LLM_TOKENIZER" in caplog.text
