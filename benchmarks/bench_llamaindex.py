"""The LlamaIndex adapter's cost per agent turn, over the core and against LlamaIndex's Memory.

    python -m benchmarks.bench_llamaindex [--backends sqlite] [--sizes 100,2000]
        [--repeat 60] [--out benchmarks/results/llamaindex.md] [--no-peer] [--quick]

A turn is what a LlamaIndex agent does with its ``memory=`` around a model call:
read the context (``aget``), store the user message, store the answer (``aput``
twice). Four systems run it, natively async, on sessions pre-filled with N
messages and a 4,000-token budget:

- core: ``AgentMemory.aget`` + ``aadd(user)`` + ``aadd(assistant)``, neutral messages;
- adapter: ``MSSQLMemory.aget`` + ``aput`` x 2 with ``ChatMessage`` objects, over the
  same kind of AgentMemory (conversion both ways, token counting, raw JSON form);
- li-memory/ours: LlamaIndex's ``Memory`` on ``MSSQLChatStore`` (its own waterfall
  logic, our store);
- li-memory/peer: LlamaIndex's ``Memory`` on its ``SQLAlchemyChatStore`` (SQLite via
  aiosqlite, PostgreSQL via psycopg; none on MariaDB, where its unlengthed
  ``VARCHAR`` key cannot be created).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory import Memory
from llama_index.core.storage.chat_store.sql import SQLAlchemyChatStore
from mssql_memory import AgentMemory, Message, SQLStore
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL

from llamaindex_mssql_memory import MSSQLChatStore, MSSQLMemory

from .common import (
    Backend,
    Stats,
    available_backends,
    bench_parser,
    command_line,
    environment_line,
    fmt_ms,
    fmt_ratio,
    interleave,
    log,
    markdown_table,
    summarize,
    unique_name,
    words,
    workdir,
    write_report,
)

SIZES = (100, 2000)
QUICK_SIZES = (50,)
REPEAT = 60
QUICK_REPEAT = 5
TOKEN_LIMIT = 4000
BATCH = 200
DEFAULT_OUT = Path(__file__).parent / "results" / "llamaindex.md"
TURN = "turn (aget + 2 aput)"
READ = "read context (aget)"
SYSTEMS = ("core", "adapter", "li-memory/ours", "li-memory/peer")
_PEER_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}


@dataclass(frozen=True)
class Result:
    backend: str
    size: int
    op: str
    stats: dict[str, Stats]
    context: dict[str, int]


class Systems:
    """The systems on one backend, each with its own tables, driven from one event loop."""

    def __init__(self, backend: Backend, stack: ExitStack, peer: bool) -> None:
        self.loop = asyncio.new_event_loop()
        stack.callback(self.loop.close)
        self.store = SQLStore(backend.url_for("ours"), table_name=unique_name("bench_li"))
        stack.callback(self.store.drop_schema)
        stack.callback(lambda: self.run(self.store.aclose()))
        self.store.create_schema()
        self.memory = AgentMemory(self.store, token_limit=TOKEN_LIMIT)
        self.chat_store = MSSQLChatStore(self.store)
        self.peer_store: SQLAlchemyChatStore | None = None
        driver = _PEER_DRIVERS.get(backend.url.get_backend_name())
        if peer and driver is not None:
            url: URL = backend.url_for("peer").set(drivername=driver)
            table = unique_name("bench_li_peer")
            self.peer_store = SQLAlchemyChatStore(
                table_name=table, async_database_uri=url.render_as_string(hide_password=False)
            )
            sync_url = backend.url_for("peer")
            stack.callback(lambda: self._drop(sync_url, table))
            stack.callback(lambda: self.run(self._dispose_peer()))

    def run(self, awaitable: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(awaitable)

    async def _dispose_peer(self) -> None:
        engine = self.peer_store._async_engine if self.peer_store is not None else None
        if engine is not None:
            await engine.dispose()

    @staticmethod
    def _drop(url: URL, table: str) -> None:
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                if inspect(conn).has_table(table):
                    conn.execute(text(f"DROP TABLE {table}"))
        finally:
            engine.dispose()

    def li_memory(self, session_id: str, store: Any) -> Memory:
        # Memory's default flush size is 3,000 tokens whatever the limit: scale it as its
        # defaults do (10% of the limit), or each flush would empty most of the window.
        return Memory.from_defaults(
            session_id=session_id,
            chat_store=store,
            token_limit=TOKEN_LIMIT,
            token_flush_size=TOKEN_LIMIT // 10,
        )


async def prefill(systems: Systems, size: int, rng: random.Random) -> dict[str, Any]:
    """One session of ``size`` messages per system (same text lengths, batches of BATCH)."""
    sids = {name: f"{name}-{size}" for name in SYSTEMS}
    adapter = MSSQLMemory.from_defaults(session_id=sids["adapter"], memory=systems.memory)
    li_ours = systems.li_memory(sids["li-memory/ours"], systems.chat_store)
    li_peer = None
    if systems.peer_store is not None:
        li_peer = systems.li_memory(sids["li-memory/peer"], systems.peer_store)
    for start in range(0, size, BATCH):
        texts = [words(rng) for _ in range(min(BATCH, size - start))]
        roles = ["user" if (start + i) % 2 == 0 else "assistant" for i in range(len(texts))]
        await systems.memory.aadd(
            sids["core"], [Message(r, t) for r, t in zip(roles, texts, strict=True)]
        )
        chats = [ChatMessage(role=r, content=t) for r, t in zip(roles, texts, strict=True)]
        await adapter.aput_messages(chats)
        await li_ours.aput_messages(chats)
        if li_peer is not None:
            await li_peer.aput_messages(chats)
    return {"core": sids["core"], "adapter": adapter, "ours": li_ours, "peer": li_peer}


def bench_size(systems: Systems, size: int, repeat: int, rng: random.Random) -> list[Result]:
    made = systems.run(prefill(systems, size, rng))
    memory, core_sid = systems.memory, made["core"]
    seen: dict[str, int] = {}

    async def core_read() -> int:
        return len(await memory.aget(core_sid))

    async def core_turn() -> None:
        seen["core"] = await core_read()
        await memory.aadd(core_sid, Message("user", words(rng)))
        await memory.aadd(core_sid, Message("assistant", words(rng)))

    def li_read(name: str) -> Callable[[], Awaitable[int]]:
        target = made[name]

        async def read() -> int:
            return len(await target.aget())

        return read

    def li_turn(name: str, label: str) -> Callable[[], Awaitable[None]]:
        target, read = made[name], li_read(name)

        async def turn() -> None:
            seen[label] = await read()
            await target.aput(ChatMessage(role="user", content=words(rng)))
            await target.aput(ChatMessage(role="assistant", content=words(rng)))

        return turn

    turns: dict[str, Callable[[], Awaitable[Any]]] = {
        "core": core_turn,
        "adapter": li_turn("adapter", "adapter"),
        "li-memory/ours": li_turn("ours", "li-memory/ours"),
    }
    reads: dict[str, Callable[[], Awaitable[Any]]] = {
        "core": core_read,
        "adapter": li_read("adapter"),
        "li-memory/ours": li_read("ours"),
    }
    if made["peer"] is not None:
        turns["li-memory/peer"] = li_turn("peer", "li-memory/peer")
        reads["li-memory/peer"] = li_read("peer")
    warmup = max(2, repeat // 10)
    results = []
    for op, group in ((TURN, turns), (READ, reads)):
        sync = {name: (lambda fn=fn: systems.run(fn())) for name, fn in group.items()}
        timings = interleave(sync, repeat, round_size=3, warmup=warmup)
        stats = {name: summarize(t) for name, t in timings.items()}
        results.append(Result("", size, op, stats, dict(seen)))
    adapter_context = systems.run(made["adapter"].aget())
    if len(adapter_context) != len(systems.run(memory.aget(made["adapter"].session_id))):
        raise RuntimeError("the adapter's context differs from the core's")
    return results


def run_backend(backend: Backend, sizes: Sequence[int], repeat: int, peer: bool) -> list[Result]:
    rng = random.Random(20240501)
    out: list[Result] = []
    with ExitStack() as stack:
        systems = Systems(backend, stack, peer)
        for size in sizes:
            started = time.perf_counter()
            for r in bench_size(systems, size, repeat, rng):
                out.append(Result(backend.name, r.size, r.op, r.stats, r.context))
                line = ", ".join(f"{name} {fmt_ms(s.median_ms)} ms" for name, s in r.stats.items())
                log(f"{backend.name} N={size} {r.op}: {line}")
            log(f"{backend.name} N={size}: {time.perf_counter() - started:.1f} s")
    return out


def _cell(stats: Stats | None) -> str:
    return "n/a" if stats is None else f"{fmt_ms(stats.median_ms)} / {fmt_ms(stats.p95_ms)}"


def render(results: Sequence[Result], repeat: int, versions: Sequence[str]) -> str:
    headers = [
        "backend",
        "N",
        "op",
        "core ms",
        "adapter ms",
        "adapter / core",
        "li-memory/ours ms",
        "li-memory/peer ms",
        "peer / adapter",
    ]
    rows = []
    for r in results:
        core, adapter = r.stats["core"], r.stats["adapter"]
        peer = r.stats.get("li-memory/peer")
        rows.append(
            [
                r.backend,
                f"{r.size:,}",
                r.op,
                _cell(core),
                _cell(adapter),
                fmt_ratio(adapter.median_ms, core.median_ms),
                _cell(r.stats["li-memory/ours"]),
                _cell(peer),
                "n/a" if peer is None else fmt_ratio(peer.median_ms, adapter.median_ms),
            ]
        )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    context = "; ".join(
        f"{r.backend} N={r.size}: " + ", ".join(f"{k} {v}" for k, v in r.context.items())
        for r in results
        if r.op == TURN
    )
    lines = [
        "# LlamaIndex adapter: cost per agent turn over the core, and LlamaIndex's Memory",
        "",
        f"`{command_line()}` ({when}; {repeat} timed calls per system and cell, median / p95)",
        "",
        environment_line(versions),
        "",
        markdown_table(headers, rows),
        "",
        f"N: messages in the session before timing; budget {TOKEN_LIMIT} tokens. A turn: aget, "
        "then aput(user) and aput(assistant), each its own transaction, all on the async "
        "driver from one event loop. li-memory: llama_index.core.memory.Memory (70% of the "
        "budget for chat history, flushes of 10% of it, waterfall archiving) on MSSQLChatStore "
        "(ours) or SQLAlchemyChatStore (peer). "
        f"Messages in the context at the last turn: {context}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = bench_parser(
        "bench_llamaindex",
        __doc__,
        backends=["sqlite"],
        sizes=SIZES,
        repeat=REPEAT,
        out=DEFAULT_OUT,
    )
    p.add_argument("--no-peer", action="store_true", help="skip SQLAlchemyChatStore")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    repeat = args.repeat or (QUICK_REPEAT if args.quick else REPEAT)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    results: list[Result] = []
    versions: list[str] = []
    with workdir() as directory:
        for backend, version in available_backends(args.backends, directory, log):
            versions.append(version)
            results += run_backend(backend, sizes, repeat, peer=not args.no_peer)
    if not results:
        log("no backend available")
        return 1
    report = render(results, repeat, versions)
    print(report)
    if out is not None:
        log(f"wrote {write_report(out, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
