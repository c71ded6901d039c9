"""A process-local session store: the zero-dependency default."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..messages import Message
from ..tokens import TokenCounter, default_token_counter
from ..validation import validate_id, validate_optional_id
from ._prepare import check_limit, check_seqs, prepare_batch
from .base import AppendResult, OverflowCommit, SessionInfo, SessionSnapshot, SessionState, Summary

__all__ = ["InMemoryStore"]


@dataclass
class _Session:
    user_id: str | None = None
    next_seq: int = 0
    version: int = 0
    active: list[Message] = field(default_factory=list)
    archived: list[Message] = field(default_factory=list)
    system_message: Message | None = None
    summary: Summary | None = None
    block_marks: dict[str, int] = field(default_factory=dict)
    updated_at: datetime | None = None

    def touch(self) -> None:
        self.version += 1
        self.updated_at = datetime.now(timezone.utc)


class InMemoryStore:
    """Sessions in a dict, guarded by one lock. Lost when the process exits.

    ``max_messages_per_session`` (default 10, as in the seeds) bounds the active
    window by count: the oldest messages leave it, kept as archived history only
    when ``keep_history`` is True (default False, so memory stays bounded).
    """

    def __init__(
        self,
        *,
        max_messages_per_session: int | None = 10,
        keep_history: bool = False,
        token_counter: TokenCounter | None = None,
    ) -> None:
        self.max_messages_per_session = check_limit(
            max_messages_per_session, "max_messages_per_session"
        )
        if self.max_messages_per_session == 0:
            raise ValueError("max_messages_per_session must be positive or None")
        self.keep_history = keep_history
        self.token_counter = token_counter or default_token_counter()
        self._sessions: dict[str, _Session] = {}
        self._summary_ids = 0
        self._lock = threading.RLock()

    # -- sync API ---------------------------------------------------------

    def create_schema(self) -> None:
        """Nothing to create; present for protocol compatibility."""

    def _bind_user(self, session: _Session, user_id: str | None) -> None:
        if user_id is None:
            return
        if session.user_id is not None and session.user_id != user_id:
            raise ValueError("session belongs to another user")
        session.user_id = user_id

    def _evict(self, session: _Session, messages: list[Message], status: str, summary_id=None):
        if self.keep_history:
            session.archived.extend(m.with_fields(status=status) for m in messages)
            session.archived.sort(key=lambda m: m.seq or 0)

    def append(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> AppendResult:
        """Append a batch at the end of the session's window, in order."""
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        if not batch:
            return AppendResult()
        with self._lock:
            session = self._sessions.get(session_id) or _Session()
            self._bind_user(session, user_id)
            self._sessions[session_id] = session
            stored = []
            for message, _ in batch:
                session.next_seq += 1
                stored.append(message.with_fields(seq=session.next_seq, status="active"))
            session.active.extend(stored)
            limit = self.max_messages_per_session
            if limit is not None and len(session.active) > limit:
                overflow = session.active[: len(session.active) - limit]
                del session.active[: len(overflow)]
                self._evict(session, overflow, "archived")
            session.touch()
            return AppendResult(
                stored,
                version=session.version,
                active_count=len(session.active),
                active_tokens=sum(m.token_count or 0 for m in session.active),
                system_tokens=(session.system_message.token_count or 0)
                if session.system_message
                else 0,
                summary_tokens=session.summary.token_count if session.summary else 0,
            )

    def get_window(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        validate_id(session_id)
        limit = check_limit(limit)
        with self._lock:
            session = self._sessions.get(session_id)
            active = list(session.active) if session else []
        return active if limit is None else active[max(len(active) - limit, 0) :] if limit else []

    def get_history(self, session_id: str) -> list[Message]:
        validate_id(session_id)
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return []
            return sorted([*session.archived, *session.active], key=lambda m: m.seq or 0)

    def get_session(self, session_id: str) -> SessionState:
        validate_id(session_id)
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return SessionState(session_id)
            return SessionState(
                session_id,
                exists=True,
                user_id=session.user_id,
                version=session.version,
                message_count=len(session.active) + len(session.archived),
                active_count=len(session.active),
                active_tokens=sum(m.token_count or 0 for m in session.active),
                system_message=session.system_message,
                summary=session.summary,
                block_marks=dict(session.block_marks),
                updated_at=session.updated_at,
            )

    def read_session(self, session_id: str) -> SessionSnapshot:
        with self._lock:
            return SessionSnapshot(self.get_session(session_id), self.get_window(session_id))

    def archive(self, session_id: str, seqs: Sequence[int]) -> int:
        validate_id(session_id)
        wanted = set(check_seqs(seqs))
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or not wanted:
                return 0
            leaving = [m for m in session.active if m.seq in wanted]
            if leaving:
                session.active = [m for m in session.active if m.seq not in wanted]
                self._evict(session, leaving, "archived")
                session.touch()
            return len(leaving)

    def replace(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> list[Message]:
        """Make ``messages`` the whole active window (the old one archived), atomically."""
        batch = prepare_batch(session_id, messages, self.token_counter)  # validate first
        validate_optional_id(user_id)
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                self._bind_user(session, user_id)
                self._evict(session, session.active, "archived")
                session.active = []
                session.summary = None
                session.touch()
            return list(self.append(session_id, [m for m, _ in batch], user_id=user_id))

    def commit_overflow(self, session_id: str, commit: OverflowCommit) -> bool:
        validate_id(session_id)
        wanted = {m.seq for m in commit.evict}
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return False
            leaving = [m for m in session.active if m.seq in wanted]
            if len(leaving) != len(wanted):
                return False
            session.active = [m for m in session.active if m.seq not in wanted]
            if commit.summary is not None:
                self._summary_ids += 1
                session.summary = Summary(
                    self._summary_ids,
                    commit.summary,
                    commit.summary_tokens,
                    max(wanted, default=0),
                    datetime.now(timezone.utc),
                )
            self._evict(session, leaving, commit.status)
            for block, seq in commit.block_marks.items():
                session.block_marks[block] = max(seq, session.block_marks.get(block, 0))
            session.touch()
            return True

    def set_block_mark(self, session_id: str, block: str, seq: int) -> None:
        validate_id(session_id)
        with self._lock:
            session = self._sessions.setdefault(session_id, _Session())
            session.block_marks[block] = max(seq, session.block_marks.get(block, 0))
            session.touch()

    def set_system_message(self, session_id: str, message: Message | None) -> None:
        validate_id(session_id)
        if message is not None:
            ((message, _),) = prepare_batch(session_id, message, self.token_counter)
            if message.role != "system":
                raise ValueError("the session's system message must have role 'system'")
        with self._lock:
            session = self._sessions.setdefault(session_id, _Session())
            session.system_message = message
            session.touch()

    def delete_session(self, session_id: str) -> bool:
        validate_id(session_id)
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def delete_user(self, user_id: str) -> int:
        validate_id(user_id, "user_id")
        with self._lock:
            doomed = [sid for sid, s in self._sessions.items() if s.user_id == user_id]
            for sid in doomed:
                del self._sessions[sid]
            return len(doomed)

    def list_sessions(
        self, *, user_id: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]:
        validate_optional_id(user_id)
        limit = check_limit(limit) or 0
        if after is not None:
            validate_id(after, "after")
        if limit == 0:
            return []
        with self._lock:
            rows = []
            for sid in sorted(self._sessions):
                s = self._sessions[sid]
                if (after is not None and sid <= after) or (user_id and s.user_id != user_id):
                    continue
                rows.append(
                    SessionInfo(
                        sid,
                        s.user_id,
                        len(s.active) + len(s.archived),
                        len(s.active),
                        sum(m.token_count or 0 for m in s.active),
                        s.updated_at,
                    )
                )
                if len(rows) >= limit:
                    break
            return rows

    # -- async API: no I/O, so the sync methods are called directly --------

    async def acreate_schema(self) -> None:
        self.create_schema()

    async def aappend(self, session_id, messages, *, user_id=None) -> AppendResult:
        return self.append(session_id, messages, user_id=user_id)

    async def aget_window(self, session_id, *, limit=None) -> list[Message]:
        return self.get_window(session_id, limit=limit)

    async def aget_history(self, session_id) -> list[Message]:
        return self.get_history(session_id)

    async def aread_session(self, session_id) -> SessionSnapshot:
        return self.read_session(session_id)

    async def aget_session(self, session_id) -> SessionState:
        return self.get_session(session_id)

    async def aarchive(self, session_id, seqs) -> int:
        return self.archive(session_id, seqs)

    async def areplace(self, session_id, messages, *, user_id=None) -> list[Message]:
        return self.replace(session_id, messages, user_id=user_id)

    async def acommit_overflow(self, session_id, commit) -> bool:
        return self.commit_overflow(session_id, commit)

    async def aset_block_mark(self, session_id, block, seq) -> None:
        self.set_block_mark(session_id, block, seq)

    async def aset_system_message(self, session_id, message) -> None:
        self.set_system_message(session_id, message)

    async def adelete_session(self, session_id) -> bool:
        return self.delete_session(session_id)

    async def adelete_user(self, user_id) -> int:
        return self.delete_user(user_id)

    async def alist_sessions(self, *, user_id=None, limit=100, after=None) -> list[SessionInfo]:
        return self.list_sessions(user_id=user_id, limit=limit, after=after)

    # -- history edits (chat-store primitives: LlamaIndex's AsyncDBChatStore) ---------------

    def read_messages(
        self,
        session_id: str,
        *,
        active: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Message]:
        """A page of the session's messages in order: all (``active=None``), the active
        window (True) or the archived and summarized rest (False)."""
        validate_id(session_id)
        limit, offset = check_limit(limit), check_limit(offset, "offset") or 0
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return []
            if active is None:
                chosen = sorted([*session.archived, *session.active], key=lambda m: m.seq or 0)
            else:
                chosen = list(session.active if active else session.archived)
        return chosen[offset:] if limit is None else chosen[offset : offset + limit]

    def append_archived(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> list[Message]:
        """Append messages straight to the archived history (never to the active window)."""
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        if not batch:
            return []
        with self._lock:
            session = self._sessions.get(session_id) or _Session()
            self._bind_user(session, user_id)
            self._sessions[session_id] = session
            stored = []
            for message, _ in batch:
                session.next_seq += 1
                stored.append(message.with_fields(seq=session.next_seq, status="archived"))
            session.archived.extend(stored)
            session.touch()
            return stored

    def delete_messages(
        self, session_id: str, seqs: Sequence[int] | None = None, *, active: bool | None = None
    ) -> int:
        """Delete messages ``seqs`` (default: all) that match ``active`` (None: any status);
        the session, its system message and summary stay. Returns how many were deleted."""
        validate_id(session_id)
        wanted = None if seqs is None else set(check_seqs(seqs))
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or wanted == set():
                return 0

            def doomed(m: Message) -> bool:
                return wanted is None or m.seq in wanted

            before = len(session.active) + len(session.archived)
            if active is not False:
                session.active = [m for m in session.active if not doomed(m)]
            if active is not True:
                session.archived = [m for m in session.archived if not doomed(m)]
            deleted = before - len(session.active) - len(session.archived)
            session.touch()
            return deleted

    def take_oldest(self, session_id: str, n: int, *, delete: bool = False) -> list[Message]:
        """Atomically move the ``n`` oldest active messages out of the window (archived, or
        deleted with ``delete=True``) and return them."""
        validate_id(session_id)
        n = check_limit(n, "n") or 0
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or n == 0 or not session.active:
                return []
            leaving, session.active = session.active[:n], session.active[n:]
            if not delete:
                self._evict(session, leaving, "archived")
            session.touch()
            return [m.with_fields(status="archived") for m in leaving]

    def rewrite(
        self,
        session_id: str,
        messages: Message | Iterable[Message],
        *,
        status: str = "active",
        user_id: str | None = None,
    ) -> list[Message]:
        """Replace the session's whole history (every status, summaries too) with ``messages``
        stored as ``status`` ("active" or "archived"), in one step."""
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        if status not in ("active", "archived"):
            raise ValueError("status must be 'active' or 'archived'")
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                self._bind_user(session, user_id)
                session.active, session.archived, session.summary = [], [], None
                session.touch()
            fresh = [m for m, _ in batch]
            if status == "archived":
                return self.append_archived(session_id, fresh, user_id=user_id)
            return list(self.append(session_id, fresh, user_id=user_id))

    async def aread_messages(
        self,
        session_id: str,
        *,
        active: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Message]:
        return self.read_messages(session_id, active=active, limit=limit, offset=offset)

    async def aappend_archived(self, session_id, messages, *, user_id=None) -> list[Message]:
        return self.append_archived(session_id, messages, user_id=user_id)

    async def adelete_messages(self, session_id, seqs=None, *, active=None) -> int:
        return self.delete_messages(session_id, seqs, active=active)

    async def atake_oldest(self, session_id, n, *, delete=False) -> list[Message]:
        return self.take_oldest(session_id, n, delete=delete)

    async def arewrite(self, session_id, messages, *, status="active", user_id=None):
        return self.rewrite(session_id, messages, status=status, user_id=user_id)
