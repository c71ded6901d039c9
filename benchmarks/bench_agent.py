"""AgentMemory's cost per chat turn as the history grows, against the raw driver.

    python -m benchmarks.bench_agent [--backends sqlite,postgresql,mariadb]
        [--sizes 100,2000,10000] [--repeat 100] [--out benchmarks/results/agent.md] [--quick]

A turn is what an agent does around a model call: read the context, append the
user message, append the assistant message. With a 4,000-token budget and the
default Trim overflow, a session pre-filled with N messages holds an active
window of about 4,000 tokens and N minus that archived. Two systems run turns:

- ours: ``AgentMemory.get`` + ``add(user)`` + ``add(assistant)`` (token counting,
  sequence allocation, budget check and, every few turns, a Trim overflow);
- raw: three hand-written statements on one open DBAPI connection, each
  committed: ``SELECT`` of the newest active rows (as many as the window held),
  ``INSERT`` user, ``INSERT`` assistant, on a copy of the same rows.

The cost must stay flat in N (``get`` reads the active window only, never the
history): the report shows each size's median against N=100's.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mssql_memory import AgentMemory, Message, SQLStore, message_to_json
from mssql_memory.stores import build_tables
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
    words,
    workdir,
    write_report,
)

SIZES = (100, 2000, 10000)
QUICK_SIZES = (50, 200)
REPEAT = 100
QUICK_REPEAT = 6
TOKEN_LIMIT = 4000
BATCH = 500
DEFAULT_OUT = Path(__file__).parent / "results" / "agent.md"
TURN = "turn (get + 2 adds)"
GET = "get (context)"
OPS = (TURN, GET)


class RawTurns:
    """The baseline: three committed statements per turn on a copy of the store's table."""

    def __init__(self, url: URL, table_name: str) -> None:
        self.url = url
        self.table = build_tables(table_name).messages  # validates the name pasted below
        self._ddl(create=True)
        try:
            self.db = RawDB(url)
        except Exception:
            self._ddl(create=False)
            raise
        sql, t = self.db.sql, table_name
        self._insert = sql(
            f"INSERT INTO {t} (session_id, seq, role, status, token_count, content, payload, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._window = (
            f"SELECT seq, payload, token_count FROM {t} WHERE session_id = ? AND status = "
            "'active' ORDER BY seq DESC LIMIT {limit}"
        )
        self.next_seq: dict[str, int] = {}

    def fill(self, session_id: str, history: Sequence[Message]) -> None:
        """Copy a session's stored history (seqs, statuses, token counts) into the raw table."""
        rows = [
            (
                *(session_id, m.seq, m.role, m.status, m.token_count or 0, m.content),
                *(message_to_json(m), utcnow()),
            )
            for m in history
        ]
        cur = self.db.conn.cursor()
        for start in range(0, len(rows), BATCH):
            cur.executemany(self._insert, rows[start : start + BATCH])
        cur.close()
        self.db.conn.commit()
        self.next_seq[session_id] = max((m.seq or 0) for m in history) + 1

    def window(self, session_id: str, limit: int) -> list[Any]:
        cur = self.db.conn.cursor()
        cur.execute(self.db.sql(self._window.format(limit=int(limit))), (session_id,))
        rows = cur.fetchall()
        cur.close()
        self.db.conn.commit()
        return rows

    def append(self, session_id: str, role: str, text: str) -> None:
        seq = self.next_seq[session_id]
        self.next_seq[session_id] = seq + 1
        message = Message(role, text)  # type: ignore[arg-type]
        cur = self.db.conn.cursor()
        cur.execute(
            self._insert,
            (session_id, seq, role, "active", 0, text, message_to_json(message), utcnow()),
        )
        cur.close()
        self.db.conn.commit()

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
        self.db.close()
        self._ddl(create=False)


@dataclass(frozen=True)
class Result:
    backend: str
    size: int
    op: str
    ours: Stats
    raw: Stats
    window: int  # messages in the context ours returned (last call)


def prefill(memory: AgentMemory, raw: RawTurns, session_id: str, size: int, rng: random.Random):
    """``size`` messages through AgentMemory (Trim keeps the window at the budget), copied to
    the raw table. Returns how many messages the active window holds."""
    for start in range(0, size, BATCH):
        count = min(BATCH, size - start)
        memory.add(
            session_id,
            [
                Message("user" if (start + i) % 2 == 0 else "assistant", words(rng))
                for i in range(count)
            ],
        )
    history = memory.history(session_id)
    if len(history) != size:
        raise RuntimeError(f"pre-fill of {session_id}: {len(history)} messages, wanted {size}")
    raw.fill(session_id, history)
    return sum(m.status == "active" for m in history)


def bench_size(
    memory: AgentMemory, raw: RawTurns, backend: str, size: int, repeat: int, rng: random.Random
) -> list[Result]:
    session_id = f"agent-{size}"
    active = prefill(memory, raw, session_id, size, rng)
    seen = {"window": 0}

    def ours_get() -> list[Message]:
        context = memory.get(session_id)
        seen["window"] = len(context)
        return context

    def ours_turn() -> None:
        ours_get()
        memory.add(session_id, Message("user", words(rng)))
        memory.add(session_id, Message("assistant", words(rng)))

    def raw_get() -> list[Any]:
        return raw.window(session_id, active)

    def raw_turn() -> None:
        raw_get()
        raw.append(session_id, "user", words(rng))
        raw.append(session_id, "assistant", words(rng))

    results = []
    warmup = max(2, repeat // 10)
    cases: tuple[tuple[str, Callable[[], Any], Callable[[], Any]], ...] = (
        (TURN, ours_turn, raw_turn),
        (GET, ours_get, raw_get),
    )
    for op, ours, base in cases:
        timings = interleave({"ours": ours, "raw": base}, repeat, round_size=3, warmup=warmup)
        context = memory.get(session_id)
        tokens = sum(m.token_count or 0 for m in context)
        if tokens > TOKEN_LIMIT or not context:
            raise RuntimeError(f"{session_id}: context of {tokens} tokens, budget {TOKEN_LIMIT}")
        result = Result(
            backend,
            size,
            op,
            summarize(timings["ours"]),
            summarize(timings["raw"]),
            seen["window"],
        )
        results.append(result)
        log(
            f"{backend} N={size} {op}: ours {fmt_ms(result.ours.median_ms)} ms, raw "
            f"{fmt_ms(result.raw.median_ms)} ms "
            f"({fmt_ratio(result.ours.median_ms, result.raw.median_ms)}), "
            f"{result.window} messages in context"
        )
    return results


def run_backend(backend: Backend, sizes: Sequence[int], repeat: int) -> tuple[list[Result], str]:
    rng = random.Random(20240601)
    results: list[Result] = []
    with ExitStack() as stack:
        store = SQLStore(backend.url_for("ours"), table_name=unique_name("bench_agent"))
        stack.callback(store.close)
        store.create_schema()
        stack.callback(store.drop_schema)
        raw = RawTurns(backend.url_for("raw"), unique_name("bench_agent_raw"))
        stack.callback(raw.drop)
        version = raw.db.server_version()
        memory = AgentMemory(store, token_limit=TOKEN_LIMIT)
        for size in sizes:
            started = time.perf_counter()
            results += bench_size(memory, raw, backend.name, size, repeat, rng)
            log(f"{backend.name} N={size}: {time.perf_counter() - started:.1f} s")
    return results, version


def render(
    results: Sequence[Result], repeat: int, versions: Sequence[str], skipped: Sequence[str]
) -> str:
    """The markdown report, with each size's median against the smallest size's."""
    smallest = {
        (r.backend, r.op): r.ours.median_ms
        for r in sorted(results, key=lambda r: -r.size)  # the last write wins: smallest N
    }
    rows = [
        [
            r.backend,
            f"{r.size:,}",
            r.op,
            f"{fmt_ms(r.ours.median_ms)} / {fmt_ms(r.ours.p95_ms)}",
            f"{fmt_ms(r.raw.median_ms)} / {fmt_ms(r.raw.p95_ms)}",
            fmt_ratio(r.ours.median_ms, r.raw.median_ms),
            fmt_ratio(r.ours.median_ms, smallest[(r.backend, r.op)]),
            str(r.window),
        ]
        for r in sorted(results, key=lambda r: (BACKENDS.index(r.backend), OPS.index(r.op), r.size))
    ]
    table = markdown_table(
        [
            "backend",
            "N",
            "op",
            "ours median / p95 ms",
            "raw median / p95 ms",
            "vs raw",
            "vs smallest N",
            "context msgs",
        ],
        rows,
    )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# AgentMemory per-turn cost vs history size",
        "",
        f"`{command_line()}` ({when}; {repeat} timed calls per system and cell, systems "
        f"alternating in rounds of 3; budget {TOKEN_LIMIT:,} tokens, Trim overflow)",
        "",
        environment_line(versions),
        "",
        table,
        "",
        "N: messages in the session before timing (the active window holds about "
        f"{TOKEN_LIMIT:,} tokens, the rest archived). vs raw: ours median / raw median. "
        "vs smallest N: ours median / ours median at the smallest N (flat is 1.0x; the "
        "target is within 1.3x at 2,000 vs 100). Raw: SELECT the newest active rows + "
        "INSERT + INSERT, each committed, on one open connection. See benchmarks/README.md.",
    ]
    lines += [f"Skipped {s}." for s in skipped]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return bench_parser(
        "bench_agent", __doc__, backends=BACKENDS, sizes=SIZES, repeat=REPEAT, out=DEFAULT_OUT
    ).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else REPEAT)
    if repeat < 1 or any(n < 1 for n in sizes):
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
            backend_results, version = run_backend(backend, sizes, repeat)
            results += backend_results
            versions.append(version)
    report = render(results, repeat, versions, skipped)
    print(report)
    if out is not None:
        log(f"wrote {write_report(out, report)}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
