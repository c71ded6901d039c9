"""SQL Server (and MySQL) validity without a server: compile the DDL and every statement.

The statements are the store's prebuilt ones plus every statement its
operations execute, captured from a real workload on SQLite and recompiled
with SQLAlchemy's mssql dialect, as a SQL Server 2022 connection would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from mssql_memory import Message, OverflowCommit, SQLStore, ToolCall, build_tables
from mssql_memory.stores.engines import Engines
from sqlalchemy import Column, Table, event, text
from sqlalchemy.dialects import mssql, mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateSchema, CreateTable, DDLElement
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.dml import UpdateBase

MSSQL_MAX_PARAMETERS = 2100
MYSQL_MAX_IDENTIFIER = 64
LIMIT = re.compile(r"\bLIMIT\b", re.IGNORECASE)
LEGACY_TEXT = re.compile(r"\b(N?TEXT|IMAGE)\b")


def sql_server_2022() -> Dialect:
    """The mssql dialect as initialized by a connection to SQL Server 2022."""
    dialect = mssql.dialect()
    dialect.server_version_info = (16, 0, 1000)
    dialect._setup_version_attributes()
    dialect._supports_nvarchar_max = True
    return dialect


MSSQL_DIALECTS = [
    pytest.param(sql_server_2022, id="sqlserver-2022"),
    pytest.param(mssql.dialect, id="offline"),  # what Alembic's offline mode compiles with
]


def ddl(store_or_tables: Any, dialect: Dialect) -> list[str]:
    """CREATE TABLE and CREATE INDEX for every table of a store, compiled for ``dialect``."""
    out = []
    for table in store_or_tables.metadata.sorted_tables:
        out.append(str(CreateTable(table).compile(dialect=dialect)))
        out.extend(str(CreateIndex(ix).compile(dialect=dialect)) for ix in table.indexes)
    return out


def constrained_columns(table: Table) -> Iterator[tuple[str, Column[Any]]]:
    """Every column that is part of the primary key, a unique constraint or an index."""
    for column in table.primary_key.columns:
        yield "primary key", column
    for constraint in table.constraints:
        for column in getattr(constraint, "columns", ()):
            yield f"constraint {constraint.name}", column
    for index in table.indexes:
        for column in index.columns:
            yield f"index {index.name}", column


# -- DDL --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_dialect", MSSQL_DIALECTS)
def test_mssql_ddl_uses_sql_server_types(make_dialect: Any) -> None:
    """Keys are NVARCHAR(255) BIN2, ids BIGINT IDENTITY, times DATETIME2; never TEXT/NTEXT."""
    dialect = make_dialect()
    tables = build_tables("ChatMessages")
    statements = ddl(tables, dialect)
    for statement in statements:
        assert not LEGACY_TEXT.search(statement), statement
        assert "VARCHAR(max)" not in statement.replace("NVARCHAR(max)", ""), statement
        assert "IF NOT EXISTS" not in statement
    messages, sessions, summaries = (
        str(CreateTable(t).compile(dialect=dialect))
        for t in (tables.messages, tables.sessions, tables.summaries)
    )
    key = "NVARCHAR(255) COLLATE Latin1_General_100_BIN2"
    assert f"session_id {key} NOT NULL" in messages
    assert f"session_id {key} NOT NULL" in sessions
    assert f"user_id {key} NULL" in sessions
    assert f"session_id {key} NOT NULL" in summaries
    assert "id BIGINT NOT NULL IDENTITY" in messages
    assert "id BIGINT NOT NULL IDENTITY" in summaries
    for column in ("content", "payload"):
        assert f"{column} NVARCHAR(max) NOT NULL" in messages
    for table in tables.metadata.sorted_tables:
        for column in table.columns:
            if column.name.endswith("_at"):
                assert column.type.compile(dialect=dialect) == "DATETIME2", column


@pytest.mark.parametrize("make_dialect", MSSQL_DIALECTS)
def test_no_index_or_key_on_a_max_column(make_dialect: Any) -> None:
    """No primary key, unique constraint or index includes an NVARCHAR(max) (or TEXT) column."""
    dialect = make_dialect()
    tables = build_tables("ChatMessages")
    checked = 0
    for table in tables.metadata.sorted_tables:
        for what, column in constrained_columns(table):
            compiled = column.type.compile(dialect=dialect).upper()
            assert "MAX" not in compiled and "TEXT" not in compiled, (table.name, what, compiled)
            if "CHAR" in compiled:
                assert "(255)" in compiled or "(20)" in compiled or "(12)" in compiled, compiled
            checked += 1
    assert checked >= 10  # the constraints really were inspected


def test_session_keys_are_binary_collated_everywhere() -> None:
    """Every session_id / user_id is NVARCHAR(255) BIN2 on SQL Server, utf8mb4_bin on MySQL."""
    tables = build_tables("ChatMessages")
    keys = [
        column
        for table in tables.metadata.sorted_tables
        for column in table.columns
        if column.name in ("session_id", "user_id")
    ]
    assert len(keys) == 4
    for column in keys:
        assert (
            column.type.compile(dialect=sql_server_2022())
            == "NVARCHAR(255) COLLATE Latin1_General_100_BIN2"
        )
        assert column.type.compile(dialect=mysql.dialect()) == (
            "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )


def test_schema_creation_is_plain_t_sql() -> None:
    """Creating a named schema compiles to CREATE SCHEMA, never CREATE SCHEMA IF NOT EXISTS."""
    compiled = str(CreateSchema("agent_memory").compile(dialect=sql_server_2022()))
    assert compiled.strip() == "CREATE SCHEMA agent_memory"
    tables = build_tables("ChatMessages", schema="agent_memory")
    for statement in ddl(tables, sql_server_2022()):
        assert "[agent_memory]." in statement or "agent_memory." in statement
        assert "IF NOT EXISTS" not in statement


# -- statements ---------------------------------------------------------------------------------


class Captured:
    """Statements a store executed: the ClauseElement, its parameters and a label."""

    def __init__(self) -> None:
        self.items: list[tuple[ClauseElement, list[dict[str, Any]]]] = []

    def listen(self, conn: Any, clause: Any, multiparams: Any, params: Any, options: Any) -> None:
        rows = list(multiparams) if multiparams else [params or {}]
        if rows and isinstance(rows[0], list):  # executemany passed as one list
            rows = rows[0]
        self.items.append((clause, [dict(r) for r in rows]))


def run_workload(store: SQLStore) -> None:
    """Exercise every store operation (both code paths where there are two)."""
    store.create_schema()
    tool = ToolCall("c1", "search", {"q": "x"})
    first = store.append("s1", [Message("user", "hi"), Message("assistant", "", tool_calls=[tool])])
    store.append("s1", Message("tool", "result", tool_call_id="c1"), user_id="ann")
    store.append("s2", [Message("user", str(i)) for i in range(1200)], user_id="bob")
    store.get_window("s1")
    store.get_window("s1", limit=2)
    store.get_window("s1", limit=0)
    store.get_history("s1")
    store.read_session("s1")
    store.get_session("s1")
    store.list_sessions(limit=10)
    store.list_sessions(user_id="ann", after="a", limit=5)
    store.archive("s2", list(range(1, 1201)))
    store.archive("s1", [first[0].seq])
    store.commit_overflow("s1", OverflowCommit(first[1:], summary="sum", block_marks={"f": 2}))
    store.commit_overflow("s1", OverflowCommit(first[1:]))
    store.set_block_mark("s1", "f", 3)
    store.set_system_message("s1", Message("system", "rules"))
    store.set_system_message("s1", None)
    store.replace("s1", [Message("user", "new")])
    store.replace("s3", [])
    store.delete_session("s3")
    store.delete_user("bob")


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[ClauseElement, list[dict]]]:
    """Every statement a full workload executes, on stores with and without history/limits."""
    capture = Captured()
    path = tmp_path_factory.mktemp("tsql") / "capture.db"
    stores = [
        SQLStore(f"sqlite:///{path}", "t_hist", cache=True),
        SQLStore(f"sqlite:///{path}", "t_nohist", max_messages_per_session=5, keep_history=False),
    ]
    for store in stores:
        event.listen(store.engines.sync, "before_execute", capture.listen)
        run_workload(store)
        store.close()
    return capture.items


def compile_for(clause: ClauseElement, rows: list[dict[str, Any]], dialect: Dialect) -> str:
    keys = list(rows[0]) if rows and rows[0] else None
    if isinstance(clause, UpdateBase) and keys:
        return str(clause.compile(dialect=dialect, column_keys=keys))
    return str(clause.compile(dialect=dialect))


def prebuilt_statements(store: SQLStore) -> dict[str, ClauseElement]:
    """The statements a store builds once (``_q_*``, ``_u_*``, ``_i_*`` attributes)."""
    return {
        name: value
        for name, value in vars(store).items()
        if re.match(r"_[qui]_", name) and isinstance(value, ClauseElement)
    }


def test_workload_was_captured(captured: list[tuple[ClauseElement, list[dict]]]) -> None:
    """The capture saw selects, inserts, updates, deletes and DDL (so the checks mean something)."""
    kinds = {type(clause).__name__ for clause, _ in captured}
    assert {"Select", "Insert", "Update", "Delete", "CreateTable", "CreateIndex"} <= kinds


def test_prebuilt_statements_compile_for_sql_server(tmp_path: Any) -> None:
    """Every prebuilt statement compiles for SQL Server without LIMIT; tail reads use FETCH/TOP."""
    store = SQLStore(f"sqlite:///{tmp_path / 'x.db'}", "t")
    statements = prebuilt_statements(store)
    assert {"_q_state", "_q_window", "_q_window_tail", "_u_append", "_u_lock"} <= set(statements)
    dialect = sql_server_2022()
    for name, statement in statements.items():
        compiled = str(statement.compile(dialect=dialect))
        assert not LIMIT.search(compiled), (name, compiled)
    tail = str(store._q_window_tail.compile(dialect=dialect))
    assert "FETCH FIRST" in tail or "TOP" in tail
    offline = str(store._q_window_tail.compile(dialect=mssql.dialect()))
    assert not LIMIT.search(offline)
    assert not list(tmp_path.iterdir())  # building statements touched no database


def test_update_returning_compiles_to_output_inserted(tmp_path: Any) -> None:
    """Updates with RETURNING (append counters, session lock, eviction) use OUTPUT inserted.*."""
    store = SQLStore(f"sqlite:///{tmp_path / 'x.db'}", "t")
    compiled = str(store._u_append.returning(*store._counters).compile(dialect=sql_server_2022()))
    assert compiled.startswith("UPDATE [t_sessions] SET") or compiled.startswith(
        "UPDATE t_sessions SET"
    )
    assert "OUTPUT inserted.next_seq, inserted.version" in compiled
    assert "RETURNING" not in compiled
    for locking in (store._u_lock_returning, store._u_evict_returning):
        compiled = str(locking.compile(dialect=sql_server_2022()))
        assert "OUTPUT inserted.version" in compiled and "RETURNING" not in compiled


@pytest.mark.parametrize("make_dialect", MSSQL_DIALECTS)
def test_every_executed_statement_compiles_for_sql_server(
    captured: list[tuple[ClauseElement, list[dict]]], make_dialect: Any
) -> None:
    """Each executed statement is T-SQL: no LIMIT/RETURNING/TEXT/IF NOT EXISTS; TOP or FETCH."""
    dialect = make_dialect()
    for clause, rows in captured:
        compiled = compile_for(clause, rows, dialect)
        assert not LIMIT.search(compiled), compiled
        assert "RETURNING" not in compiled, compiled
        assert "IF NOT EXISTS" not in compiled, compiled
        if isinstance(clause, DDLElement):
            assert not LEGACY_TEXT.search(compiled), compiled
        if getattr(clause, "_limit_clause", None) is not None:
            assert re.search(r"\bTOP\b|FETCH FIRST|ROW_NUMBER\(\)", compiled), compiled
        if isinstance(clause, UpdateBase) and clause._returning:
            assert "OUTPUT inserted." in compiled, compiled


def test_no_statement_exceeds_sql_server_parameter_limit(
    captured: list[tuple[ClauseElement, list[dict]]],
) -> None:
    """No executed statement binds more than 2,100 parameters (IN lists are chunked)."""
    largest = 0
    dialect = sql_server_2022()
    for clause, rows in captured:
        if isinstance(clause, DDLElement):
            continue
        compiled = clause.compile(dialect=dialect)
        for row in rows:
            values = {**compiled.params, **row}
            size = sum(len(v) if isinstance(v, (list, tuple)) else 1 for v in values.values())
            largest = max(largest, size)
            assert size <= MSSQL_MAX_PARAMETERS, str(compiled)[:200]
    assert largest >= 500  # the 1,200-message archive really went through chunked IN lists


# -- MySQL / MariaDB -------------------------------------------------------------------------------


def test_mysql_ddl_uses_utf8mb4_bin_and_longtext() -> None:
    """On MySQL/MariaDB ids are utf8mb4_bin VARCHAR(255), payloads LONGTEXT, tables InnoDB."""
    dialect = mysql.dialect()
    statements = ddl(build_tables("ChatMessages"), dialect)
    tables = [s for s in statements if "CREATE TABLE" in s]
    assert len(tables) == 3
    for statement in tables:
        assert "session_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" in statement
        assert "ENGINE=InnoDB" in statement and "CHARSET=utf8mb4" in statement
    messages = next(
        s for s in tables if "CREATE TABLE `ChatMessages` (" in s or "ChatMessages (" in s
    )
    assert "content LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL" in messages
    assert "payload LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL" in messages
    assert "DATETIME(6)" in messages


@pytest.mark.parametrize("length", [1, 40, 41, 64, 118])
def test_index_and_constraint_names_fit_mysql(length: int) -> None:
    """Index and constraint names stay within MySQL's 64 characters even for a 118-char table."""
    name = "t" * length
    tables = build_tables(name)
    names = []
    for table in tables.metadata.sorted_tables:
        names += [ix.name for ix in table.indexes]
        names += [c.name for c in table.constraints if c.name]
    assert len(names) == 4
    assert len(set(names)) == len(names)
    for ix_name in names:
        assert len(ix_name) <= MYSQL_MAX_IDENTIFIER, ix_name
    for statement in ddl(tables, mysql.dialect()):
        for found in re.findall(r"(?:INDEX|CONSTRAINT) `?(\w+)`?", statement):
            assert len(found) <= MYSQL_MAX_IDENTIFIER


def test_long_table_names_get_distinct_index_names() -> None:
    """Two long table names sharing a 31-character prefix still get different index names."""
    a = build_tables("p" * 60 + "a")
    b = build_tables("p" * 60 + "b")
    names_a = {ix.name for t in a.metadata.sorted_tables for ix in t.indexes}
    names_b = {ix.name for t in b.metadata.sorted_tables for ix in t.indexes}
    assert not names_a & names_b


@pytest.mark.integration
def test_mariadb_tables_are_binary_collated(mariadb_url: str, make_store: Any) -> None:
    """On a live MariaDB the id columns really use utf8mb4_bin (so "Alice" != "alice")."""
    store = make_store("mariadb")
    store.create_schema()
    with store.engines.sync.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE :t "
                "AND COLUMN_NAME IN ('session_id', 'user_id')"
            ),
            {"t": f"{store.table_name}%"},
        ).all()
    assert len(rows) == 4
    assert {collation for _, _, collation in rows} == {"utf8mb4_bin"}


# -- names and drivers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x; DROP TABLE y", id="injection"),
        pytest.param("x" * 129, id="129-chars"),
        pytest.param("1table", id="leading-digit"),
        pytest.param("", id="empty"),
        pytest.param("dbo.ChatMessages", id="dotted"),
        pytest.param("[ChatMessages]", id="bracketed"),
    ],
)
def test_build_tables_rejects_bad_names(name: str) -> None:
    """build_tables refuses names that are not plain identifiers (ValueError)."""
    with pytest.raises(ValueError):
        build_tables(name)
    with pytest.raises(ValueError):
        build_tables("ok", schema=name)


@pytest.mark.parametrize("name", [None, 1, b"ChatMessages", ("t",)])
def test_build_tables_rejects_non_strings(name: Any) -> None:
    """build_tables refuses a non-str table or schema name (TypeError)."""
    with pytest.raises(TypeError):
        build_tables(name)
    with pytest.raises(TypeError):
        build_tables("ok", schema=name if name is not None else 1)


def test_build_tables_accepts_the_longest_names() -> None:
    """A 118-character table (128 with "_summaries") and a 128-character schema are accepted."""
    tables = build_tables("a" * 118, schema="s" * 128)
    assert max(len(t.name) for t in tables.metadata.sorted_tables) == 128
    assert {t.schema for t in tables.metadata.sorted_tables} == {"s" * 128}


def test_pymssql_store_has_no_odbc_async_twin() -> None:
    """A pymssql URL carries no ODBC driver, so async calls must not switch to aioodbc."""
    engines = Engines("mssql+pymssql://sa:secret@127.0.0.1:1/master")
    try:
        assert engines.async_engine is None  # async calls run the pymssql engine in a thread
    finally:
        engines.dispose()
    pytest.importorskip("pyodbc", reason="pyodbc needs the system ODBC library (unixodbc)")
    pytest.importorskip("aioodbc")
    odbc = Engines(
        "mssql+pyodbc://sa:secret@127.0.0.1:1/master?driver=ODBC+Driver+18+for+SQL+Server"
    )
    try:
        twin = odbc.async_engine
        assert twin is not None and twin.url.drivername == "mssql+aioodbc"
        assert twin.url.query["driver"] == "ODBC Driver 18 for SQL Server"
    finally:
        odbc.dispose()


def test_window_index_covers_the_window_read() -> None:
    """(session_id, status, seq) is indexed for the window read; (session_id, seq) is unique."""
    m = build_tables("t").messages
    (index,) = m.indexes
    assert [c.name for c in index.columns] == ["session_id", "status", "seq"]
    unique = next(c for c in m.constraints if c.name and c.name.startswith("uq_seq"))
    assert [c.name for c in unique.columns] == ["session_id", "seq"]
