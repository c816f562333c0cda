"""`python -m evals serving`: latency and throughput of an OpenAI-compatible model server under concurrency, with
prompts that share a long stable prefix, and the prefix-cache hit rate the server itself reports.

Every prompt is a system message of fixed text (real text from docs/, cut to about `shared_prefix` of the prompt's
tokens, the same bytes in every request) and a user message that differs per request: a random tag first, so no
two requests share more than the system message, not across levels nor runs either. That is the shape of kb's own
prompts (fixed instructions first, then what changes). One unmeasured request first warms the server and caches
the prefix. vLLM counts its prefix cache in tokens on /metrics at the server root; a level's hit rate is the growth
of vllm:prefix_cache_hits over that of vllm:prefix_cache_queries while it ran. Servers without those counters
(llama.cpp's) show n/a.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from app.llm import Generation, LLMClient, LLMSettings, LLMUnavailable, TokenCounter
from evals.metrics import percentile_ms

DOCS = Path(__file__).resolve().parents[1] / "docs"
WORD_TOKENS = 1.3  # tokens per word when no tokenizer is given
QUESTION = "Question: which rule in this excerpt would a new employee most likely get wrong, and why?"
SYSTEM_HEAD = "You answer questions about the company handbook below. Be brief.\n\n"
START_HINT = (
    "start the local one with `bash deploy/local/llm_server.sh start` (KB_E2E_BACKEND=vllm|llamacpp, "
    "KB_E2E_LLM_PORT=8011), or pass --url of a running server"
)

# vLLM's counter and gauge sample names; the older V1 names (gpu_...) second. Counters are in tokens.
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
SPEC_ACCEPTED = ("vllm:spec_decode_num_accepted_tokens_total",)
SPEC_DRAFTED = ("vllm:spec_decode_num_draft_tokens_total",)
KV_POLL_S = 0.5


class ServerUnavailable(RuntimeError):
    """The model server does not answer, refuses the key, or does not serve the model; the message says what to do."""


@dataclass(frozen=True)
class ServingSettings:
    """What to benchmark and how hard: one level of `requests` requests per concurrency."""

    url: str
    model: str
    api_key: str = "none"
    requests: int = 16
    concurrency: tuple[int, ...] = (1, 4)
    prompt_tokens: int = 1000
    max_tokens: int = 64
    shared_prefix: float = 0.8
    tokenizer: str = ""
    timeout_s: float = 300.0


@dataclass
class RequestResult:
    """One streamed request: seconds to the first text and to the end, tokens, and where the counts came from."""

    ttft_s: float
    total_s: float
    completion_tokens: int
    prompt_tokens: int | None = None
    token_source: str = "server"
    error: str = ""


@dataclass
class Prompts:
    """The fixed system message and a source of per-request user messages around it."""

    system: str
    words: list[str]
    user_tokens: int
    count_tokens: Callable[[str], int] = field(repr=False)

    def messages(self, number: int) -> list[dict[str, str]]:
        """The chat messages of request `number`: the shared system text, then text no other request has."""
        offset = (number * 131) % len(self.words)  # each request quotes another stretch of the text
        excerpt = take_tokens(self.words[offset:] + self.words[:offset], self.user_tokens, self.count_tokens)
        user = f"Ticket {uuid.uuid4().hex[:12]}.\n{excerpt}\n\n{QUESTION}"
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


# --- pure parts: metrics, summaries, prompts ----------------------------------------------------------------------
def parse_metrics(text: str) -> dict[str, float]:
    """Counters and gauges of a Prometheus text page by sample name: counters summed over their labels (engines),
    gauges at their largest (the KV cache usage of the fullest engine)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "gauge"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):  # a counter's start time, not a count
                continue
            seen = values.get(sample.name)
            if seen is None:
                values[sample.name] = sample.value
            else:
                values[sample.name] = seen + sample.value if family.type == "counter" else max(seen, sample.value)
    return values


def metric(values: dict[str, float] | None, names: tuple[str, ...]) -> float | None:
    """The first of `names` present in a scrape; None when none is (or there was no scrape)."""
    if values is None:
        return None
    return next((values[name] for name in names if name in values), None)


def delta_ratio(
    before: dict[str, float] | None, after: dict[str, float] | None, num: tuple[str, ...], den: tuple[str, ...]
) -> float | None:
    """Growth of one counter over the growth of another between two scrapes; None when absent or flat."""
    n0, n1, d0, d1 = metric(before, num), metric(after, num), metric(before, den), metric(after, den)
    if n0 is None or n1 is None or d0 is None or d1 is None or d1 <= d0:
        return None
    return round((n1 - n0) / (d1 - d0), 4)


def prefix_cache_hit_rate(before: dict[str, float] | None, after: dict[str, float] | None) -> float | None:
    """Share of the prompt tokens vLLM looked up in its prefix cache between two scrapes that it found there."""
    return delta_ratio(before, after, PREFIX_HITS, PREFIX_QUERIES)


def _ms(samples: list[float], q: float) -> float | None:
    return percentile_ms(samples, q) if samples else None


def _mean(samples: list[int]) -> float | None:
    return round(float(np.mean(samples)), 1) if samples else None


def summarize(results: list[RequestResult], wall_s: float) -> dict[str, Any]:
    """Latency percentiles, per-request decode rate and aggregate throughput of one level's requests."""
    ok = [r for r in results if not r.error]
    # decode rate counts the tokens after the first, which arrived at ttft (vLLM's time per output token does too)
    decode = [
        (r.completion_tokens - 1) / (r.total_s - r.ttft_s)
        for r in ok
        if r.completion_tokens > 1 and r.total_s > r.ttft_s
    ]
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    output = sum(r.completion_tokens for r in ok)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "wall_s": round(wall_s, 3),
        "prompt_tokens_mean": _mean(prompt),
        "completion_tokens_mean": _mean([r.completion_tokens for r in ok]),
        "token_source": ",".join(sorted({r.token_source for r in ok})) or None,
        "ttft_ms_p50": _ms([r.ttft_s for r in ok], 50),
        "ttft_ms_p95": _ms([r.ttft_s for r in ok], 95),
        "e2e_ms_p50": _ms([r.total_s for r in ok], 50),
        "e2e_ms_p95": _ms([r.total_s for r in ok], 95),
        "decode_tok_s_p50": round(float(np.median(decode)), 2) if decode else None,
        "aggregate_tok_s": round(output / wall_s, 2) if ok and wall_s > 0 else None,
    }


def estimate_tokens(text: str) -> int:
    """Tokens of `text` at 1.3 per whitespace word: the fallback when no tokenizer is given."""
    return round(len(text.split()) * WORD_TOKENS)


def take_tokens(words: list[str], tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The first words of `words` (repeated when short) that make about `tokens` tokens."""
    if tokens <= 0 or not words:
        return ""
    n = max(1, round(tokens / WORD_TOKENS))
    text = ""
    for _ in range(4):  # the words-per-token guess, corrected against the real count
        text = " ".join(itertools.islice(itertools.cycle(words), n))
        got = count_tokens(text)
        if abs(got - tokens) <= max(2, tokens // 50):
            break
        n = max(1, round(n * tokens / max(got, 1)))
    return text


def source_words(docs: Path = DOCS) -> list[str]:
    """Real prose to build prompts from: the sample handbook first, then the other docs, word by word."""
    files = sorted((docs / "sample-corpus").glob("*.md")) + sorted((docs / "sample-corpus").glob("*.txt"))
    files += sorted(docs.glob("*.md"))
    return [word for path in files for word in path.read_text(encoding="utf-8").split()]


def build_prompts(settings: ServingSettings, count_tokens: Callable[[str], int], words: list[str]) -> Prompts:
    """The shared system message of about prompt_tokens * shared_prefix tokens, and the size of the rest."""
    shared = round(settings.prompt_tokens * settings.shared_prefix)
    system = SYSTEM_HEAD + take_tokens(words, shared - count_tokens(SYSTEM_HEAD), count_tokens)
    rest = settings.prompt_tokens - count_tokens(system) - count_tokens(QUESTION) - 8  # 8: the ticket line
    return Prompts(system=system, words=words, user_tokens=max(rest, 1), count_tokens=count_tokens)


def _cell(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def format_table(result: dict[str, Any]) -> str:
    """One markdown row per concurrency level."""
    lines = [
        f"{result['model']} at {result['url']}: {result['settings']['requests']} requests per level, "
        f"~{result['settings']['prompt_tokens']} prompt tokens ({result['settings']['shared_prefix']:.0%} shared), "
        f"max {result['settings']['max_tokens']} output tokens",
        "",
        "| concurrency | requests (errors) | prompt / output tokens | TTFT p50 / p95 ms | e2e p50 / p95 ms "
        "| decode tok/s per request p50 | aggregate tok/s | prefix-cache hit rate | KV cache usage peak "
        "| spec-decode acceptance |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level in result["levels"]:
        lines.append(
            f"| {level['concurrency']} | {level['requests']} ({level['errors']}) "
            f"| {_cell(level['prompt_tokens_mean'])} / {_cell(level['completion_tokens_mean'])} "
            f"| {_cell(level['ttft_ms_p50'])} / {_cell(level['ttft_ms_p95'])} "
            f"| {_cell(level['e2e_ms_p50'])} / {_cell(level['e2e_ms_p95'])} "
            f"| {_cell(level['decode_tok_s_p50'])} | {_cell(level['aggregate_tok_s'])} "
            f"| {_share(level['prefix_cache_hit_rate'])} | {_share(level['kv_cache_usage_peak'])} "
            f"| {_share(level['spec_decode_acceptance'])} |"
        )
    return "\n".join(lines)


# --- talking to the server -----------------------------------------------------------------------------------------
def metrics_url(base_url: str) -> str:
    """Prometheus /metrics lives at the server root, beside /v1."""
    return base_url.rstrip("/").removesuffix("/v1") + "/metrics"


async def check_server(http: httpx.AsyncClient, settings: ServingSettings) -> None:
    """Raise ServerUnavailable unless the server answers /models and serves the model."""
    url = settings.url.rstrip("/") + "/models"
    try:
        response = await http.get(url, timeout=10)
    except httpx.HTTPError as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise ServerUnavailable(
            f"no OpenAI-compatible server answers at {settings.url} ({reason}); {START_HINT}"
        ) from exc
    if response.status_code in (401, 403):
        raise ServerUnavailable(f"{url} refused the API key (HTTP {response.status_code}): pass --api-key")
    if response.status_code != 200:
        raise ServerUnavailable(f"{url} answered HTTP {response.status_code}, not a model list; {START_HINT}")
    served = [m.get("id") for m in response.json().get("data", [])]
    if settings.model not in served:
        raise ServerUnavailable(f"{settings.url} serves {served}, not {settings.model!r}: pass one of those as --model")


async def scrape(http: httpx.AsyncClient, url: str) -> dict[str, float] | None:
    """The server's /metrics, parsed; None when it has none (llama.cpp's server) or it cannot be read."""
    try:
        response = await http.get(url, timeout=10)
        return parse_metrics(response.text) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def stream_one(
    llm: LLMClient, max_tokens: int, messages: list[dict[str, str]], counter: TokenCounter | None
) -> RequestResult:
    """Send one streamed chat request through kb's own LLM client and time its first text and its end."""
    done: list[Generation] = []
    pieces = 0
    started = time.perf_counter()
    try:
        async for _ in llm.stream(messages, max_tokens, on_done=done.append):
            pieces += 1
    except LLMUnavailable as exc:
        return RequestResult(0.0, time.perf_counter() - started, 0, error=str(exc))
    gen = done[0]
    total = gen.total_ms / 1000
    if gen.first_token_ms is None:  # e.g. llama.cpp's server cutting a request off when the next one comes
        return RequestResult(0.0, total, 0, error="no text: the server ended the stream before the first token")
    ttft = gen.first_token_ms / 1000
    if gen.completion_tokens:  # the server's usage block
        return RequestResult(ttft, total, gen.completion_tokens, gen.prompt_tokens)
    # servers that send no usage in streams (llama.cpp): the tokenizer's count, else one token per chunk
    if counter is not None and counter.exact:
        return RequestResult(ttft, total, counter(gen.text), counter.chat_tokens(messages), token_source="tokenizer")
    return RequestResult(ttft, total, pieces, token_source="chunks")


async def run_level(
    llm: LLMClient,
    http: httpx.AsyncClient,
    settings: ServingSettings,
    prompts: Prompts,
    concurrency: int,
    counter: TokenCounter | None,
) -> dict[str, Any]:
    """`settings.requests` requests, at most `concurrency` in flight; the summary with the server's counters."""
    url = metrics_url(settings.url)
    before = await scrape(http, url)
    gate = asyncio.Semaphore(concurrency)
    kv_seen: list[float] = []

    async def bounded(number: int) -> RequestResult:
        async with gate:
            return await stream_one(llm, settings.max_tokens, prompts.messages(number), counter)

    async def watch_kv() -> None:  # the gauge is instantaneous: sample it while the level runs
        while True:
            value = metric(await scrape(http, url), KV_USAGE)
            if value is not None:
                kv_seen.append(value)
            await asyncio.sleep(KV_POLL_S)

    watcher = asyncio.create_task(watch_kv()) if before is not None else None
    started = time.perf_counter()
    results = await asyncio.gather(*(bounded(n) for n in range(settings.requests)))
    wall = time.perf_counter() - started
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    after = await scrape(http, url)
    return {
        "concurrency": concurrency,
        **summarize(list(results), wall),
        "prefix_cache_hit_rate": prefix_cache_hit_rate(before, after),
        "kv_cache_usage_peak": round(max(kv_seen), 4) if kv_seen else None,
        "spec_decode_acceptance": delta_ratio(before, after, SPEC_ACCEPTED, SPEC_DRAFTED),
        "errors_seen": sorted({r.error for r in results if r.error})[:3],
        "per_request": [asdict(r) for r in results],
    }


async def benchmark(settings: ServingSettings) -> dict[str, Any]:
    """Warm up once, then one level per concurrency; the result as JSON-ready data."""
    counter: TokenCounter | None = None
    count_tokens: Callable[[str], int] = estimate_tokens
    if settings.tokenizer:
        counter = TokenCounter(settings.tokenizer, fallback=estimate_tokens)
        count_tokens = counter
    prompts = build_prompts(settings, count_tokens, source_words())
    headers = {"Authorization": f"Bearer {settings.api_key}"}
    async with httpx.AsyncClient(headers=headers) as http:
        await check_server(http, settings)
        has_metrics = metric(await scrape(http, metrics_url(settings.url)), PREFIX_QUERIES) is not None
        llm = LLMClient(
            LLMSettings(
                base_url=settings.url,
                model=settings.model,
                api_key=settings.api_key,
                timeout_s=settings.timeout_s,
                max_retries=0,  # a retried request would time two attempts
            )
        )
        try:
            warm = await stream_one(llm, settings.max_tokens, prompts.messages(-1), counter)
            if warm.error:
                raise ServerUnavailable(f"the warm-up request to {settings.url} failed: {warm.error}")
            levels = [await run_level(llm, http, settings, prompts, c, counter) for c in settings.concurrency]
        finally:
            await llm.close()
    return {
        "url": settings.url,
        "model": settings.model,
        "settings": {k: v for k, v in asdict(settings).items() if k != "api_key"},
        "system_prompt_tokens_est": count_tokens(prompts.system),
        "token_counts": "tokenizer" if counter is not None and counter.exact else f"{WORD_TOKENS} per word",
        "prefix_cache_metrics": has_metrics,
        "levels": levels,
    }


def run(settings: ServingSettings) -> dict[str, Any]:
    """Run the benchmark to the end (see `benchmark`)."""
    return asyncio.run(benchmark(settings))
