"""Fixtures and fakes shared by the long-term memory tests (loaded with ``pytest_plugins``).

- ``embedder``: one local all-MiniLM-L6-v2 model for the whole test session (loading
  it takes seconds, so every test shares it), behind a cache of the texts it embedded;
- ``ltm_backend``: sqlite, postgresql, mariadb and pgvector (PostgreSQL with the vector
  extension: native vector search) in turn (servers skipped when absent);
- ``make_ltm(backend)``: a :class:`LongTermStore` on tables of its own, dropped at teardown.

Fakes and helpers live in ``ltm_helpers`` (a plugin module is not imported directly).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from conftest import BackendURLs, backend_params, unique_table
from mssql_memory import LongTermStore, SentenceTransformerEmbedder

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LTM_BACKENDS = [
    *backend_params(("sqlite", "postgresql", "mariadb")),
    pytest.param("pgvector", marks=pytest.mark.integration, id="pgvector"),
]


class CachedEmbedder:
    """The real model behind a cache: a text embedded once in the session is not embedded again
    (the tests embed the same conversations many times; the vectors are the model's own)."""

    def __init__(self, model: SentenceTransformerEmbedder) -> None:
        self.model = model
        self.dimension = model.dimension
        self._cache: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = self.model.embed(missing)
            with self._lock:
                self._cache.update(zip(missing, vectors, strict=True))
        with self._lock:
            return [self._cache[t] for t in texts]

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed, texts)

    def __repr__(self) -> str:
        return f"CachedEmbedder({self.model!r})"


@pytest.fixture(scope="session")
def embedder() -> CachedEmbedder:
    """The local all-MiniLM-L6-v2 model, loaded once per test session (behind a cache)."""
    model = SentenceTransformerEmbedder()
    model.embed(["warm up"])
    return CachedEmbedder(model)


@pytest.fixture(params=LTM_BACKENDS)
def ltm_backend(request: pytest.FixtureRequest, backend_urls: BackendURLs) -> str:
    """sqlite, postgresql, mariadb, pgvector in turn (a missing server skips, or fails in CI)."""
    backend_urls[request.param]
    return request.param


MakeLTM = Callable[..., LongTermStore]


@pytest.fixture
def make_ltm(backend_urls: BackendURLs) -> Iterator[MakeLTM]:
    """``make_ltm(backend, table_prefix=None, source=None)``: a LongTermStore on its own tables.

    Pass ``table_prefix`` to open a second store on the same tables, or ``source``
    (a SQLStore) to share its engines.
    """
    created: list[tuple[LongTermStore, bool]] = []

    def make(backend: str, *, table_prefix: str | None = None, source: Any = None) -> LongTermStore:
        target = source if source is not None else backend_urls[backend]
        store = LongTermStore(target, table_prefix=table_prefix or unique_table())
        created.append((store, source is None))
        return store

    yield make
    dropped: set[str] = set()
    for store, owns_engines in reversed(created):
        try:
            if store.table_prefix not in dropped:
                store.drop_schema()
                dropped.add(store.table_prefix)
        finally:
            if owns_engines:
                store.close()


@pytest.fixture
async def amake_ltm(backend_urls: BackendURLs) -> Any:
    """Like ``make_ltm`` for async tests: tables dropped and engines closed in the test's loop."""
    created: list[LongTermStore] = []

    def make(backend: str) -> LongTermStore:
        store = LongTermStore(backend_urls[backend], table_prefix=unique_table())
        created.append(store)
        return store

    yield make
    for store in reversed(created):
        try:
            await store.adrop_schema()
        finally:
            await store.aclose()
