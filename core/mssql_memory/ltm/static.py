"""StaticMemory: global facts (policies, the agent's role), read-only during conversations."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..blocks import BaseMemoryBlock
from ..messages import Message
from ..tokens import TokenCounter, default_token_counter
from ._common import ReadOnlyBlockError, check_block_args, pack, resolve_store
from .relevance import bm25_scores

__all__ = ["StaticMemory"]


def _normalize(facts: Sequence[Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for fact in facts:
        if isinstance(fact, str):
            key, content = hashlib.sha256(fact.encode()).hexdigest()[:32], fact
        elif isinstance(fact, Mapping) and "content" in fact:
            key, content = str(fact.get("id") or fact.get("key") or ""), fact["content"]
            if not key:
                key = hashlib.sha256(str(content).encode()).hexdigest()[:32]
        elif isinstance(fact, tuple) and len(fact) == 2:
            key, content = str(fact[0]), fact[1]
        else:
            raise TypeError(f"a static fact is a str, a (id, content) pair or a mapping: {fact!r}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"static fact {key!r} has no text")
        if not 0 < len(key) <= 255:
            raise ValueError(f"static fact id must be 1-255 characters: {key!r}")
        out.append((key, content.strip()))
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise ValueError("static fact ids must be unique")
    return out


class StaticMemory(BaseMemoryBlock):
    """Facts shared by every user and session, persisted in the facts table.

    Loading the same facts again is idempotent (keyed by fact id; changed text
    is updated). During conversations the block is read-only: ``update`` and
    ``delete`` raise :class:`ReadOnlyBlockError`. ``get`` returns every fact in
    order when they fit the budget, else the most relevant to the query first.
    """

    read_only = True

    def __init__(
        self,
        facts: Sequence[Any] = (),
        *,
        store: Any = None,
        name: str = "static_memory",
        max_tokens: int = 400,
        token_counter: TokenCounter | None = None,
    ) -> None:
        check_block_args(name, max_tokens)
        self.name = name
        self.max_tokens = max_tokens
        self.store = resolve_store(store)
        self.counter = token_counter or default_token_counter()
        self._pending = _normalize(facts)
        self._facts: list[tuple[str, int]] | None = None
        self._lock = threading.Lock()

    def load(self) -> int:
        """Write the configured facts (idempotent) and read every fact of this block back."""
        rows = [(k, c, self.counter.count_text(c)) for k, c in self._pending]
        changed = self.store.upsert_static(self.name, rows) if rows else 0
        facts = self.store.facts(self.name)
        self._facts = [(f.content, f.token_count) for f in facts]
        return changed

    async def aload(self) -> int:
        rows = [(k, c, self.counter.count_text(c)) for k, c in self._pending]
        changed = await self.store.aupsert_static(self.name, rows) if rows else 0
        facts = await self.store.afacts(self.name)
        self._facts = [(f.content, f.token_count) for f in facts]
        return changed

    def _select(self, query: str | None, max_tokens: int) -> list[str]:
        facts = self._facts or []
        budget = min(max_tokens, self.max_tokens)
        if sum(t + 2 for _, t in facts) <= budget:
            return [c for c, _ in facts]
        order = list(range(len(facts)))
        if query:
            scores = bm25_scores(query, [c for c, _ in facts])
            order.sort(key=lambda i: -scores[i])
        chosen = pack([facts[i] for i in order], budget)
        picked = sorted(order[i] for i in chosen)
        return [facts[i][0] for i in picked]

    def get(
        self, *, query: str | None, user_id: str | None, session_id: str, max_tokens: int
    ) -> list[str]:
        with self._lock:
            if self._facts is None:
                self.load()
        return self._select(query, max_tokens)

    async def aget(
        self, *, query: str | None, user_id: str | None, session_id: str, max_tokens: int
    ) -> list[str]:
        if self._facts is None:
            await self.aload()
        return self._select(query, max_tokens)

    def update(self, messages: Sequence[Message], *, user_id: str | None, session_id: str) -> None:
        raise ReadOnlyBlockError("static memory is read-only during conversations")

    async def aupdate(
        self, messages: Sequence[Message], *, user_id: str | None, session_id: str
    ) -> None:
        raise ReadOnlyBlockError("static memory is read-only during conversations")

    def delete(self, fact_id: str) -> None:
        raise ReadOnlyBlockError("static memory is read-only; change its facts and load() again")

    def delete_user(self, user_id: str) -> int:
        return 0  # static facts belong to no user

    async def adelete_user(self, user_id: str) -> int:
        return 0

    def __repr__(self) -> str:
        return f"StaticMemory(name={self.name!r}, facts={len(self._pending)})"
