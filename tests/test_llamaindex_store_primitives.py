"""The store primitives behind MSSQLChatStore: paged reads by status, archived appends,
deletes by seq or status, atomic take-oldest and whole-history rewrite — on every backend."""

from __future__ import annotations

import pytest
from mssql_memory import InMemoryStore, Message, SessionStore, SQLStore, ToolCall
from mssql_memory.stores.base import OverflowCommit

BACKENDS = ("memory", "sqlite", "postgresql", "mariadb")


@pytest.fixture(params=BACKENDS)
def pstore(request: pytest.FixtureRequest, make_store) -> InMemoryStore | SQLStore:
    """A fresh store on each backend the LlamaIndex adapter is tested on."""
    return make_store(request.param)


def texts(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


def check_counters(store: InMemoryStore | SQLStore, sid: str) -> None:
    """The session record's counters equal a recount of the stored rows."""
    state = store.get_session(sid)
    everything = store.read_messages(sid)
    active = store.read_messages(sid, active=True)
    assert state.message_count == len(everything)
    assert state.active_count == len(active)
    assert state.active_tokens == sum(m.token_count or 0 for m in active)
    assert [m.seq for m in everything] == sorted(m.seq for m in everything)


def seed(store: InMemoryStore | SQLStore, sid: str, n: int = 6) -> list[Message]:
    return list(store.append(sid, [Message("user", f"m{i}") for i in range(n)]))


def test_protocol_still_satisfied(pstore: InMemoryStore | SQLStore) -> None:
    """Both stores still satisfy the SessionStore protocol with the new methods."""
    assert isinstance(pstore, SessionStore)


def test_read_messages_pages_by_status(pstore: InMemoryStore | SQLStore) -> None:
    """read_messages filters by status and pages with limit/offset, always in seq order."""
    seed(pstore, "s")
    pstore.archive("s", [1, 2])
    assert texts(pstore.read_messages("s")) == [f"m{i}" for i in range(6)]
    assert texts(pstore.read_messages("s", active=True)) == ["m2", "m3", "m4", "m5"]
    assert texts(pstore.read_messages("s", active=False)) == ["m0", "m1"]
    assert texts(pstore.read_messages("s", limit=2, offset=1)) == ["m1", "m2"]
    assert texts(pstore.read_messages("s", active=True, limit=2, offset=3)) == ["m5"]
    assert texts(pstore.read_messages("s", active=True, offset=2)) == ["m4", "m5"]
    assert pstore.read_messages("s", limit=0) == []
    assert pstore.read_messages("nobody") == []
    assert {m.status for m in pstore.read_messages("s", active=False)} == {"archived"}


def test_read_messages_counts_summarized_as_inactive(pstore: InMemoryStore | SQLStore) -> None:
    """Summarized messages are part of the inactive (archived) history, not the window."""
    stored = seed(pstore, "s", 4)
    assert pstore.commit_overflow("s", OverflowCommit(stored[:2], summary="S", summary_tokens=1))
    assert texts(pstore.read_messages("s", active=False)) == ["m0", "m1"]
    assert {m.status for m in pstore.read_messages("s", active=False)} == {"summarized"}
    check_counters(pstore, "s")


def test_read_messages_rejects_bad_paging(pstore: InMemoryStore | SQLStore) -> None:
    """A negative limit or offset is a ValueError, not a silent empty page."""
    with pytest.raises(ValueError):
        pstore.read_messages("s", limit=-1)
    with pytest.raises(ValueError):
        pstore.read_messages("s", offset=-1)


def test_append_archived_skips_the_window(pstore: InMemoryStore | SQLStore) -> None:
    """Archived appends get the next seqs, stay out of the window and keep counters exact."""
    seed(pstore, "s", 2)
    version = pstore.get_session("s").version
    stored = pstore.append_archived("s", [Message("assistant", "old1"), Message("user", "old2")])
    assert [m.seq for m in stored] == [3, 4] and {m.status for m in stored} == {"archived"}
    assert texts(pstore.get_window("s")) == ["m0", "m1"]
    assert texts(pstore.read_messages("s", active=False)) == ["old1", "old2"]
    assert pstore.get_session("s").version > version
    check_counters(pstore, "s")
    assert texts(pstore.append("s", Message("user", "new"))) == ["new"]
    assert pstore.get_window("s")[-1].seq == 5


def test_append_archived_creates_the_session(pstore: InMemoryStore | SQLStore) -> None:
    """An archived append to a new session creates it, owned by ``user_id``."""
    pstore.append_archived("fresh", Message("user", "x"), user_id="u1")
    state = pstore.get_session("fresh")
    assert state.exists and state.user_id == "u1" and state.active_count == 0
    assert state.message_count == 1
    assert pstore.append_archived("fresh", []) == []


def test_delete_messages_by_seq(pstore: InMemoryStore | SQLStore) -> None:
    """Deleting by seq removes exactly those rows, of any status, and fixes the counters."""
    seed(pstore, "s")
    pstore.archive("s", [1])
    assert pstore.delete_messages("s", [1, 3, 99]) == 2
    assert texts(pstore.read_messages("s")) == ["m1", "m3", "m4", "m5"]
    check_counters(pstore, "s")
    assert pstore.delete_messages("s", []) == 0
    assert pstore.delete_messages("nobody", [1]) == 0


def test_delete_messages_by_status(pstore: InMemoryStore | SQLStore) -> None:
    """Deleting by status leaves the other status alone; the session record stays."""
    seed(pstore, "s")
    pstore.archive("s", [1, 2])
    assert pstore.delete_messages("s", active=False) == 2
    assert texts(pstore.read_messages("s")) == ["m2", "m3", "m4", "m5"]
    check_counters(pstore, "s")
    assert pstore.delete_messages("s", active=True) == 4
    check_counters(pstore, "s")
    assert pstore.get_session("s").exists
    pstore.append("s", Message("user", "again"))
    assert pstore.get_window("s")[0].seq == 7  # seqs are never reused


def test_delete_messages_in_chunks(pstore: InMemoryStore | SQLStore) -> None:
    """More seqs than one IN list holds (SQL Server's 2,100-parameter cap) delete in chunks."""
    pstore.append("s", [Message("user", str(i), token_count=1) for i in range(1200)])
    assert pstore.delete_messages("s", list(range(1, 1101))) == 1100
    assert pstore.get_session("s").active_count == 100
    check_counters(pstore, "s")


def test_take_oldest_archives_atomically(pstore: InMemoryStore | SQLStore) -> None:
    """take_oldest moves exactly the n oldest active messages to the archive and returns them."""
    seed(pstore, "s")
    taken = pstore.take_oldest("s", 2)
    assert texts(taken) == ["m0", "m1"] and {m.status for m in taken} == {"archived"}
    assert texts(pstore.get_window("s")) == ["m2", "m3", "m4", "m5"]
    assert texts(pstore.read_messages("s", active=False)) == ["m0", "m1"]
    check_counters(pstore, "s")
    assert texts(pstore.take_oldest("s", 10)) == ["m2", "m3", "m4", "m5"]
    assert pstore.take_oldest("s", 1) == [] and pstore.take_oldest("nobody", 1) == []


def test_take_oldest_delete(pstore: InMemoryStore | SQLStore) -> None:
    """With delete=True the oldest messages are removed, not archived."""
    seed(pstore, "s")
    assert texts(pstore.take_oldest("s", 3, delete=True)) == ["m0", "m1", "m2"]
    assert texts(pstore.read_messages("s")) == ["m3", "m4", "m5"]
    check_counters(pstore, "s")


def test_rewrite_replaces_everything(pstore: InMemoryStore | SQLStore) -> None:
    """rewrite replaces every message and the summary in one step; system message stays."""
    stored = seed(pstore, "s")
    pstore.commit_overflow("s", OverflowCommit(stored[:2], summary="S", summary_tokens=1))
    pstore.set_system_message("s", Message("system", "sys"))
    new = pstore.rewrite("s", [Message("user", "a"), Message("assistant", "b")])
    assert [m.seq for m in new] == [7, 8]
    assert texts(pstore.read_messages("s")) == ["a", "b"]
    state = pstore.get_session("s")
    assert state.summary is None and state.system_message.content == "sys"
    check_counters(pstore, "s")
    pstore.rewrite("s", [Message("user", "z")], status="archived")
    assert texts(pstore.read_messages("s", active=False)) == ["z"]
    assert pstore.get_window("s") == []
    check_counters(pstore, "s")
    assert pstore.rewrite("s", []) == [] and pstore.read_messages("s") == []
    with pytest.raises(ValueError):
        pstore.rewrite("s", [], status="summarized")


def test_rewrite_rejects_bad_batch_before_touching(pstore: InMemoryStore | SQLStore) -> None:
    """A bad batch rejects the whole rewrite and the old history survives."""
    seed(pstore, "s", 2)
    with pytest.raises(ValueError):
        pstore.rewrite("s", [Message("user", "ok"), "not a message"])  # type: ignore[list-item]
    assert texts(pstore.read_messages("s")) == ["m0", "m1"]


def test_tool_calls_survive_primitives(pstore: InMemoryStore | SQLStore) -> None:
    """Messages written by the primitives keep their neutral fields and raw payload."""
    call = Message("assistant", "", tool_calls=(ToolCall("c1", "f", {"x": 1}),), raw={"k": [1]})
    pstore.append_archived("s", [call, Message("tool", "42", tool_call_id="c1")])
    back = pstore.read_messages("s", active=False)
    assert back[0].tool_calls == call.tool_calls and back[0].raw == {"k": [1]}
    assert back[1].tool_call_id == "c1"


async def test_async_twins_match(amake_store) -> None:
    """The a-prefixed primitives behave like the sync ones on an async driver."""
    for store in (
        InMemoryStore(max_messages_per_session=None, keep_history=True),
        amake_store("sqlite"),
    ):
        await store.aappend("s", [Message("user", f"m{i}") for i in range(4)])
        await store.aappend_archived("s", Message("user", "old"))
        assert texts(await store.aread_messages("s", active=False)) == ["old"]
        assert texts(await store.atake_oldest("s", 1)) == ["m0"]
        assert await store.adelete_messages("s", [2]) == 1
        assert texts(await store.aread_messages("s", limit=2, offset=1)) == ["m2", "m3"]
        await store.arewrite("s", [Message("user", "r")])
        assert texts(await store.aread_messages("s")) == ["r"]
        state = await store.aget_session("s")
        assert (state.message_count, state.active_count) == (1, 1)


@pytest.mark.integration
async def test_async_twins_on_postgresql(amake_store) -> None:
    """The async primitives run natively on psycopg's async driver."""
    store = amake_store("postgresql")
    await store.aappend("s", [Message("user", f"m{i}") for i in range(3)])
    assert texts(await store.atake_oldest("s", 2, delete=True)) == ["m0", "m1"]
    await store.aappend_archived("s", Message("user", "old"))
    assert await store.adelete_messages("s", active=False) == 1
    state = await store.aget_session("s")
    assert (state.message_count, state.active_count) == (1, 1)
