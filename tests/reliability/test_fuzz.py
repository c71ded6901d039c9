"""Hypothesis fuzzing of every input a caller hands the store and AgentMemory.

Session and user ids, contents, roles, names, tool-call structures, metadata and raw
framework payloads (well-formed, hostile, wrongly typed), through appends, adds,
archived appends, replacements, system messages, reads, listings and deletions; and
table, schema, prefix and block names. The only errors are ``ValueError`` /
``TypeError`` / library errors — never a ``StoreError`` (whatever validation lets
through, the database must hold) — and after an error every table is exactly as it
was (a snapshot of every row). What is accepted reads back as it went in.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from conftest import backend_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mssql_memory import (
    AgentMemory,
    AgentMemoryError,
    BaseMemoryBlock,
    ExtractiveMemory,
    LongTermStore,
    Message,
    SQLStore,
    StaticMemory,
    StoreError,
    ToolCall,
    VectorMemory,
)
from sqlalchemy import delete
from sqlalchemy import inspect as sa_inspect

from .helpers import (
    RefExtractor,
    SlowEmbedder,
    record,
    same_message,
    scaled,
    store_tables,
    table_rows,
)

pytestmark = pytest.mark.reliability

EXAMPLES = scaled(250, 5000)
TYPED = (ValueError, TypeError, AgentMemoryError)
FUZZ_BACKENDS = backend_params(("sqlite", "postgresql"))

SEEDS = {"seed-a": "user-a", "seed-b": "user-b", "seed-c": None}
HOSTILE = [
    "",
    " ",
    "a ",
    " a",
    "a\n",
    "\t",
    "x\x00y",
    "\x00",
    "'; DROP TABLE ChatMessages; --",
    '" OR 1=1 --',
    "]; DROP TABLE x; --",
    "\\'; SELECT 1; --",
    "\u2019 OR \u20191\u2019=\u20191",
    "%",
    "_",
    "?",
    ":p_sid",
    "%(p_sid)s",
    "\u202eevil",
    "\U0001f600" * 3,
    "日本語",
    "\ufeff",
    "a" * 255,
    "a" * 256,
]

_TEXT = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(categories=["Cc", "Cs", "Cf", "Zs", "Zl", "Co"]), max_size=6),
    st.sampled_from(HOSTILE),
    st.text(alphabet="ab", min_size=250, max_size=260),
)
_ODD = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.builds(object),
)
#: usually valid text: any characters but lone surrogates (which no database can store)
TEXT = st.one_of(st.text(max_size=40), st.text(max_size=40), st.sampled_from(HOSTILE))
#: valid ids: no control characters, no outer whitespace, 1-255 characters
SAFE_ID = (
    st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=40)
    .map(str.strip)
    .filter(bool)
)


def mostly(valid: Any, fuzzed: Any) -> Any:
    """``valid`` four times in five, else ``fuzzed`` (``one_of`` would favour the fuzz)."""
    return st.integers(0, 4).flatmap(lambda k: valid if k else fuzzed)


IDS = mostly(st.one_of(SAFE_ID, st.sampled_from(sorted(SEEDS))), st.one_of(_TEXT, _ODD))
USER_IDS = mostly(
    st.one_of(st.none(), SAFE_ID, st.sampled_from(["user-a", "user-b"])), st.one_of(_TEXT, _ODD)
)
ROLES = st.one_of(st.sampled_from(["user", "assistant", "tool", "system"]), _TEXT, _ODD)
_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
NON_JSON = st.one_of(
    st.sampled_from([float("nan"), float("inf")]),
    st.binary(min_size=1, max_size=3),
    st.sets(st.integers(), min_size=1, max_size=2),
    st.builds(object),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=1),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates
)
_ODD_KEYS = st.one_of(st.integers(), st.none(), st.booleans(), st.tuples(st.integers()))
GOOD_METADATA = st.one_of(st.just({}), st.dictionaries(TEXT, JSON, max_size=3))
METADATA = st.one_of(
    GOOD_METADATA,
    st.dictionaries(TEXT, NON_JSON, min_size=1, max_size=2),
    st.dictionaries(_ODD_KEYS, JSON, min_size=1, max_size=1),
    _ODD,
)
GOOD_CALL = st.fixed_dictionaries(
    {"id": TEXT, "name": TEXT, "arguments": st.one_of(st.dictionaries(TEXT, JSON), TEXT)}
)
TOOL_CALL = st.one_of(
    GOOD_CALL,
    st.fixed_dictionaries(
        {
            "id": st.one_of(TEXT, _ODD),
            "name": st.one_of(TEXT, _ODD),
            "arguments": st.one_of(st.dictionaries(TEXT, NON_JSON, min_size=1), _ODD),
        }
    ),
    _ODD,
)
#: a message valid by construction, its text fields hostile
GOOD_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system"]),
            "content": TEXT,
            "name": st.one_of(st.none(), TEXT),
            "tool_calls": st.just(()),
            "tool_call_id": st.none(),
            "metadata": GOOD_METADATA,
            "raw": st.one_of(st.none(), JSON),
        }
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": TEXT,
            "name": st.none(),
            "tool_calls": st.lists(GOOD_CALL, min_size=1, max_size=3),
            "tool_call_id": st.none(),
            "metadata": GOOD_METADATA,
            "raw": st.none(),
        }
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("tool"),
            "content": TEXT,
            "name": st.one_of(st.none(), TEXT),
            "tool_calls": st.just(()),
            "tool_call_id": st.one_of(st.none(), TEXT),
            "metadata": GOOD_METADATA,
            "raw": st.none(),
        }
    ),
)
#: anything in any field
FUZZED_MESSAGE = st.fixed_dictionaries(
    {
        "role": ROLES,
        "content": st.one_of(TEXT, _TEXT, _ODD),
        "name": st.one_of(st.none(), _TEXT, _ODD),
        "tool_calls": st.one_of(st.just(()), st.lists(TOOL_CALL, max_size=3), _ODD, _TEXT),
        "tool_call_id": st.one_of(st.none(), _TEXT, _ODD),
        "metadata": METADATA,
        "raw": st.one_of(st.none(), JSON, NON_JSON),
    }
)
MESSAGE = mostly(GOOD_MESSAGE, FUZZED_MESSAGE)
BATCH = mostly(st.one_of(st.lists(MESSAGE, max_size=3), MESSAGE), _ODD)
OPS = st.sampled_from(
    ["append", "append", "add", "add", "archived", "replace", "system", "read", "delete"]
)

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _build(spec: Any) -> Any:
    """Turn a drawn spec into what a caller would pass (construction may raise)."""
    if not isinstance(spec, dict) or "role" not in spec:
        return spec
    calls = spec["tool_calls"]
    if isinstance(calls, list):
        calls = [ToolCall(**c) if isinstance(c, dict) else c for c in calls]
    return Message(
        spec["role"],
        spec["content"],
        name=spec["name"],
        tool_calls=calls,
        tool_call_id=spec["tool_call_id"],
        metadata=spec["metadata"],
        raw=spec["raw"],
    )


def _batch(spec: Any) -> Any:
    if isinstance(spec, list):
        return [_build(s) for s in spec]
    return _build(spec)


class Fuzzer:
    """One store and memory; runs a drawn operation and checks what it did."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        store.create_schema()
        self.memory = AgentMemory(store, token_limit=400)
        self.tables = store_tables(store)
        self.errors: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()

    def snapshot(self) -> Any:
        return table_rows(self.store.engines.sync, self.tables)

    def reset(self) -> None:
        """Keep the tables small (snapshots read every row) and the seed sessions present."""
        if sum(len(rows) for rows in self.snapshot().values()) > 300:
            with self.store.engines.sync.begin() as conn:
                for table in self.tables:
                    conn.execute(delete(table))
        for session, user in SEEDS.items():
            if not self.store.get_session(session).exists:
                self.store.append(session, Message("user", f"hello from {session}"), user_id=user)

    def run(self, op: str, session: Any, user: Any, spec: Any, extra: Any) -> None:
        self.reset()
        before = self.snapshot()
        try:
            batch = _batch(spec)
            outcome = self._do(op, session, user, batch, extra)
        except TYPED as e:
            assert not isinstance(e, StoreError), f"the database refused valid input: {e!r}"
            assert self.snapshot() == before, f"{op} failed ({e!r}) but changed the tables"
            self.errors[type(e).__name__] += 1
            return
        self.accepted[op] += 1
        self._check(op, session, batch, extra, outcome, before)

    def _do(self, op: str, session: Any, user: Any, batch: Any, extra: Any) -> Any:
        store, memory = self.store, self.memory
        if op == "append":
            return store.append(session, batch, user_id=user)
        if op == "add":
            return memory.add(session, batch, user_id=user)
        if op == "archived":
            return store.append_archived(session, batch, user_id=user)
        if op == "replace":
            return store.replace(session, batch, user_id=user)
        if op == "system":
            return memory.set_system_message(session, extra)
        if op == "read":
            return (
                store.get_window(session),
                store.get_history(session),
                store.read_messages(session, active=None, limit=3),
                store.list_sessions(user_id=user, limit=5, after=session),
                memory.get(session, query=extra),
            )
        if op == "delete":
            return store.delete_session(session)
        raise AssertionError(op)

    def _check(self, op: str, session: str, batch: Any, extra: Any, outcome: Any, before: Any):
        if op in ("append", "add", "archived", "replace"):
            messages = [batch] if isinstance(batch, Message) else list(batch)
        if op in ("append", "add", "archived"):
            history = self.store.get_history(session) if messages else []
            for stored, given_ in zip(
                history[len(history) - len(messages) :], messages, strict=True
            ):
                same_message(stored, given_)
        elif op == "replace":
            window = self.store.get_window(session)
            assert [m.id for m in window] == [m.id for m in messages]
            for stored, given_ in zip(window, messages, strict=True):
                same_message(stored, given_)
        elif op == "system":
            system = self.store.get_session(session).system_message
            expected = extra.content if isinstance(extra, Message) else extra
            assert (system.content if system else None) == expected
        elif op == "read":
            assert self.snapshot() == before, "a read changed the tables"
            context = outcome[-1]
            assert sum(m.token_count or 0 for m in context) <= self.memory.token_limit
        elif op == "delete":
            assert not self.store.get_history(session)
            others = {
                name: [r for r in rows if session not in r]
                for name, rows in self.snapshot().items()
            }
            old = {name: [r for r in rows if session not in r] for name, rows in before.items()}
            assert others == old, "deleting one session changed another"


@pytest.mark.parametrize("backend", FUZZ_BACKENDS)
def test_fuzzed_inputs_raise_typed_errors_and_change_nothing(backend: str, make_store: Any) -> None:
    """EXAMPLES random operations with fuzzed ids, contents, roles, tool calls, metadata:
    typed errors only, tables unchanged after an error, accepted input read back verbatim."""
    fuzzer = Fuzzer(make_store(backend))

    @SETTINGS
    @given(
        op=OPS,
        session=IDS,
        user=USER_IDS,
        spec=BATCH,
        extra=st.one_of(_TEXT, _ODD, MESSAGE),
    )
    def fuzz(op: str, session: Any, user: Any, spec: Any, extra: Any) -> None:
        if isinstance(extra, dict):
            try:
                extra = _build(extra)
            except TYPED:
                extra = None
        fuzzer.run(op, session, user, spec, extra)

    fuzz()
    total = sum(fuzzer.errors.values()) + sum(fuzzer.accepted.values())
    assert total >= EXAMPLES * 0.9
    assert sum(fuzzer.accepted.values()) > EXAMPLES // 10, "almost nothing was accepted"
    record(
        f"fuzz[operations-{backend}]",
        f"{total} examples: accepted {dict(fuzzer.accepted)}, "
        f"rejected {dict(fuzzer.errors)} (tables unchanged after each)",
    )


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NAMES = st.one_of(
    st.text(max_size=20),
    st.from_regex(IDENTIFIER),
    st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z"),
    st.sampled_from(
        ["select", "user", "order", "x" * 118, "x" * 119, "a\n", "t;--", "t\x00", "sqlite"]
    ),
    _ODD,
)
NAME_KINDS = st.sampled_from(["table_name", "schema", "table_prefix", "block", "custom_block"])


class _Named(BaseMemoryBlock):
    def __init__(self, name: Any) -> None:
        self.name = name

    def get(self, **kwargs: Any) -> list[str]:
        return []


@pytest.mark.parametrize("backend", backend_params(("sqlite",)))
def test_fuzzed_names_are_identifiers_or_value_errors(backend: str, make_store: Any) -> None:
    """EXAMPLES table, schema, prefix and block names: each one accepted is a plain identifier
    (``[A-Za-z_][A-Za-z0-9_]*``, at most 128 characters) and makes exactly its tables;
    every other is a ValueError / TypeError before any SQL, the database unchanged."""
    anchor = make_store(backend)
    anchor.create_schema()
    engine = anchor.engines.sync
    tables_before = set(sa_inspect(engine).get_table_names())
    outcomes: Counter[str] = Counter()
    created = 0

    def tables() -> set[str]:
        return set(sa_inspect(engine).get_table_names())

    @SETTINGS
    @given(kind=NAME_KINDS, name=NAMES)
    def fuzz(kind: str, name: Any) -> None:
        nonlocal created
        try:
            if kind == "table_name":
                target: Any = SQLStore(engine, table_name=name)
            elif kind == "schema":
                target = SQLStore(engine, table_name="t_fuzz", schema=name)
            elif kind == "table_prefix":
                target = LongTermStore(anchor, table_prefix=name)
            elif kind == "block":
                kinds = (
                    lambda: VectorMemory(SlowEmbedder(), store=anchor, name=name),
                    lambda: ExtractiveMemory(RefExtractor(), store=anchor, name=name),
                    lambda: StaticMemory(store=anchor, name=name),
                )
                target = kinds[len(str(name)) % 3]()
            else:
                target = AgentMemory(anchor, token_limit=1000, blocks=[_Named(name)])
        except (ValueError, TypeError) as e:
            assert not isinstance(e, StoreError)
            outcomes[f"{kind}: {type(e).__name__}"] += 1
            return
        outcomes[f"{kind}: accepted"] += 1
        if kind == "schema" and name is None:
            return  # no schema: the default
        assert isinstance(name, str) and IDENTIFIER.fullmatch(name), f"accepted {name!r}"
        assert len(name) <= 128
        if kind == "table_name":
            assert tables() == tables_before
            target.append("s", Message("user", "x"))
            made = {name, f"{name}_sessions", f"{name}_summaries"}
            assert tables() == tables_before | made
            assert [m.content for m in target.get_window("s")] == ["x"]
            target.drop_schema()
            created += 1
        assert tables() == tables_before

    fuzz()
    record(
        f"fuzz[names-{backend}]",
        f"{sum(outcomes.values())} names: {dict(sorted(outcomes.items()))}; "
        f"{created} accepted table names created and dropped exactly their tables",
    )


@pytest.mark.parametrize("name", ["a\n", "ChatMessages\n", "t_1\n"])
def test_a_name_ending_in_a_newline_is_refused(name: str, tmp_path: Any) -> None:
    """``re.match("^...$")`` accepts a final newline; table, schema, prefix and block names
    ending in one are ValueErrors, and no table is created."""
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(ValueError, match="invalid table_name"):
        SQLStore(url, table_name=name)
    with pytest.raises(ValueError, match="invalid table_prefix"):
        LongTermStore(url, table_prefix=name)
    with pytest.raises(ValueError, match="invalid block name"):
        VectorMemory(SlowEmbedder(), store=f"sqlite:///{tmp_path / 'never.db'}", name=name)
    with pytest.raises(ValueError, match="invalid block name"):
        AgentMemory(token_limit=1000, blocks=[_Named(name)])
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize("name", ["sqlite", "SQLITE", "sqlite_x", "Sqlite_messages"])
def test_a_name_sqlite_reserves_is_refused_on_sqlite(name: str, tmp_path: Any) -> None:
    """SQLite reserves names starting with ``sqlite_`` (any case): a table name or prefix that
    makes one (``sqlite`` -> ``sqlite_sessions``) is a ValueError before any SQL, not a
    StoreError at first use; other databases accept it."""
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(ValueError, match="reserves"):
        SQLStore(url, table_name=name)
    with pytest.raises(ValueError, match="reserves"):
        LongTermStore(url, table_prefix=name)
    assert not (tmp_path / "never.db").exists()
    SQLStore("postgresql+psycopg://", table_name=name, auto_create=False)
