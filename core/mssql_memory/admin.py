"""Administration helpers behind the ``mssql-memory`` CLI: totals, export and import."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, func, select

from .errors import InvalidMessageError
from .ltm.store import LongTermStore
from .messages import Message, message_from_dict, message_to_dict
from .stores.base import OverflowCommit
from .stores.sql import SQLStore

__all__ = ["export_session", "import_session", "read_export", "render_markdown", "totals"]


def totals(store: SQLStore, ltm: LongTermStore | None = None) -> dict[str, int]:
    """Counts over the whole database: sessions, messages, tokens, summaries, facts, vectors."""
    t = store.tables

    def op(conn: Connection) -> dict[str, int]:
        sessions, messages, active, tokens = conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(t.sessions.c.message_count), 0),
                func.coalesce(func.sum(t.sessions.c.active_count), 0),
                func.coalesce(func.sum(t.sessions.c.active_tokens), 0),
            )
        ).one()
        summaries = conn.execute(select(func.count()).select_from(t.summaries)).scalar_one()
        users = conn.execute(select(func.count(func.distinct(t.sessions.c.user_id)))).scalar_one()
        return {
            "sessions": int(sessions),
            "users": int(users),
            "messages": int(messages),
            "active_messages": int(active),
            "active_tokens": int(tokens),
            "summaries": int(summaries),
        }

    out = store._run(op, write=False)
    if ltm is not None:
        lt = ltm.tables

        def ltm_op(conn: Connection) -> dict[str, int]:
            facts = conn.execute(
                select(func.count()).select_from(lt.facts).where(lt.facts.c.valid_to.is_(None))
            ).scalar_one()
            vectors = conn.execute(select(func.count()).select_from(lt.vectors)).scalar_one()
            return {"facts": int(facts), "vectors": int(vectors)}

        out.update(ltm._run(ltm_op, write=False))
    return out


def _record(message: Message) -> dict[str, Any]:
    data = message_to_dict(message)
    data.update(seq=message.seq, status=message.status, token_count=message.token_count)
    return data


def export_session(store: SQLStore, session_id: str) -> dict[str, Any]:
    """A session as a JSON-ready dict: its record, system message, summary and every message."""
    state = store.get_session(session_id)
    if not state.exists:
        raise ValueError(f"no session {session_id!r}")
    return {
        "format": "mssql-agent-memory/session",
        "version": 1,
        "session_id": session_id,
        "user_id": state.user_id,
        "system_message": message_to_dict(state.system_message) if state.system_message else None,
        "summary": {
            "content": state.summary.content,
            "token_count": state.summary.token_count,
            "through_seq": state.summary.through_seq,
        }
        if state.summary
        else None,
        "messages": [_record(m) for m in store.get_history(session_id)],
    }


def export_lines(document: dict[str, Any]) -> Iterator[str]:
    """JSON Lines: one header line, then one line per message."""
    header = {k: v for k, v in document.items() if k != "messages"}
    yield json.dumps(header, ensure_ascii=False)
    for record in document["messages"]:
        yield json.dumps({"session_id": document["session_id"], **record}, ensure_ascii=False)


def render_markdown(document: dict[str, Any]) -> str:
    """A readable transcript with each message's status and token count."""
    lines = [f"# Session `{document['session_id']}`", ""]
    if document.get("user_id"):
        lines += [f"User: `{document['user_id']}`", ""]
    if document.get("system_message"):
        lines += ["## System message", "", document["system_message"]["content"], ""]
    if document.get("summary"):
        lines += ["## Current summary", "", document["summary"]["content"], ""]
    lines += ["## Messages", ""]
    for r in document["messages"]:
        lines.append(f"**{r['seq']}. {r['role']}** _{r['status']}, {r['token_count']} tokens_  ")
        for call in r.get("tool_calls", []):
            lines.append(f"`{call['name']}({json.dumps(call['arguments'], ensure_ascii=False)})`  ")
        lines += [r["content"], ""]
    return "\n".join(lines)


def read_export(text: str) -> dict[str, Any]:
    """Parse a JSON or JSON Lines export back into the document form."""
    text = text.strip()
    try:
        if text.startswith("{") and "\n{" not in text:
            document = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            document = {**rows[0], "messages": rows[1:]}
    except (ValueError, IndexError) as e:
        raise InvalidMessageError(f"not a session export: {e}") from None
    if document.get("format") != "mssql-agent-memory/session":
        raise InvalidMessageError("not a session export (missing format marker)")
    return document


def import_session(
    store: SQLStore,
    document: dict[str, Any],
    *,
    session_id: str | None = None,
    batch_size: int = 200,
    progress: Callable[[int], None] | None = None,
) -> str:
    """Recreate an exported session (messages in order, archived ones archived, summary, system).

    Refuses to overwrite an existing session. Returns the new session's id.
    """
    sid = session_id or document["session_id"]
    if store.get_session(sid).exists:
        raise ValueError(f"session {sid!r} already exists; delete it or import under another id")
    records = sorted(document["messages"], key=lambda r: r["seq"])
    messages = [message_from_dict(r, token_count=r.get("token_count")) for r in records]
    user_id = document.get("user_id")
    stored: list[Message] = []
    for chunk in _chunks(messages, batch_size):
        stored.extend(store.append(sid, chunk, user_id=user_id))
        if progress:
            progress(len(chunk))
    by_status = {r["seq"]: r["status"] for r in records}
    old_seqs = [r["seq"] for r in records]
    summarized = [
        m for m, old in zip(stored, old_seqs, strict=True) if by_status[old] == "summarized"
    ]
    archived = [
        m.seq for m, old in zip(stored, old_seqs, strict=True) if by_status[old] == "archived"
    ]
    summary = document.get("summary")
    if summarized and summary:
        store.commit_overflow(
            sid,
            OverflowCommit(summarized, summary["content"], summary["token_count"]),
        )
    elif summarized:
        archived += [m.seq for m in summarized]
    if archived:
        store.archive(sid, [s for s in archived if s is not None])
    if document.get("system_message"):
        store.set_system_message(sid, message_from_dict(document["system_message"]))
    return sid


def _chunks(items: list[Message], size: int) -> Iterable[list[Message]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
