"""A read cache for active windows that is never stale across app instances.

Every entry is tagged with the session's version; a hit requires the version
just read from the database to match, so a write by any other instance (which
bumps the version) makes the entry unusable. The cache therefore replaces the
window query (the heavy read) by the session-row read that happens anyway; it
never skips the database entirely. ``ttl`` bounds how long an idle entry uses
memory, it is not a staleness allowance.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from ..messages import Message

__all__ = ["WindowCache"]


class WindowCache:
    """LRU map ``session_id -> (version, window)`` with a capacity and an idle TTL."""

    def __init__(self, capacity: int = 1024, ttl: float = 300.0) -> None:
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError("capacity must be a positive int")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.capacity = capacity
        self.ttl = float(ttl)
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple[int, tuple[Message, ...], float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str, version: int) -> list[Message] | None:
        """The cached window if it was cached at exactly ``version``."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None or entry[0] != version or entry[2] < now:
                self.misses += 1
                return None
            self._entries[session_id] = (entry[0], entry[1], now + self.ttl)
            self._entries.move_to_end(session_id)
            self.hits += 1
            return list(entry[1])

    def put(self, session_id: str, version: int, window: list[Message]) -> None:
        with self._lock:
            current = self._entries.get(session_id)
            if current is not None and current[0] > version:
                return  # never replace a newer entry with an older read
            self._entries[session_id] = (version, tuple(window), time.monotonic() + self.ttl)
            self._entries.move_to_end(session_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def extend(self, session_id: str, version: int, appended: list[Message]) -> None:
        """Record an append made by this instance (``version`` is the version it produced).

        Only valid when the cached entry is exactly one version behind; else the
        entry is dropped and the next read reloads.
        """
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                return
            if entry[0] == version - 1:
                self._entries[session_id] = (
                    version,
                    entry[1] + tuple(appended),
                    time.monotonic() + self.ttl,
                )
            else:
                del self._entries[session_id]

    def invalidate(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
