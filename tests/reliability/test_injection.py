"""An SQL-injection corpus in every string input: stored verbatim, or rejected, never executed.

Classic payloads (quote breaking, ``OR 1=1``, stacked ``DROP TABLE`` aimed at this
test's real tables, bracket and backtick quoting, backslash escapes, Unicode quotes
that some collations fold to ``'``, NUL, comment tricks, SQL Server's
``xp_cmdshell`` / ``WAITFOR``, PostgreSQL's ``pg_sleep`` and dollar quoting, bind
parameter markers) go into session and user ids, contents, names, metadata keys
and values, tool names, ids and arguments, raw payloads, system messages,
summaries, static and extracted fact texts, fact ids and subjects, queries, list
cursors, and table, schema, prefix and block names. Text reads back identical (in derived
text — summaries, facts, recalled turns — a NUL reads back as U+FFFD: PostgreSQL cannot
store NUL in a text column, so no backend does); an
id that breaks the id rules (control characters, outer whitespace) is a
``ValueError``, as is every payload used as a table or block name. At the end every
table still exists and holds exactly the rows expected, and a canary store is intact.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Sequence
from functools import partial
from typing import Any

import pytest
from conftest import backend_params
from mssql_memory import (
    AgentMemory,
    ExtractiveMemory,
    FlushToLongTerm,
    HashingEmbedder,
    LongTermStore,
    Message,
    SQLStore,
    StaticMemory,
    Summarize,
    ToolCall,
    VectorMemory,
)
from sqlalchemy import inspect as sa_inspect

from .helpers import count, record, same_message

pytestmark = pytest.mark.reliability

INJECTION_BACKENDS = backend_params(("sqlite", "postgresql", "mariadb"))
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: ``{t}`` is replaced by one of the test's real table names, in turn
TEMPLATES = [
    "'; DROP TABLE {t}; --",
    "'); DROP TABLE {t}; --",
    '"; DROP TABLE {t}; --',
    '" OR 1=1 --',
    "' OR '1'='1",
    "' OR 1=1 --",
    "admin'--",
    "1; DELETE FROM {t}; --",
    "1 OR 1=1",
    "]; DROP TABLE [{t}]; --",
    "`; DROP TABLE `{t}`; --",
    "\\'; DROP TABLE {t}; --",
    '\\"; DROP TABLE {t}; --',
    "\\\\'; DROP TABLE {t}; --",
    "%27; DROP TABLE {t}; --",
    "\u2019; DROP TABLE {t}; --",  # right single quotation mark
    "\u02bc; DROP TABLE {t}; --",  # modifier letter apostrophe (folded to ' by some collations)
    "\uff07; DROP TABLE {t}; --",  # fullwidth apostrophe
    "\u201c OR 1=1 --\u201d",
    "'\x00'; DROP TABLE {t}; --",
    "\x00",
    "x\x00y",
    "/**/;DROP/**/TABLE/**/{t};--",
    "'/*",
    "*/ OR 1=1 --",
    "-- comment",
    "# comment",
    "';#",
    "'; EXEC xp_cmdshell 'dir'; --",
    ";EXEC xp_cmdshell('whoami')--",
    "'; EXEC sp_executesql N'DROP TABLE {t}'; --",
    "'; WAITFOR DELAY '0:0:5'; --",
    "'; SHUTDOWN WITH NOWAIT; --",
    "' AND 1=CONVERT(int,(SELECT @@version)) --",
    "N'; DROP TABLE {t}; --",
    "'; SELECT pg_sleep(5); --",
    "$$; DROP TABLE {t}; $$",
    "E'\\x27; DROP TABLE {t}; --",
    "'||(SELECT version())||'",
    "' UNION SELECT session_id, payload FROM {t} --",
    "'; ATTACH DATABASE 'pwned.db' AS pwned; --",
    "'; SELECT SLEEP(5); --",
    "'; LOAD DATA INFILE '/etc/passwd' INTO TABLE {t}; --",
    ":p_sid",
    "%(p_sid)s",
    "%s",
    "?",
    "$1",
    "{t}",
    "%",
    "_",
    "'",
    '"',
    "`",
    "[",
    "]",
    "\\",
    "''",
    "\r\n'; DROP TABLE {t}; --",
    " '; DROP TABLE {t}; -- ",
    "",
]


def corpus(targets: Sequence[str]) -> list[str]:
    """The payloads, each aimed at one of ``targets`` (real table names), in turn."""
    return [tpl.format(t=targets[i % len(targets)]) for i, tpl in enumerate(TEMPLATES)]


def shown(text: str) -> str:
    """Derived text (summaries, facts, recalled turns) as stored: PostgreSQL cannot hold NUL in
    a text column, so every backend stores U+FFFD instead (the messages keep it)."""
    return text.replace("\x00", "\ufffd")


def id_ok(value: str) -> bool:
    """The documented id rules: 1-255 characters, no outer whitespace, no control characters."""
    return (
        0 < len(value) <= 255
        and value == value.strip()
        and not any(unicodedata.category(c) in ("Cc", "Cs") for c in value)
    )


class PayloadModel:
    """Summarizer and fact extractor answering with the current payload."""

    def __init__(self) -> None:
        self.payload = ""

    def generate(self, messages: Sequence[Message]) -> str:
        if "Extract durable facts" in messages[0].content:
            return json.dumps(
                {
                    "facts": [
                        {"fact": self.payload},
                        {"subject": self.payload, "fact": f"about {self.payload}"},
                    ]
                }
            )
        return f"summary: {self.payload}"

    async def agenerate(self, messages: Sequence[Message]) -> str:
        return self.generate(messages)


def batch_for(index: int, p: str) -> list[Message]:
    """A turn carrying ``p`` in every text field."""
    call_id = p or "call"
    return [
        Message("user", p, name=p, metadata={p: p, "nested": [p, {p: [p]}]}, id=f"{index}u{p}"),
        Message(
            "assistant",
            p,
            tool_calls=(ToolCall(call_id, p, {p: p, "q": [p]}), ToolCall(f"{p}2", p, p)),
            raw={"framework": p, p: [p]},
            id=f"{index}a{p}",
        ),
        Message("tool", p, tool_call_id=call_id, name=p, id=f"{index}t{p}"),
        Message("tool", p, tool_call_id=f"{p}2", id=f"{index}t2{p}"),
        Message("assistant", p, metadata={"source": p}, id=f"{index}b{p}"),
    ]


@pytest.mark.parametrize("backend", INJECTION_BACKENDS)
def test_injection_corpus_is_stored_verbatim_or_rejected(
    backend: str, make_store: Any, make_ltm_for: Any, backend_urls: Any
) -> None:
    """Every payload in every string input: read back identical or a ValueError; nothing
    executed (all tables exist, row counts exact, the canary untouched)."""
    started = time.perf_counter()
    url = backend_urls[backend]
    store = make_store(backend)
    store.create_schema()
    ltm = make_ltm_for(store)
    canary = make_store(backend)
    canary.append("canary", Message("user", "still here"))
    targets = [
        store.table_name,
        f"{store.table_name}_sessions",
        f"{store.table_name}_summaries",
        ltm.tables.facts.name,
        ltm.tables.vectors.name,
        canary.table_name,
    ]
    payloads = corpus(targets)
    model = PayloadModel()
    extractive = ExtractiveMemory(model, store=ltm, max_facts=10_000)
    vector = VectorMemory(HashingEmbedder(64), store=ltm, min_score=-1.0)
    static = StaticMemory(
        [(f"k{i}", p) for i, p in enumerate(payloads) if p.strip()]
        + [(p, f"fact keyed {i}") for i, p in enumerate(payloads) if 0 < len(p) <= 255],
        store=ltm,
    )
    memory = AgentMemory(
        store,
        token_limit=2000,
        overflow=FlushToLongTerm([extractive, vector]),
        blocks=[static],
    )
    summarizing = AgentMemory(store, token_limit=300, overflow=Summarize(model, keep_recent=2))
    assert static.load() > 0
    static_facts = len(static.store.facts(static.name))

    messages = sessions = rejected = 0
    users: set[str] = set()
    for index, p in enumerate(payloads):
        model.payload = p
        session = p if id_ok(p) else f"s{index}"
        user = p if id_ok(p) else f"u{index}"
        users.add(user)
        if not id_ok(p):
            for call in (
                partial(store.append, p, Message("user", "x")),
                partial(memory.add, f"s{index}", Message("user", "x"), user_id=p),
                partial(memory.get, p),
                partial(store.delete_user, p),
                partial(store.list_sessions, after=p),
            ):
                with pytest.raises(ValueError):
                    call()
                rejected += 1
        batch = batch_for(index, p)
        memory.add(session, batch, user_id=user)
        memory.set_system_message(session, p)
        messages, sessions = messages + len(batch), sessions + 1
        history = store.get_history(session)
        assert len(history) == len(batch)
        for stored, given in zip(history, batch, strict=True):
            same_message(stored, given)
        state = store.get_session(session)
        assert state.user_id == user and state.system_message.content == p
        assert session in [s.session_id for s in store.list_sessions(user_id=user)]
        if id_ok(p):
            store.list_sessions(after=p)

        # facts, vectors and recall with the payload as text, subject and query
        extractive.update(history, user_id=user, session_id=session)
        vector.update(history, user_id=user, session_id=session)
        facts = [f.content for f in extractive.facts(user, include_superseded=True)]
        fact = shown(" ".join(p.split()))  # the extractor's answer, spaces normalized
        if fact:
            assert fact in facts, f"fact {p!r} not stored verbatim"
        assert f"about {fact}".strip() in facts
        turns = ltm.load_vectors("vector_memory", user, session)
        assert all(shown(p) in t.content for t in turns)
        assert turns or not p.strip()  # turns without any text are not stored
        context = memory.get(session, query=p)
        assert [m.content for m in context if m.role != "system"] == [m.content for m in batch]
        assert extractive.get(query=p, user_id=user, session_id=session, max_tokens=400)
        assert static.get(query=p, user_id=user, session_id=session, max_tokens=400)

        # a summary carrying the payload
        summary_session = f"sum{index}"
        for k in range(6):
            text = f"{p} question {k} " * 4 + "and more words " * 20
            summarizing.add(summary_session, Message("user", text))
        messages, sessions = messages + 6, sessions + 1
        summary = store.get_session(summary_session).summary
        assert summary is not None and summary.content.endswith(shown(f"summary: {p}".rstrip()))

        # names: always refused (but "_", which is a plain identifier)
        if not IDENTIFIER.fullmatch(p):
            for make in (
                partial(SQLStore, url, table_name=p),
                partial(SQLStore, url, table_name="t_safe", schema=p),
                partial(LongTermStore, url, table_prefix=p),
                partial(VectorMemory, HashingEmbedder(), store=ltm, name=p),
                partial(ExtractiveMemory, model, store=ltm, name=p),
                partial(StaticMemory, store=ltm, name=p),
            ):
                with pytest.raises(ValueError):
                    make()
                rejected += 1

    # a deletion by an injected id deletes that session only
    victim = next(p for p in payloads if id_ok(p) and "DROP" in p)
    assert store.delete_session(victim) is True
    messages, sessions = messages - 5, sessions - 1
    assert store.delete_user(f"u{payloads.index('')}") == 1
    messages, sessions = messages - 5, sessions - 1

    expected = {
        store.table_name,
        f"{store.table_name}_sessions",
        f"{store.table_name}_summaries",
        ltm.tables.facts.name,
        ltm.tables.vectors.name,
        canary.table_name,
        f"{canary.table_name}_sessions",
        f"{canary.table_name}_summaries",
    }
    present = set(sa_inspect(store.engines.sync).get_table_names())
    assert expected <= present, f"tables gone: {expected - present}"
    engine = store.engines.sync
    assert count(engine, store.tables.messages) == messages
    assert count(engine, store.tables.sessions) == sessions
    assert count(engine, canary.tables.messages) == 1
    assert [m.content for m in canary.get_window("canary")] == ["still here"]
    assert count(engine, ltm.tables.facts) >= static_facts
    elapsed = time.perf_counter() - started
    record(
        f"injection[{backend}]",
        f"{len(payloads)} payloads x every string input: {messages} messages and "
        f"{count(engine, ltm.tables.facts)} facts read back verbatim, {rejected} calls "
        f"refused with ValueError (bad ids, every name), 0 executed, {elapsed:.1f}s",
    )


@pytest.mark.parametrize("backend", INJECTION_BACKENDS)
async def test_a_nul_in_a_message_never_breaks_summaries_or_long_term_memory(
    backend: str, make_store: Any, make_ltm_for: Any
) -> None:
    """A NUL typed by a user reaches summaries, extracted facts and stored turns, which are
    plain text columns (PostgreSQL refuses NUL there): the overflows succeed, sync and async,
    the derived text shows U+FFFD, and the message itself keeps its NUL."""
    store = make_store(backend)
    ltm = make_ltm_for(store)
    model = PayloadModel()
    model.payload = "the user's code is a\x00b"
    extractive = ExtractiveMemory(model, store=ltm)
    vector = VectorMemory(HashingEmbedder(64), store=ltm, min_score=-1.0)
    flushing = AgentMemory(store, token_limit=300, overflow=FlushToLongTerm([extractive, vector]))
    summarizing = AgentMemory(store, token_limit=300, overflow=Summarize(model, keep_recent=2))
    for k in range(8):
        text = f"my code is a\x00b, question {k} " + "with more words " * 12
        flushing.add("flush", Message("user", text), user_id="nul-user")
        await summarizing.aadd("summary", Message("user", text))
    assert any("\x00" in m.content for m in store.get_history("flush"))
    facts = [f.content for f in extractive.facts("nul-user")]
    assert "the user's code is a\ufffdb" in facts
    turns = ltm.load_vectors("vector_memory", "nul-user", "flush")
    assert turns and all("a\ufffdb" in t.content for t in turns)
    summary = store.get_session("summary").summary
    assert summary is not None and summary.content.endswith("a\ufffdb")
    assert flushing.get("flush", query="code a\x00b")
