"""Adaptive degradation: when answers pile up or get slow, spend less on each, one logged step at a time.

Levels, each keeping the ones below:
  0 normal
  1 smaller rerank depth       (half the pairs scored)
  2 smaller context budget     (half the passage tokens in the prompt)
  3 cheaper tier               (the cheapest generating tier, no cascade)
  4 extractive only            (quote the passages; no model call)
The level rises as soon as in-flight answers or the recent p95 latency cross a step's threshold, and falls one
step at a time once load has stayed below it for `recover_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

LEVELS = ("normal", "rerank_depth", "context_budget", "cheaper_tier", "extractive_only")
MAX_LEVEL = len(LEVELS) - 1


@dataclass(frozen=True)
class LoadSettings:
    enabled: bool = True
    # In-flight answers in this process at which levels 1..4 begin (0 turns a step's trigger off).
    inflight_steps: tuple[int, ...] = (8, 12, 16, 24)
    # Recent p95 answer latency (ms) at which levels 1..4 begin; empty: latency does not trigger.
    p95_ms_steps: tuple[float, ...] = ()
    window_seconds: float = 30.0  # latencies older than this leave the p95
    min_samples: int = 8  # fewer recent answers than this say nothing about p95
    recover_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name, steps in (("inflight_steps", self.inflight_steps), ("p95_ms_steps", self.p95_ms_steps)):
            if len(steps) > MAX_LEVEL:
                raise ValueError(f"{name}: at most {MAX_LEVEL} thresholds (levels 1..{MAX_LEVEL}), got {steps}")
            live = [x for x in steps if x > 0]
            if live != sorted(live):
                raise ValueError(f"{name}: thresholds must rise with the level, got {steps}")


def _level_for(value: float, steps: tuple[float, ...] | tuple[int, ...]) -> int:
    level = 0
    for i, threshold in enumerate(steps, start=1):
        if threshold > 0 and value >= threshold:
            level = i
    return level


class LoadGovernor:
    """Counts answers in flight and their recent latencies; says what level the next answer runs at."""

    def __init__(
        self,
        settings: LoadSettings | None = None,
        on_change: Callable[[int, int, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or LoadSettings()
        self.on_change = on_change or (lambda old, new, why: None)
        self.clock = clock
        self.inflight = 0
        self.level = 0
        self._latencies: deque[tuple[float, float]] = deque()
        self._calm_since: float | None = None
        self._last_event = clock()
        self._lock = threading.Lock()

    def p95_ms(self) -> float | None:
        now = self.clock()
        while self._latencies and now - self._latencies[0][0] > self.settings.window_seconds:
            self._latencies.popleft()
        if len(self._latencies) < self.settings.min_samples:
            return None
        return float(np.percentile([ms for _, ms in self._latencies], 95))

    def _target(self) -> tuple[int, str]:
        s = self.settings
        by_inflight = _level_for(self.inflight, s.inflight_steps)
        p95 = self.p95_ms() if s.p95_ms_steps else None
        by_latency = _level_for(p95, s.p95_ms_steps) if p95 is not None else 0
        if by_latency > by_inflight:
            return by_latency, f"p95_ms={p95:.0f}"
        return by_inflight, f"inflight={self.inflight}"

    def _update(self) -> None:
        target, why = self._target()
        now = self.clock()
        old = self.level
        if target > self.level:
            self.level, self._calm_since = target, None
        elif target < self.level:
            if self._calm_since is None:
                # nothing has happened since the last answer started or ended: calm since then
                self._calm_since = self._last_event
            # one step down per calm period (several after an idle spell)
            steps = int((now - self._calm_since) // self.settings.recover_seconds)
            if steps > 0:
                self.level, self._calm_since = max(target, self.level - steps), now
        else:
            self._calm_since = None
        if self.level != old:
            direction = "up" if self.level > old else "down"
            log.warning("load.degrade %s level=%d (%s) from=%d %s", direction, self.level, LEVELS[self.level], old, why)
            self.on_change(old, self.level, why)

    def enter(self) -> int:
        """An answer starts: the level it runs at (0 when degradation is off)."""
        with self._lock:
            self.inflight += 1
            if not self.settings.enabled:
                return 0
            self._update()
            self._last_event = self.clock()
            return self.level

    def exit(self, latency_ms: float | None) -> None:
        """An answer ended (latency None when it failed or was abandoned: it does not count in p95)."""
        with self._lock:
            self.inflight = max(0, self.inflight - 1)
            if latency_ms is not None:
                self._latencies.append((self.clock(), latency_ms))
            if self.settings.enabled:
                self._update()
            self._last_event = self.clock()

    def tick(self) -> int:
        """Re-evaluate without a request (recovery while idle); the current level."""
        with self._lock:
            if self.settings.enabled:
                self._update()
            return self.level
