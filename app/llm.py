"""The generator: any OpenAI-compatible chat endpoint (vLLM in deployment), streamed, with usage per request.

The official `openai` client does the HTTP, retries with back-off (connection errors, 429, 5xx) and timeouts;
closing its stream closes the connection, which is how vLLM learns to abort a request whose caller left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import openai

log = logging.getLogger(__name__)


class LLMUnavailable(Exception):
    """The model server failed, timed out or refused the request; callers fall back to the extractive answer."""


@dataclass(frozen=True)
class LLMSettings:
    """Where the model server is and how long to wait for it. An empty base_url means no LLM."""

    base_url: str = ""
    model: str = ""
    api_key: str = ""
    timeout_s: float = 30.0  # per read: the wait for the first token and between tokens
    connect_timeout_s: float = 3.0
    max_retries: int = 1
    tokenizer: str = ""  # a Hugging Face tokenizer name or folder; empty: the model name
    frequency_penalty: float = 0.0  # OpenAI's; small models decoding greedily repeat themselves without it

    @property
    def enabled(self) -> bool:
        return bool(self.base_url and self.model)


@dataclass
class Generation:
    """What one call produced: the text, why it stopped, and the server's own token counts."""

    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_ms: float | None = None
    total_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolCallReply:
    """A non-streamed completion offered tools: the calls the model chose (OpenAI's shape, as dicts), its text,
    why it stopped and the server's own token counts."""

    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_ms: float = 0.0


class LLMClient:
    """Chat completions against one OpenAI-compatible server, streamed token by token."""

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self._clients: dict[int, openai.AsyncOpenAI] = {}

    @classmethod
    def disabled(cls) -> LLMClient:
        return cls(LLMSettings())

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def _client(self) -> openai.AsyncOpenAI:
        # One client per event loop: its connection pool belongs to the loop that opened it (the CLI and the
        # evals run answers under asyncio.run, the server under uvicorn's loop).
        loop = id(asyncio.get_running_loop())
        if loop not in self._clients:
            self._clients = {loop: self._new_client()}
        return self._clients[loop]

    def _new_client(self) -> openai.AsyncOpenAI:
        s = self.settings
        return openai.AsyncOpenAI(
            base_url=s.base_url,
            api_key=s.api_key or "none",  # vLLM without --api-key accepts any value; the client needs one
            timeout=openai.Timeout(s.timeout_s, connect=s.connect_timeout_s),
            max_retries=s.max_retries,
        )

    async def stream(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float = 0.0,
        on_done: Callable[[Generation], None] | None = None,
    ) -> AsyncGenerator[str, None]:
        """Yield text deltas; `on_done` gets the finished Generation (usage included) when the stream ends.

        Raises LLMUnavailable for any failure of the server, before or during the stream. Closing the
        iterator early (the caller disconnected) closes the upstream request.
        """
        gen = Generation()
        t0 = time.perf_counter()
        try:
            stream = await self._client.chat.completions.create(  # type: ignore[call-overload]
                model=self.settings.model,
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                frequency_penalty=self.settings.frequency_penalty,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.OpenAIError as exc:
            raise LLMUnavailable(f"{type(exc).__name__}: {exc}") from exc
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    gen.prompt_tokens = chunk.usage.prompt_tokens
                    gen.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.finish_reason:
                        gen.finish_reason = choice.finish_reason
                    piece = choice.delta.content if choice.delta else None
                    if piece:
                        if gen.first_token_ms is None:
                            gen.first_token_ms = (time.perf_counter() - t0) * 1000
                        gen.text += piece
                        yield piece
        except openai.OpenAIError as exc:
            raise LLMUnavailable(f"{type(exc).__name__} during the stream: {exc}") from exc
        finally:
            await stream.close()  # a no-op after a full read; aborts generation upstream otherwise
            gen.total_ms = (time.perf_counter() - t0) * 1000
        log.info(
            "llm.done model=%s prompt_tokens=%d completion_tokens=%d first_token_ms=%.0f total_ms=%.0f finish=%s",
            self.settings.model,
            gen.prompt_tokens,
            gen.completion_tokens,
            gen.first_token_ms or 0.0,
            gen.total_ms,
            gen.finish_reason,
        )
        if on_done is not None:
            on_done(gen)

    async def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0) -> Generation:
        """The whole completion at once (query rewriting and other short calls)."""
        done: list[Generation] = []
        async for _ in self.stream(messages, max_tokens, temperature, on_done=done.append):
            pass
        return done[0]

    async def call_tools(
        self,
        messages: list[dict[str, str]],
        tools: list[dict[str, Any]],
        tool_choice: str,
        max_tokens: int,
        temperature: float = 0.0,
    ) -> ToolCallReply:
        """One completion with `tools=`. vLLM accepts `tool_choice="required"` only from a server started with a
        `--tool-call-parser`, and then constrains the output to calls of the offered tools (with arguments held
        to each schema when the tool says `strict`); `"auto"` also needs `--enable-auto-tool-choice`."""
        t0 = time.perf_counter()
        try:
            resp = await self._client.chat.completions.create(  # type: ignore[call-overload]
                model=self.settings.model,
                messages=messages,
                tools=tools,
                tool_choice=tool_choice,
                max_tokens=max_tokens,
                temperature=temperature,
            )
        except openai.OpenAIError as exc:
            raise LLMUnavailable(f"{type(exc).__name__}: {exc}") from exc
        reply = ToolCallReply(total_ms=(time.perf_counter() - t0) * 1000)
        if resp.usage is not None:
            reply.prompt_tokens, reply.completion_tokens = resp.usage.prompt_tokens, resp.usage.completion_tokens
        if resp.choices:
            choice = resp.choices[0]
            reply.finish_reason = choice.finish_reason or ""
            reply.text = choice.message.content or ""
            reply.tool_calls = [call.model_dump() for call in choice.message.tool_calls or []]
        log.info(
            "llm.tool_calls model=%s calls=%d prompt_tokens=%d completion_tokens=%d total_ms=%.0f finish=%s",
            self.settings.model,
            len(reply.tool_calls),
            reply.prompt_tokens,
            reply.completion_tokens,
            reply.total_ms,
            reply.finish_reason,
        )
        return reply

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients = {}


class TokenCounter:
    """Counts tokens with the served model's own tokenizer (transformers AutoTokenizer), loaded once."""

    def __init__(self, name_or_path: str, fallback: Callable[[str], int]) -> None:
        self.name_or_path = name_or_path
        self._fallback = fallback
        self._tokenizer: Any = None
        self._loaded = False

    def _load(self) -> Any:
        if not self._loaded:
            self._loaded = True
            if self.name_or_path:
                from transformers import AutoTokenizer

                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
                except (OSError, ValueError) as exc:
                    log.warning(
                        "llm.tokenizer_unavailable tokenizer=%s error=%s: counting with the embedder's tokenizer; "
                        "set KB_LLM_TOKENIZER to the served model's tokenizer folder",
                        self.name_or_path,
                        exc,
                    )
        return self._tokenizer

    @property
    def exact(self) -> bool:
        """True when counts come from the served model's tokenizer, not the fallback."""
        return self._load() is not None

    def __call__(self, text: str) -> int:
        tokenizer = self._load()
        if tokenizer is None:
            return self._fallback(text)
        return len(tokenizer.encode(text, add_special_tokens=False))

    def chat_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of a chat request as the server will count them (its chat template included)."""
        tokenizer = self._load()
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return len(ids)
        return sum(self(m["content"]) + 4 for m in messages) + 2
