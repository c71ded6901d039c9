"""Shared pieces of the reliability suite.

- scale: the fast subset (default, CI) or the full run (``RELIABILITY_FULL=1``);
- figures: what each test measured, printed at the end of the run;
- the integrity checker: reads a session's rows straight from the tables and checks
  every invariant a crash, a restart or a failing model must not break;
- slow and deterministic fakes (summarizer, fact extractor, embedder) that report
  their calls, and the writer process the kill -9 tests start and kill.

The module is imported by the writer processes' fork server, so it loads the
heavy modules (and the tokenizer) once, up front.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hr_scenario import FakeSummarizer, covered_count
from mssql_memory import (
    AgentMemory,
    ExtractiveMemory,
    FlushToLongTerm,
    HashingEmbedder,
    LongTermStore,
    Message,
    SQLStore,
    Summarize,
    ToolCall,
    VectorMemory,
    default_token_counter,
    group_messages,
)
from sqlalchemy import func, select

default_token_counter()  # load the encoding before the fork server forks writers

# -- scale and figures ---------------------------------------------------------------------

FULL = os.environ.get("RELIABILITY_FULL", "").strip().lower() not in ("", "0", "false", "no")

#: Lines printed under "reliability figures" at the end of the run (see conftest).
FIGURES: list[str] = []


def scaled(fast: int, full: int) -> int:
    """``full`` in the full run (``RELIABILITY_FULL=1``), else ``fast``."""
    return full if FULL else fast


def record(test: str, text: str) -> None:
    """Report a measured figure (shown in the terminal summary)."""
    FIGURES.append(f"{test}: {text}")


# -- table contents ------------------------------------------------------------------------


def table_rows(engine: Any, tables: Iterable[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables``, ordered by all columns: a snapshot to compare."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in tables:
            rows = conn.execute(select(table)).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def store_tables(store: SQLStore) -> list[Any]:
    return [store.tables.messages, store.tables.sessions, store.tables.summaries]


def count(engine: Any, table: Any, where: Any = None) -> int:
    q = select(func.count()).select_from(table)
    if where is not None:
        q = q.where(where)
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def same_message(stored: Message, given: Message) -> None:
    """``stored`` (read back) is ``given`` verbatim, as JSON sees it (tuples become lists)."""

    def normal(value: Any) -> Any:
        return json.loads(json.dumps(value))

    assert stored.id == given.id
    assert stored.role == given.role
    assert stored.content == given.content, "content not stored verbatim"
    assert stored.name == given.name
    assert stored.tool_call_id == given.tool_call_id
    calls = [c.to_dict() for c in given.tool_calls]
    assert [c.to_dict() for c in stored.tool_calls] == normal(calls)
    assert dict(stored.metadata) == normal(dict(given.metadata))
    assert stored.raw == normal(given.raw)
    assert stored.created_at == given.created_at


# -- the integrity checker -----------------------------------------------------------------

REF = re.compile(r"\bref-[a-z0-9]+\b")
EXTRACTIVE, VECTOR = "extractive_memory", "vector_memory"


def check_integrity(
    store: SQLStore,
    session_id: str,
    *,
    ltm: LongTermStore | None = None,
    user_id: str | None = None,
    generic_summary: bool = True,
    skipped_refs: frozenset[str] | set[str] = frozenset(),
) -> dict[str, int]:
    """Check one session's invariants from its rows; return its counts.

    - seqs are 1..N, each message stored once;
    - the session's counters equal the real counts and tokens of its messages;
    - evicted messages are a prefix of the history, and a message group never has
      two statuses (an overflow is applied whole or not at all);
    - every summarized message points at the summary covering it (the first summary
      whose ``through_seq`` reaches it), every summary covers messages, the session's
      summary is the latest, and (``generic_summary``, the fake summarizer's
      ``[covered=N]``) each summary covers exactly the messages summarized up to it;
    - with ``ltm``: a block's mark never exceeds what the block stored, every archived
      message reached both blocks, and the marks cover every archived message
      (``skipped_refs``: messages whose extraction the extractive block skipped, by
      design, after two malformed answers; they count as taken, without facts).
    """
    m, s, su = store.tables.messages, store.tables.sessions, store.tables.summaries
    with store.engines.sync.connect() as conn:
        rows = conn.execute(
            select(m.c.seq, m.c.status, m.c.token_count, m.c.summary_id, m.c.payload)
            .where(m.c.session_id == session_id)
            .order_by(m.c.seq)
        ).all()
        record_row = conn.execute(select(s).where(s.c.session_id == session_id)).first()
        summaries = conn.execute(
            select(su).where(su.c.session_id == session_id).order_by(su.c.id)
        ).all()
    where = f"session {session_id!r}"
    seqs = [r.seq for r in rows]
    assert seqs == list(range(1, len(rows) + 1)), f"{where}: seqs not 1..N: {seqs}"
    ids = [json.loads(r.payload)["id"] for r in rows]
    assert len(set(ids)) == len(ids), f"{where}: a message was stored twice"
    active = [r for r in rows if r.status == "active"]
    if record_row is None:
        assert not rows, f"{where}: messages without a session record"
        return {"messages": 0}
    assert record_row.message_count == len(rows), f"{where}: message_count is off"
    assert record_row.next_seq == len(rows), f"{where}: next_seq is off"
    assert record_row.active_count == len(active), f"{where}: active_count is off"
    assert record_row.active_tokens == sum(r.token_count for r in active), (
        f"{where}: active_tokens is off"
    )

    statuses = [r.status for r in rows]
    first_active = statuses.index("active") if "active" in statuses else len(statuses)
    assert set(statuses[first_active:]) <= {"active"}, (
        f"{where}: evicted messages are not a prefix: {statuses}"
    )
    for group in group_messages(store.get_history(session_id)):
        kinds = {msg.status for msg in group.messages}
        assert len(kinds) == 1, f"{where}: a group was split by an overflow: {group}"

    summarized = [r for r in rows if r.status == "summarized"]
    by_id = {row.id: row for row in summaries}
    assert {r.summary_id for r in summarized} == set(by_id), (
        f"{where}: a summary without its messages, or a summarized message without a summary"
    )
    throughs = [row.through_seq for row in summaries]
    assert throughs == sorted(set(throughs)), f"{where}: summaries out of order: {throughs}"
    for r in summarized:
        covering = min(row.id for row in summaries if row.through_seq >= r.seq)
        assert r.summary_id == covering, f"{where}: message {r.seq} linked to the wrong summary"
    if summaries:
        latest = summaries[-1]
        assert record_row.summary_id == latest.id, f"{where}: the session's summary is stale"
        assert record_row.summary_tokens == latest.token_count
        if generic_summary:
            for row in summaries:
                upto = sum(1 for r in summarized if r.seq <= row.through_seq)
                assert covered_count(row.content) == upto, (
                    f"{where}: summary {row.id} covers {covered_count(row.content)} "
                    f"messages, {upto} were summarized (double or lost summary)"
                )
    else:
        assert record_row.summary_id is None, f"{where}: the session points at no summary"

    stats = {
        "messages": len(rows),
        "active": len(active),
        "archived": statuses.count("archived"),
        "summarized": len(summarized),
        "summaries": len(summaries),
    }
    if ltm is not None:
        stats.update(_check_blocks(ltm, session_id, user_id, rows, record_row, where, skipped_refs))
    return stats


def _check_blocks(
    ltm: LongTermStore,
    session_id: str,
    user_id: str | None,
    rows: Any,
    record_row: Any,
    where: str,
    skipped_refs: frozenset[str] | set[str],
) -> dict[str, int]:
    f, v = ltm.tables.facts, ltm.tables.vectors
    with ltm.engines.sync.connect() as conn:
        facts = conn.execute(
            select(f.c.content, f.c.source_seq).where(
                f.c.block == EXTRACTIVE,
                f.c.scope == (user_id or ""),
                f.c.source_session_id == session_id,
            )
        ).all()
        vectors = conn.execute(
            select(v.c.first_seq, v.c.last_seq).where(
                v.c.block == VECTOR, v.c.session_id == session_id
            )
        ).all()
    marks = json.loads(record_row.block_marks) if record_row.block_marks else {}
    fact_refs = {ref for fact in facts for ref in REF.findall(fact.content)} | set(skipped_refs)
    skipped = [r.seq for r in rows if set(REF.findall(r.payload)) & set(skipped_refs)]
    fact_seq = max([fact.source_seq for fact in facts] + skipped, default=0)
    vector_seqs = {seq for vec in vectors for seq in range(vec.first_seq, vec.last_seq + 1)}
    vector_seq = max((vec.last_seq for vec in vectors), default=0)
    assert marks.get(EXTRACTIVE, 0) <= fact_seq, (
        f"{where}: extractive mark {marks.get(EXTRACTIVE)} beyond the facts stored ({fact_seq})"
    )
    assert marks.get(VECTOR, 0) <= vector_seq, (
        f"{where}: vector mark {marks.get(VECTOR)} beyond the vectors stored ({vector_seq})"
    )
    archived = [r for r in rows if r.status == "archived"]
    for r in archived:
        refs = set(REF.findall(r.payload))
        assert refs <= fact_refs, f"{where}: archived message {r.seq} never reached the facts"
        assert r.seq in vector_seqs, f"{where}: archived message {r.seq} never reached the vectors"
    if archived:
        last = archived[-1].seq
        assert marks.get(EXTRACTIVE, 0) >= last and marks.get(VECTOR, 0) >= last, (
            f"{where}: marks {marks} do not cover the archived messages (through {last})"
        )
    return {"facts": len(facts), "vectors": len(vectors)}


def check_acks(
    history_ids: Sequence[str], tried: Sequence[Sequence[str]], acked: Sequence[Sequence[str]]
) -> int:
    """Check what writers reported against a session's history (ids in seq order).

    Every acknowledged batch is stored; every attempted batch is stored whole or not at
    all; nothing is stored that nobody attempted; the history keeps the attempts' order.
    Returns how many stored batches were never acknowledged (in flight when it failed).
    """
    present = set(history_ids)
    for batch in acked:
        missing = [i for i in batch if i not in present]
        assert not missing, f"acknowledged messages lost: {missing}"
    in_flight = 0
    acked_keys = {tuple(b) for b in acked}
    for batch in tried:
        stored = sum(1 for i in batch if i in present)
        assert stored in (0, len(batch)), f"batch half stored: {batch}"
        if stored and tuple(batch) not in acked_keys:
            in_flight += 1
    attempted = [i for batch in tried for i in batch]
    assert present <= set(attempted), f"phantom messages: {present - set(attempted)}"
    assert [i for i in attempted if i in present] == list(history_ids), "history reordered"
    return in_flight


# -- conversations -----------------------------------------------------------------------


def make_batch(tag: str, index: int, rng: random.Random) -> list[Message]:
    """One add's messages: a turn, a lone user or assistant message, or a tool-call turn.

    Every message (tool calls included) carries a unique ``ref-...`` token, so the
    fact extractor turns each into a fact and the checker can trace it.
    """

    def ref(k: int) -> str:
        return f"ref-{tag}n{index}m{k}"

    def mid(k: int) -> str:
        return f"{tag}-{index}-{k}"

    topic = rng.randint(0, 999)
    kind = rng.random()
    if kind < 0.5:
        return [
            Message("user", f"{ref(0)} question {index} on topic {topic}, please", id=mid(0)),
            Message("assistant", f"{ref(1)} answer {index}: topic {topic} is fine.", id=mid(1)),
        ]
    if kind < 0.68:
        return [Message("user", f"{ref(0)} a follow-up on topic {topic}", id=mid(0))]
    if kind < 0.83:
        return [Message("assistant", f"{ref(0)} more about topic {topic}.", id=mid(0))]
    calls = [
        ToolCall(f"call-{tag}-{index}-{k}", "lookup", {"ref": ref(10 + k), "topic": topic})
        for k in range(rng.randint(1, 2))
    ]
    batch = [
        Message("user", f"{ref(0)} look up topic {topic}", id=mid(0)),
        Message("assistant", "", tool_calls=tuple(calls), id=mid(1)),
    ]
    batch += [
        Message("tool", f"{ref(20 + k)} result", tool_call_id=c.id, name="lookup", id=mid(2 + k))
        for k, c in enumerate(calls)
    ]
    batch.append(Message("assistant", f"{ref(9)} topic {topic} looked up.", id=mid(9)))
    return batch


# -- slow, reporting fakes -----------------------------------------------------------------

Emit = Callable[[str], None]


class _Slow:
    """Reports each call (``emit("M")``) and sleeps up to ``delay`` seconds before it."""

    def __init__(self, emit: Emit | None, delay: float, seed: int) -> None:
        self.emit = emit
        self.delay = delay
        self.rng = random.Random(seed)

    def _pause(self) -> float:
        if self.emit is not None:
            self.emit("M")
        return self.rng.uniform(0.3, 1.0) * self.delay if self.delay else 0.0

    def _before(self) -> None:
        pause = self._pause()
        if pause:
            time.sleep(pause)

    async def _abefore(self) -> None:
        pause = self._pause()
        if pause:
            await asyncio.sleep(pause)


class SlowSummarizer(_Slow):
    """:class:`~hr_scenario.FakeSummarizer` (``[covered=N]``) behind a reported, slow call."""

    def __init__(self, emit: Emit | None = None, delay: float = 0.0, seed: int = 0) -> None:
        super().__init__(emit, delay, seed)
        self.inner = FakeSummarizer()

    def generate(self, messages: Sequence[Message]) -> str:
        self._before()
        return self.inner.generate(messages)

    async def agenerate(self, messages: Sequence[Message]) -> str:
        await self._abefore()
        return self.inner.generate(messages)


def extract_refs(messages: Sequence[Message]) -> str:
    """A deterministic extractor's answer: one fact per ``ref-...`` token in the conversation."""
    conversation = messages[1].content.split("Conversation:", 1)[-1]
    refs = dict.fromkeys(REF.findall(conversation))
    return json.dumps({"facts": [{"fact": f"The user mentioned {r}."} for r in refs]})


class RefExtractor(_Slow):
    """A deterministic fact extraction model (see :func:`extract_refs`), optionally slow."""

    def __init__(self, emit: Emit | None = None, delay: float = 0.0, seed: int = 0) -> None:
        super().__init__(emit, delay, seed)

    def generate(self, messages: Sequence[Message]) -> str:
        self._before()
        return extract_refs(messages)

    async def agenerate(self, messages: Sequence[Message]) -> str:
        await self._abefore()
        return extract_refs(messages)


class SlowEmbedder(_Slow):
    """:class:`~mssql_memory.HashingEmbedder` behind a reported, slow call."""

    def __init__(self, emit: Emit | None = None, delay: float = 0.0, seed: int = 0) -> None:
        super().__init__(emit, delay, seed)
        self.inner = HashingEmbedder(64)
        self.dimension = self.inner.dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self._before()
        return self.inner.embed(texts)

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        await self._abefore()
        return self.inner.embed(texts)


# -- the crash tests' memory and writer process --------------------------------------------

#: token_limit per mode: every few adds overflow (each message is 15-25 tokens).
LIMITS = {"append": 220, "summarize": 260, "flush": 420}


def flush_blocks(ltm: LongTermStore, *, emit: Emit | None = None, delay: float = 0.0):
    """The extractive and vector blocks the flush tests use (deterministic fakes)."""
    return [
        ExtractiveMemory(RefExtractor(emit, delay, 1), store=ltm, max_facts=1_000_000),
        VectorMemory(SlowEmbedder(emit, delay, 2), store=ltm),
    ]


def build_memory(
    mode: str,
    store: SQLStore,
    ltm: LongTermStore | None = None,
    *,
    emit: Emit | None = None,
    delay: float = 0.0,
) -> AgentMemory:
    """The AgentMemory of a crash test: ``append`` (Trim), ``summarize`` or ``flush``."""
    if mode == "append":
        return AgentMemory(store, token_limit=LIMITS[mode])
    if mode == "summarize":
        model = SlowSummarizer(emit, delay, 3)
        strategy: Any = Summarize(model, keep_recent=4, max_summary_tokens=40, timeout=None)
        return AgentMemory(store, token_limit=LIMITS[mode], overflow=strategy)
    if mode == "flush":
        assert ltm is not None
        blocks = flush_blocks(ltm, emit=emit, delay=delay)
        strategy = FlushToLongTerm(blocks, max_stm_token_ratio=0.6)
        return AgentMemory(store, token_limit=LIMITS[mode], overflow=strategy)
    raise ValueError(mode)


def writer_main(
    mode: str,
    url: str,
    table: str,
    ltm_prefix: str,
    session_id: str,
    user_id: str,
    tag: str,
    events: str,
    seed: int,
    delay: float,
) -> None:
    """A writer process: add batches to one session until killed, reporting to ``events``.

    Lines: ``R`` ready; ``T ids`` an add starts; ``A ids`` it returned (acknowledged);
    ``M`` a model or block call starts; ``E ...`` an unexpected error (then exit 2).
    Each line is one ``write`` to an append-only file, so a kill -9 loses none.
    """
    fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def emit(line: str) -> None:
        os.write(fd, f"{line}\n".encode())

    try:
        store = SQLStore(url, table_name=table)
        ltm = LongTermStore(store, table_prefix=ltm_prefix) if mode == "flush" else None
        memory = build_memory(mode, store, ltm, emit=emit, delay=delay)
        store.get_session(session_id)  # connected before reporting ready
        emit("R")
        rng = random.Random(seed)
        deadline = time.monotonic() + 120
        index = 0
        while time.monotonic() < deadline:
            batch = make_batch(tag, index, rng)
            ids = ",".join(msg.id for msg in batch)
            emit(f"T {ids}")
            memory.add(session_id, batch, user_id=user_id)
            emit(f"A {ids}")
            index += 1
        emit("X")
    except BaseException as e:
        emit(f"E {type(e).__name__}: {' '.join(str(e).split())[:500]}")
        os._exit(2)
    os._exit(0)


@dataclass
class Events:
    """A writer's report, parsed."""

    ready: bool = False
    tried: list[list[str]] = field(default_factory=list)
    acked: list[list[str]] = field(default_factory=list)
    model_calls: int = 0
    error: str | None = None
    last: str = ""

    @property
    def phase(self) -> str:
        """Where the writer was when it died: between adds, inside an add (append or
        overflow before any model call), or in an overflow's model/block call or commit."""
        return {"M": "overflow", "T": "add", "A": "idle", "R": "idle"}.get(self.last, self.last)


def read_events(path: str | os.PathLike[str]) -> Events:
    events = Events()
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return events
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        events.last = kind
        if kind == "R":
            events.ready = True
        elif kind == "T":
            events.tried.append(rest.split(","))
        elif kind == "A":
            events.acked.append(rest.split(","))
        elif kind == "M":
            events.model_calls += 1
        elif kind == "E":
            events.error = rest
    return events
