"""Property tests: random conversations with tool calls under random budgets and strategies.

Whatever the conversation, the budget and the overflow strategy, ``get`` stays
within ``token_limit``, never hands a model an orphaned tool result or a tool
call without its results, and the full history keeps every message, once, in order.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import backend_params
from hr_scenario import FakeSummarizer, RecordingBlock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mssql_memory import (
    SUMMARY_PREFIX,
    AgentMemory,
    FlushToLongTerm,
    Message,
    Summarize,
    ToolCall,
    Trim,
    default_token_counter,
    group_messages,
)

COUNTER = default_token_counter()
WORDS = ["policy", "leave", "remote", "Sarah", "HR-101", "approval", "days", "équipe", "日本", "ok"]

PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def texts(draw: Any, max_words: int = 40) -> str:
    n = draw(st.integers(min_value=0, max_value=max_words))
    return " ".join(draw(st.sampled_from(WORDS)) for _ in range(n))


@st.composite
def conversations(draw: Any) -> list[list[Message]]:
    """A conversation as the batches an agent adds: plain turns and tool-call groups
    (parallel calls, results added together or one by one)."""
    batches: list[list[Message]] = []
    for turn in range(draw(st.integers(min_value=1, max_value=14))):
        kind = draw(st.sampled_from(["user", "assistant", "tools", "user+assistant"]))
        if kind == "user":
            batches.append([Message("user", draw(texts()))])
        elif kind == "assistant":
            batches.append([Message("assistant", draw(texts()))])
        elif kind == "user+assistant":
            batches.append([Message("user", draw(texts())), Message("assistant", draw(texts()))])
        else:
            calls = draw(st.integers(min_value=1, max_value=3))
            ids = [f"c{turn}_{k}" for k in range(calls)]
            call = Message(
                "assistant",
                draw(texts(8)),
                tool_calls=tuple(ToolCall(cid, "lookup", {"q": draw(texts(6))}) for cid in ids),
            )
            order = draw(st.permutations(ids))
            results = [Message("tool", draw(texts(20)), tool_call_id=cid) for cid in order]
            if draw(st.booleans()):
                batches.append([call, *results])
            else:
                batches.append([call])
                batches.extend([r] for r in results)
    return batches


@st.composite
def strategies(draw: Any) -> Any:
    kind = draw(st.sampled_from(["trim", "summarize", "flush"]))
    if kind == "trim":
        return Trim(trim_count=draw(st.none() | st.integers(min_value=1, max_value=5)))
    if kind == "summarize":
        return Summarize(
            FakeSummarizer(verbose=draw(st.booleans())),
            keep_recent=draw(st.integers(min_value=0, max_value=8)),
            max_summary_tokens=draw(st.integers(min_value=12, max_value=200)),
        )
    return FlushToLongTerm(
        [RecordingBlock()],
        max_stm_token_ratio=draw(st.floats(min_value=0.3, max_value=1.0)),
    )


def tokens(message: Message) -> int:
    return (
        message.token_count if message.token_count is not None else COUNTER.count_message(message)
    )


def assert_well_formed(context: list[Message], token_limit: int) -> None:
    """The context invariants every model call relies on."""
    assert sum(tokens(m) for m in context) <= token_limit
    turns = [m for m in context if m.role != "system"]
    assert not turns or turns[0].role != "tool", "context starts with a tool result"
    answered: set[str] = set()
    open_calls: set[str] = set()
    for m in turns:
        if m.role == "tool":
            assert m.tool_call_id in open_calls, f"orphaned tool result {m.tool_call_id}"
            open_calls.discard(m.tool_call_id)
            answered.add(m.tool_call_id)
        else:
            assert not open_calls, f"tool calls without results: {open_calls}"
            if m.role == "assistant":
                open_calls = {c.id for c in m.tool_calls}
    # a call still open at the end must not be in the context either
    assert not open_calls, f"tool calls without results: {open_calls}"
    summaries = [m for m in context if m.content.startswith(SUMMARY_PREFIX)]
    assert len(summaries) <= 1
    assert all(m.role == "system" for m in summaries)


def assert_groups_whole(history: list[Message]) -> None:
    """No overflow split a group: a tool call and its results share one status."""
    for group in group_messages(history):
        assert len({m.status for m in group.messages}) == 1, group


def run_conversation(
    store: Any,
    batches: list[list[Message]],
    strategy: Any,
    token_limit: int,
    system: bool,
    **kwargs: Any,
) -> None:
    memory = AgentMemory(store, token_limit=token_limit, overflow=strategy, **kwargs)
    session = f"p-{uuid.uuid4().hex[:12]}"
    if system:
        memory.set_system_message(session, "You are a helpful HR assistant.")
    added: list[Message] = []
    for batch in batches:
        memory.add(session, batch)
        added.extend(batch)
        assert_well_formed(memory.get(session), memory.token_limit)
        assert_groups_whole(memory.history(session))
    history = memory.history(session)
    assert [m.id for m in history] == [m.id for m in added]
    assert [m.content for m in history] == [m.content for m in added]
    seqs = [m.seq for m in history]
    assert seqs == sorted(set(seqs)), seqs
    window = store.get_window(session)
    assert [m.id for m in window] == [m.id for m in history if m.status == "active"]
    # evicted messages are a prefix of the history: the window is its newest part
    statuses = [m.status for m in history]
    assert statuses == sorted(statuses, key=lambda s: s == "active")


@pytest.mark.parametrize("backend", backend_params(("memory", "sqlite")))
@PROPERTY_SETTINGS
@given(
    batches=conversations(),
    strategy=strategies(),
    token_limit=st.integers(min_value=60, max_value=600),
    system=st.booleans(),
)
def test_context_within_budget_and_history_complete(
    make_store: Any,
    backend: str,
    batches: list[list[Message]],
    strategy: Any,
    token_limit: int,
    system: bool,
) -> None:
    """Any conversation/budget/strategy: context fits and is well formed; history complete."""
    run_conversation(make_store(backend), batches, strategy, token_limit, system)


@PROPERTY_SETTINGS
@given(
    batches=conversations(),
    strategy=strategies(),
    token_limit=st.integers(min_value=120, max_value=600),
    placement=st.sampled_from(["system", "user"]),
)
def test_context_within_budget_with_memory_blocks(
    make_store: Any,
    batches: list[list[Message]],
    strategy: Any,
    token_limit: int,
    placement: str,
) -> None:
    """With long-term memory rendered into the context (either placement), the budget holds."""
    block = RecordingBlock("facts", max_tokens=40)
    block.updates.append([Message("user", "Sarah works in Marketing, HR-101, 3 days, 2 years")])
    run_conversation(
        make_store("memory"),
        batches,
        strategy,
        token_limit,
        True,
        blocks=[block],
        memory_placement=placement,
    )
