"""Daily token quotas per API key: counters in Redis (deployment) or in SQL (embedded, no Redis).

A key that has spent its quota for the UTC day gets 429 with Retry-After (seconds to midnight UTC) before any
work is done; what an answer spends is added after it, from the model server's own usage counts.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.models import TokenUsage
from retrieval.types import Principal

log = logging.getLogger(__name__)


class QuotaExceeded(Exception):
    """The key spent its daily tokens; `retry_after` seconds until the quota resets."""

    def __init__(self, used: int, quota: int, retry_after: int) -> None:
        super().__init__(
            f"this API key used {used} of its {quota} tokens for today (UTC); it resets in {retry_after} s"
        )
        self.retry_after = retry_after


def _today(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%d")


def seconds_to_midnight(now: dt.datetime) -> int:
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


class Counter(Protocol):
    def used(self, key_id: str, day: str) -> int: ...

    def add(self, key_id: str, day: str, tokens: int) -> int: ...


class RedisCounter:
    """INCRBY on `kb:tokens:<key>:<day>`, which expires two days later."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)

    def used(self, key_id: str, day: str) -> int:
        return int(self.client.get(f"kb:tokens:{key_id}:{day}") or 0)

    def add(self, key_id: str, day: str, tokens: int) -> int:
        name = f"kb:tokens:{key_id}:{day}"
        with self.client.pipeline() as pipe:
            pipe.incrby(name, tokens)
            pipe.expire(name, 2 * 86400)
            total, _ = pipe.execute()
        return int(total)


class SqlCounter:
    """One row per key and day, incremented with an upsert (SQLite and PostgreSQL both have ON CONFLICT)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def used(self, key_id: str, day: str) -> int:
        with self.sessions() as db:
            row = db.get(TokenUsage, (key_id, day))
            return row.tokens if row else 0

    def add(self, key_id: str, day: str, tokens: int) -> int:
        with self.sessions() as db:
            insert = postgresql.insert if db.bind and db.bind.dialect.name == "postgresql" else sqlite.insert
            stmt = insert(TokenUsage).values(key_id=key_id, day=day, tokens=tokens)
            db.execute(
                stmt.on_conflict_do_update(
                    index_elements=["key_id", "day"], set_={"tokens": TokenUsage.tokens + stmt.excluded.tokens}
                )
            )
            db.commit()
            return int(
                db.scalar(select(TokenUsage.tokens).where(TokenUsage.key_id == key_id, TokenUsage.day == day)) or 0
            )


class Quotas:
    """Checks a key before a request and charges it after; a quota of 0 (or no counter) means unlimited."""

    def __init__(self, counter: Counter | None = None, daily_tokens: int = 0) -> None:
        self.counter = counter
        self.daily_tokens = daily_tokens if counter is not None else 0

    def check(self, principal: Principal, now: dt.datetime | None = None) -> None:
        if self.daily_tokens <= 0 or not principal.key_id:
            return
        now = now or dt.datetime.now(dt.UTC)
        assert self.counter is not None
        used = self.counter.used(principal.key_id, _today(now))
        if used >= self.daily_tokens:
            raise QuotaExceeded(used, self.daily_tokens, seconds_to_midnight(now))

    def charge(self, principal: Principal, tokens: int, now: dt.datetime | None = None) -> None:
        if self.daily_tokens <= 0 or not principal.key_id or tokens <= 0:
            return
        assert self.counter is not None
        total = self.counter.add(principal.key_id, _today(now or dt.datetime.now(dt.UTC)), tokens)
        log.info("quota.charged key=%s tokens=%d today=%d quota=%d", principal.key_id, tokens, total, self.daily_tokens)
