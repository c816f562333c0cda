"""Which jobs run in this process, so a duplicate delivery of a running job is skipped, not run twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class InFlight:
    """A thread-safe set of running job ids; `claim` is the only way in."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._ids

    @contextmanager
    def claim(self, job_id: str) -> Iterator[bool]:
        """Yields True and holds the id until the block ends, or False if the job already runs here."""
        with self._lock:
            if job_id in self._ids:
                claimed = False
            else:
                self._ids.add(job_id)
                claimed = True
        try:
            yield claimed
        finally:
            if claimed:
                with self._lock:
                    self._ids.discard(job_id)
