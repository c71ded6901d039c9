"""Scoping and privacy with many users: nobody's facts or turns reach another user's context,
and delete_user removes one user's facts, vectors, sessions and summaries, and nothing else."""

from __future__ import annotations

import pytest
from ltm_helpers import KeywordEmbedder, RuleExtractor, turn
from mssql_memory import (
    AgentMemory,
    ExtractiveMemory,
    FlushToLongTerm,
    Message,
    StaticMemory,
    Summarize,
    VectorMemory,
)
from sqlalchemy import func, select

pytest_plugins = ["ltm_fixtures"]

USERS = 50
RULES = [
    (r"my name is (\w+)", "name", r"The user's name is \1."),
    (r"my locker code is (code-\w+)", "locker_code", r"The user's locker code is \1."),
]
QUERY = "What is my locker code? What is my name?"


def code(i: int) -> str:
    return f"code-u{i:02d}x{(i * 7919) % 9973:04d}"


def name(i: int) -> str:
    return f"Person{i:02d}zq"


def secrets(i: int) -> tuple[str, str]:
    return code(i), name(i)


def build(backend, make_store, make_ltm, users: int = USERS):
    sql = make_store(backend)
    lts = make_ltm(backend, source=sql)
    extractive = ExtractiveMemory(RuleExtractor(RULES), store=lts)
    vector = VectorMemory(KeywordEmbedder(), store=lts, top_k=8, min_score=-1.0)
    static = StaticMemory(["Lockers are emptied every Friday evening."], store=lts)
    memory = AgentMemory(
        sql,
        token_limit=600,
        memory_token_limit=300,
        overflow=FlushToLongTerm([extractive, vector]),
        blocks=[static],
    )
    for i in range(users):
        user, session = f"user{i:02d}", f"s{i:02d}"
        memory.add(
            session,
            turn(f"Hi, my name is {name(i)} and my locker code is {code(i)}.", "Noted."),
            user_id=user,
        )
        for k in range(3):
            memory.add(
                session, turn(f"Question {k} about my locker and gym access?", "Sure. " * 30)
            )
    return sql, lts, memory


def rows(table, engine, where=None) -> int:
    q = select(func.count()).select_from(table)
    if where is not None:
        q = q.where(where)
    with engine.connect() as conn:
        return conn.execute(q).scalar_one()


def test_no_user_sees_another_users_facts_or_turns(ltm_backend, make_store, make_ltm):
    """Of 50 users, each context (old or new session) holds only that user's secrets."""
    _, lts, memory = build(ltm_backend, make_store, make_ltm)
    assert rows(lts.tables.vectors, lts.engines.sync) >= USERS
    for i in range(USERS):
        for session in (f"s{i:02d}", f"new-s{i:02d}"):
            memory.add(session, Message("user", QUERY), user_id=f"user{i:02d}")
            text = "\n".join(m.content for m in memory.get(session, query=QUERY))
            assert code(i) in text and name(i) in text
            leaked = [j for j in range(USERS) if j != i and any(s in text for s in secrets(j))]
            assert leaked == [], f"user{i:02d} sees the secrets of {leaked}"
    memory.add("anonymous", Message("user", QUERY))
    text = "\n".join(m.content for m in memory.get("anonymous", query=QUERY))
    assert "Lockers are emptied" in text  # static memory is global
    assert not any(s in text for j in range(USERS) for s in secrets(j))


def test_delete_user_purges_that_user_only(ltm_backend, make_store, make_ltm):
    """delete_user removes that user's facts, vectors, sessions, summaries; nobody else's."""
    sql, lts, memory = build(ltm_backend, make_store, make_ltm, users=12)
    summarizer = AgentMemory(
        sql, token_limit=200, overflow=Summarize(lambda messages: "CONVERSATION SUMMARY: lockers")
    )
    for i in (7, 8):
        for k in range(6):
            summarizer.add(
                f"sum{i}", turn(f"Summarized question {k}?", "Yes. " * 10), user_id=f"user{i:02d}"
            )
        assert sql.get_session(f"sum{i}").summary is not None
    f, v = lts.tables.facts, lts.tables.vectors
    t = sql.tables
    engine = sql.engines.sync
    before = {
        "facts": rows(f, engine),
        "vectors": rows(v, engine),
        "sessions": rows(t.sessions, engine),
        "messages": rows(t.messages, engine),
        "summaries": rows(t.summaries, engine),
    }
    mine = {
        "facts": rows(f, engine, f.c.scope == "user07"),
        "vectors": rows(v, engine, v.c.user_id == "user07"),
        "sessions": 2,
        "messages": len(memory.history("s07")) + len(memory.history("sum7")),
        "summaries": rows(t.summaries, engine, t.summaries.c.session_id == "sum7"),
    }
    assert all(mine.values()), mine

    memory.delete_user("user07")

    after = {
        "facts": rows(f, engine),
        "vectors": rows(v, engine),
        "sessions": rows(t.sessions, engine),
        "messages": rows(t.messages, engine),
        "summaries": rows(t.summaries, engine),
    }
    assert after == {k: before[k] - mine[k] for k in before}
    assert rows(f, engine, f.c.scope == "user07") == 0
    assert rows(v, engine, v.c.user_id == "user07") == 0
    assert sql.get_session("sum8").summary is not None
    memory.add("again", Message("user", QUERY), user_id="user07")
    text = "\n".join(m.content for m in memory.get("again", query=QUERY))
    assert code(7) not in text and name(7) not in text
    memory.add("s08", Message("user", QUERY))
    text = "\n".join(m.content for m in memory.get("s08", query=QUERY))
    assert code(8) in text and name(8) in text


@pytest.mark.parametrize("placement", ["system", "user"])
def test_user_placement_keeps_users_apart(make_store, make_ltm, placement):
    """Whichever the placement, two users of one app never see each other's memory."""
    sql = make_store("sqlite")
    lts = make_ltm("sqlite", source=sql)
    memory = AgentMemory(
        sql,
        token_limit=600,
        memory_token_limit=300,
        overflow=FlushToLongTerm(
            [
                ExtractiveMemory(RuleExtractor(RULES), store=lts),
                VectorMemory(KeywordEmbedder(), store=lts, min_score=-1.0),
            ]
        ),
        memory_placement=placement,
    )
    for i in (1, 2):
        memory.add(
            f"p{i}",
            turn(f"my name is {name(i)}, my locker code is {code(i)}.", "Ok."),
            user_id=f"u{i}",
        )
        for k in range(6):
            memory.add(f"p{i}", turn(f"Locker question {k}?", "Sure. " * 12))
    for i, j in ((1, 2), (2, 1)):
        memory.add(f"q{i}", Message("user", QUERY), user_id=f"u{i}")
        text = "\n".join(m.content for m in memory.get(f"q{i}"))
        assert code(i) in text and code(j) not in text and name(j) not in text
