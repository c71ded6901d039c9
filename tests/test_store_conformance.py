"""One conformance suite for every session store: memory, SQLite, PostgreSQL, MariaDB, SQL Server.

Each contract test runs on every backend (``backend``) and through both the
sync and the async API (``mode``): what one store guarantees, all of them do.
The SQL-only part (schema, restarts, the cross-instance cache, async engines)
follows at the end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from mssql_memory import (
    ApproximateTokenCounter,
    InMemoryStore,
    InvalidMessageError,
    Message,
    OverflowCommit,
    SessionStore,
    SQLStore,
    ToolCall,
)
from sqlalchemy import inspect, text

S = "session-1"


class Api:
    """A store driven through its sync or its async methods, awaited the same way."""

    def __init__(self, store: InMemoryStore | SQLStore, mode: str) -> None:
        self.store = store
        self.mode = mode

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if self.mode == "async":
            return getattr(self.store, f"a{name}")
        method = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def make_api(backend: str, make_store: Any, mode: str) -> Any:
    """``make_api(**store_kwargs)``: a fresh store on ``backend`` driven in ``mode``."""
    stores = []

    def make(**kwargs: Any) -> Api:
        store = make_store(backend, **kwargs)
        stores.append(store)
        return Api(store, mode)

    yield make
    if mode == "async":  # close async pools inside the loop that opened them
        for store in stores:
            if isinstance(store, SQLStore):
                await store.aclose()


@pytest.fixture
async def api(make_api: Any) -> Api:
    return make_api()


def user(text: str, **fields: Any) -> Message:
    return Message("user", text, **fields)


def users(*texts: str) -> list[Message]:
    return [user(t) for t in texts]


def contents(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


def seqs(messages: list[Message]) -> list[int | None]:
    return [m.seq for m in messages]


class FixedCounter:
    """A token counter whose counts are easy to predict: 10 per message plus its length."""

    def count_text(self, text: str) -> int:
        return len(text)

    def count_message(self, message: Message) -> int:
        return 10 + len(message.content)


# -- append and read ------------------------------------------------------------------


def test_every_store_satisfies_the_protocol(store: Any) -> None:
    """Each backend implements the whole SessionStore protocol (sync and async twins)."""
    assert isinstance(store, SessionStore)


async def test_append_returns_the_batch_with_seqs_in_order(api: Api) -> None:
    """A batch gets per-session seqs 1..n in order; the next batch continues the sequence."""
    batch = users("a", "b", "c", "d", "e")
    stored = await api.append(S, batch)
    assert seqs(stored) == [1, 2, 3, 4, 5]
    assert [m.id for m in stored] == [m.id for m in batch]
    assert all(m.status == "active" and m.token_count for m in stored)
    more = await api.append(S, user("f"))
    assert seqs(more) == [6]
    assert contents(await api.get_window(S)) == ["a", "b", "c", "d", "e", "f"]


async def test_append_reports_the_counters_after_it(make_api: Any) -> None:
    """append returns the session's version, active count and tokens as they are after it."""
    api = make_api(max_messages_per_session=3)
    await api.set_system_message(S, Message("system", "be brief"))
    for batch in (users("a", "b"), users("c", "d"), users("e")):
        result = await api.append(S, batch)
        state = await api.get_session(S)
        assert result.version == state.version
        assert (result.active_count, result.active_tokens) == (
            state.active_count,
            state.active_tokens,
        )
        assert result.system_tokens == state.system_message.token_count > 0
    assert (await api.get_session(S)).active_count == 3


async def test_empty_batch_stores_nothing(api: Api) -> None:
    """Appending an empty batch returns [] and does not create the session."""
    assert await api.append(S, []) == []
    assert not (await api.get_session(S)).exists


async def test_token_counts_are_computed_once_at_write_time(make_api: Any) -> None:
    """The store's counter fills token_count when written; a preset count is kept as is."""
    api = make_api(token_counter=FixedCounter())
    stored = await api.append(S, [user("abcd"), user("xy", token_count=99)])
    assert [m.token_count for m in stored] == [14, 99]
    assert [m.token_count for m in await api.get_window(S)] == [14, 99]
    assert (await api.get_session(S)).active_tokens == 113


async def test_window_newest_n(api: Api) -> None:
    """get_window(limit=n) returns the newest n active messages, oldest first; 0 gives []."""
    await api.append(S, users("a", "b", "c", "d"))
    assert contents(await api.get_window(S)) == ["a", "b", "c", "d"]
    assert contents(await api.get_window(S, limit=None)) == ["a", "b", "c", "d"]
    assert contents(await api.get_window(S, limit=2)) == ["c", "d"]
    assert contents(await api.get_window(S, limit=1)) == ["d"]
    assert await api.get_window(S, limit=0) == []
    assert contents(await api.get_window(S, limit=5)) == ["a", "b", "c", "d"]
    assert contents(await api.get_window(S, limit=7)) == ["a", "b", "c", "d"]
    assert contents(await api.get_window(S, limit=10)) == ["a", "b", "c", "d"]


async def test_unknown_session_reads_as_empty(api: Api) -> None:
    """Reading a session never written returns nothing and does not create it."""
    assert await api.get_window("nobody") == []
    assert await api.get_history("nobody") == []
    state = await api.get_session("nobody")
    assert (state.exists, state.version, state.message_count, state.active_tokens) == (
        False,
        0,
        0,
        0,
    )
    snapshot = await api.read_session("nobody")
    assert snapshot.window == [] and not snapshot.state.exists
    assert await api.list_sessions() == []


async def test_read_session_returns_state_and_window(api: Api) -> None:
    """read_session gives the state and the active window of the same session."""
    stored = await api.append(S, users("a", "b", "c"))
    await api.archive(S, [1])
    snapshot = await api.read_session(S)
    assert contents(snapshot.window) == ["b", "c"]
    assert snapshot.state.active_count == 2
    assert snapshot.state.active_tokens == sum(m.token_count for m in stored[1:])
    assert snapshot.state == await api.get_session(S)


async def test_history_includes_archived_messages_with_status(api: Api) -> None:
    """get_history returns every message in seq order, archived ones marked as such."""
    await api.append(S, users("a", "b", "c"))
    await api.archive(S, [2])
    history = await api.get_history(S)
    assert [(m.seq, m.content, m.status) for m in history] == [
        (1, "a", "active"),
        (2, "b", "archived"),
        (3, "c", "active"),
    ]
    assert contents(await api.get_window(S)) == ["a", "c"]


# -- archive and replace -------------------------------------------------------------------


async def test_archive_by_seqs_adjusts_counters_and_is_idempotent(api: Api) -> None:
    """archive returns how many active messages left the window; repeating it changes nothing."""
    stored = await api.append(S, users("one", "two", "three", "four"))
    total = sum(m.token_count for m in stored)
    assert await api.archive(S, [1, 3, 99]) == 2
    state = await api.get_session(S)
    assert (state.message_count, state.active_count) == (4, 2)
    assert state.active_tokens == total - stored[0].token_count - stored[2].token_count
    assert await api.archive(S, [1, 3]) == 0
    assert await api.archive(S, []) == 0
    again = await api.get_session(S)
    assert (again.message_count, again.active_count, again.active_tokens) == (
        4,
        2,
        state.active_tokens,
    )
    assert contents(await api.get_window(S)) == ["two", "four"]


async def test_archive_on_unknown_session_creates_nothing(api: Api) -> None:
    """Archiving in a session that does not exist returns 0 and leaves no trace."""
    assert await api.archive("ghost", [1, 2]) == 0
    assert not (await api.get_session("ghost")).exists


async def test_archive_without_history_deletes(make_api: Any) -> None:
    """With keep_history=False archived messages are deleted and message_count drops."""
    api = make_api(keep_history=False)
    await api.append(S, users("a", "b", "c"))
    assert await api.archive(S, [1, 2]) == 2
    assert contents(await api.get_history(S)) == ["c"]
    state = await api.get_session(S)
    assert (state.message_count, state.active_count) == (1, 1)


async def test_commit_overflow_without_history_deletes(make_api: Any) -> None:
    """With keep_history=False an overflow (with and without summary) deletes the evicted
    messages, and every counter follows."""
    api = make_api(keep_history=False)
    stored = await api.append(S, users("a", "b", "c", "d"))
    assert await api.commit_overflow(S, OverflowCommit(stored[:1])) is True
    state = await api.get_session(S)
    assert (state.message_count, state.active_count) == (3, 3)
    assert state.active_tokens == sum(m.token_count for m in stored[1:])
    commit = OverflowCommit(stored[1:3], summary="b and c", summary_tokens=3)
    assert await api.commit_overflow(S, commit) is True
    assert contents(await api.get_history(S)) == ["d"]
    state = await api.get_session(S)
    assert (state.message_count, state.active_count) == (1, 1)
    assert state.active_tokens == stored[3].token_count


async def test_replace_archives_old_window_and_clears_summary(api: Api) -> None:
    """replace makes the new messages the whole window; the old one is archived, summary gone."""
    stored = await api.append(S, users("a", "b", "c"))
    assert await api.commit_overflow(S, OverflowCommit(stored[:1], summary="s", summary_tokens=1))
    new = await api.replace(S, users("x", "y"))
    assert seqs(new) == [4, 5]
    assert contents(await api.get_window(S)) == ["x", "y"]
    state = await api.get_session(S)
    assert state.summary is None
    assert (state.message_count, state.active_count) == (5, 2)
    assert state.active_tokens == sum(m.token_count for m in new)
    assert [(m.content, m.status) for m in await api.get_history(S)] == [
        ("a", "summarized"),
        ("b", "archived"),
        ("c", "archived"),
        ("x", "active"),
        ("y", "active"),
    ]


async def test_batches_may_be_any_iterable(api: Api) -> None:
    """append and replace accept a generator of messages and store every one of them."""
    await api.append(S, (user(t) for t in ("a", "b")))
    new = await api.replace(S, (user(t) for t in ("x", "y", "z")))
    assert contents(new) == ["x", "y", "z"]
    assert contents(await api.get_window(S)) == ["x", "y", "z"]


async def test_replace_with_an_invalid_message_changes_nothing(api: Api) -> None:
    """A replace batch holding one bad message is rejected whole; the old window stays."""
    await api.append(S, users("a", "b"))
    before = await api.get_session(S)
    with pytest.raises(InvalidMessageError):
        await api.replace(S, [user("x"), user("y", metadata={"bad": {1, 2}})])
    assert contents(await api.get_window(S)) == ["a", "b"]
    assert await api.get_session(S) == before


async def test_replace_with_nothing_empties_the_window(api: Api) -> None:
    """replace(session, []) archives the whole window and still counts as a write."""
    await api.append(S, users("a", "b"))
    before = await api.get_session(S)
    assert await api.replace(S, []) == []
    assert await api.get_window(S) == []
    state = await api.get_session(S)
    assert (state.active_count, state.active_tokens, state.message_count) == (0, 0, 2)
    assert state.version > before.version


# -- sessions -------------------------------------------------------------------------------


async def test_delete_session_removes_only_that_session(api: Api) -> None:
    """delete_session removes its messages and record, reports whether it existed, spares others."""
    await api.append(S, users("a", "b"))
    await api.append("other", users("keep"))
    assert await api.delete_session(S) is True
    assert await api.delete_session(S) is False
    assert await api.get_window(S) == [] and await api.get_history(S) == []
    assert not (await api.get_session(S)).exists
    assert contents(await api.get_window("other")) == ["keep"]
    assert seqs(await api.append(S, user("fresh"))) == [1]


async def test_list_sessions_pages_in_id_order(api: Api) -> None:
    """list_sessions returns sessions ordered by id, ``limit`` per page, continuing ``after``."""
    ids = [f"s{i:02d}" for i in range(7)]
    for i, sid in enumerate(reversed(ids)):
        await api.append(sid, users(*["m"] * (i + 1)))
    pages, after = [], None
    while True:
        page = await api.list_sessions(limit=3, after=after)
        if not page:
            break
        assert len(page) <= 3
        pages.append([info.session_id for info in page])
        after = page[-1].session_id
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    assert await api.list_sessions(limit=0) == []
    first = (await api.list_sessions(limit=1))[0]
    assert first.session_id == "s00"
    assert (first.message_count, first.active_count) == (7, 7)
    assert first.active_tokens == (await api.get_session("s00")).active_tokens > 0


async def test_list_sessions_filters_by_user(api: Api) -> None:
    """list_sessions(user_id=u) lists exactly u's sessions."""
    await api.append("a1", user("x"), user_id="ann")
    await api.append("b1", user("x"), user_id="bob")
    await api.append("a2", user("x"), user_id="ann")
    await api.append("n1", user("x"))
    infos = await api.list_sessions(user_id="ann")
    assert [(i.session_id, i.user_id) for i in infos] == [("a1", "ann"), ("a2", "ann")]
    assert [i.session_id for i in await api.list_sessions()] == ["a1", "a2", "b1", "n1"]
    assert await api.list_sessions(user_id="nobody") == []


async def test_session_state_tracks_counts_tokens_and_version(api: Api) -> None:
    """message_count, active_count and active_tokens follow every write; the version rises."""
    versions = [0]

    async def check(message_count: int, active_count: int) -> None:
        state = await api.get_session(S)
        window = await api.get_window(S)
        assert (state.message_count, state.active_count) == (message_count, active_count)
        assert state.active_tokens == sum(m.token_count for m in window)
        assert state.version > versions[-1]
        versions.append(state.version)

    stored = await api.append(S, users("a", "b", "c"), user_id="u")
    await check(3, 3)
    await api.append(S, users("d"))
    await check(4, 4)
    await api.archive(S, [1])
    await check(4, 3)
    await api.commit_overflow(S, OverflowCommit([stored[1]], summary="b", summary_tokens=2))
    await check(4, 2)
    await api.set_block_mark(S, "facts", 2)
    await check(4, 2)
    await api.set_system_message(S, Message("system", "be brief"))
    await check(4, 2)
    await api.replace(S, users("z"))
    await check(5, 1)
    state = await api.get_session(S)
    assert state.exists and state.user_id == "u" and state.session_id == S


async def test_system_message_set_get_and_clear(api: Api) -> None:
    """The system message is kept beside the window (never in it) and can be cleared."""
    await api.append(S, users("hi"))
    system = Message("system", "You are terse.", name="rules", metadata={"v": 2})
    await api.set_system_message(S, system)
    got = (await api.get_session(S)).system_message
    assert got is not None
    assert (got.id, got.role, got.content, got.name, dict(got.metadata)) == (
        system.id,
        "system",
        "You are terse.",
        "rules",
        {"v": 2},
    )
    assert contents(await api.get_window(S)) == ["hi"]
    assert contents(await api.get_history(S)) == ["hi"]
    await api.set_system_message(S, None)
    assert (await api.get_session(S)).system_message is None


async def test_system_message_must_have_system_role(api: Api) -> None:
    """set_system_message refuses a non-system message and changes nothing."""
    await api.set_system_message(S, Message("system", "keep me"))
    with pytest.raises(ValueError):
        await api.set_system_message(S, user("not a system message"))
    assert (await api.get_session(S)).system_message.content == "keep me"


async def test_system_message_on_new_session_creates_it(api: Api) -> None:
    """Setting a system message on a new session creates it with an empty window."""
    await api.set_system_message("new", Message("system", "hello"))
    state = await api.get_session("new")
    assert state.exists and state.system_message.content == "hello"
    assert await api.get_window("new") == []


# -- overflow commits and block marks --------------------------------------------------------


async def test_commit_overflow_without_summary_archives(api: Api) -> None:
    """An overflow without summary moves the evicted messages to status "archived"."""
    stored = await api.append(S, users("a", "b", "c"))
    assert await api.commit_overflow(S, OverflowCommit(stored[:2])) is True
    assert [m.status for m in await api.get_history(S)] == ["archived", "archived", "active"]
    state = await api.get_session(S)
    assert state.summary is None
    assert (state.active_count, state.active_tokens) == (1, stored[2].token_count)


async def test_commit_overflow_with_summary_stores_it(api: Api) -> None:
    """An overflow with a summary marks the evicted messages "summarized" and stores the summary."""
    stored = await api.append(S, users("a", "b", "c", "d"))
    commit = OverflowCommit(stored[:3], summary="a, b and c happened", summary_tokens=7)
    assert await api.commit_overflow(S, commit) is True
    assert [m.status for m in await api.get_history(S)] == [
        "summarized",
        "summarized",
        "summarized",
        "active",
    ]
    state = await api.get_session(S)
    assert state.summary is not None
    assert (state.summary.content, state.summary.token_count, state.summary.through_seq) == (
        "a, b and c happened",
        7,
        3,
    )
    assert (state.message_count, state.active_count) == (4, 1)
    assert state.active_tokens == stored[3].token_count
    later = await api.append(S, users("e"))
    commit = OverflowCommit([stored[3], later[0]], summary="all of it", summary_tokens=3)
    assert await api.commit_overflow(S, commit) is True
    state = await api.get_session(S)
    assert (state.summary.content, state.summary.through_seq) == ("all of it", 5)


async def test_commit_overflow_twice_is_refused(api: Api) -> None:
    """Committing the same eviction again returns False and changes nothing (another won)."""
    stored = await api.append(S, users("a", "b", "c"))
    commit = OverflowCommit(stored[:2], summary="first", summary_tokens=1, block_marks={"f": 2})
    assert await api.commit_overflow(S, commit) is True
    before = await api.get_session(S)
    history = await api.get_history(S)
    again = OverflowCommit(stored[:2], summary="second", summary_tokens=1, block_marks={"f": 9})
    assert await api.commit_overflow(S, again) is False
    assert await api.commit_overflow(S, OverflowCommit(stored[:2])) is False  # evict only
    assert await api.get_session(S) == before
    assert await api.get_history(S) == history


@pytest.mark.parametrize("summary", ["x", None], ids=["summary", "evict-only"])
async def test_commit_overflow_with_a_stale_message_is_refused(
    api: Api, summary: str | None
) -> None:
    """If any evicted message already left the window, the whole commit is refused; an
    eviction of a run of seqs that now holds a gap is refused too."""
    stored = await api.append(S, users("a", "b", "c", "d"))
    await api.archive(S, [2])
    before = await api.get_session(S)
    for evict in (stored[:2], stored[1:3], stored[:3]):
        assert await api.commit_overflow(S, OverflowCommit(evict, summary=summary)) is False
    assert await api.get_session(S) == before
    assert contents(await api.get_window(S)) == ["a", "c", "d"]


async def test_commit_overflow_may_only_set_a_summary(api: Api) -> None:
    """A commit that evicts nothing but carries a summary stores the summary, window untouched."""
    await api.append(S, users("a", "b"))
    assert await api.commit_overflow(S, OverflowCommit([], summary="so far", summary_tokens=2))
    state = await api.get_session(S)
    assert (state.summary.content, state.summary.token_count) == ("so far", 2)
    assert contents(await api.get_window(S)) == ["a", "b"]


async def test_commit_overflow_on_unknown_session_is_refused(api: Api) -> None:
    """An overflow for a session that does not exist returns False and creates nothing."""
    assert await api.commit_overflow("ghost", OverflowCommit([])) is False
    assert not (await api.get_session("ghost")).exists


async def test_commit_overflow_block_marks_only_move_forward(api: Api) -> None:
    """Block marks in an overflow commit never move a mark backwards."""
    stored = await api.append(S, users("a", "b", "c"))
    await api.set_block_mark(S, "facts", 2)
    commit = OverflowCommit(stored[:1], block_marks={"facts": 1, "vectors": 1})
    assert await api.commit_overflow(S, commit) is True
    assert (await api.get_session(S)).block_marks == {"facts": 2, "vectors": 1}


async def test_set_block_mark_is_monotonic(api: Api) -> None:
    """set_block_mark keeps the highest seq seen per block, blocks independent."""
    await api.append(S, users("a", "b", "c"))
    await api.set_block_mark(S, "facts", 2)
    await api.set_block_mark(S, "facts", 1)
    await api.set_block_mark(S, "vectors", 3)
    assert (await api.get_session(S)).block_marks == {"facts": 2, "vectors": 3}
    await api.set_block_mark(S, "facts", 3)
    assert (await api.get_session(S)).block_marks == {"facts": 3, "vectors": 3}


# -- users --------------------------------------------------------------------------------------


async def test_session_bound_to_user_rejects_another_user(api: Api) -> None:
    """Writing with another user_id to a user's session raises ValueError and stores nothing."""
    await api.append(S, users("mine"), user_id="ann")
    before = await api.get_session(S)
    with pytest.raises(ValueError):
        await api.append(S, users("theirs"), user_id="bob")
    with pytest.raises(ValueError):
        await api.replace(S, users("theirs"), user_id="bob")
    assert await api.get_session(S) == before
    assert contents(await api.get_history(S)) == ["mine"]
    await api.append(S, users("no user given"))
    state = await api.get_session(S)
    assert state.user_id == "ann" and state.message_count == 2


async def test_first_user_binds_an_unowned_session(api: Api) -> None:
    """A session written without user_id belongs to the first user who writes to it."""
    await api.append(S, users("anon"))
    assert (await api.get_session(S)).user_id is None
    await api.append(S, users("claimed"), user_id="ann")
    assert (await api.get_session(S)).user_id == "ann"
    with pytest.raises(ValueError):
        await api.append(S, users("x"), user_id="bob")
    assert contents(await api.get_window(S)) == ["anon", "claimed"]


async def test_delete_user_removes_only_their_sessions(api: Api) -> None:
    """delete_user deletes every session of that user (and returns how many), nothing else."""
    await api.append("a1", users("x"), user_id="ann")
    await api.append("a2", users("x"), user_id="ann")
    await api.append("b1", users("x"), user_id="bob")
    await api.append("n1", users("x"))
    assert await api.delete_user("ann") == 2
    assert await api.delete_user("ann") == 0
    assert [i.session_id for i in await api.list_sessions()] == ["b1", "n1"]
    assert await api.get_history("a1") == [] and await api.get_history("a2") == []
    assert contents(await api.get_window("b1")) == ["x"]


# -- isolation and limits --------------------------------------------------------------------------


async def test_sessions_are_isolated_even_when_ids_differ_only_in_case(api: Api) -> None:
    """Session ids compare exactly: case, accents and normalization forms are different sessions."""
    ids = ["Alice", "alice", "ALICE", "café", "cafe", "cafe\u0301", "straße", "strasse"]
    for sid in ids:
        await api.append(sid, users(f"for {sid}", f"also for {sid}"))
    for sid in ids:
        assert contents(await api.get_window(sid)) == [f"for {sid}", f"also for {sid}"]
        assert seqs(await api.get_history(sid)) == [1, 2]
    assert sorted(i.session_id for i in await api.list_sessions()) == sorted(ids)
    await api.delete_session("alice")
    assert contents(await api.get_window("Alice")) == ["for Alice", "also for Alice"]


async def test_max_messages_archives_the_oldest(make_api: Any) -> None:
    """With max_messages_per_session the oldest messages leave the window, kept as archived."""
    api = make_api(max_messages_per_session=3)
    await api.append(S, users("a", "b"))
    await api.append(S, users("c", "d"))
    await api.append(S, users("e"))
    assert contents(await api.get_window(S)) == ["c", "d", "e"]
    assert [(m.content, m.status) for m in await api.get_history(S)] == [
        ("a", "archived"),
        ("b", "archived"),
        ("c", "active"),
        ("d", "active"),
        ("e", "active"),
    ]
    state = await api.get_session(S)
    assert (state.message_count, state.active_count) == (5, 3)
    assert state.active_tokens == sum(m.token_count for m in await api.get_window(S))


async def test_max_messages_without_history_deletes_the_oldest(make_api: Any) -> None:
    """With keep_history=False the messages pushed out by the limit are deleted."""
    api = make_api(max_messages_per_session=2, keep_history=False)
    await api.append(S, users("a", "b", "c", "d", "e"))
    assert contents(await api.get_window(S)) == ["d", "e"]
    assert contents(await api.get_history(S)) == ["d", "e"]
    state = await api.get_session(S)
    assert (state.message_count, state.active_count) == (2, 2)
    assert seqs(await api.append(S, users("f"))) == [6]


# -- round trips -----------------------------------------------------------------------------------

UNICODE_TEXTS = [
    "emoji 😀👍🏽👨‍👩‍👧 and 🏳️‍🌈",
    "中文\uff0c日本語のテキスト\uff0c한국어",
    "עברית: שלום עולם / العربية: مرحبا بالعالم",
    "NUL\x00inside and at the end\x00",
    "combining e\u0301, zero width\u200bspace, line\u2028separator, BOM\ufeff",
    "control chars \x01\x07\x1b[0m\t\r\n",
    "\U0001d518\U0001d52b\U0001d526 outside the BMP: \U0001f600\U00010348",
]


async def test_unicode_round_trips_exactly(api: Api) -> None:
    """Emoji, CJK, right-to-left, NUL and control characters come back unchanged."""
    batch = [
        user(text, name="名前", metadata={"ключ": text, "emoji": "😀"}) for text in UNICODE_TEXTS
    ]
    await api.append("unicode-😀-中文", batch)
    got = await api.get_window("unicode-😀-中文")
    assert contents(got) == UNICODE_TEXTS
    assert [dict(m.metadata) for m in got] == [dict(m.metadata) for m in batch]
    assert {m.name for m in got} == {"名前"}


async def test_one_megabyte_message_round_trips(api: Api) -> None:
    """A 1 MiB message (multi-byte characters included) is stored and read back exactly."""
    big = ("lorem ipsum dolor sit amet 😀 中文 עברית \x00 " * 30_000)[: 1 << 20]
    assert len(big) == 1 << 20
    message = user(big, token_count=1)  # counting is not what this test is about
    await api.append(S, [message, user("after")])
    window = await api.get_window(S)
    assert window[0].content == big
    assert window[0].id == message.id
    assert contents(window[1:]) == ["after"]


async def test_every_field_round_trips(api: Api) -> None:
    """name, tool calls, tool-call id, metadata, raw, source, id, created_at come back as sent."""
    created = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone(timedelta(hours=5.5)))
    call = Message(
        "assistant",
        "",
        name="planner",
        tool_calls=(
            ToolCall("call_1", "search", {"q": "weather", "n": 3, "opts": {"fast": True}}),
            ToolCall("call_2", "lookup", '{"id": 42}'),
        ),
        id="msg-assistant-1",
        metadata={"nested": {"list": [1, 2.5, None, "x"]}, "flag": False},
        created_at=created,
        source="langchain",
        raw={"type": "ai", "data": {"content": "", "additional_kwargs": {"k": [1]}}},
    )
    result = Message(
        "tool",
        '{"temp": 21}',
        tool_call_id="call_1",
        id="msg-tool-1",
        source="llamaindex",
        raw=["any", "json", 1],
    )
    stored = await api.append(S, [call, result])
    got = await api.get_window(S)
    assert got == stored
    for original, back in zip([call, result], got, strict=True):
        assert back == original.with_fields(seq=back.seq, token_count=back.token_count)
    assert got[0].created_at.utcoffset() == timedelta(hours=5.5)
    assert await api.get_history(S) == got


# -- SQL stores only ------------------------------------------------------------------------------


def test_sql_create_schema_is_idempotent_and_metadata_exposed(
    sql_backend: str, make_store: Any
) -> None:
    """create_schema can run any number of times; store.metadata holds the store's three tables."""
    store = make_store(sql_backend, auto_create=False)
    name = store.table_name
    assert set(store.metadata.tables) == {name, f"{name}_sessions", f"{name}_summaries"}
    store.create_schema()
    store.create_schema()
    existing = set(inspect(store.engines.sync).get_table_names())
    assert {name, f"{name}_sessions", f"{name}_summaries"} <= existing
    store.append(S, users("works"))
    store.create_schema()
    assert contents(store.get_window(S)) == ["works"]


def test_sql_named_schema_is_created(sql_backend: str, make_store: Any, request: Any) -> None:
    """With schema=..., create_schema creates the schema (once) and the tables inside it."""
    if sql_backend == "sqlite":
        pytest.skip("SQLite has no schemas (only attached databases)")
    schema = f"s_{uuid.uuid4().hex[:10]}"
    store = make_store(sql_backend, schema=schema)
    request.addfinalizer(lambda: _drop_schema(store, schema))
    store.create_schema()
    store.create_schema()
    names = inspect(store.engines.sync).get_table_names(schema=schema)
    assert set(names) == {
        store.table_name,
        f"{store.table_name}_sessions",
        f"{store.table_name}_summaries",
    }
    store.append(S, users("in a schema"))
    assert contents(store.get_window(S)) == ["in a schema"]


def _drop_schema(store: SQLStore, schema: str) -> None:
    store.drop_schema()
    cascade = " CASCADE" if store.engines.dialect_name == "postgresql" else ""
    with store.engines.sync.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema}{cascade}"))


def test_in_memory_sqlite_store_serves_threads_and_async(tmp_path: Any) -> None:
    """sqlite:// (one shared in-memory database) works from threads and from async calls."""
    store = SQLStore("sqlite://", "t_mem")
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: store.append(S, users(f"m{i}")), range(20)))
        assert seqs(store.get_history(S)) == list(range(1, 21))
        assert len(asyncio.run(store.aget_window(S))) == 20
        asyncio.run(store.aappend(S, users("async")))
        assert contents(store.get_window(S, limit=1)) == ["async"]
        assert list(tmp_path.iterdir()) == []
    finally:
        store.close()


def test_sql_stats_is_get_session(sql_backend: str, make_store: Any) -> None:
    """SQLStore.stats is the session state (counts, tokens, version)."""
    store = make_store(sql_backend)
    store.append(S, users("a", "b"))
    assert store.stats(S) == store.get_session(S)
    assert store.stats(S).message_count == 2


def test_sql_store_survives_a_restart(sql_backend: str, make_store: Any) -> None:
    """A new SQLStore on the same URL and table sees the history and continues the sequence."""
    first = make_store(sql_backend)
    first.append(S, users("a", "b", "c"), user_id="ann")
    first.archive(S, [1])
    first.set_system_message(S, Message("system", "sys"))
    first.close()
    second = make_store(sql_backend, table_name=first.table_name)
    assert [(m.content, m.status) for m in second.get_history(S)] == [
        ("a", "archived"),
        ("b", "active"),
        ("c", "active"),
    ]
    state = second.get_session(S)
    assert (state.user_id, state.message_count, state.active_count) == ("ann", 3, 2)
    assert state.system_message.content == "sys"
    assert seqs(second.append(S, users("d"))) == [4]
    assert contents(first.get_window(S)) == ["b", "c", "d"]  # a closed store reconnects


def test_sql_cache_is_never_stale_across_instances(sql_backend: str, make_store: Any) -> None:
    """Two cached instances on one database: every read sees the other instance's writes."""
    a = make_store(sql_backend, cache=True)
    b = make_store(sql_backend, cache=True, table_name=a.table_name)
    a.append(S, users("1"))
    assert contents(a.get_window(S)) == ["1"]
    hits = a.cache.hits
    assert contents(a.get_window(S)) == ["1"]
    assert a.cache.hits == hits + 1  # the cache is really in use
    b.append(S, users("2"))
    assert contents(a.get_window(S)) == ["1", "2"]
    a.append(S, users("3"))
    assert contents(b.get_window(S)) == ["1", "2", "3"]
    assert contents(a.get_window(S)) == ["1", "2", "3"]
    b.archive(S, [1])
    assert contents(a.get_window(S)) == ["2", "3"]
    stored = b.get_window(S)
    b.commit_overflow(S, OverflowCommit(stored[:1], summary="two"))
    assert contents(a.read_session(S).window) == ["3"]
    b.replace(S, users("new"))
    assert contents(a.get_window(S)) == ["new"]
    b.set_system_message(S, Message("system", "sys"))
    assert a.read_session(S).state.system_message.content == "sys"
    b.delete_session(S)
    assert a.get_window(S) == []
    a.append(S, users("again"))
    assert contents(b.get_window(S)) == ["again"]
    assert contents(a.get_window(S)) == ["again"]


async def test_sql_async_stores(sql_backend: str, amake_store: Any) -> None:
    """A store built from an async URL or an AsyncEngine works async, and sync through its twin."""
    for flavor in ("async-url", "async-engine"):
        store = amake_store(sql_backend, flavor=flavor)
        await store.acreate_schema()
        await store.acreate_schema()
        stored = await store.aappend(S, users("a", "b", "c"), user_id="ann")
        assert seqs(stored) == [1, 2, 3]
        assert await store.aarchive(S, [1]) == 1
        assert contents(await store.aget_window(S)) == ["b", "c"]
        assert seqs(store.append(S, users("d"))) == [4]  # the sync twin, same table
        assert contents(store.get_window(S, limit=2)) == ["c", "d"]
        history = await store.aget_history(S)
        assert [(m.seq, m.status) for m in history] == [
            (1, "archived"),
            (2, "active"),
            (3, "active"),
            (4, "active"),
        ]
        assert [i.session_id for i in await store.alist_sessions(user_id="ann")] == [S]
        assert (await store.aget_session(S)).active_count == 3
        assert await store.adelete_user("ann") == 1
        assert not (await store.aget_session(S)).exists


async def test_sql_sync_and_async_calls_share_one_sequence(
    sql_backend: str, amake_store: Any
) -> None:
    """Sync and async calls on one store interleave into one gap-free sequence."""
    store = amake_store(sql_backend, flavor="url")
    for i in range(3):
        store.append(S, users(f"sync {i}"))
        await store.aappend(S, users(f"async {i}"))
    assert seqs(store.get_history(S)) == [1, 2, 3, 4, 5, 6]
    assert contents(await store.aget_window(S, limit=2)) == ["sync 2", "async 2"]


def test_memory_store_defaults_bound_the_window() -> None:
    """InMemoryStore() keeps 10 messages per session and no history (the seeds' default)."""
    store = InMemoryStore(token_counter=ApproximateTokenCounter())
    store.append(S, users(*[str(i) for i in range(12)]))
    assert contents(store.get_window(S)) == [str(i) for i in range(2, 12)]
    assert contents(store.get_history(S)) == [str(i) for i in range(2, 12)]
