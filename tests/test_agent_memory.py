"""AgentMemory end to end: the seed's HR scenario, budgets, tool-call integrity,
observability, system messages, deletion and the async API, on every store backend."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import backend_params
from hr_scenario import (
    FIRST_KEPT,
    KEPT_MESSAGES,
    OVERFLOW_AT,
    SESSION,
    SUMMARIZE_WINDOW,
    SYSTEM_PROMPT,
    TURNS,
    USER,
    FakeSummarizer,
    RecordingBlock,
    areplay,
    flush_memory,
    hr_messages,
    replay,
    request_parts,
    summarize_memory,
    system_tokens,
    tool_turn,
)
from mssql_memory import (
    CONTEXT_WINDOWS,
    MEMORY_PREAMBLE,
    SUMMARY_PREFIX,
    AgentMemory,
    BudgetError,
    FlushToLongTerm,
    InMemoryStore,
    Message,
    OverflowEvent,
    Summarize,
    Trim,
    default_token_counter,
    group_messages,
)

COUNTER = default_token_counter()
HR_BACKENDS = backend_params(("memory", "sqlite", "postgresql", "mariadb", "mssql"))
SEED_WINDOW = [text for turn in TURNS for text in turn][OVERFLOW_AT - KEPT_MESSAGES : OVERFLOW_AT]


def tokens(message: Message) -> int:
    return (
        message.token_count if message.token_count is not None else COUNTER.count_message(message)
    )


def context_tokens(context: list[Message]) -> int:
    return sum(tokens(m) for m in context)


def turns_of(context: list[Message]) -> list[Message]:
    """The conversation part of a context (system messages aside)."""
    return [m for m in context if m.role != "system"]


def assert_tool_integrity(context: list[Message]) -> None:
    """No orphaned tool result, no tool call without all its results, no tool result first."""
    turns = turns_of(context)
    assert not turns or turns[0].role != "tool"
    pending: set[str] = set()
    for m in turns:
        if m.role == "tool":
            assert m.tool_call_id in pending, f"orphaned tool result {m.tool_call_id}"
            pending.discard(m.tool_call_id)
        else:
            assert not pending, f"tool calls without results: {pending}"
            pending = {c.id for c in m.tool_calls}
    assert not pending, f"tool calls without results: {pending}"


def assert_opens_on_user_when_possible(memory: AgentMemory, context: list[Message]) -> None:
    """The first turn is a user message, unless the window holds none before it that fits."""
    turns = turns_of(context)
    if not turns or turns[0].role == "user":
        return
    window = memory.store.get_window(SESSION)
    first = [m.id for m in window].index(turns[0].id)
    users = [i for i, m in enumerate(window[:first]) if m.role == "user"]
    if users:
        extra = sum(tokens(m) for m in window[users[-1] : first])
        assert context_tokens(context) + extra > memory.token_limit


# -- the HR scenario of seed 003 -------------------------------------------------------


@pytest.fixture(params=HR_BACKENDS)
def hr_store(request: pytest.FixtureRequest, make_store: Any) -> Any:
    """A fresh store on each backend the HR scenario runs on."""
    return make_store(request.param)


def test_hr_summarize_matches_the_seed(hr_store: Any) -> None:
    """Seed 4.1: [system, summary, 7 turns from "What if my manager..."]; older ones summarized."""
    model = FakeSummarizer()
    events: list[OverflowEvent] = []
    memory = summarize_memory(hr_store, model)
    memory.on_event = events.append

    replay(memory, count=OVERFLOW_AT - 1)  # sets the system prompt first
    assert events == [] and model.calls == []
    memory.add(SESSION, hr_messages()[OVERFLOW_AT - 1])
    assert len(events) == 1 and events[0].strategy == "summarize"

    context = memory.get(SESSION)
    assert [m.role for m in context[:2]] == ["system", "system"]
    assert context[0].content == SYSTEM_PROMPT
    assert context[1].content.startswith(SUMMARY_PREFIX.strip())
    assert "Sarah from Marketing team inquired about remote work policy." in context[1].content
    assert [m.content for m in context[2:]] == SEED_WINDOW
    assert context[2].content == FIRST_KEPT and context[2].role == "user"
    assert [m for m in context if m.content.startswith(SUMMARY_PREFIX)] == [context[1]]
    assert context_tokens(context) <= memory.token_limit

    # the model saw exactly the evicted turns, and nothing was summarized before
    (request,) = model.calls
    previous, transcript = request_parts(request)
    assert previous == ""
    evicted = hr_messages()[: OVERFLOW_AT - KEPT_MESSAGES]
    assert transcript.splitlines() == [f"{m.role}: {m.content}" for m in evicted]

    history = memory.history(SESSION)
    assert [m.content for m in history] == [m.content for m in hr_messages()[:OVERFLOW_AT]]
    assert [m.status for m in history] == ["summarized"] * 6 + ["active"] * KEPT_MESSAGES


def test_hr_summary_rolls_forward(hr_store: Any) -> None:
    """Later summaries roll the previous one in; the context holds exactly one, after system."""
    model = FakeSummarizer()
    memory = summarize_memory(hr_store, model)
    replay(memory)
    for i in range(6):
        memory.add(
            SESSION,
            [
                Message("user", f"Question {i}: how long is parental leave, in weeks?"),
                Message("assistant", f"Answer {i}: parental leave lasts 16 weeks, fully paid."),
            ],
        )
        context = memory.get(SESSION)
        summaries = [m for m in context if m.content.startswith(SUMMARY_PREFIX)]
        assert len(summaries) == 1 and context.index(summaries[0]) == 1
        assert "Sarah from Marketing" in summaries[0].content
        assert "2+ years" in summaries[0].content
        assert context_tokens(context) <= memory.token_limit
    assert len(model.calls) >= 2
    previous, _ = request_parts(model.calls[1])
    assert previous.startswith("Sarah from Marketing team")
    statuses = [m.status for m in memory.history(SESSION)]
    assert "archived" not in statuses
    assert statuses.index("active") == statuses.count("summarized")


@pytest.mark.parametrize(
    ("trim_count", "first_kept"),
    [(None, "What are the eligibility criteria?"), (6, FIRST_KEPT)],
)
def test_hr_trim_evicts_the_oldest_groups(
    hr_store: Any, trim_count: int | None, first_kept: str
) -> None:
    """Trim archives the oldest turns: just enough, or trim_count at a time (the seed window)."""
    limit = SUMMARIZE_WINDOW + system_tokens(AgentMemory(token_limit=10))
    memory = AgentMemory(hr_store, token_limit=limit, overflow=Trim(trim_count=trim_count))
    replay(memory, count=OVERFLOW_AT)
    context = memory.get(SESSION)
    assert context[0].content == SYSTEM_PROMPT
    assert context[1].content == first_kept and context[1].role == "user"
    assert not any(m.content.startswith(SUMMARY_PREFIX) for m in context)
    evicted = 2 if trim_count is None else trim_count
    history = memory.history(SESSION)
    assert [m.status for m in history] == ["archived"] * evicted + ["active"] * (
        OVERFLOW_AT - evicted
    )
    assert [m.content for m in turns_of(context)] == [m.content for m in history[evicted:]]
    assert context_tokens(context) <= limit


def test_hr_flush_hands_evicted_turns_to_the_block(hr_store: Any) -> None:
    """Seed 4.2: evicted turns reach the block once, in order, then are archived."""
    block = RecordingBlock("extractive_memory")
    memory = flush_memory(hr_store, [block])
    replay(memory, count=OVERFLOW_AT - 1)
    assert block.updates == []
    memory.add(SESSION, hr_messages()[OVERFLOW_AT - 1])

    evicted = hr_messages()[: OVERFLOW_AT - KEPT_MESSAGES]
    assert len(block.updates) == 1
    assert [m.content for m in block.received] == [m.content for m in evicted]
    assert [m.seq for m in block.received] == list(range(1, len(evicted) + 1))
    history = memory.history(SESSION)
    assert [m.status for m in history] == ["archived"] * 6 + ["active"] * KEPT_MESSAGES

    context = memory.get(SESSION)
    assert context[0].content == SYSTEM_PROMPT
    assert context[1].role == "system" and context[1].content.startswith(MEMORY_PREAMBLE)
    assert "<extractive_memory>" in context[1].content
    assert "Sarah from Marketing team" in context[1].content
    assert [m.content for m in context[2:]] == SEED_WINDOW
    assert context_tokens(context) <= memory.token_limit

    # the rest of the conversation and more: every message reaches the block at most once
    memory.add(SESSION, hr_messages()[OVERFLOW_AT:])
    for i in range(8):
        memory.add(SESSION, [Message("user", f"More {i} " * 20), Message("assistant", "ok " * 30)])
    seqs = [m.seq for m in block.received]
    assert len(block.updates) > 1
    assert seqs == list(range(1, len(seqs) + 1))
    archived = [m.seq for m in memory.history(SESSION) if m.status == "archived"]
    assert archived == seqs


# -- budgets ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:tiktoken encoding:RuntimeWarning")
def test_explicit_token_limit_is_used_as_is() -> None:
    """token_limit wins over a model's context window and is validated."""
    assert AgentMemory(token_limit=1234).token_limit == 1234
    assert AgentMemory(token_limit=1234, model="gpt-4o").token_limit == 1234
    for bad in (0, -5, True, 12.5):
        with pytest.raises(ValueError):
            AgentMemory(token_limit=bad)


@pytest.mark.filterwarnings("ignore:tiktoken encoding:RuntimeWarning")
def test_token_limit_derived_from_the_model() -> None:
    """Without token_limit: the model's context window minus system, tools and response reserves."""
    assert CONTEXT_WINDOWS["gpt-4o"] == 128_000
    assert AgentMemory(model="gpt-4o").token_limit == 128_000 - 1024 - 4096
    memory = AgentMemory(
        model="openai/gpt-4o-mini", reserve_system=2000, reserve_tools=500, reserve_response=1000
    )
    assert memory.token_limit == 128_000 - 3500
    assert AgentMemory(model="gpt-4").token_limit == 8192 - 1024 - 4096


@pytest.mark.filterwarnings("ignore:tiktoken encoding:RuntimeWarning")
def test_unknown_model_without_token_limit_is_a_budget_error() -> None:
    """An unknown model, no model at all, or reserves that fill the window: BudgetError."""
    with pytest.raises(BudgetError, match="token_limit"):
        AgentMemory(model="my-private-llm")
    with pytest.raises(BudgetError):
        AgentMemory()
    with pytest.raises(BudgetError):
        AgentMemory(model="gpt-4", reserve_response=8000)
    with pytest.raises(ValueError):
        AgentMemory(model="gpt-4o", reserve_tools=-1)


@pytest.mark.parametrize("backend", backend_params(("memory", "sqlite")))
def test_context_within_budget_with_every_part(make_store: Any, backend: str) -> None:
    """System, long-term memory, summary and window fit the budget together, in that order."""
    block = RecordingBlock("facts", max_tokens=60)
    block.updates.append(hr_messages()[:6])
    memory = AgentMemory(
        make_store(backend),
        token_limit=330,
        overflow=Summarize(FakeSummarizer(), keep_recent=4, max_summary_tokens=100),
        blocks=[block],
    )
    memory.set_system_message(SESSION, SYSTEM_PROMPT)
    for message in hr_messages():
        memory.add(SESSION, message)
        assert context_tokens(memory.get(SESSION)) <= memory.token_limit
    context = memory.get(SESSION)
    assert context[0].content == SYSTEM_PROMPT
    assert context[1].content.startswith(MEMORY_PREAMBLE)
    assert context[2].content.startswith(SUMMARY_PREFIX)
    assert turns_of(context)[0].role == "user"
    assert context_tokens(context) <= memory.token_limit


@pytest.mark.parametrize("backend", backend_params(("memory", "sqlite")))
def test_oversized_message_is_cut_in_the_context_only(make_store: Any, backend: str) -> None:
    """A message above the whole budget is cut in the context only; storage keeps it whole."""
    memory = AgentMemory(make_store(backend), token_limit=60)
    memory.set_system_message(SESSION, "Be brief.")
    text = " ".join(f"word{i}" for i in range(400))
    memory.add(SESSION, Message("user", text))
    context = memory.get(SESSION)
    assert [m.role for m in context] == ["system", "user"]
    cut = context[1]
    assert cut.content.endswith("[truncated]")
    assert text.startswith(cut.content.removesuffix(" [truncated]"))
    assert len(cut.content) < len(text)
    assert cut.token_count == COUNTER.count_message(cut)
    assert context_tokens(context) <= 60
    (stored,) = memory.history(SESSION)
    assert stored.content == text


@pytest.mark.parametrize("backend", backend_params(("memory", "sqlite", "postgresql")))
async def test_get_with_window_is_one_snapshot(make_store: Any, backend: str) -> None:
    """The context equals get()'s and the window is the whole active window it came from,
    the originals of edited (cut) messages included."""
    memory = AgentMemory(make_store(backend), token_limit=60)
    text = " ".join(f"word{i}" for i in range(400))
    memory.add(
        SESSION, [Message("user", "hello"), Message("assistant", "hi"), Message("user", text)]
    )
    context, window = memory.get_with_window(SESSION)
    assert context == memory.get(SESSION)
    assert window == memory.store.get_window(SESSION)
    assert window[-1].content == text  # Trim evicted the rest: the window is past the budget
    assert context[-1].content.endswith("[truncated]") and context[-1].seq == window[-1].seq
    assert await memory.aget_with_window(SESSION) == (context, window)
    assert memory.get_with_window("no-such-session") == ([], [])


def test_long_summary_and_grown_system_message_still_fit() -> None:
    """A wordy summarizer plus a system message grown afterwards: the context still fits."""
    store = InMemoryStore(max_messages_per_session=None, keep_history=True)
    memory = AgentMemory(
        store,
        token_limit=300,
        overflow=Summarize(lambda request: "Sarah asked about policies. " * 200),
    )
    replay(memory)
    memory.set_system_message(SESSION, "Follow the HR handbook. " * 29)
    stored = store.get_session(SESSION).summary
    context = memory.get(SESSION)
    assert context_tokens(context) <= 300
    assert context[0].content.startswith("Follow the HR handbook.")
    assert context[1].content.startswith(SUMMARY_PREFIX)
    assert store.get_session(SESSION).summary == stored  # storage keeps it whole


def test_summary_is_capped_to_half_the_window_room() -> None:
    """A max_summary_tokens larger than the budget allows is capped, so recent turns still fit."""
    store = InMemoryStore(max_messages_per_session=None, keep_history=True)
    memory = AgentMemory(
        store, token_limit=300, overflow=Summarize(lambda r: "Sarah asked things. " * 300)
    )
    replay(memory)
    summary = store.get_session(SESSION).summary
    assert summary is not None and summary.token_count <= 150
    assert any(m.role == "user" for m in memory.get(SESSION))


def test_oversized_system_message_is_refused() -> None:
    """A system message too large to leave room for a turn is refused; nothing is stored."""
    memory = AgentMemory(token_limit=300)
    with pytest.raises(BudgetError):
        memory.set_system_message(SESSION, "Follow the HR handbook. " * 100)
    assert memory.get_system_message(SESSION) is None


def test_context_fits_after_the_system_message_grows(make_store: Any) -> None:
    """Setting a longer system message after a summary exists still gives a context in budget."""
    memory = summarize_memory(make_store("memory"), FakeSummarizer())
    replay(memory)
    memory.set_system_message(SESSION, "Follow the HR handbook. " * 35)
    context = memory.get(SESSION)
    assert context[0].content.startswith("Follow the HR handbook.")
    assert context_tokens(context) <= memory.token_limit


# -- tool-call integrity --------------------------------------------------------------


def tool_conversation() -> list[list[Message]]:
    """Batches as an agent adds them: questions answered with single and parallel tool calls,
    results added together or one by one."""
    batches: list[list[Message]] = []
    for i in range(8):
        turn = tool_turn(i, calls=1 + i % 3)
        if i % 2:
            batches.append(turn)
        else:
            batches.extend([m] for m in turn)
    return batches


@pytest.mark.parametrize("backend", backend_params(("memory", "sqlite")))
@pytest.mark.parametrize("kind", ["trim", "trim_count", "summarize", "flush"])
def test_no_strategy_splits_a_tool_call_group(make_store: Any, backend: str, kind: str) -> None:
    """No strategy splits a tool group; the context has no orphan or half-answered call."""
    block = RecordingBlock()
    strategy = {
        "trim": lambda: Trim(),
        "trim_count": lambda: Trim(trim_count=3),
        "summarize": lambda: Summarize(FakeSummarizer(), keep_recent=3, max_summary_tokens=40),
        "flush": lambda: FlushToLongTerm([block]),
    }[kind]()
    memory = AgentMemory(make_store(backend), token_limit=180, overflow=strategy)
    evictions = 0
    for batch in tool_conversation():
        memory.add(SESSION, batch)
        history = memory.history(SESSION)
        for group in group_messages(history):
            assert len({m.status for m in group.messages}) == 1, group
        context = memory.get(SESSION)
        assert_tool_integrity(context)
        assert context_tokens(context) <= memory.token_limit
        assert_opens_on_user_when_possible(memory, context)
        evictions = sum(m.status != "active" for m in history)
    assert evictions > 0
    if kind == "flush":
        taken = block.received
        for group in group_messages(taken):
            assert group.complete and not group.is_orphan


def test_context_skips_incomplete_and_orphaned_tool_messages(make_store: Any) -> None:
    """Unanswered calls and orphaned results stay in history but never reach the context."""
    store = make_store("memory")
    memory = AgentMemory(store, token_limit=2000)
    abandoned = tool_turn(1, calls=2, answer=False)[:3]  # user, call(2), only one result
    orphan = Message("tool", "stray result", tool_call_id="nobody")
    later = tool_turn(2, calls=2)
    memory.add(SESSION, [*abandoned, Message("user", "Never mind."), orphan, *later])
    context = memory.get(SESSION)
    assert_tool_integrity(context)
    ids = {m.id for m in context}
    assert not ids & {m.id for m in abandoned[1:]}
    assert orphan.id not in ids
    assert {m.id for m in later} <= ids
    assert len(memory.history(SESSION)) == len(abandoned) + 2 + len(later)


def test_window_opening_on_a_tool_group_is_moved_to_a_user_message(make_store: Any) -> None:
    """A context that would open on a tool call group opens on the next user message."""
    memory = AgentMemory(make_store("memory"), token_limit=10_000)
    first, second = tool_turn(1, calls=2), tool_turn(2, calls=1)
    memory.add(SESSION, [*first, *second])
    # a budget that fits the second turn and the tail of the first turn, not its question
    tail = sum(COUNTER.count_message(m) for m in first[1:])
    need = sum(COUNTER.count_message(m) for m in second)
    memory.token_limit = need + tail
    context = memory.get(SESSION)
    assert [m.id for m in context] == [m.id for m in second]


# -- observability ----------------------------------------------------------------------


def test_overflow_event_reports_what_happened(
    make_store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Each overflow emits one OverflowEvent (callback and 'mssql_memory' log) with its figures."""
    events: list[OverflowEvent] = []
    memory = summarize_memory(make_store("sqlite"), FakeSummarizer(delay=0.01))
    memory.on_event = events.append
    with caplog.at_level(logging.INFO, logger="mssql_memory"):
        replay(memory, count=OVERFLOW_AT)
    (event,) = events
    assert event.session_id == SESSION
    assert event.strategy == "summarize"
    assert event.messages_evicted == event.groups_evicted == 6
    assert event.tokens_before == sum(COUNTER.count_message(m) for m in hr_messages()[:13])
    assert event.tokens_before > event.tokens_after
    assert event.tokens_after == memory.store.get_session(SESSION).active_tokens
    assert event.model_latency_ms > 0
    assert 0 < event.summary_tokens <= 120 and event.applied
    records = [r for r in caplog.records if hasattr(r, "overflow_event")]
    assert [r.overflow_event for r in records] == [event]
    assert records[0].name == "mssql_memory" and records[0].levelno == logging.INFO


def test_trim_event_and_broken_callback(make_store: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Trim reports no model time; a callback that raises is logged and does not break add."""
    calls: list[OverflowEvent] = []

    def broken(event: OverflowEvent) -> None:
        calls.append(event)
        raise RuntimeError("callback bug")

    memory = AgentMemory(make_store("memory"), token_limit=200, on_event=broken)
    with caplog.at_level(logging.INFO, logger="mssql_memory"):
        replay(memory)
    assert calls and all(e.strategy == "trim" and e.model_latency_ms == 0 for e in calls)
    assert all(e.tokens_before > e.tokens_after for e in calls)
    assert any("on_event callback failed" in r.getMessage() for r in caplog.records)
    assert len(memory.history(SESSION)) == 14


# -- system messages, sessions, users --------------------------------------------------


@pytest.mark.parametrize("backend", backend_params(("memory", "sqlite", "postgresql", "mariadb")))
def test_system_message_per_session_never_evicted(make_store: Any, backend: str) -> None:
    """set/get/clear per session; it stays first in every context and is never evicted."""
    memory = AgentMemory(make_store(backend), token_limit=150)
    assert memory.get_system_message(SESSION) is None
    memory.set_system_message(SESSION, SYSTEM_PROMPT)
    memory.set_system_message("other", Message("system", "You are the payroll assistant."))
    replay(memory)
    for session, text in ((SESSION, SYSTEM_PROMPT), ("other", "You are the payroll assistant.")):
        assert memory.get_system_message(session).content == text
    context = memory.get(SESSION)
    assert context[0].content == SYSTEM_PROMPT
    assert any(m.status == "archived" for m in memory.history(SESSION))
    assert all(m.role != "system" for m in memory.history(SESSION))
    assert memory.get("other") == [memory.get_system_message("other")]
    memory.clear_system_message(SESSION)
    assert memory.get_system_message(SESSION) is None
    assert memory.get(SESSION)[0].role == "user"
    assert memory.get_system_message("other") is not None
    with pytest.raises(TypeError):
        memory.set_system_message(SESSION, 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", backend_params(("memory", "sqlite", "postgresql", "mariadb")))
def test_delete_session_and_user_remove_only_theirs(make_store: Any, backend: str) -> None:
    """delete / delete_user remove that session's / user's data and nobody else's."""
    block = RecordingBlock("facts")
    memory = AgentMemory(
        make_store(backend),
        token_limit=200,
        overflow=Summarize(FakeSummarizer(), keep_recent=2, max_summary_tokens=60),
        blocks=[block],
    )
    for session, user in (("s1", USER), ("s2", USER), ("s3", "bob"), ("s4", None)):
        memory.set_system_message(session, SYSTEM_PROMPT)
        replay(memory, session, count=8, user_id=user)
    assert memory.store.get_session("s1").summary is not None

    assert memory.delete("s1") is True
    assert memory.history("s1") == [] and memory.get("s1") == []
    assert memory.get_system_message("s1") is None
    assert memory.store.get_session("s1").summary is None
    assert memory.delete("s1") is False

    assert memory.delete_user(USER) == 1  # s2 (s1 is gone already)
    assert block.deleted_users == [USER]
    assert memory.history("s2") == [] and memory.get_system_message("s2") is None
    for survivor in ("s3", "s4"):
        assert len(memory.history(survivor)) == 8
        assert memory.get_system_message(survivor).content == SYSTEM_PROMPT
    assert memory.store.get_session("s3").user_id == "bob"
    with pytest.raises(ValueError):
        memory.add("s3", Message("user", "hi"), user_id=USER)


# -- async --------------------------------------------------------------------------------


def _digest(context: list[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in context]


async def _async_run(memory: AgentMemory) -> tuple[list[Any], list[Any], list[Any]]:
    await memory.aset_system_message(SESSION, SYSTEM_PROMPT)
    contexts = []
    for message in hr_messages():
        await memory.aadd(SESSION, message, user_id=USER)
        contexts.append(_digest(await memory.aget(SESSION)))
    history = [(m.seq, m.status, m.content) for m in await memory.ahistory(SESSION)]
    return contexts, history, [await memory.acompact(SESSION)]


def _sync_run(memory: AgentMemory) -> tuple[list[Any], list[Any], list[Any]]:
    memory.set_system_message(SESSION, SYSTEM_PROMPT)
    contexts = []
    for message in hr_messages():
        memory.add(SESSION, message, user_id=USER)
        contexts.append(_digest(memory.get(SESSION)))
    history = [(m.seq, m.status, m.content) for m in memory.history(SESSION)]
    return contexts, history, [memory.compact(SESSION)]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
@pytest.mark.parametrize("kind", ["summarize", "flush"])
async def test_async_api_matches_sync(
    amake_store: Any, make_store: Any, backend: str, kind: str
) -> None:
    """aadd/aget/acompact on an async-driver store give exactly what add/get/compact give."""

    def memory_on(store: Any) -> tuple[AgentMemory, RecordingBlock]:
        block = RecordingBlock("facts")
        if kind == "summarize":
            return summarize_memory(store, FakeSummarizer()), block
        return flush_memory(store, [block]), block

    async_store = amake_store(backend)
    assert async_store.engines.async_engine is not None
    amemory, ablock = memory_on(async_store)
    smemory, sblock = memory_on(make_store(backend))
    assert await _async_run(amemory) == _sync_run(smemory)
    assert [m.content for m in ablock.received] == [m.content for m in sblock.received]
    assert (await amemory.aget_system_message(SESSION)).content == SYSTEM_PROMPT
    await amemory.aclear_system_message(SESSION)
    assert await amemory.aget_system_message(SESSION) is None
    assert await amemory.adelete_user(USER) == 1
    assert await amemory.ahistory(SESSION) == []
    assert await amemory.adelete(SESSION) is False


async def test_async_path_on_the_memory_store_gives_the_seed_window() -> None:
    """aadd/aget on the in-memory store give the seed window; an idle acompact changes nothing."""
    store = InMemoryStore(max_messages_per_session=None, keep_history=True)
    memory = summarize_memory(store, FakeSummarizer())
    await areplay(memory, count=OVERFLOW_AT)
    version = store.get_session(SESSION).version
    assert await memory.acompact(SESSION) is False
    assert store.get_session(SESSION).version == version
    context = await memory.aget(SESSION)
    assert context[1].content.startswith(SUMMARY_PREFIX)
    assert [m.content for m in context[2:]] == SEED_WINDOW


def test_bench_agent_quick_run(tmp_path: Any) -> None:
    """`python -m benchmarks.bench_agent --quick` reports every cell (no timing asserted)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "agent.md"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.bench_agent", "--quick"),
            *("--backends", "sqlite", "--sizes", "20,60", "--repeat", "3", "--out", str(out)),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    for size in ("20", "60"):
        for op in ("turn (get + 2 adds)", "get (context)"):
            assert any(f"| {size} " in line and op in line for line in report.splitlines()), (
                size,
                op,
            )
