"""WindowCache: LRU, TTL and version rules; and in a SQLStore, fewer queries without staleness."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from mssql_memory import Message, SQLStore, ToolCall, WindowCache
from mssql_memory.stores import cache as cache_module
from mssql_memory.stores.base import OverflowCommit
from sqlalchemy import event


def window(*texts: str) -> list[Message]:
    return [Message("user", t, seq=i + 1) for i, t in enumerate(texts)]


def contents(messages: list[Message] | None) -> list[str] | None:
    return None if messages is None else [m.content for m in messages]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A controllable monotonic clock for the cache module: ``clock[0] = t``."""
    now = [1000.0]
    monkeypatch.setattr(cache_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_hit_requires_the_exact_version() -> None:
    """A cached window is served only for the version it was cached at."""
    cache = WindowCache()
    cache.put("s", 3, window("a", "b"))
    assert contents(cache.get("s", 3)) == ["a", "b"]
    assert cache.get("s", 4) is None
    assert cache.get("s", 2) is None
    assert cache.get("other", 3) is None
    assert (cache.hits, cache.misses) == (1, 3)


def test_returned_window_is_a_copy() -> None:
    """Changing a returned window does not change the cached one."""
    cache = WindowCache()
    cache.put("s", 1, window("a"))
    got = cache.get("s", 1)
    got.append(Message("user", "intruder"))
    assert contents(cache.get("s", 1)) == ["a"]


def test_lru_capacity_evicts_the_least_recently_used() -> None:
    """At capacity, the entry used least recently is dropped first (gets count as use)."""
    cache = WindowCache(capacity=2)
    cache.put("a", 1, window("a"))
    cache.put("b", 1, window("b"))
    cache.get("a", 1)
    cache.put("c", 1, window("c"))
    assert cache.get("b", 1) is None
    assert contents(cache.get("a", 1)) == ["a"]
    assert contents(cache.get("c", 1)) == ["c"]


def test_put_never_replaces_a_newer_entry() -> None:
    """A slow reader's older window does not overwrite a newer cached one."""
    cache = WindowCache()
    cache.put("s", 5, window("new"))
    cache.put("s", 4, window("old"))
    assert contents(cache.get("s", 5)) == ["new"]
    cache.put("s", 6, window("newer"))
    assert contents(cache.get("s", 6)) == ["newer"]


def test_extend_only_from_the_previous_version() -> None:
    """extend applies an own append only when the entry is exactly one version behind."""
    cache = WindowCache()
    cache.put("s", 3, window("a"))
    cache.extend("s", 4, window("b"))
    assert contents(cache.get("s", 4)) == ["a", "b"]
    cache.extend("s", 6, window("c"))  # version 5 happened elsewhere: drop, do not guess
    assert cache.get("s", 6) is None
    assert cache.get("s", 4) is None
    cache.extend("s", 7, window("d"))  # nothing cached: nothing to extend
    assert cache.get("s", 7) is None


def test_extend_at_same_version_drops_the_entry() -> None:
    """An append reported at the cached version itself is inconsistent; the entry is dropped."""
    cache = WindowCache()
    cache.put("s", 3, window("a"))
    cache.extend("s", 3, window("b"))
    assert cache.get("s", 3) is None


def test_idle_entries_expire_after_ttl(clock: list[float]) -> None:
    """An entry unused for ``ttl`` seconds is gone; each hit renews it."""
    cache = WindowCache(ttl=10)
    cache.put("s", 1, window("a"))
    clock[0] += 9
    assert cache.get("s", 1) is not None  # renews
    clock[0] += 9
    assert cache.get("s", 1) is not None
    clock[0] += 11
    assert cache.get("s", 1) is None


def test_invalidate_and_clear() -> None:
    """invalidate drops one session, clear drops all."""
    cache = WindowCache()
    for sid in ("a", "b", "c"):
        cache.put(sid, 1, window(sid))
    cache.invalidate("a")
    cache.invalidate("missing")
    assert cache.get("a", 1) is None and cache.get("b", 1) is not None
    cache.clear()
    assert cache.get("b", 1) is None and cache.get("c", 1) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"capacity": -1},
        {"capacity": 1.5},
        {"ttl": 0},
        {"ttl": -5},
        {"max_messages": 0},
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, Any]) -> None:
    """Capacity must be a positive int and ttl positive."""
    with pytest.raises(ValueError):
        WindowCache(**kwargs)


def test_store_cache_option_forms(sqlite_url: str) -> None:
    """cache=True (the default), a capacity or a WindowCache enable the cache; None/False
    disable it."""
    shared = WindowCache(capacity=7)
    assert SQLStore(sqlite_url, "t_opts", cache=True).cache.capacity == 1024
    assert SQLStore(sqlite_url, "t_opts", cache=5).cache.capacity == 5
    assert SQLStore(sqlite_url, "t_opts", cache=shared).cache is shared
    assert SQLStore(sqlite_url, "t_opts", cache=False).cache is None
    assert SQLStore(sqlite_url, "t_opts", cache=None).cache is None
    assert SQLStore(sqlite_url, "t_opts").cache.capacity == 1024


class StatementCounter:
    """Counts the statements a store sends to its database."""

    def __init__(self, store: SQLStore) -> None:
        self.count = 0
        event.listen(store.engines.sync, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1

    def during(self, fn: Any) -> tuple[Any, int]:
        before = self.count
        result = fn()
        return result, self.count - before


def test_cache_hit_skips_the_window_query(make_store: Any) -> None:
    """A hot session's window read costs one statement (the version check) instead of two."""
    store = make_store("sqlite", cache=True)
    store.append("s", [Message("user", "a"), Message("user", "b")])
    counter = StatementCounter(store)
    cold, cold_statements = counter.during(lambda: store.get_window("s"))
    warm, warm_statements = counter.during(lambda: store.get_window("s"))
    assert contents(warm) == contents(cold) == ["a", "b"]
    assert (cold_statements, warm_statements) == (2, 1)
    uncached = make_store("sqlite", table_name=store.table_name, cache=False)
    uncached.create_schema()
    plain = StatementCounter(uncached)
    _, statements = plain.during(lambda: uncached.get_window("s"))
    assert statements == 1  # without a cache the window is one query, never a version check


def test_own_append_keeps_the_cache_warm(make_store: Any) -> None:
    """After this instance appends, the next read is still a hit and includes the new message."""
    store = make_store("sqlite", cache=True)
    store.append("s", [Message("user", "a")])
    store.get_window("s")
    store.append("s", [Message("user", "b")])
    hits = store.cache.hits
    assert contents(store.get_window("s")) == ["a", "b"]
    assert store.cache.hits == hits + 1


def test_trimmed_append_reloads(make_store: Any) -> None:
    """When an append pushes messages out (max_messages_per_session), the cache reloads."""
    store = make_store("sqlite", cache=True, max_messages_per_session=2)
    store.append("s", [Message("user", "a"), Message("user", "b")])
    store.get_window("s")
    store.append("s", [Message("user", "c")])
    assert contents(store.get_window("s")) == ["b", "c"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_other_instance_write_is_seen(make_store: Any, backend: str) -> None:
    """A write by another instance (own cache, same table) is never hidden by this cache
    (on PostgreSQL the cached read is one statement outside a transaction: see below)."""
    a = make_store(backend, cache=True)
    b = make_store(backend, cache=True, table_name=a.table_name)
    a.append("s", [Message("user", "a")])
    assert contents(a.get_window("s")) == ["a"]
    b.append("s", [Message("user", "b")])
    a.append("s", [Message("user", "c")])  # a's entry is two versions behind now
    assert contents(a.get_window("s")) == ["a", "b", "c"]
    b.set_system_message("s", Message("system", "sys"))
    snapshot = a.read_session("s")
    assert snapshot.state.system_message.content == "sys"
    assert contents(snapshot.window) == ["a", "b", "c"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_session_deleted_and_recreated_elsewhere_is_never_served_stale(
    make_store: Any, backend: str
) -> None:
    """Another instance deletes the session and writes it again to the same number of
    versions: this instance's cached window (of the old session) is not served."""
    a = make_store(backend)
    b = make_store(backend, table_name=a.table_name)
    a.append("s", [Message("user", "old 1")])
    a.append("s", [Message("user", "old 2")])
    assert contents(a.get_window("s")) == ["old 1", "old 2"]
    b.delete_session("s")
    b.append("s", [Message("user", "new 1")])
    b.append("s", [Message("user", "new 2")])
    assert contents(a.get_window("s")) == ["new 1", "new 2"]


def test_postgresql_cached_read_is_one_statement_outside_a_transaction(make_store: Any) -> None:
    """On PostgreSQL a hot session is read with the session-row query alone, in autocommit
    (no BEGIN and ROLLBACK round trips); the connection goes back to the pool out of
    autocommit, so writes after it stay atomic. A session deleted elsewhere reads as empty."""
    store = make_store("postgresql", cache=True)
    store.append("s", [Message("user", "a")])
    store.get_window("s")  # fills the cache (a REPEATABLE READ transaction)
    counter = StatementCounter(store)
    in_transaction: list[bool] = []

    def after(conn: Any, *_: Any) -> None:
        status = conn.connection.dbapi_connection.info.transaction_status
        in_transaction.append(status != status.IDLE)

    event.listen(store.engines.sync, "after_cursor_execute", after)
    snapshot, statements = counter.during(lambda: store.read_session("s"))
    assert statements == 1 and contents(snapshot.window) == ["a"]
    assert in_transaction == [False]
    in_transaction.clear()
    store.append("s", [Message("user", "b")])  # one statement alone, in autocommit too
    assert in_transaction == [False]
    in_transaction.clear()
    store.set_system_message("s", Message("system", "be brief"))
    assert in_transaction and all(in_transaction)  # a write of several statements: atomic
    assert contents(store.read_session("s").window) == ["a", "b"]
    with store.engines.sync.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None and dbapi.autocommit is False
    other = make_store("postgresql", table_name=store.table_name)
    other.delete_session("s")
    assert store.read_session("s").window == [] and not store.get_session("s").exists


def test_cached_messages_cannot_be_changed_by_a_reader(make_store: Any) -> None:
    """Text messages are shared read-only; messages with metadata, tool calls or a raw form
    are cached too but rebuilt for every reader (equal to a database read); a caller's own
    objects are never cached."""
    store = make_store("sqlite")
    mine = Message("user", "hello")
    store.append("s", [mine])
    first = store.get_window("s")
    mine.metadata["changed"] = True  # the caller's object, after the append
    (cached,) = store.get_window("s")
    assert cached.metadata == {} and store.cache.hits >= 1
    with pytest.raises(TypeError):
        first[0].metadata["x"] = 1  # type: ignore[index]
    call = ToolCall("c1", "lookup", {"q": ["a", 1]})
    rich = [
        Message("user", "with metadata", metadata={"k": {"n": 1}}),
        Message("assistant", "", tool_calls=(call,), raw={"kind": "ai", "x": [1.5, None]}),
        Message("tool", "result", tool_call_id="c1", source="fw", raw={"t": (1, 2)}),
    ]
    store.append("t", rich)
    uncached = make_store("sqlite", table_name=store.table_name, cache=False)
    from_db = uncached.get_window("t")
    assert store.get_window("t") == from_db  # the miss that fills the cache
    counter = StatementCounter(store)
    for _ in range(2):
        got, statements = counter.during(lambda: store.get_window("t"))
        assert statements == 1 and got == from_db  # a hit, equal to what the database holds
        got[0].metadata["k"]["n"] = 2
        got[1].tool_calls[0].arguments["q"].append("b")
        got[1].raw["x"].clear()
        got[2].raw["t"].append(3)
    assert store.get_window("t") == from_db == uncached.get_window("t")
    assert store.get_window("t")[2].raw == {"t": [1, 2]}  # as JSON stores it (a list)
    mine = Message("user", "mine", metadata={"k": [1]})
    store.append("t", [mine])
    mine.metadata["k"].append(2)  # the caller's object, after the append
    assert store.get_window("t")[-1].metadata == {"k": [1]}


def test_max_messages_bounds_what_the_cache_holds() -> None:
    cache = WindowCache(capacity=10, max_messages=5)
    cache.put("a", 1, window("1", "2", "3"))
    cache.put("b", 1, window("4", "5"))
    assert cache.messages == 5
    cache.put("c", 1, window("6", "7"))  # evicts the least recently used (a)
    assert cache.get("a", 1) is None and contents(cache.get("c", 1)) == ["6", "7"]
    assert cache.messages == 4
    cache.put("d", 1, window(*"abcdef"))  # larger than the whole cache: not kept
    assert cache.get("d", 1) is None and cache.messages == 4
    cache.extend("b", 2, window("x"))
    assert contents(cache.get("b", 2)) == ["4", "5", "x"] and cache.messages == 5
    cache.clear()
    assert cache.messages == 0


def test_remove_applies_this_instances_eviction_only_from_the_previous_version() -> None:
    cache = WindowCache()
    cache.put("s", 1, window("a", "b", "c"))
    cache.remove("s", 2, {1, 2})
    assert contents(cache.get("s", 2)) == ["c"]
    cache.remove("s", 4, {3})  # not the next version: dropped, the next read reloads
    assert cache.get("s", 2) is None and cache.get("s", 4) is None and cache.messages == 0


def test_own_overflow_keeps_the_cache_warm_and_correct(make_store: Any) -> None:
    """After this instance applies an overflow the cached window loses exactly the evicted
    messages; the next read is a hit and equals what the database holds."""
    store = make_store("sqlite")
    store.append("s", [Message("user", t) for t in "abcd"])
    first, *_ = store.get_window("s")
    assert store.commit_overflow("s", OverflowCommit(evict=[first]))
    hits = store.cache.hits
    assert contents(store.get_window("s")) == ["b", "c", "d"]
    assert store.cache.hits == hits + 1
    uncached = make_store("sqlite", table_name=store.table_name, cache=False)
    assert contents(uncached.get_window("s")) == ["b", "c", "d"]
    assert not store.commit_overflow("s", OverflowCommit(evict=[first]))  # already gone
    assert contents(store.get_window("s")) == ["b", "c", "d"]


def test_a_tail_is_served_for_smaller_limits_never_as_the_whole_window() -> None:
    """A cached tail answers ``limit <= its length`` at its version; the whole window comes
    only from a complete entry; an own append slides the tail (same length, newest)."""
    cache = WindowCache()
    cache.put_tail("s", 5, window("c", "d", "e"))
    assert cache.get("s", 5) is None
    assert contents(cache.get_tail("s", 5, 2)) == ["d", "e"]
    assert contents(cache.get_tail("s", 5, 3)) == ["c", "d", "e"]
    assert cache.get_tail("s", 5, 4) is None
    assert cache.get_tail("s", 6, 2) is None
    cache.extend("s", 6, [Message("user", "f", seq=9)])
    assert contents(cache.get_tail("s", 6, 3)) == ["d", "e", "f"]
    assert cache.messages == 3
    cache.put("s", 6, window("a", "b", "c", "d", "e", "f"))
    cache.put_tail("s", 6, window("e", "f"))  # never replaces the whole window of its version
    assert contents(cache.get("s", 6)) == ["a", "b", "c", "d", "e", "f"]
    assert contents(cache.get_tail("s", 6, 10)) == ["a", "b", "c", "d", "e", "f"]


def test_limited_window_reads_hit_the_cache_and_see_other_writers(make_store: Any) -> None:
    """get_window(limit=n) on a hot session is one statement (the version), returns exactly
    what the database holds, and is never stale after another instance writes."""
    a = make_store("sqlite", cache=True)
    b = make_store("sqlite", cache=True, table_name=a.table_name)
    a.append("s", [Message("user", str(i)) for i in range(10)])
    counter = StatementCounter(a)
    cold, cold_statements = counter.during(lambda: a.get_window("s", limit=4))
    warm, warm_statements = counter.during(lambda: a.get_window("s", limit=3))
    assert contents(cold) == ["6", "7", "8", "9"] and contents(warm) == ["7", "8", "9"]
    assert (cold_statements, warm_statements) == (2, 1)
    a.append("s", [Message("user", "10")])
    assert contents(a.get_window("s", limit=4)) == ["7", "8", "9", "10"]
    b.append("s", [Message("user", "11")])
    assert contents(a.get_window("s", limit=2)) == ["10", "11"]
    assert contents(a.get_window("s")) == [str(i) for i in range(12)]
    short = a.get_window("t", limit=5)
    assert short == []
    a.append("t", [Message("user", "x")])
    assert contents(a.get_window("t", limit=5)) == ["x"]
    assert contents(a.get_window("t")) == ["x"]  # fewer rows than the limit: the whole window
