"""PyMySQL engines skip the pool's ROLLBACK after a committed transaction, and still roll
back a connection returned with its transaction open (real MariaDB)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import backend_params
from mssql_memory import Message
from sqlalchemy import text

pytestmark = pytest.mark.parametrize("backend", backend_params(("mariadb",)))


@pytest.fixture
def rollbacks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts PyMySQL ROLLBACK commands (sent by Connection.rollback)."""
    import pymysql.connections

    calls: list[int] = []
    original = pymysql.connections.Connection.rollback

    def counting(self: Any) -> None:
        calls.append(1)
        original(self)

    monkeypatch.setattr(pymysql.connections.Connection, "rollback", counting)
    return calls


def test_committed_writes_and_reads_send_no_extra_rollback(
    make_store: Any, backend: str, rollbacks: list[int]
) -> None:
    store = make_store(backend)
    store.append("s", Message("user", "warm up"))  # creates the tables, opens the pool
    rollbacks.clear()
    for i in range(5):
        store.append("s", Message("user", f"m{i}"))
    assert rollbacks == []  # committed: the reply said no transaction is open
    assert [m.content for m in store.get_history("s")][-5:] == [f"m{i}" for i in range(5)]
    assert len(rollbacks) == 1  # a read ends its transaction with one ROLLBACK, as before


def test_a_connection_returned_inside_a_transaction_is_rolled_back(
    make_store: Any, backend: str, rollbacks: list[int]
) -> None:
    store = make_store(backend)
    store.append("s", Message("user", "kept"))
    engine = store.engines.sync
    raw = engine.raw_connection()  # bypasses SQLAlchemy's own transaction handling
    cursor = raw.cursor()
    cursor.execute(text(f"DELETE FROM {store.table_name}").compile(dialect=engine.dialect).string)
    cursor.close()
    rollbacks.clear()
    raw.close()  # back to the pool with the DELETE uncommitted
    assert rollbacks == [1]
    assert [m.content for m in store.get_history("s")] == ["kept"]
