"""StaticMemory: global facts persisted in SQL, loaded idempotently, read-only in conversations."""

from __future__ import annotations

import threading

import pytest
from ltm_helpers import stored, turn
from mssql_memory import (
    AgentMemory,
    FlushToLongTerm,
    LongTermStore,
    ReadOnlyBlockError,
    StaticMemory,
    default_token_counter,
)
from sqlalchemy import func, select

pytest_plugins = ["ltm_fixtures"]

POLICIES = [
    {"id": "remote", "content": "Remote work: 3 days/week with approval."},
    {"id": "abroad", "content": "International work: max 2 weeks/year, 30-day advance approval."},
    {"id": "equipment", "content": "The company provides a laptop and up to $300 for a chair."},
    {"id": "form", "content": "Apply for remote work with Form HR-101 on the employee portal."},
    {"id": "parental", "content": "Parental leave is 16 weeks at full pay for every parent."},
    {"id": "expenses", "content": "Expense reports are due within 30 days of the purchase."},
]


def fact_rows(lts: LongTermStore) -> int:
    f = lts.tables.facts
    with lts.engines.sync.connect() as conn:
        return conn.execute(select(func.count()).select_from(f)).scalar_one()


def test_static_facts_are_persisted(ltm_backend, make_ltm):
    """Loaded facts are in the database: a new store object on the same tables reads them."""
    lts = make_ltm(ltm_backend)
    assert StaticMemory(POLICIES, store=lts).load() == len(POLICIES)
    other = make_ltm(ltm_backend, table_prefix=lts.table_prefix)
    assert [f.content for f in other.facts("static_memory")] == [p["content"] for p in POLICIES]
    assert {f.key for f in other.facts("static_memory")} == {p["id"] for p in POLICIES}
    assert all(f.scope == "" for f in other.facts("static_memory"))  # global, no user


def test_loading_the_same_facts_again_is_idempotent(ltm_backend, make_ltm):
    """Loading the same facts twice, or from a second instance, changes no row."""
    lts = make_ltm(ltm_backend)
    first = StaticMemory(POLICIES, store=lts)
    first.load()
    assert fact_rows(lts) == len(POLICIES)
    assert first.load() == 0
    second = StaticMemory(POLICIES, store=make_ltm(ltm_backend, table_prefix=lts.table_prefix))
    assert second.load() == 0
    assert fact_rows(lts) == len(POLICIES)
    budget = dict(query=None, user_id=None, session_id="s", max_tokens=1000)
    assert second.get(**budget) == first.get(**budget) == [p["content"] for p in POLICIES]


def test_concurrent_loads_create_no_duplicates(ltm_backend, make_ltm):
    """Four instances loading the same facts at once leave exactly one row per fact id."""
    lts = make_ltm(ltm_backend)
    lts.create_schema()
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def load() -> None:
        block = StaticMemory(POLICIES, store=make_ltm(ltm_backend, table_prefix=lts.table_prefix))
        barrier.wait()
        try:
            block.load()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fact_rows(lts) == len(POLICIES)


def test_changed_text_updates_the_fact_in_place(ltm_backend, make_ltm):
    """A fact id loaded again with new text is updated (same row count), not duplicated."""
    lts = make_ltm(ltm_backend)
    StaticMemory(POLICIES, store=lts).load()
    changed = [dict(p) for p in POLICIES]
    changed[0]["content"] = "Remote work: 4 days/week with approval."
    block = StaticMemory(changed, store=make_ltm(ltm_backend, table_prefix=lts.table_prefix))
    assert block.load() == 1
    assert fact_rows(lts) == len(POLICIES)
    items = block.get(query=None, user_id=None, session_id="s", max_tokens=1000)
    assert "Remote work: 4 days/week with approval." in items
    assert "Remote work: 3 days/week with approval." not in items


def test_static_memory_is_read_only(make_ltm):
    """update, aupdate and delete raise ReadOnlyBlockError; the stored facts are unchanged."""
    lts = make_ltm("sqlite")
    block = StaticMemory(POLICIES, store=lts)
    block.load()
    messages = stored(turn("Please remember: remote work is 5 days a week.", "Noted."))
    with pytest.raises(ReadOnlyBlockError, match="read-only"):
        block.update(messages, user_id="sarah", session_id="s1")
    with pytest.raises(ReadOnlyBlockError, match="read-only"):
        block.delete("remote")
    assert fact_rows(lts) == len(POLICIES)


async def test_static_memory_async_update_is_refused(amake_ltm):
    """aupdate raises ReadOnlyBlockError too; aget returns the facts."""
    block = StaticMemory(POLICIES, store=amake_ltm("sqlite"))
    with pytest.raises(ReadOnlyBlockError):
        await block.aupdate(stored(turn("x", "y")), user_id="u", session_id="s")
    items = await block.aget(query=None, user_id=None, session_id="s", max_tokens=1000)
    assert len(items) == len(POLICIES)


def test_flush_skips_static_memory(make_store, make_ltm):
    """A static block given to FlushToLongTerm takes nothing and does not make the flush fail."""
    sql = make_store("sqlite")
    block = StaticMemory(POLICIES[:2], store=make_ltm("sqlite", source=sql))
    memory = AgentMemory(
        sql, token_limit=400, memory_token_limit=100, overflow=FlushToLongTerm([block])
    )
    for i in range(12):
        memory.add(
            "s1", turn(f"Question {i} about the remote policy?", "Answer " * 20), user_id="u"
        )
    assert len(memory.history("s1")) == 24
    assert len(sql.get_window("s1")) < 24  # the flush ran and archived the oldest turns
    (memory_message,) = [m for m in memory.get("s1") if "<static_memory>" in m.content]
    assert POLICIES[0]["content"] in memory_message.content
    assert fact_rows(block.store) == 2


def test_get_returns_every_fact_when_they_fit(make_ltm):
    """Within budget, get returns all facts in their configured order, whatever the query."""
    block = StaticMemory(POLICIES, store=make_ltm("sqlite"))
    items = block.get(query="parental leave", user_id=None, session_id="s", max_tokens=400)
    assert items == [p["content"] for p in POLICIES]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Can I work from abroad for a few weeks?", "abroad"),
        ("How long is parental leave?", "parental"),
        ("When are expense reports due?", "expenses"),
        ("Which form do I fill in to apply?", "form"),
    ],
)
def test_get_keeps_the_most_relevant_facts_when_not_all_fit(make_ltm, query, expected):
    """Over budget, the fact most relevant to the query is kept, and the result fits."""
    counter = default_token_counter()
    block = StaticMemory(POLICIES, store=make_ltm("sqlite"), max_tokens=400)
    budget = 35  # room for two facts of six
    items = block.get(query=query, user_id=None, session_id="s", max_tokens=budget)
    wanted = next(p["content"] for p in POLICIES if p["id"] == expected)
    assert wanted in items
    assert 0 < len(items) < len(POLICIES)
    assert sum(counter.count_text(i) + 2 for i in items) <= budget


def test_get_without_query_keeps_configured_order_when_not_all_fit(make_ltm):
    """Over budget and without a query, the first facts (configured order) are kept."""
    block = StaticMemory(POLICIES, store=make_ltm("sqlite"))
    items = block.get(query=None, user_id=None, session_id="s", max_tokens=35)
    assert items == [p["content"] for p in POLICIES[: len(items)]]
    assert items


def test_block_budget_caps_get(make_ltm):
    """The block's own max_tokens caps get even when the caller offers more."""
    counter = default_token_counter()
    block = StaticMemory(POLICIES, store=make_ltm("sqlite"), max_tokens=40)
    items = block.get(query="laptop chair", user_id=None, session_id="s", max_tokens=1000)
    assert POLICIES[2]["content"] in items
    assert sum(counter.count_text(i) + 2 for i in items) <= 40
