"""Ending and deleting sessions: flush() sends the tail to long-term memory, delete() forgets it."""

from __future__ import annotations

from typing import Any

import pytest
from mssql_memory import (
    AgentMemory,
    FlushToLongTerm,
    HashingEmbedder,
    LongTermStore,
    Message,
    Summarize,
    Trim,
    VectorMemory,
)
from mssql_memory.demo import HR_TURNS, ExtractiveSummarizer

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


def _play(memory: AgentMemory, session: str, user: str, turns=HR_TURNS[:3]) -> None:
    for question, answer in turns:
        memory.add(session, [Message("user", question), Message("assistant", answer)], user_id=user)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flush_sends_the_session_tail_to_long_term_memory(make_store: Any, backend: str) -> None:
    """Turns still in the window when a session ends are recalled by the user's next session."""
    store = make_store(backend)
    lts = LongTermStore(store, table_prefix=f"{store.table_name}_ltm")
    try:
        vector = VectorMemory(HashingEmbedder(), store=lts, min_score=0.0)
        memory = AgentMemory(store, token_limit=4000, overflow=FlushToLongTerm([vector]))
        _play(memory, "s1", "sarah")
        assert memory.compact("s1") is False  # within budget: nothing flushed yet
        assert memory.get("s2-probe", query="Form HR-101") == []
        assert memory.flush("s1") is True
        assert store.get_session("s1").active_count == 0
        assert len(store.get_history("s1")) == 6  # archived, not lost
        memory.add("s2", Message("user", "How do I apply, which form?"), user_id="sarah")
        context = memory.get("s2")
        assert "HR-101" in context[0].content and "<vector_memory>" in context[0].content
        memory.add("b1", Message("user", "How do I apply, which form?"), user_id="bob")
        assert all("HR-101" not in m.content for m in memory.get("b1"))
        assert memory.flush("s1") is False  # nothing left to flush
    finally:
        lts.drop_schema()


def test_flush_with_summarize_folds_the_tail_into_the_summary(make_store: Any) -> None:
    """flush() with Summarize leaves only the summary; the messages are marked summarized."""
    store = make_store("sqlite")
    memory = AgentMemory(store, token_limit=4000, overflow=Summarize(ExtractiveSummarizer()))
    _play(memory, "s1", "sarah")
    assert memory.flush("s1") is True
    assert [m.status for m in store.get_history("s1")] == ["summarized"] * 6
    context = memory.get("s1")
    assert len(context) == 1 and context[0].content.startswith("CONVERSATION SUMMARY:")


async def test_aflush_with_trim_archives_the_window(make_store: Any) -> None:
    """aflush() with Trim archives the whole window."""
    store = make_store("sqlite")
    memory = AgentMemory(store, token_limit=4000, overflow=Trim())
    _play(memory, "s1", "sarah")
    assert await memory.aflush("s1") is True
    assert (await memory.aget("s1")) == []
    assert len(await memory.ahistory("s1")) == 6


@pytest.mark.parametrize("backend", BACKENDS)
async def test_delete_session_forgets_its_vectors(make_store: Any, backend: str) -> None:
    """Deleting a session removes its turns' vectors; the user's other sessions keep theirs."""
    store = make_store(backend)
    lts = LongTermStore(store, table_prefix=f"{store.table_name}_ltm")
    try:
        vector = VectorMemory(HashingEmbedder(), store=lts, min_score=0.0)
        memory = AgentMemory(store, token_limit=4000, overflow=FlushToLongTerm([vector]))
        _play(memory, "gone", "sarah", HR_TURNS[:2])
        _play(memory, "kept", "sarah", HR_TURNS[4:6])
        memory.flush("gone")
        await memory.aflush("kept")
        sessions = {r.session_id for r in lts.load_vectors("vector_memory", "sarah", "x")}
        assert sessions == {"gone", "kept"}
        assert memory.delete("gone") is True
        left = {r.session_id for r in lts.load_vectors("vector_memory", "sarah", "x")}
        assert left == {"kept"}
        memory.add("next", Message("user", "What are the eligibility criteria?"), user_id="sarah")
        assert all("6 months" not in m.content for m in memory.get("next"))
        assert await memory.adelete("kept") is True
        assert lts.load_vectors("vector_memory", "sarah", "x") == []
    finally:
        lts.drop_schema()
