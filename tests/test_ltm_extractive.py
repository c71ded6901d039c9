"""ExtractiveMemory: facts per user from a (fake) model's JSON, reconciled in SQL."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import datetime

import pytest
from ltm_helpers import RuleExtractor, ScriptedModel, stored, turn
from mssql_memory import (
    AgentMemory,
    BlockError,
    ExtractiveMemory,
    FlushToLongTerm,
    LongTermStore,
    ModelError,
    default_token_counter,
)
from mssql_memory.ltm import content_hash, parse_facts
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select

pytest_plugins = ["ltm_fixtures"]

RULES = [
    (r"my name is (\w+)", "name", r"The user's name is \1."),
    (r"I work in the (\w+) team", "department", r"The user works in the \1 team."),
    (r"I moved to the (\w+) team", "department", r"The user works in the \1 team."),
    (r"my dog is called (\w+)", "dog_name", r"The user's dog is called \1."),
    (r"I prefer (\w+) meetings", "meeting_preference", r"The user prefers \1 meetings."),
]


def fact_rows(lts: LongTermStore) -> int:
    f = lts.tables.facts
    with lts.engines.sync.connect() as conn:
        return conn.execute(select(func.count()).select_from(f)).scalar_one()


def contents(block: ExtractiveMemory, user: str, **kw) -> list[str]:
    return [f.content for f in block.facts(user, **kw)]


def test_facts_are_persisted_per_user(ltm_backend, make_ltm):
    """Each user's facts are stored under that user and read back by a fresh store object."""
    lts = make_ltm(ltm_backend)
    block = ExtractiveMemory(RuleExtractor(RULES), store=lts)
    block.update(
        stored(turn("Hi, my name is Sarah and I work in the Marketing team.", "Hello Sarah!")),
        user_id="sarah",
        session_id="s1",
    )
    block.update(
        stored(turn("my name is Bob, my dog is called Rex.", "Hi Bob.")),
        user_id="bob",
        session_id="s2",
    )
    other = ExtractiveMemory(
        RuleExtractor(RULES), store=make_ltm(ltm_backend, table_prefix=lts.table_prefix)
    )
    assert contents(other, "sarah") == [
        "The user's name is Sarah.",
        "The user works in the Marketing team.",
    ]
    assert contents(other, "bob") == ["The user's name is Bob.", "The user's dog is called Rex."]
    assert other.facts("nobody") == []
    (name,) = [f for f in other.facts("sarah") if f.subject == "name"]
    assert name.scope == "sarah" and name.source_session_id == "s1" and name.valid_to is None


def test_duplicates_add_no_row(ltm_backend, make_ltm):
    """The same facts extracted again (also with other case and spacing) add no row."""
    lts = make_ltm(ltm_backend)
    block = ExtractiveMemory(RuleExtractor(RULES), store=lts)
    messages = stored(turn("my name is Sarah. I work in the Marketing team.", "Noted."))
    block.update(messages, user_id="sarah", session_id="s1")
    assert fact_rows(lts) == 2
    block.update(messages, user_id="sarah", session_id="s1")
    shouting = ScriptedModel(json.dumps({"facts": ["THE USER'S NAME   IS sarah."]}))
    ExtractiveMemory(shouting, store=lts).update(messages, user_id="sarah", session_id="s2")
    assert fact_rows(lts) == 2
    assert content_hash("The user's name is Sarah.") == content_hash(" the USER'S name is  sarah.")


def test_same_subject_supersedes_and_restating_reactivates(ltm_backend, make_ltm):
    """Same subject: old fact kept with valid_to, new one current; restating the old revives it."""
    lts = make_ltm(ltm_backend)
    block = ExtractiveMemory(RuleExtractor(RULES), store=lts)
    block.update(
        stored(turn("my name is Sarah. I work in the Marketing team.", "Hi Sarah.")),
        user_id="sarah",
        session_id="s1",
    )
    block.update(
        stored(turn("News: I moved to the Sales team last week.", "Congratulations!"), 3),
        user_id="sarah",
        session_id="s1",
    )
    assert contents(block, "sarah") == [
        "The user's name is Sarah.",
        "The user works in the Sales team.",
    ]
    everything = {f.content: f for f in block.facts("sarah", include_superseded=True)}
    old = everything["The user works in the Marketing team."]
    assert old.valid_to is not None
    assert everything["The user works in the Sales team."].valid_to is None
    assert fact_rows(lts) == 3

    block.update(
        stored(turn("Actually I work in the Marketing team again.", "Welcome back."), 5),
        user_id="sarah",
        session_id="s2",
    )
    current = {f.content: f for f in block.facts("sarah")}
    assert set(current) == {"The user's name is Sarah.", "The user works in the Marketing team."}
    assert current["The user works in the Marketing team."].id == old.id  # the same row, revived
    superseded = [f for f in block.facts("sarah", include_superseded=True) if f.valid_to]
    assert [f.content for f in superseded] == ["The user works in the Sales team."]
    assert fact_rows(lts) == 3


def test_the_database_rejects_a_duplicate_fact(ltm_backend, make_ltm):
    """The uniqueness constraint (block, scope, fact_key) holds in the database itself."""
    lts = make_ltm(ltm_backend)
    lts.create_schema()
    f = lts.tables.facts
    row = dict(
        block="extractive_memory",
        scope="sarah",
        fact_key=content_hash("x"),
        content="x",
        token_count=1,
        created_at=datetime(2025, 1, 1),
        updated_at=datetime(2025, 1, 1),
    )
    with lts.engines.sync.begin() as conn:
        conn.execute(insert(f).values(row))
    with pytest.raises(sa_exc.IntegrityError), lts.engines.sync.begin() as conn:
        conn.execute(insert(f).values(row))
    assert fact_rows(lts) == 1


def test_concurrent_extraction_of_the_same_facts_creates_no_duplicates(ltm_backend, make_ltm):
    """Two threads extracting the same facts at once leave one row per fact."""
    lts = make_ltm(ltm_backend)
    lts.create_schema()
    messages = stored(
        turn(
            "my name is Sarah, I work in the Marketing team, my dog is called Rex "
            "and I prefer morning meetings.",
            "Noted!",
        )
    )
    for round_ in range(3):
        user = f"sarah{round_}"
        errors = run_together(
            2,
            lambda barrier, user=user: ExtractiveMemory(
                RuleExtractor(RULES, before_answer=barrier.wait),
                store=make_ltm(ltm_backend, table_prefix=lts.table_prefix),
            ).update(messages, user_id=user, session_id="s1"),
        )
        assert errors == []
        facts = lts.facts("extractive_memory", user, valid_only=False)
        assert len(facts) == 4, [f.content for f in facts]
        assert len({f.key for f in facts}) == 4
        assert all(f.valid_to is None for f in facts)


def run_together(n: int, work) -> list[BaseException]:
    """Run ``work(barrier)`` in ``n`` threads sharing a barrier; the exceptions they raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work(barrier)
        except BaseException as e:  # pragma: no cover - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_malformed_output_is_retried_once(make_ltm):
    """A malformed answer is retried once, telling the model why; the retry's facts are kept."""
    model = ScriptedModel("Sure! Here are the facts: name=Sarah", '{"facts": ["Name: Sarah"]}')
    block = ExtractiveMemory(model, store=make_ltm("sqlite"))
    block.update(stored(turn("I'm Sarah", "Hi")), user_id="sarah", session_id="s1")
    assert len(model.calls) == 2
    assert "invalid" in model.calls[1][-1].content
    assert contents(block, "sarah") == ["Name: Sarah"]


def test_malformed_output_twice_is_logged_and_skipped(make_store, make_ltm, caplog):
    """Two malformed answers: a warning, no exception, no facts, and no message lost."""
    sql = make_store("sqlite")
    model = ScriptedModel("not json", '{"facts": "Sarah"}')
    block = ExtractiveMemory(model, store=make_ltm("sqlite", source=sql))
    memory = AgentMemory(
        sql, token_limit=300, memory_token_limit=60, overflow=FlushToLongTerm([block])
    )
    sent = []
    with caplog.at_level(logging.WARNING, logger="mssql_memory.ltm"):
        for i in range(8):
            messages = turn(f"Message {i}: my name is Sarah.", "Reply " * 15, minutes=i)
            sent += messages
            memory.add("s1", messages, user_id="sarah")
    assert model.calls, "the flush never ran"
    assert len(model.calls) % 2 == 0  # every extraction is tried exactly twice
    assert any(
        "extraction" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records
    )
    assert block.facts("sarah") == []
    assert [m.content for m in memory.history("s1")] == [m.content for m in sent]


def test_parse_facts_accepts_the_documented_shapes():
    """Objects, bare strings, a bare list and a code fence are accepted; other shapes are not."""
    fenced = '```json\n{"facts": [{"subject": "Home City", "fact": " Lives in  Lisbon "}]}\n```'
    assert parse_facts(fenced) == [("home_city", "Lives in Lisbon")]
    assert parse_facts('["Likes tea", ""]') == [(None, "Likes tea")]
    assert parse_facts('{"facts": []}') == []
    for bad in ("nope", '{"facts": [1]}', '{"facts": [{"subject": 3, "fact": "x"}]}', "{}"):
        with pytest.raises(ValueError):
            parse_facts(bad)


def test_get_returns_the_most_relevant_facts_within_budget(make_ltm):
    """Over budget, get keeps the facts most relevant to the query; the result fits."""
    counter = default_token_counter()
    facts = [f"The user visited museum number {i} in Paris last spring." for i in range(20)]
    facts.insert(7, "The user's dog is called Rex and is a golden retriever.")
    facts.insert(15, "The user prefers video calls in the morning before ten.")
    model = ScriptedModel(json.dumps({"facts": facts}))
    block = ExtractiveMemory(model, store=make_ltm("sqlite"))
    block.update(stored(turn("...", "...")), user_id="u", session_id="s")
    assert len(block.facts("u")) == 22

    items = block.get(query="What is my dog called?", user_id="u", session_id="s", max_tokens=40)
    assert "The user's dog is called Rex and is a golden retriever." in items
    assert sum(counter.count_text(i) + 2 for i in items) <= 40
    items = block.get(query="When do I like calls?", user_id="u", session_id="s", max_tokens=40)
    assert "The user prefers video calls in the morning before ten." in items
    assert block.get(query="dog", user_id="other", session_id="s", max_tokens=400) == []
    assert block.get(query="dog", user_id=None, session_id="s", max_tokens=400) == []
    everything = block.get(query=None, user_id="u", session_id="s", max_tokens=10_000)
    assert len(everything) == 22


def test_without_query_the_newest_facts_are_kept(make_ltm):
    """Over budget and without a query, the newest facts win."""
    facts = [f"Fact number {i} about the user." for i in range(10)]
    block = ExtractiveMemory(ScriptedModel(json.dumps({"facts": facts})), store=make_ltm("sqlite"))
    block.update(stored(turn("...", "...")), user_id="u", session_id="s")
    items = block.get(query=None, user_id="u", session_id="s", max_tokens=30)
    assert items and items == facts[-len(items) :]


def test_max_facts_expires_the_oldest(make_ltm):
    """Beyond max_facts the oldest current facts expire (kept, with valid_to)."""
    facts = [f"Fact number {i} about the user." for i in range(8)]
    block = ExtractiveMemory(
        ScriptedModel(json.dumps({"facts": facts})), store=make_ltm("sqlite"), max_facts=5
    )
    block.update(stored(turn("...", "...")), user_id="u", session_id="s")
    assert contents(block, "u") == facts[3:]
    assert len(block.facts("u", include_superseded=True)) == 8


def test_a_failing_model_propagates_from_update(make_ltm):
    """A model error is raised by update (the caller decides), and nothing is stored."""
    block = ExtractiveMemory(
        ScriptedModel(TimeoutError("model timed out")), store=make_ltm("sqlite")
    )
    with pytest.raises(TimeoutError):
        block.update(stored(turn("my name is Sarah", "Hi")), user_id="sarah", session_id="s")
    assert block.facts("sarah") == []


def test_a_slow_model_times_out_with_a_model_error_and_nothing_stored(make_ltm):
    """A model slower than ``timeout`` raises ModelError (sync and async); no fact is stored,
    and the abandoned call's late answer changes nothing."""
    release = threading.Event()
    healthy = RuleExtractor(RULES)

    class Slow:
        def generate(self, messages):
            release.wait(5)
            return healthy.answer(messages)

        async def agenerate(self, messages):
            await asyncio.sleep(5)
            return healthy.answer(messages)

    block = ExtractiveMemory(Slow(), store=make_ltm("sqlite"), timeout=0.2)
    messages = stored(turn("my name is Sarah", "Hi"))
    started = time.perf_counter()
    with pytest.raises(ModelError, match=r"fact extraction timed out after 0\.2s"):
        block.update(messages, user_id="sarah", session_id="s")
    assert time.perf_counter() - started < 3
    release.set()
    with pytest.raises(ModelError, match="timed out"):
        asyncio.run(block.aupdate(messages, user_id="sarah", session_id="s"))
    assert block.facts("sarah") == []
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="timeout"):
            ExtractiveMemory(Slow(), store=block.store, timeout=bad)


def test_a_failing_model_keeps_messages_in_the_window_until_a_retry_succeeds(make_store, make_ltm):
    """Model down: BlockError, nothing evicted; the next flush stores each fact once."""
    sql = make_store("sqlite")
    healthy = RuleExtractor(RULES)
    failing = {"on": True}

    def model(messages):
        if failing["on"]:
            raise ConnectionError("LLM unavailable")
        return healthy.answer(messages)

    block = ExtractiveMemory(model, store=make_ltm("sqlite", source=sql))
    memory = AgentMemory(
        sql, token_limit=300, memory_token_limit=60, overflow=FlushToLongTerm([block])
    )
    memory.add(
        "s1",
        turn("my name is Sarah and I work in the Marketing team.", "Hi " * 30),
        user_id="sarah",
    )
    memory.add("s1", turn("my dog is called Rex.", "Nice " * 30))
    with pytest.raises(BlockError, match="extractive_memory"):
        for i in range(6):
            memory.add("s1", turn(f"Question {i}?", "Answer " * 30))
    window = sql.get_window("s1")
    assert len(window) == len(memory.history("s1"))  # nothing left the window
    assert block.facts("sarah") == []

    failing["on"] = False
    memory.add("s1", turn("One more question?", "Answer " * 30))
    assert len(sql.get_window("s1")) < len(memory.history("s1"))
    assert sorted(contents(block, "sarah")) == [
        "The user works in the Marketing team.",
        "The user's dog is called Rex.",
        "The user's name is Sarah.",
    ]
    memory.add("s1", turn("And another?", "Answer " * 30))
    assert len(block.facts("sarah", include_superseded=True)) == 3


async def test_async_update_and_get(amake_ltm):
    """aupdate and aget behave like update and get."""
    block = ExtractiveMemory(RuleExtractor(RULES), store=amake_ltm("sqlite"))
    await block.aupdate(
        stored(turn("my name is Sarah, I work in the Marketing team", "Hi")),
        user_id="sarah",
        session_id="s",
    )
    await block.aupdate(stored(turn("my name is Sarah", "Hi")), user_id="sarah", session_id="s")
    items = await block.aget(query="team", user_id="sarah", session_id="s", max_tokens=400)
    assert items == ["The user's name is Sarah.", "The user works in the Marketing team."]
    assert fact_rows(block.store) == 2


def test_a_session_without_user_is_not_extracted(make_ltm):
    """Facts belong to users: messages of a session without user_id are not sent to the model."""
    model = RuleExtractor(RULES)
    block = ExtractiveMemory(model, store=make_ltm("sqlite"))
    block.update(stored(turn("my name is Sarah", "Hi")), user_id=None, session_id="anon")
    assert model.calls == []
