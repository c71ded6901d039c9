"""Two processes adding to one session with Summarize overflow on: one consistent state.

No message is lost or duplicated, sequence numbers are strictly increasing, every
message is evicted at most once and covered by at most one summary, each summary rolls
the previous one forward (none is lost or doubled), and after a final compact the
window is within budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import backend_params
from hr_scenario import (
    FakeSummarizer,
    concurrent_memory,
    covered_count,
    message_key,
    writer_batches,
)
from mssql_memory import SQLStore, group_messages
from sqlalchemy import event, select

TESTS = Path(__file__).resolve().parent
SESSION = "shared-session"
WRITERS = ("alpha", "beta")
TURNS = 20
MODEL_DELAY = 0.02


def run_writers(url: str, table: str, tmp_path: Path) -> list[dict[str, int]]:
    """Start one child process per writer, release them together, return their reports."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from hr_scenario import child_concurrent_writer;"
        "print(json.dumps(child_concurrent_writer(*sys.argv[2:])))"
    )
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-c", code, str(TESTS), url, table, SESSION, writer),
                *(str(TURNS), str(MODEL_DELAY), str(tmp_path)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for writer in WRITERS
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"{w}.ready").exists() for w in WRITERS):
            failed = [p for p in procs if p.poll() is not None]
            if failed:
                _, err = failed[0].communicate()
                raise AssertionError(err.decode()[-3000:])
            assert time.monotonic() < deadline, "writers never got ready"
            time.sleep(0.01)
        (tmp_path / "go").write_text("go")
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()[-3000:]
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def stored_rows(store: SQLStore) -> tuple[list[Any], list[Any], Any]:
    """(message rows, summary rows, session's current summary id) straight from the tables."""
    m, su, s = store.tables.messages, store.tables.summaries, store.tables.sessions
    with store.engines.sync.connect() as conn:
        messages = conn.execute(
            select(m.c.seq, m.c.status, m.c.summary_id)
            .where(m.c.session_id == SESSION)
            .order_by(m.c.seq)
        ).all()
        summaries = conn.execute(
            select(su.c.id, su.c.through_seq, su.c.content)
            .where(su.c.session_id == SESSION)
            .order_by(su.c.id)
        ).all()
        current = conn.execute(select(s.c.summary_id).where(s.c.session_id == SESSION)).scalar_one()
    return messages, summaries, current


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params(("sqlite", "postgresql", "mariadb", "mssql")))
def test_two_processes_one_session_stay_consistent(
    make_store: Any, backend_urls: Any, backend: str, tmp_path: Path
) -> None:
    """Two writer processes with Summarize on: one consistent state, nothing lost or doubled."""
    store = make_store(backend)
    store.create_schema()
    reports = run_writers(backend_urls[backend], store.table_name, tmp_path)

    memory = concurrent_memory(store, FakeSummarizer())
    final_compact = memory.compact(SESSION)

    # every message once, each writer's batches in order and unbroken
    history = memory.history(SESSION)
    keys = [message_key(m) for m in history]
    expected = {w: [message_key(m) for b in writer_batches(w, TURNS) for m in b] for w in WRITERS}
    assert sorted(keys) == sorted(k for w in WRITERS for k in expected[w])
    assert len(set(keys)) == len(keys)
    seqs = [m.seq for m in history]
    assert seqs == list(range(1, len(history) + 1))
    for writer in WRITERS:
        assert [k for k in keys if k.split(":", 1)[1].startswith(writer)] == expected[writer]
    by_key = {message_key(m): m.seq for m in history}
    for writer in WRITERS:
        for batch in writer_batches(writer, TURNS):
            batch_seqs = [by_key[message_key(m)] for m in batch]
            assert batch_seqs == list(range(batch_seqs[0], batch_seqs[0] + len(batch)))

    # evictions: a prefix of the history, whole groups, each covered by one summary
    statuses = [m.status for m in history]
    first_active = statuses.index("active")
    assert set(statuses[:first_active]) == {"summarized"}
    assert set(statuses[first_active:]) == {"active"}
    assert all(len({m.status for m in g.messages}) == 1 for g in group_messages(history))
    rows, summaries, current = stored_rows(store)
    assert [r.seq for r in rows] == seqs
    assert all((r.status == "summarized") == (r.summary_id is not None) for r in rows)
    covered: dict[int, list[int]] = {}
    for r in rows:
        if r.summary_id is not None:
            covered.setdefault(r.summary_id, []).append(r.seq)
    assert list(covered) == [s.id for s in summaries], "a summary covers nothing, or is unknown"
    start = 1
    for summary in summaries:
        assert covered[summary.id] == list(range(start, summary.through_seq + 1))
        start = summary.through_seq + 1
    assert current == summaries[-1].id
    # each summary rolled the previous one forward: nothing doubled, nothing dropped
    assert covered_count(summaries[-1].content) == first_active
    applied = sum(r["applied"] for r in reports) + int(final_compact)
    assert applied == len(summaries)
    assert sum(r["model_calls"] for r in reports) >= applied

    # the window fits its budget again after the final compact
    state = store.get_session(SESSION)
    budget = memory.token_limit - state.summary.token_count
    assert state.active_tokens <= budget
    context = memory.get(SESSION)
    assert sum(m.token_count or 0 for m in context) <= memory.token_limit


@pytest.mark.parametrize("backend", backend_params(("sqlite", "postgresql", "mariadb", "mssql")))
def test_overflow_never_rolls_a_stale_summary(make_store: Any, backend: str) -> None:
    """An overflow whose read straddles another's commit never rolls a stale summary forward."""
    store_a = make_store(backend)
    store_b = make_store(backend, table_name=store_a.table_name)
    memory_a = concurrent_memory(store_a, FakeSummarizer())
    memory_b = concurrent_memory(store_b, FakeSummarizer())
    for batch in writer_batches("alpha", 8):
        store_a.append(SESSION, batch)  # over budget, no overflow yet

    reached, release = threading.Event(), threading.Event()
    armed = [True]
    state_query = store_a.tables.summaries.name

    def pause_after_state_read(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if armed[0] and state_query in statement and "JOIN" in statement.upper():
            armed[0] = False
            reached.set()
            release.wait(30)

    engine = store_a.engines.sync
    event.listen(engine, "after_cursor_execute", pause_after_state_read)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(memory_a.compact(SESSION)))
    try:
        thread.start()
        assert reached.wait(30)
        assert memory_b.compact(SESSION) is True  # another instance summarizes...
        for batch in writer_batches("beta", 6):  # ...and the conversation goes on
            store_b.append(SESSION, batch)
    finally:
        release.set()
        thread.join(30)
        event.remove(engine, "after_cursor_execute", pause_after_state_read)
    memory_a.compact(SESSION)

    summarized = [m for m in memory_a.history(SESSION) if m.status == "summarized"]
    summary = store_a.get_session(SESSION).summary
    assert summary is not None
    assert covered_count(summary.content) == len(summarized)
    assert not thread.is_alive() and result == [True]
