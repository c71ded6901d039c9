"""The LangChain adapter's cost per chat turn, over the core and against LangChain's own history.

    python -m benchmarks.bench_langchain [--backends sqlite] [--sizes 100,2000]
        [--repeat 60] [--out benchmarks/results/langchain.md] [--no-peer] [--quick]

A turn is what ``RunnableWithMessageHistory`` does around a model call: read
the context, append the user message, append the assistant message. Three
systems run it on sessions pre-filled with N messages, 4,000-token budget:

- core: ``AgentMemory.get`` + ``add(user)`` + ``add(assistant)`` with neutral messages;
- adapter: ``MSSQLChatMessageHistory.messages`` + ``add_messages([HumanMessage])`` +
  ``add_messages([AIMessage])`` over the same kind of AgentMemory;
- peer: langchain-community's ``SQLChatMessageHistory`` (``messages`` +
  ``add_messages`` x 2) with ``trim_messages`` to 4,000 tokens, counted with the
  same tiktoken counter. It re-reads and re-counts the whole history every turn.

Also timed alone: reading the context (core ``get`` vs adapter ``messages``),
where the adapter's extra work is (conversion to LangChain messages and one
small read for a tool call still waiting for its results).
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, trim_messages
from mssql_memory import AgentMemory, Message, SQLStore
from mssql_memory.tokens import default_token_counter
from sqlalchemy import create_engine, inspect, text

from langchain_mssql_memory import MSSQLChatMessageHistory

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
DEFAULT_OUT = Path(__file__).parent / "results" / "langchain.md"
TURN = "turn (read + 2 appends)"
READ = "read context"
OPS = (TURN, READ)


@dataclass(frozen=True)
class Result:
    backend: str
    size: int
    op: str
    stats: dict[str, Stats]
    context: dict[str, int]


class Systems:
    """The three systems on one backend, each with its own tables."""

    def __init__(self, backend: Backend, stack: ExitStack, peer: bool) -> None:
        self.counter = default_token_counter()
        store = SQLStore(backend.url_for("ours"), table_name=unique_name("bench_lc"))
        stack.callback(store.close)
        store.create_schema()
        stack.callback(store.drop_schema)
        self.memory = AgentMemory(store, token_limit=TOKEN_LIMIT)
        self.peer_table = unique_name("bench_lc_peer") if peer else None
        self.peer_engine = create_engine(backend.url_for("peer")) if peer else None
        if self.peer_engine is not None:
            stack.callback(self.peer_engine.dispose)
            stack.callback(self._drop_peer)

    def _drop_peer(self) -> None:
        assert self.peer_engine is not None
        with self.peer_engine.begin() as conn:
            if inspect(conn).has_table(self.peer_table):
                conn.execute(text(f"DROP TABLE {self.peer_table}"))

    def peer_history(self, session_id: str) -> Any:
        with warnings.catch_warnings():  # langchain-community announces its own sunset
            warnings.simplefilter("ignore", DeprecationWarning)
            from langchain_community.chat_message_histories import SQLChatMessageHistory

        return SQLChatMessageHistory(
            session_id, connection=self.peer_engine, table_name=self.peer_table
        )

    def count_tokens(self, messages: Sequence[BaseMessage]) -> int:
        counter = self.counter
        return sum(3 + counter.count_text(m.type) + counter.count_text(m.text) for m in messages)


def prefill(systems: Systems, size: int, rng: random.Random) -> tuple[str, str, str]:
    """One session of ``size`` messages per system (same text lengths, batches of BATCH)."""
    core, adapter, peer = (f"{name}-{size}" for name in ("core", "adapter", "peer"))
    history = MSSQLChatMessageHistory(adapter, memory=systems.memory)
    peer_history = systems.peer_history(peer) if systems.peer_engine is not None else None
    for start in range(0, size, BATCH):
        texts = [words(rng) for _ in range(min(BATCH, size - start))]
        roles = ["user" if (start + i) % 2 == 0 else "assistant" for i in range(len(texts))]
        systems.memory.add(core, [Message(r, t) for r, t in zip(roles, texts, strict=True)])
        lc = [
            HumanMessage(t) if r == "user" else AIMessage(t)
            for r, t in zip(roles, texts, strict=True)
        ]
        history.add_messages(lc)
        if peer_history is not None:
            peer_history.add_messages(lc)
    return core, adapter, peer


def bench_size(systems: Systems, size: int, repeat: int, rng: random.Random) -> list[Result]:
    core_sid, adapter_sid, peer_sid = prefill(systems, size, rng)
    memory = systems.memory
    history = MSSQLChatMessageHistory(adapter_sid, memory=memory)
    peer = systems.peer_history(peer_sid) if systems.peer_engine is not None else None
    seen: dict[str, int] = {}

    def core_read() -> list[Message]:
        return memory.get(core_sid)

    def core_turn() -> None:
        seen["core"] = len(core_read())
        memory.add(core_sid, Message("user", words(rng)))
        memory.add(core_sid, Message("assistant", words(rng)))

    def adapter_read() -> list[BaseMessage]:
        return history.messages

    def adapter_turn() -> None:
        seen["adapter"] = len(adapter_read())
        history.add_messages([HumanMessage(words(rng))])
        history.add_messages([AIMessage(words(rng))])

    def peer_read() -> list[BaseMessage]:
        assert peer is not None
        return trim_messages(
            peer.messages,
            max_tokens=TOKEN_LIMIT,
            token_counter=systems.count_tokens,
            strategy="last",
            start_on="human",
        )

    def peer_turn() -> None:
        assert peer is not None
        seen["peer"] = len(peer_read())
        peer.add_messages([HumanMessage(words(rng))])
        peer.add_messages([AIMessage(words(rng))])

    turns: dict[str, Callable[[], Any]] = {"core": core_turn, "adapter": adapter_turn}
    reads: dict[str, Callable[[], Any]] = {"core": core_read, "adapter": adapter_read}
    if peer is not None:
        turns["peer"] = peer_turn
        reads["peer"] = peer_read
    warmup = max(2, repeat // 10)
    results = []
    for op, systems_ in ((TURN, turns), (READ, reads)):
        timings = interleave(systems_, repeat, round_size=3, warmup=warmup)
        results.append(
            Result(
                "",
                size,
                op,
                {name: summarize(t) for name, t in timings.items()},
                dict(seen),
            )
        )
    if len(history.messages) != len(memory.get(adapter_sid)):
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


def render(results: Sequence[Result], repeat: int, versions: Sequence[str]) -> str:
    peer = any("peer" in r.stats for r in results)
    headers = ["backend", "N", "op", "core ms", "adapter ms", "adapter / core"]
    if peer:
        headers += ["peer ms", "peer / core", "peer / adapter"]
    rows = []
    for r in results:
        core, adapter = r.stats["core"], r.stats["adapter"]
        row = [
            r.backend,
            f"{r.size:,}",
            r.op,
            f"{fmt_ms(core.median_ms)} / {fmt_ms(core.p95_ms)}",
            f"{fmt_ms(adapter.median_ms)} / {fmt_ms(adapter.p95_ms)}",
            fmt_ratio(adapter.median_ms, core.median_ms),
        ]
        if peer:
            p = r.stats["peer"]
            row += [
                f"{fmt_ms(p.median_ms)} / {fmt_ms(p.p95_ms)}",
                fmt_ratio(p.median_ms, core.median_ms),
                fmt_ratio(p.median_ms, adapter.median_ms),
            ]
        rows.append(row)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    context = "; ".join(
        f"{r.backend} N={r.size}: "
        + ", ".join(f"{name} {count}" for name, count in r.context.items())
        for r in results
        if r.op == TURN
    )
    lines = [
        "# LangChain adapter: cost per turn over the core, and LangChain's SQLChatMessageHistory",
        "",
        f"`{command_line()}` ({when}; {repeat} timed calls per system and cell, median / p95)",
        "",
        environment_line(versions),
        "",
        markdown_table(headers, rows),
        "",
        f"N: messages in the session before timing; budget {TOKEN_LIMIT} tokens. A turn: read "
        "the context, append the user message, append the assistant message (two "
        "transactions; RunnableWithMessageHistory writes both in one). Peer: "
        "SQLChatMessageHistory.messages + trim_messages (tiktoken) + 2 add_messages. "
        "The adapter's extra read work: converting each context message to LangChain's "
        "(pydantic validation); the newest messages, searched for a tool call still waiting "
        "for its results, come from the same read. Messages in the context at the last turn: "
        f"{context}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = bench_parser(
        "bench_langchain", __doc__, backends=["sqlite"], sizes=SIZES, repeat=REPEAT, out=DEFAULT_OUT
    )
    p.add_argument("--no-peer", action="store_true", help="skip SQLChatMessageHistory")
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
