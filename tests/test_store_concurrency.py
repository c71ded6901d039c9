"""Concurrent writers in several processes lose, duplicate and reorder nothing.

Every process builds its own SQLStore on the same URL and table (as separate
app instances would); processes are started with "spawn", so nothing is
shared but the database.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from mssql_memory import ApproximateTokenCounter, Message, OverflowCommit, SQLStore

PROCESSES = 4
THREADS = 4
APPENDS = 200
SESSIONS = ("shared-a", "shared-b", "shared-c")
BATCH_EVERY = 25  # every 25th append is a batch of 3, which must get consecutive seqs
BATCH_SIZE = 3

pytestmark = pytest.mark.slow

CONCURRENT_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", marks=pytest.mark.integration, id="postgresql"),
    pytest.param("mariadb", marks=pytest.mark.integration, id="mariadb"),
]


def _store(url: str, table: str) -> SQLStore:
    return SQLStore(url, table, token_counter=ApproximateTokenCounter())


def _append_worker(url: str, table: str, proc: int) -> list[tuple[str, str, int, int, int]]:
    """One app instance: THREADS threads x APPENDS appends.

    Returns (session, message id, seq, thread, append index) for every stored message.
    """
    store = _store(url, table)

    def run(thread: int) -> list[tuple[str, str, int, int, int]]:
        done = []
        for i in range(APPENDS):
            session = SESSIONS[(proc + thread + i) % len(SESSIONS)]
            size = BATCH_SIZE if i % BATCH_EVERY == 0 else 1
            ids = [f"p{proc}-t{thread}-i{i}-m{k}" for k in range(size)]
            stored = store.append(session, [Message("user", mid, id=mid) for mid in ids])
            got = [m.seq for m in stored]
            assert got == list(range(got[0], got[0] + size)), f"batch not contiguous: {got}"
            done += [(session, m.id, m.seq, thread, i) for m in stored]
        return done

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            return [row for rows in pool.map(run, range(THREADS)) for row in rows]
    finally:
        store.close()


@pytest.fixture(scope="module")
def pool() -> Any:
    """PROCESSES spawned worker processes, shared by this module's tests (spawning is slow)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    with context.Pool(PROCESSES, initializer=_init_worker, initargs=(barrier,)) as workers:
        yield workers


def _url_for(backend: str, backend_urls: Any, tmp_path: Any) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'concurrency.db'}"
    return backend_urls[backend]


@pytest.mark.parametrize("backend", CONCURRENT_BACKENDS)
def test_concurrent_appends_from_processes_and_threads(
    backend: str, pool: Any, backend_urls: Any, make_store: Any, tmp_path: Any
) -> None:
    """16 concurrent writers lose, duplicate and reorder nothing: seqs are 1..N, each id once."""
    url = _url_for(backend, backend_urls, tmp_path)
    check = make_store(backend, url=url)
    check.create_schema()
    results = pool.starmap(
        _append_worker, [(url, check.table_name, proc) for proc in range(PROCESSES)], chunksize=1
    )
    rows = [row for rows in results for row in rows]
    per_thread = APPENDS + (BATCH_SIZE - 1) * len(range(0, APPENDS, BATCH_EVERY))
    assert len(rows) == PROCESSES * THREADS * per_thread

    expected: dict[str, dict[str, int]] = defaultdict(dict)
    for session, message_id, seq, _, _ in rows:
        expected[session][message_id] = seq
    for session in SESSIONS:
        history = check.get_history(session)
        ids = [m.id for m in history]
        assert len(ids) == len(set(ids)), "a message was stored twice"
        assert [m.seq for m in history] == list(range(1, len(history) + 1)), "gap or reorder"
        assert {m.id: m.seq for m in history} == expected[session], "lost or misnumbered"
        assert all(m.content == m.id for m in history)
        state = check.get_session(session)
        assert state.message_count == state.active_count == len(history)

    # one writer's messages keep that writer's order within each session
    by_writer: dict[tuple[str, int, int], list[tuple[int, int]]] = defaultdict(list)
    for session, message_id, seq, thread, i in rows:
        proc = int(message_id.split("-")[0][1:])
        by_writer[(session, proc, thread)].append((i, seq))
    for writes in by_writer.values():
        seqs = [seq for _, seq in sorted(writes)]
        assert seqs == sorted(seqs)


_BARRIER: Any = None


def _init_worker(barrier: Any) -> None:
    global _BARRIER
    _BARRIER = barrier


def _race_worker(url: str, table: str, mode: str) -> str:
    """Build a store, wait for the other processes, then create the schema or write on first use."""
    store = _store(url, table)
    try:
        _BARRIER.wait(timeout=60)
        if mode == "create_schema":
            store.create_schema()
        else:
            store.append("first", Message("user", f"from {multiprocessing.current_process().name}"))
        return multiprocessing.current_process().name
    finally:
        store.close()


@pytest.mark.parametrize("backend", CONCURRENT_BACKENDS)
def test_processes_creating_the_schema_at_once_all_succeed(
    backend: str, pool: Any, backend_urls: Any, make_store: Any, tmp_path: Any
) -> None:
    """Processes creating one fresh table at once (explicitly or on first use) all succeed."""
    url = _url_for(backend, backend_urls, tmp_path)
    table = f"t_{uuid.uuid4().hex[:10]}"
    modes = ["create_schema", "first_use"] * (PROCESSES // 2)
    try:
        workers = pool.starmap(_race_worker, [(url, table, mode) for mode in modes], chunksize=1)
    finally:
        check = make_store(backend, url=url, table_name=table)  # dropped at teardown
    assert len(set(workers)) == PROCESSES  # really in distinct processes
    assert [m.seq for m in check.get_history("first")] == list(range(1, PROCESSES // 2 + 1))
    check.append("after", Message("user", "works"))
    assert [m.content for m in check.get_window("after")] == ["works"]


@pytest.mark.parametrize("backend", CONCURRENT_BACKENDS)
def test_only_one_of_many_identical_overflow_commits_wins(
    backend: str, make_store: Any, backend_urls: Any, tmp_path: Any
) -> None:
    """Eight instances committing the same overflow at once: exactly one succeeds."""
    url = _url_for(backend, backend_urls, tmp_path)
    first = make_store(backend, url=url)
    stored = first.append("s", [Message("user", str(i)) for i in range(6)])
    before = first.get_session("s")
    instances = [first] + [
        make_store(backend, url=url, table_name=first.table_name) for _ in range(7)
    ]
    commit = OverflowCommit(stored[:4], summary="the first four", summary_tokens=4)
    with ThreadPoolExecutor(len(instances)) as pool:
        outcomes = list(pool.map(lambda store: store.commit_overflow("s", commit), instances))
    assert sorted(outcomes) == [False] * 7 + [True]
    state = first.get_session("s")
    assert state.active_count == 2
    assert state.active_tokens == before.active_tokens - sum(m.token_count for m in stored[:4])
    assert state.summary.content == "the first four"
    assert [m.status for m in first.get_history("s")] == ["summarized"] * 4 + ["active"] * 2


@pytest.mark.parametrize("backend", CONCURRENT_BACKENDS)
def test_concurrent_trimming_keeps_counters_exact(
    backend: str, make_store: Any, backend_urls: Any, tmp_path: Any
) -> None:
    """Concurrent appends under max_messages_per_session keep window and counters consistent."""
    url = _url_for(backend, backend_urls, tmp_path)
    store = make_store(backend, url=url, max_messages_per_session=10)
    store.create_schema()

    def write(thread: int) -> None:
        for i in range(25):
            store.append("s", Message("user", f"t{thread}-{i}"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))
    window, history = store.get_window("s"), store.get_history("s")
    state = store.get_session("s")
    assert [m.seq for m in window] == list(range(191, 201))
    assert [m.seq for m in history] == list(range(1, 201))
    assert [m.status for m in history].count("archived") == 190
    assert (state.message_count, state.active_count) == (200, 10)
    assert state.active_tokens == sum(m.token_count for m in window)


@pytest.mark.integration
def test_reads_under_concurrent_writers_are_one_snapshot(make_store: Any) -> None:
    """PostgreSQL: reads racing 4 writers on one session never give up (ConcurrencyError) and
    always return a record and window of the same version (counts agree)."""
    store = make_store("postgresql", cache=False)
    store.append("s", [Message("user", "start")])
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            while not stop.is_set():
                store.append("s", [Message("user", "w")])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    writers = [threading.Thread(target=write) for _ in range(4)]
    for w in writers:
        w.start()
    try:
        for _ in range(150):
            snapshot = store.read_session("s")
            assert snapshot.state.active_count == len(snapshot.window)
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert errors == []
