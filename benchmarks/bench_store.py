"""W1 append latency and W2 window reads: :class:`SQLStore` against the raw DBAPI driver.

    python -m benchmarks.bench_store [--backends sqlite,postgresql,mariadb]
        [--sizes 10,1000,10000] [--repeat 200] [--out benchmarks/results/store.md] [--quick]

For each backend and each size N, three sessions are pre-filled with N messages
(batches of 500), both in the store's tables and in the raw baseline's own copy
of the messages table (same columns, same indexes, same rows):

- W1: one message appended to a session holding N messages;
- W2: ``get_window(limit=50)`` and ``read_session`` on a session of N messages
  whose active window holds the newest 40 (the rest archived), and
  ``get_window(limit=50)`` on a session whose N messages are all active.

The raw driver does the physically equivalent work: one INSERT and a commit
per append; one ``SELECT seq, payload, token_count, status ... WHERE
session_id = ? AND status = 'active' ORDER BY seq DESC LIMIT 50`` per read.
The two systems alternate in rounds of five calls.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mssql_memory import Message, SQLStore, message_to_json
from mssql_memory.stores import build_tables
from mssql_memory.tokens import TokenCounter, default_token_counter
from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from .common import (
    BACKENDS,
    Backend,
    RawDB,
    Stats,
    bench_parser,
    command_line,
    environment_line,
    fmt_ms,
    fmt_ratio,
    interleave,
    log,
    markdown_table,
    probe,
    resolve_backends,
    summarize,
    unique_name,
    utcnow,
    workdir,
    write_report,
)

SIZES = (10, 1000, 10000)
QUICK_SIZES = (10, 100)
REPEAT = 200
QUICK_REPEAT = 20
DEFAULT_OUT = Path(__file__).parent / "results" / "store.md"
BATCH = 500  # messages per pre-fill append
ACTIVE = 40  # active window of the W2 "archived" sessions
LIMIT = 50  # get_window(limit=...) and the raw query's LIMIT

APPEND = "append 1 message"
WINDOW_ARCHIVED = "get_window(50), 40 active"
READ_ARCHIVED = "read_session, 40 active"
WINDOW_ACTIVE = "get_window(50), all active"
OPS = (APPEND, WINDOW_ARCHIVED, READ_ARCHIVED, WINDOW_ACTIVE)

_TEXT = (
    "the policy allows employees to carry over up to five days of annual leave into the "
    "next calendar year provided their manager approves the request before december "
    "remote work is permitted two days per week for roles that do not require on site "
    "presence parental leave is sixteen weeks at full pay please check the handbook"
)
_WORDS = tuple(_TEXT.split())


def make_messages(count: int, rng: random.Random) -> list[Message]:
    """Chat turns of 20 to 80 words, alternating user and assistant."""
    return [
        Message(
            "user" if i % 2 == 0 else "assistant",
            " ".join(rng.choices(_WORDS, k=rng.randint(20, 80))),
        )
        for i in range(count)
    ]


def raw_row(session_id: str, seq: int, message: Message, tokens: int) -> tuple[Any, ...]:
    """The messages-table row the store would write for ``message``."""
    return (
        session_id,
        seq,
        message.role,
        "active",
        tokens,
        message.content,
        message_to_json(message),
        utcnow(),
    )


class RawStore:
    """The baseline: the raw driver on its own copy of the store's messages table.

    The table is created from the store's own definition (same columns and
    indexes); every timed call is plain DBAPI on one kept-open connection.
    """

    def __init__(self, url: URL, table_name: str) -> None:
        self.url = url
        self.table = build_tables(table_name).messages  # validates the name pasted below
        self._ddl(create=True)
        try:
            self.db = RawDB(url)
        except Exception:
            self._ddl(create=False)
            raise
        conn, sql, t = self.db.conn, self.db.sql, table_name
        self.conn = conn
        self._insert = sql(
            f"INSERT INTO {t} (session_id, seq, role, status, token_count, content, payload, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._window = sql(
            f"SELECT seq, payload, token_count, status FROM {t} "
            f"WHERE session_id = ? AND status = 'active' ORDER BY seq DESC LIMIT {LIMIT}"
        )
        self._archive = sql(f"UPDATE {t} SET status = 'archived' WHERE session_id = ? AND seq <= ?")
        self._count = sql(f"SELECT COUNT(*) FROM {t} WHERE session_id = ?")

    def fill(self, rows: Sequence[tuple[Any, ...]]) -> None:
        cur = self.conn.cursor()
        cur.executemany(self._insert, rows)
        cur.close()
        self.conn.commit()

    def append(self, row: tuple[Any, ...]) -> None:
        cur = self.conn.cursor()
        cur.execute(self._insert, row)
        cur.close()
        self.conn.commit()

    def window(self, session_id: str) -> list[Any]:
        cur = self.conn.cursor()
        cur.execute(self._window, (session_id,))
        rows = cur.fetchall()
        cur.close()
        self.conn.commit()
        return rows

    def archive_through(self, session_id: str, seq: int) -> None:
        cur = self.conn.cursor()
        cur.execute(self._archive, (session_id, seq))
        cur.close()
        self.conn.commit()

    def count(self, session_id: str) -> int:
        cur = self.conn.cursor()
        cur.execute(self._count, (session_id,))
        (n,) = cur.fetchone()
        cur.close()
        self.conn.commit()
        return int(n)

    def _ddl(self, *, create: bool) -> None:
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            if create:
                self.table.create(engine)
            else:
                self.table.drop(engine, checkfirst=True)
        finally:
            engine.dispose()

    def drop(self) -> None:
        """Close the connection and drop the table."""
        self.db.close()
        self._ddl(create=False)


@dataclass(frozen=True)
class Result:
    """One line of the results table."""

    backend: str
    size: int
    op: str
    ours: Stats
    raw: Stats


@dataclass
class Settings:
    sizes: Sequence[int]
    repeat: int
    warmup: int
    round_size: int = 5


def _fill(ours: SQLStore, raw: RawStore, session_id: str, size: int, rng: random.Random) -> None:
    """Write the same ``size`` messages to both systems, ``BATCH`` per transaction."""
    for start in range(0, size, BATCH):
        stored = ours.append(session_id, make_messages(min(BATCH, size - start), rng))
        raw.fill([raw_row(session_id, m.seq, m, m.token_count or 0) for m in stored])


def _sessions(size: int) -> tuple[str, str, str]:
    return f"w1-{size}", f"w2-archived-{size}", f"w2-active-{size}"


def prefill(ours: SQLStore, raw: RawStore, sizes: Sequence[int], rng: random.Random) -> None:
    """Every size's three sessions, written before anything is timed (one table state for all)."""
    for size in sizes:
        w1, archived, active = _sessions(size)
        for sid in (w1, archived, active):
            _fill(ours, raw, sid, size, rng)
        if size > ACTIVE:
            ours.archive(archived, list(range(1, size - ACTIVE + 1)))
            raw.archive_through(archived, size - ACTIVE)


def bench_append(
    ours: SQLStore,
    raw: RawStore,
    size: int,
    settings: Settings,
    counter: TokenCounter,
    rng: random.Random,
) -> dict[str, list[int]]:
    """W1: single-message appends into a session holding ``size`` messages."""
    sid = _sessions(size)[0]
    calls = settings.repeat + settings.warmup
    our_messages: Iterator[Message] = iter(make_messages(calls, rng))
    raw_rows = iter(
        [
            raw_row(sid, size + 1 + i, m, counter.count_message(m))
            for i, m in enumerate(make_messages(calls, rng))
        ]
    )
    timings = interleave(
        {
            "ours": lambda: ours.append(sid, next(our_messages)),
            "raw": lambda: raw.append(next(raw_rows)),
        },
        settings.repeat,
        round_size=settings.round_size,
        warmup=settings.warmup,
    )
    expected = size + calls
    got = (ours.get_session(sid).message_count, raw.count(sid))
    if got != (expected, expected):
        raise RuntimeError(f"append check failed for {sid}: expected {expected}, got {got}")
    return timings


def bench_reads(
    ours: SQLStore, raw: RawStore, size: int, settings: Settings
) -> dict[str, dict[str, list[int]]]:
    """W2: the three window reads, each against the raw window query of the same session."""
    _, archived, active = _sessions(size)
    cases: list[tuple[str, str, Callable[[], list[Message]]]] = [
        (WINDOW_ARCHIVED, archived, lambda: ours.get_window(archived, limit=LIMIT)),
        (READ_ARCHIVED, archived, lambda: ours.read_session(archived).window),
        (WINDOW_ACTIVE, active, lambda: ours.get_window(active, limit=LIMIT)),
    ]
    out = {}
    for op, sid, read in cases:
        ours_n, raw_n = len(read()), len(raw.window(sid))
        want = min(size, ACTIVE if sid == archived else LIMIT)
        if ours_n != want or raw_n != want:
            raise RuntimeError(f"{op} on {sid}: expected {want} rows, got {ours_n} / {raw_n}")
        out[op] = interleave(
            {"ours": read, "raw": lambda sid=sid: raw.window(sid)},
            settings.repeat,
            round_size=settings.round_size,
            warmup=settings.warmup,
        )
    return out


def run_backend(backend: Backend, settings: Settings) -> tuple[list[Result], str]:
    """Every workload on one backend; returns the results and the server's version."""
    rng = random.Random(20240501)
    counter = default_token_counter()
    results: list[Result] = []
    with ExitStack() as stack:
        ours = SQLStore(backend.url_for("ours"), table_name=unique_name("bench_ours"))
        stack.callback(ours.close)
        ours.create_schema()
        stack.callback(ours.drop_schema)
        raw = RawStore(backend.url_for("raw"), unique_name("bench_raw"))
        stack.callback(raw.drop)
        version = raw.db.server_version()

        started = time.perf_counter()
        prefill(ours, raw, settings.sizes, rng)
        elapsed = time.perf_counter() - started
        log(f"{backend.name}: pre-filled 2 x {3 * sum(settings.sizes)} messages, {elapsed:.1f} s")

        for size in settings.sizes:
            timings = {APPEND: bench_append(ours, raw, size, settings, counter, rng)}
            timings.update(bench_reads(ours, raw, size, settings))
            for op in OPS:
                result = Result(
                    backend.name,
                    size,
                    op,
                    summarize(timings[op]["ours"]),
                    summarize(timings[op]["raw"]),
                )
                results.append(result)
                log(
                    f"{backend.name} N={size} {op}: ours {fmt_ms(result.ours.median_ms)} ms, "
                    f"raw {fmt_ms(result.raw.median_ms)} ms "
                    f"({fmt_ratio(result.ours.median_ms, result.raw.median_ms)})"
                )
    return results, version


def render(
    results: Sequence[Result], settings: Settings, versions: Sequence[str], skipped: Sequence[str]
) -> str:
    """The markdown report: how it was run, the table, how to read it."""
    rows = [
        [
            r.backend,
            f"{r.size:,}",
            r.op,
            f"{fmt_ms(r.ours.median_ms)} / {fmt_ms(r.ours.p95_ms)}",
            f"{fmt_ms(r.raw.median_ms)} / {fmt_ms(r.raw.p95_ms)}",
            fmt_ratio(r.ours.median_ms, r.raw.median_ms),
        ]
        for r in sorted(results, key=lambda r: (BACKENDS.index(r.backend), OPS.index(r.op), r.size))
    ]
    table = markdown_table(
        ["backend", "N", "op", "ours median / p95 ms", "raw median / p95 ms", "ratio"], rows
    )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# SQLStore vs the raw driver: W1 append, W2 window reads",
        "",
        f"`{command_line()}` ({when}; {settings.repeat} timed calls per system and cell, "
        f"systems alternating in rounds of {settings.round_size})",
        "",
        environment_line(versions),
        "",
        table,
        "",
        "N: messages in the session. ratio: ours median / raw median. Raw: one INSERT + "
        "commit per append; one `SELECT ... WHERE session_id = ? AND status = 'active' "
        f"ORDER BY seq DESC LIMIT {LIMIT}` for every read. See benchmarks/README.md.",
    ]
    lines += [f"Skipped {s}." for s in skipped]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return bench_parser(
        "bench_store", __doc__, backends=BACKENDS, sizes=SIZES, repeat=REPEAT, out=DEFAULT_OUT
    ).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        sizes=args.sizes or (QUICK_SIZES if args.quick else SIZES),
        repeat=args.repeat or (QUICK_REPEAT if args.quick else REPEAT),
        warmup=2 if args.quick else 5,
    )
    if settings.repeat < 1 or any(n < 1 for n in settings.sizes):
        raise SystemExit("--repeat and --sizes must be positive")
    out = args.out or (None if args.quick else DEFAULT_OUT)
    results: list[Result] = []
    versions: list[str] = []
    skipped: list[str] = []
    with workdir() as directory:
        for backend in resolve_backends(args.backends, directory):
            reason = probe(backend)
            if reason is not None:
                skipped.append(f"{backend.name} ({backend.display_url()}): {reason}")
                log(f"skipping {backend.name}: {reason}")
                continue
            backend_results, version = run_backend(backend, settings)
            results += backend_results
            versions.append(version)
    report = render(results, settings, versions, skipped)
    print(report)
    if out is not None:
        log(f"wrote {write_report(out, report)}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
