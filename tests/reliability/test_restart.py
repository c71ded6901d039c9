"""The database server restarted under load.

Threads (and one asyncio writer) keep adding to their own sessions through
AgentMemory — Trim, Summarize and FlushToLongTerm — while the server restarts.
While it is down, operations fail with ``StoreUnavailableError`` (a long-term block's
update: ``BlockError`` chained to it), never a raw driver exception; once it is back every
writer resumes on its own (the pool replaces dead connections), and nothing
acknowledged is lost, no batch is half stored, no overflow half applied.

The servers are stopped, kept down for a while, and started again with the local
cluster tools (``pg_ctlcluster``, ``mysqladmin`` + ``start-stop-daemon``), or the
shell commands in ``RELIABILITY_PG_STOP`` / ``RELIABILITY_PG_START`` (``_MARIADB_``
likewise); a server that is not local, or without those tools, skips the test. The
server is always up again when the test ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import _probe, backend_params
from mssql_memory import (
    AgentMemory,
    AgentMemoryError,
    BlockError,
    SQLStore,
    StoreUnavailableError,
)
from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from .helpers import (
    FULL,
    build_memory,
    check_acks,
    check_integrity,
    make_batch,
    record,
    scaled,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

RESTARTS = scaled(1, 3)
THREADS = scaled(3, 8)
RESTART_BACKENDS = backend_params(("postgresql", "mariadb") if FULL else ("postgresql",))
MODES = ("append", "summarize", "flush")
RESUME_LIMIT = 60.0
#: seconds the server stays down
DOWN_FOR = scaled(1, 3)


def _pg_commands() -> tuple[list[str], list[str]] | None:
    if os.environ.get("RELIABILITY_PG_STOP") and os.environ.get("RELIABILITY_PG_START"):
        return _shell("RELIABILITY_PG_STOP"), _shell("RELIABILITY_PG_START")
    versions = sorted(Path("/etc/postgresql").glob("*/main"))
    if not shutil.which("pg_ctlcluster") or not versions:
        return None
    base = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].parent.name, "main"]
    return [*base, "stop", "--mode", "fast"], [*base, "start"]


_MARIADB_STOP = (
    "mysqladmin -uroot shutdown; "
    "for i in $(seq 1 300); do "
    "start-stop-daemon --status --exec /usr/sbin/mariadbd || exit 0; sleep 0.1; done; exit 1"
)
_MARIADB_START = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"


def _mariadb_commands() -> tuple[list[str], list[str]] | None:
    if os.environ.get("RELIABILITY_MARIADB_STOP") and os.environ.get("RELIABILITY_MARIADB_START"):
        return _shell("RELIABILITY_MARIADB_STOP"), _shell("RELIABILITY_MARIADB_START")
    tools = ("mysqladmin", "start-stop-daemon")
    if not all(shutil.which(t) for t in tools) or not Path("/usr/sbin/mariadbd").exists():
        return None
    return ["sh", "-c", _MARIADB_STOP], ["sh", "-c", _MARIADB_START]


def _shell(variable: str) -> list[str]:
    return ["sh", "-c", os.environ[variable]]


def _commands(backend: str, url: str) -> tuple[list[str], list[str]]:
    """The commands that stop and start the backend's local server (or skip the test)."""
    host = make_url(url).host or "localhost"
    if host not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip(f"{backend} at {host} is not local: cannot restart it")
    commands = _pg_commands() if backend == "postgresql" else _mariadb_commands()
    if commands is None:
        pytest.skip(f"no tool to stop and start the local {backend} server")
    return commands


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command} failed: {done.stdout[-1000:]} {done.stderr[-1000:]}"


def _wait_until_up(url: str, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while _probe(url) is not None:
        assert time.monotonic() < deadline, f"the server at {url} did not come back"
        time.sleep(0.1)


def _ensure_up(url: str, start: list[str]) -> None:
    """Start the server if the test left it down, and wait until it answers."""
    if _probe(url) is not None:
        subprocess.run(start, capture_output=True, timeout=120, check=False)
        _wait_until_up(url)


class Writer:
    """One app thread: adds batches to its session, recording what it tried, what was
    acknowledged and every error, and keeps going after errors."""

    def __init__(self, memory: AgentMemory | None, session: str, user: str, tag: str) -> None:
        self.memory, self.session, self.user, self.tag = memory, session, user, tag
        self.tried: list[list[str]] = []
        self.acked: list[list[str]] = []
        self.ack_times: list[float] = []
        self.errors: list[tuple[float, BaseException]] = []

    def run(self, stop: threading.Event) -> None:
        rng = random.Random(self.tag)
        index = 0
        while not stop.is_set():
            batch = make_batch(self.tag, index, rng)
            index += 1
            self.tried.append([m.id for m in batch])
            try:
                assert self.memory is not None
                self.memory.add(self.session, batch, user_id=self.user)
            except Exception as e:
                self.errors.append((time.monotonic(), e))
                time.sleep(0.05)
                continue
            self.acked.append(self.tried[-1])
            self.ack_times.append(time.monotonic())

    def arun(self, stop: threading.Event, url: str, table: str) -> None:
        """The asyncio twin, with a store of its own (its pool lives in this thread's loop)."""

        async def main() -> None:
            store = SQLStore(url, table_name=table)
            memory = build_memory("append", store)
            rng = random.Random(self.tag)
            index = 0
            try:
                while not stop.is_set():
                    batch = make_batch(self.tag, index, rng)
                    index += 1
                    self.tried.append([m.id for m in batch])
                    try:
                        await memory.aadd(self.session, batch, user_id=self.user)
                    except Exception as e:
                        self.errors.append((time.monotonic(), e))
                        await asyncio.sleep(0.05)
                        continue
                    self.acked.append(self.tried[-1])
                    self.ack_times.append(time.monotonic())
            finally:
                await store.aclose()

        asyncio.run(main())

    def acks_after(self, moment: float) -> int:
        return sum(1 for t in self.ack_times if t > moment)


def _wait_for(writers: list[Writer], moment: float, acks: int, what: str) -> float:
    """Wait until every writer has ``acks`` acknowledged adds after ``moment``; return when."""
    deadline = time.monotonic() + RESUME_LIMIT
    while not all(w.acks_after(moment) >= acks for w in writers):
        stuck = [w.tag for w in writers if w.acks_after(moment) < acks]
        assert time.monotonic() < deadline, f"writers {stuck} did not {what}"
        time.sleep(0.02)
    return time.monotonic()


def _outage(error: BaseException) -> BaseException:
    """The error itself or, for a long-term block that failed (BlockError), its cause."""
    if isinstance(error, BlockError) and error.__cause__ is not None:
        return error.__cause__
    return error


def _kind(error: BaseException) -> str:
    if isinstance(error, BlockError):
        return f"BlockError<-{type(error.__cause__).__name__}"
    return type(error).__name__


@pytest.mark.parametrize("backend", RESTART_BACKENDS)
def test_server_restart_under_load_fails_cleanly_then_resumes(
    backend: str, make_store: Any, make_ltm_for: Any, backend_urls: Any
) -> None:
    """RESTARTS server restarts while THREADS threads and an asyncio task add: only library
    errors, every writer resumes by itself, nothing acknowledged lost, every batch whole,
    every session consistent."""
    url = backend_urls[backend]
    stop_server, start_server = _commands(backend, url)
    store = make_store(backend)
    store.create_schema()
    ltm = make_ltm_for(store)
    writers = []
    for k in range(THREADS):
        mode = MODES[k % len(MODES)]
        memory = build_memory(mode, store, ltm)
        writers.append(Writer(memory, f"restart-{k}-{mode}", f"user-{k}", f"w{k}"))
    async_writer = Writer(None, "restart-async", "user-async", "aw")  # memory of its own
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in writers]
    threads.append(
        threading.Thread(target=async_writer.arun, args=(stop, url, store.table_name), daemon=True)
    )
    everyone = [*writers, async_writer]
    downtime: list[float] = []
    resume: list[float] = []
    try:
        for thread in threads:
            thread.start()
        _wait_for(everyone, 0, 3, "start")
        for _ in range(RESTARTS):
            began = time.monotonic()
            _run(stop_server)
            time.sleep(DOWN_FOR)  # a real outage, longer than the store's retries
            _run(start_server)
            _wait_until_up(url)
            up = time.monotonic()
            downtime.append(up - began)
            resume.append(_wait_for(everyone, up, 3, "resume after the restart") - up)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        _ensure_up(url, start_server)

    errors = [e for w in everyone for _, e in w.errors]
    raw = [e for e in errors if not isinstance(e, AgentMemoryError)]
    assert not raw, f"raw exceptions escaped: {[f'{type(e).__name__}: {e}' for e in raw[:5]]}"
    assert errors, "no operation failed: the restart happened outside the load"
    kinds = Counter(_kind(e) for e in errors)
    others = [e for e in errors if not isinstance(_outage(e), StoreUnavailableError)]
    assert not others, f"not an outage error: {sorted({repr(e)[:200] for e in others})}"
    for e in errors:
        assert e.__cause__ is not None, f"{e!r} is not chained to its cause"

    in_flight = 0
    for writer in everyone:
        history = [m.id for m in store.get_history(writer.session)]
        in_flight += check_acks(history, writer.tried, writer.acked)
        flushed = writer.session.endswith("flush")
        check_integrity(store, writer.session, ltm=ltm if flushed else None, user_id=writer.user)
    # the memory works as before, sync and async
    for writer in writers:
        writer.memory.add(writer.session, make_batch(writer.tag, 10**6, random.Random(0)))
        assert writer.memory.get(writer.session)
    acked = sum(len(b) for w in everyone for b in w.acked)
    record(
        f"restart[{backend}]",
        f"{RESTARTS} restart(s) under {len(everyone)} writers: {acked} acknowledged messages "
        f"all kept, {len(errors)} failed adds ({dict(kinds)}), {in_flight} failed adds "
        f"committed whole; server down {max(downtime):.1f}s, every writer resumed within "
        f"{max(resume):.2f}s of the server answering",
    )


@pytest.mark.parametrize(
    "refusal",
    [
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is not yet accepting connections",
    ],
)
def test_a_server_refusing_while_it_restarts_is_unavailable(refusal: str) -> None:
    """PostgreSQL refusing connections while it stops or starts (SQLSTATE 57P03) is a
    StoreUnavailableError, as a refused connection is, chained to the driver's error."""
    psycopg = pytest.importorskip("psycopg")

    def connect() -> Any:
        raise psycopg.OperationalError(
            f'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
            f"FATAL:  {refusal}"
        )

    engine = create_engine("postgresql+psycopg://", creator=connect)
    store = SQLStore(engine, table_name="t_never", auto_create=False)
    try:
        with pytest.raises(StoreUnavailableError, match=refusal) as info:
            store.get_session("s")
        assert isinstance(info.value.__cause__, sa_exc.OperationalError)
    finally:
        engine.dispose()
