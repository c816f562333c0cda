"""Daily token quotas per API key: counted in Redis or SQL, refused with 429 and Retry-After when spent."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import openai
import pytest
import redis

from app.db import init_db
from app.quotas import QuotaExceeded, Quotas, RedisCounter, SqlCounter, seconds_to_midnight
from retrieval.types import Principal
from tests.app.test_answers_api import VACATION
from tests.conftest import REDIS_URL, create_key_json, redis_db_url, sample_server

ALICE = Principal("alice", key_id="k-alice")
NOON = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("backend", ["sql", "redis"])
def test_a_key_is_refused_once_it_spent_its_daily_tokens_and_served_again_the_next_day(
    backend: str, tmp_path: Path
) -> None:
    if backend == "sql":
        counter: RedisCounter | SqlCounter = SqlCounter(init_db(f"sqlite:///{tmp_path / 'kb.sqlite'}"))
    else:
        counter = RedisCounter(redis_db_url(14))
    quotas = Quotas(counter, daily_tokens=1000)
    quotas.check(ALICE, NOON)
    quotas.charge(ALICE, 600, NOON)
    quotas.check(ALICE, NOON)  # 600 of 1000: still allowed
    quotas.charge(ALICE, 500, NOON)
    with pytest.raises(QuotaExceeded, match="1100 of its 1000 tokens") as refused:
        quotas.check(ALICE, NOON)
    assert refused.value.retry_after == 12 * 3600 == seconds_to_midnight(NOON)
    quotas.check(Principal("bob", key_id="k-bob"), NOON)  # another key has its own quota
    quotas.check(ALICE, NOON + dt.timedelta(hours=12))  # a new UTC day


def test_no_quota_or_an_in_process_caller_is_never_counted(tmp_path: Path) -> None:
    counter = SqlCounter(init_db(f"sqlite:///{tmp_path / 'kb.sqlite'}"))
    Quotas(counter, daily_tokens=0).charge(ALICE, 10**9, NOON)
    assert counter.used("k-alice", "2026-12-01") == 0
    Quotas(counter, daily_tokens=1).charge(Principal("cli"), 10**9, NOON)
    assert counter.used("", "2026-12-01") == 0


def test_the_api_answers_429_with_retry_after_in_the_openai_format_when_the_quota_is_spent(tmp_path: Path) -> None:
    with sample_server(tmp_path / "data", 15, {"KB_DAILY_TOKEN_QUOTA": "500"}) as srv:
        spent, fresh = create_key_json(srv, "spender"), create_key_json(srv, "fresh")
        day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        redis.Redis.from_url(f"{REDIS_URL}/15").set(f"kb:tokens:{spent['id']}:{day}", 500)
        with srv.client(str(spent["key"])) as c:
            refused = c.post("/v1/answer", json={"question": VACATION, "stream": True})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["code"] == "quota_exceeded"
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=str(spent["key"]), max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="kb", messages=[{"role": "user", "content": VACATION}])
        with srv.client(str(fresh["key"])) as c:
            assert c.post("/v1/answer", json={"question": VACATION}).status_code == 200
