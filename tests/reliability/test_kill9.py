"""kill -9 of a writer process during appends and during overflows.

A writer process adds batches to one session (Trim, Summarize with a slow model, or
FlushToLongTerm with slow blocks) and reports each add it starts and each add that
returned; the test kills it with SIGKILL — at a random acknowledged add, or just
after a model or block call started — then checks the session from its rows, and
starts the next writer on the same session. After every kill: no acknowledged
message is lost, no batch is half stored, no overflow is half applied (see
:func:`~reliability.helpers.check_integrity`). At the end a healthy instance
completes whatever overflow the kills left pending.

Writers are forked from a fork server that has the library loaded, so a kill cycle
costs milliseconds rather than an interpreter start.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import backend_params

from .helpers import (
    FULL,
    build_memory,
    check_acks,
    check_integrity,
    read_events,
    record,
    scaled,
    writer_main,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

KILLS = scaled(5, 25)
MODES = ("append", "summarize", "flush")
#: the slow model's / blocks' delay per call, seconds
DELAYS = {"append": 0.0, "summarize": 0.04, "flush": 0.03}
KILL_BACKENDS = backend_params(
    ("sqlite", "postgresql", "mariadb") if FULL else ("sqlite", "postgresql")
)


def _context() -> Any:
    """The fork server context, its server started with this suite's helpers loaded."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["reliability.helpers"])
    # Python < 3.13's fork server ignores the parent's sys.path: hand it over in the environment
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return context


def _wait(path: Path, proc: Any, done: Any, what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while True:
        events = read_events(path)
        if done(events):
            return
        if events.error or not proc.is_alive():
            raise AssertionError(f"writer died before {what}: {events.error or proc.exitcode}")
        assert time.monotonic() < deadline, f"writer never reached {what}"
        time.sleep(0.002)


@pytest.mark.parametrize("backend", KILL_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_kill9_loses_nothing_and_never_half_applies_an_overflow(
    mode: str, backend: str, make_store: Any, make_ltm_for: Any, backend_urls: Any, tmp_path: Path
) -> None:
    """KILLS writers killed with SIGKILL mid-append or mid-overflow: every acknowledged message
    stays, every batch is stored whole or not at all, counters match the rows, summaries and
    block marks match the messages they cover; a later instance completes the overflow."""
    store = make_store(backend)
    store.create_schema()
    ltm = make_ltm_for(store) if mode == "flush" else None
    session, user = f"kill-{mode}", "kill-user"
    rng = random.Random(f"kill9-{mode}-{backend}")
    context = _context()
    tried: list[list[str]] = []
    acked: list[list[str]] = []
    phases: Counter[str] = Counter()
    in_flight = 0
    started = time.perf_counter()
    for run in range(KILLS):
        events_path = tmp_path / f"events-{run}"
        proc = context.Process(
            target=writer_main,
            args=(
                mode,
                backend_urls[backend],
                store.table_name,
                ltm.table_prefix if ltm else "",
                session,
                user,
                f"r{run}",
                str(events_path),
                rng.randrange(2**32),
                DELAYS[mode],
            ),
            daemon=True,
        )
        proc.start()
        try:
            _wait(events_path, proc, lambda e: e.ready, "ready")
            if mode != "append" and run % 2 == 0:
                calls = rng.randint(1, 3)  # kill inside the calls-th model or block call
                _wait(events_path, proc, lambda e, n=calls: e.model_calls >= n, "a model call")
                time.sleep(rng.uniform(0, 1.5 * DELAYS[mode]))
            else:
                adds = rng.randint(1, 12)  # kill at a random point after the adds-th add
                _wait(events_path, proc, lambda e, n=adds: len(e.acked) >= n, "its adds")
                time.sleep(rng.uniform(0, 0.01))
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(30)
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join(30)
        events = read_events(events_path)
        assert events.error is None, f"writer failed: {events.error}"
        assert proc.exitcode == -signal.SIGKILL
        phases[events.phase] += 1
        tried += events.tried
        acked += events.acked
        history = [m.id for m in store.get_history(session)]
        in_flight = check_acks(history, tried, acked)
        check_integrity(store, session, ltm=ltm, user_id=user)

    # a healthy instance completes whatever overflow the last kill left pending
    memory = build_memory(mode, store, ltm)
    memory.compact(session)
    stats = check_integrity(store, session, ltm=ltm, user_id=user)
    context_tokens = sum(m.token_count or 0 for m in memory.get(session))
    assert context_tokens <= memory.token_limit
    elapsed = time.perf_counter() - started
    if mode != "append":
        assert phases["overflow"] >= 1, f"no kill landed inside an overflow: {dict(phases)}"
    record(
        f"kill9[{mode}-{backend}]",
        f"{KILLS} kills (phase at kill: {dict(sorted(phases.items()))}), "
        f"{sum(map(len, acked))} acknowledged messages all kept, "
        f"{in_flight} unacknowledged batches committed whole, final {stats}, {elapsed:.1f}s",
    )
