"""Threads using a fresh store at once: creating the schema on first use races nothing.

An in-memory SQLite store (``sqlite://``) shares one connection between threads
behind a lock; the schema created on first use must take that lock too, or a
thread's append runs on the connection while another thread is still creating
the tables (observed: ``UNIQUE constraint failed`` on the sequence, and
``SystemError`` from the sqlite3 module).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
from mssql_memory import Message, SQLStore

from .helpers import record, scaled

pytestmark = pytest.mark.reliability

ROUNDS = scaled(40, 200)


def test_threads_first_using_an_in_memory_store_lose_nothing() -> None:
    """ROUNDS fresh ``sqlite://`` stores, each first used by 4 threads appending 20 messages:
    every append succeeds and the sequence is 1..20."""
    for _ in range(ROUNDS):
        store = SQLStore("sqlite://", "t_first_use")
        try:
            messages = [Message("user", f"m{i}") for i in range(20)]
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(partial(store.append, "s"), messages))
            assert [m.seq for m in store.get_history("s")] == list(range(1, 21))
        finally:
            store.close()
    record("first-use[sqlite-memory]", f"{ROUNDS} fresh stores x 4 threads: no race")
