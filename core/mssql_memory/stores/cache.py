"""A read cache for active windows that is never stale across app instances.

Every entry is tagged with the session's version; a hit requires the version
just read from the database to match, so a write by any other instance (which
bumps the version) makes the entry unusable. The cache therefore replaces the
window query (the heavy read) by the session-row read that happens anyway; it
never skips the database entirely. ``ttl`` bounds how long an idle entry uses
memory, it is not a staleness allowance.

An entry holds either the whole window or only its newest messages (a *tail*, cached by
``get_window(limit=n)``); a tail is never served as a whole window.

Text messages (no tool calls, metadata or framework form: see
:func:`~mssql_memory.messages.shareable`) are fully immutable, so every reader gets
the same objects. A message with mutable parts is held as a
:class:`~mssql_memory.messages.FrozenMessage` and rebuilt for each reader, so no
caller can change what another reads; one that is not JSON keeps its window out.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import NamedTuple

from ..messages import FrozenMessage, Message, freeze

__all__ = ["WindowCache"]


class _Entry(NamedTuple):
    version: int
    window: tuple[Message | FrozenMessage, ...]
    expires: float
    complete: bool  # the whole active window, not only its newest messages


class WindowCache:
    """LRU map ``session_id -> (version, window)`` with a capacity and an idle TTL."""

    def __init__(
        self, capacity: int = 1024, ttl: float = 300.0, max_messages: int = 50_000
    ) -> None:
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError("capacity must be a positive int")
        if not isinstance(max_messages, int) or max_messages <= 0:
            raise ValueError("max_messages must be a positive int")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.capacity = capacity
        self.max_messages = max_messages
        self.messages = 0  # messages held, at most max_messages
        self.ttl = float(ttl)
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def holds(self, session_id: str) -> bool:
        """Whether a whole window of ``session_id`` is cached (at some version)."""
        entry = self._entries.get(session_id)
        return entry is not None and entry.complete

    def get(self, session_id: str, version: int) -> list[Message] | None:
        """The whole cached window if it was cached at exactly ``version``."""
        return self._hit(session_id, version, None)

    def get_tail(self, session_id: str, version: int, limit: int) -> list[Message] | None:
        """The newest ``limit`` messages of the window at exactly ``version``, if cached."""
        return self._hit(session_id, version, limit)

    def _hit(self, session_id: str, version: int, limit: int | None) -> list[Message] | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(session_id)
            if (
                entry is None
                or entry.version != version
                or entry.expires < now
                or not (entry.complete or (limit is not None and len(entry.window) >= limit))
            ):
                self.misses += 1
                return None
            self._entries[session_id] = entry._replace(expires=now + self.ttl)
            self._entries.move_to_end(session_id)
            self.hits += 1
            window = entry.window
            if limit is not None and limit < len(window):
                window = window[len(window) - limit :]
        return [m if type(m) is Message else m.thaw() for m in window]  # type: ignore[union-attr]

    @staticmethod
    def _frozen(messages: list[Message]) -> tuple[Message | FrozenMessage, ...] | None:
        """The messages as the cache holds them, or None if one cannot be (not JSON)."""
        frozen = []
        for message in messages:
            held = freeze(message)
            if held is None:
                return None
            frozen.append(held)
        return tuple(frozen)

    def _store(
        self,
        session_id: str,
        version: int,
        window: tuple[Message | FrozenMessage, ...],
        complete: bool,
    ) -> None:
        """Install an entry (the lock held), evicting the least recently used beyond bounds."""
        self._drop(session_id)
        if len(window) > self.max_messages:
            return
        expires = time.monotonic() + self.ttl
        self._entries[session_id] = _Entry(version, window, expires, complete)
        self.messages += len(window)
        while len(self._entries) > self.capacity or self.messages > self.max_messages:
            _, dropped = self._entries.popitem(last=False)
            self.messages -= len(dropped.window)

    def put(self, session_id: str, version: int, window: list[Message]) -> None:
        """Cache the whole active window as read at ``version``."""
        self._put(session_id, version, window, complete=True)

    def put_tail(self, session_id: str, version: int, tail: list[Message]) -> None:
        """Cache the newest messages of the window as read at ``version``."""
        self._put(session_id, version, tail, complete=False)

    def _put(self, session_id: str, version: int, window: list[Message], complete: bool) -> None:
        frozen = self._frozen(window)
        with self._lock:
            current = self._entries.get(session_id)
            if current is not None and current.version > version:
                return  # never replace a newer entry with an older read
            if current is not None and current.version == version and current.complete:
                return  # the whole window already, at this version
            if frozen is None:
                self._drop(session_id)
            else:
                self._store(session_id, version, frozen, complete)

    def extend(self, session_id: str, version: int, appended: list[Message]) -> None:
        """Record an append made by this instance (``version`` is the version it produced).

        Only valid when the cached entry is exactly one version behind; else the
        entry is dropped and the next read reloads.
        """
        frozen = self._frozen(appended)
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                return
            if entry.version == version - 1 and frozen is not None:
                window = entry.window + frozen
                if not entry.complete:  # a tail stays as long as it was: the newest messages
                    window = window[len(frozen) :]
                self._store(session_id, version, window, entry.complete)
            else:
                self._drop(session_id)

    def remove(self, session_id: str, version: int, seqs: set[int | None]) -> None:
        """Record that this instance moved the messages ``seqs`` out of the window, producing
        ``version``. Only valid when the cached entry is exactly one version behind."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                return
            if entry.version == version - 1:
                kept = tuple(m for m in entry.window if m.seq not in seqs)
                self._store(session_id, version, kept, entry.complete)
            else:
                self._drop(session_id)

    def invalidate(self, session_id: str) -> None:
        with self._lock:
            self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self.messages -= len(entry.window)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.messages = 0
