"""The overflow strategies (Trim, Summarize, FlushToLongTerm) and message groups, in detail."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from hr_scenario import (
    SESSION,
    FakeSummarizer,
    RecordingBlock,
    replay,
    request_parts,
    tool_turn,
)
from mssql_memory import (
    SUMMARY_PREFIX,
    AgentMemory,
    BlockError,
    FlushToLongTerm,
    InMemoryStore,
    Message,
    ModelError,
    OverflowStrategy,
    Summarize,
    ToolCall,
    Trim,
    default_token_counter,
    group_messages,
)
from mssql_memory.groups import sanitize_window, start_on_user

COUNTER = default_token_counter()


def new_store() -> InMemoryStore:
    return InMemoryStore(max_messages_per_session=None, keep_history=True)


def cost(messages: Sequence[Message]) -> int:
    return sum(COUNTER.count_message(m) for m in messages)


def statuses(memory: AgentMemory) -> list[str]:
    return [m.status for m in memory.history(SESSION)]


def plain_turns(n: int) -> list[Message]:
    out = []
    for i in range(n):
        out.append(Message("user", f"Question {i} about the travel policy?"))
        out.append(Message("assistant", f"Answer {i}: book through the travel portal."))
    return out


# -- constructors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Trim(trim_count=0),
        lambda: Trim(trim_count=-2),
        lambda: Trim(trim_count=True),
        lambda: Trim(trim_count=2.5),
        lambda: Summarize(FakeSummarizer(), prompt="  "),
        lambda: Summarize(FakeSummarizer(), keep_recent=-1),
        lambda: Summarize(FakeSummarizer(), max_summary_tokens=0),
        lambda: Summarize(FakeSummarizer(), timeout=0),
        lambda: Summarize(FakeSummarizer(), on_error="ignore"),
        lambda: FlushToLongTerm([]),
        lambda: FlushToLongTerm([RecordingBlock("a"), RecordingBlock("a")]),
        lambda: FlushToLongTerm([RecordingBlock()], max_stm_token_ratio=0),
        lambda: FlushToLongTerm([RecordingBlock()], max_stm_token_ratio=1.5),
        lambda: FlushToLongTerm([RecordingBlock()], max_stm_token_ratio=0.5, target_ratio=0.5),
        lambda: FlushToLongTerm([RecordingBlock()], on_error="ignore"),
    ],
)
def test_strategy_arguments_are_validated(make: Any) -> None:
    """Out-of-range or ill-typed strategy settings raise ValueError at construction."""
    with pytest.raises(ValueError):
        make()


def test_strategies_are_keyword_only_and_typed() -> None:
    """Strategy settings are keyword-only; models, strategies and blocks are type-checked."""
    with pytest.raises(TypeError):
        Trim(3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Summarize(FakeSummarizer(), "prompt")  # type: ignore[misc]
    with pytest.raises(TypeError):
        Summarize("gpt-4o")
    with pytest.raises(TypeError):
        AgentMemory(token_limit=100, overflow="trim")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AgentMemory(token_limit=100, blocks=[object()])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        AgentMemory(
            token_limit=1000,
            blocks=[RecordingBlock("facts")],
            overflow=FlushToLongTerm([RecordingBlock("facts")]),
        )
    block = RecordingBlock("facts")
    memory = AgentMemory(token_limit=1000, blocks=[block], overflow=FlushToLongTerm([block]))
    assert memory.blocks == [block]
    assert isinstance(AgentMemory(token_limit=100).overflow, Trim)


# -- Trim -------------------------------------------------------------------------------------


def test_trim_evicts_just_enough_oldest_messages() -> None:
    """Trim(headroom=0) archives the oldest messages until the window fits, opening on a user."""
    messages = plain_turns(5)
    budget = cost(messages[2:])  # the first turn must go, nothing more
    memory = AgentMemory(new_store(), token_limit=budget, overflow=Trim(headroom=0))
    memory.add(SESSION, messages)
    assert statuses(memory) == ["archived"] * 2 + ["active"] * 8
    assert memory.get(SESSION)[0].content == "Question 1 about the travel policy?"


def test_default_trim_leaves_headroom_so_the_next_turn_needs_no_overflow() -> None:
    """Default Trim goes 10% below the budget: the next small turn is added without a trim."""
    messages = plain_turns(10)
    budget = cost(messages[2:])
    events: list[Any] = []
    memory = AgentMemory(new_store(), token_limit=budget, on_event=events.append)
    memory.add(SESSION, messages)
    window = [m for m in memory.store.get_window(SESSION)]
    assert sum(m.token_count for m in window) <= 0.9 * budget
    assert window[0].role == "user" and len(events) == 1
    memory.add(SESSION, [Message("user", "ok?"), Message("assistant", "yes")])
    assert len(events) == 1  # fitted into the headroom
    with pytest.raises(ValueError):
        Trim(headroom=1.0)


def test_trim_count_evicts_that_many_rounded_up_to_whole_groups() -> None:
    """Trim(trim_count=n) archives at least n messages per overflow, never half a group."""
    messages = [Message("user", "Look up my leave."), *tool_turn(1, calls=2)[1:], *plain_turns(3)]
    memory = AgentMemory(new_store(), token_limit=cost(messages) - 1, overflow=Trim(trim_count=2))
    memory.add(SESSION, messages)
    # user (1) + the tool group (3 messages) + the answer, then the window opens on a user
    assert statuses(memory) == ["archived"] * 5 + ["active"] * 6
    first = memory.get(SESSION)[0]
    assert first.role == "user" and first.content.startswith("Question 0")


# -- Summarize ----------------------------------------------------------------------------


def test_summarize_keeps_the_newest_turns_and_sends_the_prompt() -> None:
    """The request is [prompt, transcript]; the newest keep_recent messages stay verbatim."""
    model = FakeSummarizer()
    prompt = "Summarize for an HR assistant."
    strategy = Summarize(model, prompt=prompt, keep_recent=4, max_summary_tokens=40)
    memory = AgentMemory(new_store(), token_limit=10_000, overflow=strategy)
    messages = plain_turns(5)
    memory.add(SESSION, messages)
    assert memory.compact(SESSION) is False and model.calls == []
    memory.token_limit = cost(messages) - 1
    assert memory.compact(SESSION) is True
    (request,) = model.calls
    assert [m.role for m in request] == ["system", "user"]
    assert request[0].content == prompt
    previous, transcript = request_parts(request)
    assert previous == ""
    assert transcript.splitlines() == [f"{m.role}: {m.content}" for m in messages[:6]]
    window = memory.store.get_window(SESSION)
    assert [m.id for m in window] == [m.id for m in messages[6:]]


def test_summarize_transcript_renders_tool_calls_and_results() -> None:
    """Evicted tool calls and results reach the summarizer as readable transcript lines."""
    model = FakeSummarizer()
    memory = AgentMemory(new_store(), token_limit=10_000, overflow=Summarize(model, keep_recent=2))
    memory.add(SESSION, tool_turn(1, calls=2) + plain_turns(2))
    memory.token_limit = cost(plain_turns(2)) + 60
    assert memory.compact(SESSION)
    _, transcript = request_parts(model.calls[0])
    lines = transcript.splitlines()
    assert lines[1].startswith('assistant: [called lookup_leave({"employee":"sarah","n":0})')
    assert lines[2] == "tool: [result of lookup_leave] result 1.0: 12 days"


def test_summarize_reaches_back_to_the_user_message_of_a_cut_turn() -> None:
    """When keep_recent cuts a turn, the window reaches back to its user message if it fits."""
    model = FakeSummarizer()
    strategy = Summarize(model, keep_recent=3, max_summary_tokens=40)
    memory = AgentMemory(new_store(), token_limit=10_000, overflow=strategy)
    turn = tool_turn(5, calls=2)  # user, call(2), result, result, answer
    memory.add(SESSION, plain_turns(4) + turn)
    memory.token_limit = cost(turn) + 45  # the whole turn fits next to the summary
    assert memory.compact(SESSION)
    window = memory.store.get_window(SESSION)
    assert [m.id for m in window] == [m.id for m in turn]
    assert memory.get(SESSION)[1].role == "user"


def test_summary_is_capped_at_max_summary_tokens() -> None:
    """A long-winded model's summary is cut to max_summary_tokens and keeps its prefix."""
    memory = AgentMemory(
        new_store(),
        token_limit=400,
        overflow=Summarize(FakeSummarizer(verbose=True), keep_recent=2, max_summary_tokens=50),
    )
    replay(memory)
    summary = memory.store.get_session(SESSION).summary
    assert summary is not None and summary.content.startswith(SUMMARY_PREFIX)
    assert summary.token_count <= 50
    assert summary.token_count == COUNTER.count_message(Message("system", summary.content))


@pytest.mark.parametrize("reply", ["", "   ", None, 42])
def test_summarize_rejects_an_empty_reply(reply: Any) -> None:
    """A model that returns no text is a ModelError and nothing is evicted."""
    memory = AgentMemory(new_store(), token_limit=100, overflow=Summarize(lambda request: reply))
    with pytest.raises(ModelError):
        memory.add(SESSION, plain_turns(4))
    assert statuses(memory) == ["active"] * 8
    assert memory.store.get_session(SESSION).summary is None


async def test_summarize_accepts_plain_and_async_functions() -> None:
    """A plain function works with add; an async function works with aadd."""

    def plain(request: Sequence[Message]) -> str:
        return "plain summary"

    async def coroutine(request: Sequence[Message]) -> str:
        return "async summary"

    memory = AgentMemory(new_store(), token_limit=100, overflow=Summarize(plain, keep_recent=2))
    memory.add(SESSION, plain_turns(4))
    assert memory.store.get_session(SESSION).summary.content == SUMMARY_PREFIX + "plain summary"
    memory = AgentMemory(new_store(), token_limit=100, overflow=Summarize(coroutine, keep_recent=2))
    await memory.aadd(SESSION, plain_turns(4))
    assert memory.store.get_session(SESSION).summary.content == SUMMARY_PREFIX + "async summary"


# -- FlushToLongTerm -----------------------------------------------------------------------


def test_flush_triggers_at_the_ratio_and_evicts_to_the_target() -> None:
    """Flush runs only above max_stm_token_ratio, and the block gets exactly what left."""
    block = RecordingBlock()
    messages = plain_turns(6)
    budget = 300
    strategy = FlushToLongTerm([block], max_stm_token_ratio=0.5, target_ratio=0.2)
    memory = AgentMemory(new_store(), token_limit=budget, overflow=strategy)
    assert memory.blocks == [block]
    window_budget = budget - memory.memory_token_limit
    added: list[Message] = []
    for message in messages:
        before = cost(added)
        memory.add(SESSION, message)
        added.append(message)
        if before + cost([message]) <= 0.5 * window_budget:
            assert block.updates == []
    assert block.updates, "the window passed the ratio, a flush must have run"
    state = memory.store.get_session(SESSION)
    assert state.active_tokens <= 0.5 * window_budget
    archived = [m.id for m in memory.history(SESSION) if m.status == "archived"]
    assert [m.id for m in block.received] == archived
    assert state.block_marks == {block.name: block.received[-1].seq}


def test_flush_keep_mode_logs_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    """on_error='keep': a failing block logs, keeps the messages, and a later flush retries."""
    block = RecordingBlock(fail_times=1)
    memory = AgentMemory(
        new_store(), token_limit=300, overflow=FlushToLongTerm([block], on_error="keep")
    )
    with caplog.at_level(logging.WARNING, logger="mssql_memory"):
        replay(memory, count=8)
    assert block.failures == 1
    assert any("messages stay in the window" in r.getMessage() for r in caplog.records)
    assert block.received, "a later overflow retried the block"
    archived = [m.id for m in memory.history(SESSION) if m.status == "archived"]
    assert [m.id for m in block.received] == archived


def test_flush_raise_mode_raises_block_error() -> None:
    """on_error="raise" (default): a failing block surfaces as BlockError, nothing is archived."""
    memory = AgentMemory(
        new_store(), token_limit=300, overflow=FlushToLongTerm([RecordingBlock(fail_times=99)])
    )
    with pytest.raises(BlockError) as info:
        replay(memory)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert set(statuses(memory)) == {"active"}


def test_custom_strategy_subclass() -> None:
    """A subclass of OverflowStrategy plugs in: its select decides what leaves."""

    class KeepLast(OverflowStrategy):
        name = "keep-last"

        def select(self, groups: Any, ctx: Any) -> list[Any]:
            return list(groups[:-1])

    memory = AgentMemory(new_store(), token_limit=100, overflow=KeepLast())
    memory.add(SESSION, plain_turns(4))
    assert statuses(memory) == ["archived"] * 7 + ["active"]


# -- groups ----------------------------------------------------------------------------------


def test_group_messages_keeps_calls_with_their_results() -> None:
    """A call and its parallel results are one group; orphans and half-answered calls marked."""
    call = Message("assistant", "", tool_calls=(ToolCall("a", "f", {}), ToolCall("b", "f", {})))
    results = [Message("tool", "B", tool_call_id="b"), Message("tool", "A", tool_call_id="a")]
    orphan = Message("tool", "?", tool_call_id="zzz")
    half = Message("assistant", "", tool_calls=(ToolCall("c", "f", {}), ToolCall("d", "f", {})))
    half_result = Message("tool", "C", tool_call_id="c")
    user = Message("user", "hi")
    groups = group_messages([user, call, *results, orphan, half, half_result, user])
    assert [len(g.messages) for g in groups] == [1, 3, 1, 2, 1]
    assert [g.complete for g in groups] == [True, True, False, False, True]
    assert groups[2].is_orphan and not groups[3].is_orphan
    kept = sanitize_window(groups)
    assert [g.messages for g in kept] == [
        groups[0].messages,
        groups[1].messages,
        groups[4].messages,
    ]
    assert start_on_user(groups[1:]) == groups[4:]
    assert start_on_user(groups[1:3]) == groups[1:3]  # no user to open on: unchanged
