"""AgentMemory: token-budgeted short-term memory with overflow strategies and long-term blocks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .blocks import MemoryBlock, render_memory, render_overhead
from .budget import derive_token_limit
from .errors import AgentMemoryError, BlockError, BudgetError
from .groups import Group, group_messages, sanitize_window, start_on_user
from .messages import Message, coerce_messages
from .overflow import OverflowContext, OverflowStrategy, Trim, truncate_to_tokens
from .stores.base import AppendResult, SessionSnapshot, SessionState, SessionStore
from .stores.memory import InMemoryStore
from .stores.sql import SQLStore
from .tokens import TokenCounter, default_token_counter
from .validation import validate_id, validate_identifier, validate_optional_id

__all__ = ["AgentMemory", "OverflowEvent"]

logger = logging.getLogger("mssql_memory")
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class OverflowEvent:
    """What one overflow did (emitted through logging and the ``on_event`` callback)."""

    session_id: str
    strategy: str
    messages_evicted: int
    groups_evicted: int
    tokens_before: int
    tokens_after: int
    model_latency_ms: float
    summary_tokens: int = 0
    applied: bool = True


def _same_base(planned: SessionState, current: SessionState) -> bool:
    """True if the summary and block marks an overflow was planned on are still current.

    A store may read a session's record and its window in two statements (READ
    COMMITTED, SQLite outside a transaction); if another instance committed an
    overflow in between, the plan would roll an old summary forward or feed a
    block messages it already took. Summaries and marks only move forward, so a
    record read after the window that still matches proves the plan consistent;
    the commit's optimistic check covers what happens after.
    """
    summary = planned.summary.id if planned.summary else None
    now = current.summary.id if current.summary else None
    return summary == now and dict(planned.block_marks) == dict(current.block_marks)


def _block_error(block: MemoryBlock, error: Exception) -> BlockError:
    """A block failed while recalling (its own errors; library errors pass through as they are)."""
    return BlockError(f"long-term block {block.name!r} failed: {error!r}")


class AgentMemory:
    """Per-session memory whose context always fits a token budget.

    ``get`` returns the context to send (system message, rendered long-term
    memory, summary, active window) within ``token_limit`` — or within the
    model's context window minus the reserves. ``add`` commits messages at once,
    then runs the ``overflow`` strategy (default :class:`Trim`) if the window is
    over budget. Overflows are applied atomically and once, even with several
    app instances; model and block calls never run inside a transaction.
    """

    def __init__(
        self,
        store: SessionStore | str | None = None,
        *,
        token_limit: int | None = None,
        model: str | None = None,
        reserve_system: int = 1024,
        reserve_tools: int = 0,
        reserve_response: int = 4096,
        overflow: OverflowStrategy | None = None,
        blocks: Sequence[MemoryBlock] = (),
        memory_token_limit: int | None = None,
        memory_placement: Literal["system", "user"] = "system",
        token_counter: TokenCounter | None = None,
        on_event: Callable[[OverflowEvent], None] | None = None,
    ) -> None:
        if store is None:
            store = InMemoryStore()
        elif isinstance(store, str):
            store = SQLStore(store)
        if not isinstance(store, SessionStore):
            raise TypeError(f"store must be a SessionStore or a URL, not {type(store).__name__}")
        self.store: SessionStore = store
        self.token_limit = derive_token_limit(
            token_limit=token_limit,
            model=model,
            reserve_system=reserve_system,
            reserve_tools=reserve_tools,
            reserve_response=reserve_response,
        )
        self.model = model
        self.overflow = overflow if overflow is not None else Trim()
        if not isinstance(self.overflow, OverflowStrategy):
            raise TypeError("overflow must be Trim, Summarize, FlushToLongTerm or a subclass")
        self.blocks = self._collect_blocks(blocks)
        if memory_placement not in ("system", "user"):
            raise ValueError("memory_placement must be 'system' or 'user'")
        self.memory_placement = memory_placement
        if memory_token_limit is None:
            wanted = sum(b.max_tokens for b in self.blocks) + 64
            memory_token_limit = min(wanted, self.token_limit // 4) if self.blocks else 0
        if memory_token_limit < 0 or memory_token_limit >= self.token_limit:
            raise ValueError("memory_token_limit must be in [0, token_limit)")
        self.memory_token_limit = memory_token_limit
        self.token_counter = token_counter or default_token_counter(model)
        self.on_event = on_event

    def _collect_blocks(self, blocks: Sequence[MemoryBlock]) -> list[MemoryBlock]:
        collected: list[MemoryBlock] = []
        for block in [*blocks, *self.overflow.blocks()]:
            if any(block is b for b in collected):
                continue
            if not isinstance(block, MemoryBlock):
                raise TypeError(f"{block!r} is not a MemoryBlock")
            validate_identifier(block.name, "block name")
            if any(block.name == b.name for b in collected):
                raise ValueError(f"two long-term blocks are named {block.name!r}")
            collected.append(block)
        return collected

    def __repr__(self) -> str:
        return (
            f"AgentMemory(store={self.store!r}, token_limit={self.token_limit}, "
            f"overflow={self.overflow!r})"
        )

    # -- budget helpers ---------------------------------------------------------------

    def _window_budget(self, system_tokens: int, summary_tokens: int) -> int:
        reserved = system_tokens + summary_tokens + self.memory_token_limit
        return max(self.token_limit - reserved, 0)

    def _count(self, messages: Message | Iterable[Message]) -> list[Message]:
        counter = self.token_counter
        return [
            m if m.token_count is not None else m.with_fields(token_count=counter.count_message(m))
            for m in coerce_messages(messages)
        ]

    # -- context -------------------------------------------------------------------------

    def _query_from(self, window: Sequence[Message], query: str | None) -> str | None:
        if query is not None:
            return query
        for message in reversed(window):
            if message.role == "user" and message.content:
                return message.content
        return None

    def _shares(self):
        """Yield each block with its token share; feed back the tokens it used.

        The memory budget is split in proportion to the blocks' ``max_tokens``;
        what a block leaves unused goes to the blocks after it.
        """
        overhead = render_overhead([b.name for b in self.blocks], self.token_counter)
        remaining = max(self.memory_token_limit - overhead, 0)
        weight = sum(b.max_tokens for b in self.blocks)
        for block in self.blocks:
            share = min(block.max_tokens, remaining * block.max_tokens // max(weight, 1))
            used = yield block, share
            remaining -= used or 0
            weight -= block.max_tokens

    def _used(self, items: list[str]) -> int:
        return sum(self.token_counter.count_text(i) + 3 for i in items)

    def _block_kwargs(self, snapshot: SessionSnapshot, query: str | None, share: int):
        state = snapshot.state
        return {
            "query": query,
            "user_id": state.user_id,
            "session_id": state.session_id,
            "max_tokens": share,
        }

    def _assemble(self, snapshot: SessionSnapshot, memory_text: str | None) -> list[Message]:
        """Fit system message, memory, summary and the newest whole groups into the budget."""
        state = snapshot.state
        head: list[Message] = []
        if state.system_message is not None:
            head.append(state.system_message)
        memory_message = None
        if memory_text:
            memory_message = Message(
                "system",
                memory_text,
                token_count=self.token_counter.count_message(Message("system", memory_text)),
                metadata={"mssql_memory": "long_term_memory"},
            )
            if self.memory_placement == "system":
                head.append(memory_message)
        available = self.token_limit - sum(self._tokens(m) for m in head)
        if memory_message is not None and self.memory_placement == "user":
            available -= self._tokens(memory_message)
        if state.summary is not None:
            summary = Message(
                "system",
                state.summary.content,
                token_count=state.summary.token_count,
                id=f"summary-{state.summary.id}",
                metadata={"mssql_memory": "summary", "through_seq": state.summary.through_seq},
            )
            # a summary larger than what is left (a small budget, a grown system
            # message) is cut in the context, so the context never exceeds the budget
            fitted = (
                [summary]
                if summary.token_count <= available
                else self._truncated(summary, available)
            )
            head.extend(fitted)
            available -= sum(self._tokens(m) for m in fitted)
        groups = sanitize_window(group_messages(snapshot.window))
        chosen: list[Group] = []
        for group in reversed(groups):
            tokens = group.tokens
            if tokens > available:
                break
            chosen.append(group)
            available -= tokens
        chosen.reverse()
        chosen = start_on_user(chosen)
        window = [m for g in chosen for m in g.messages]
        if not window and groups and len(groups[-1].messages) == 1:
            window = self._truncated(groups[-1].first, available)
        if memory_message is not None and self.memory_placement == "user":
            window = self._prefix_latest_user(window, memory_message)
        return head + window

    def _tokens(self, message: Message) -> int:
        if message.token_count is not None:
            return message.token_count
        return self.token_counter.count_message(message)

    def _truncated(self, message: Message, available: int) -> list[Message]:
        """The newest message alone exceeds the budget: a cut copy (storage keeps it whole)."""
        overhead = self._tokens(message.with_fields(content="", token_count=None)) + 4
        if available <= overhead:
            return []
        text = truncate_to_tokens(message.content, available - overhead, self.token_counter)
        # raw=None: the framework form would restore the full text
        cut = message.with_fields(content=text + " [truncated]", token_count=None, raw=None)
        return [cut.with_fields(token_count=self.token_counter.count_message(cut))]

    def _prefix_latest_user(self, window: list[Message], memory: Message) -> list[Message]:
        for index in range(len(window) - 1, -1, -1):
            if window[index].role == "user":
                m = window[index]
                merged = m.with_fields(
                    content=f"{memory.content}\n\n{m.content}", token_count=None, raw=None
                )
                return [*window[:index], merged, *window[index + 1 :]]
        return [memory, *window]

    def get(self, session_id: str, query: str | None = None) -> list[Message]:
        """The context for the next model call, within budget. Cost O(window)."""
        return self.get_with_window(session_id, query)[0]

    async def aget(self, session_id: str, query: str | None = None) -> list[Message]:
        return (await self.aget_with_window(session_id, query))[0]

    def get_with_window(
        self, session_id: str, query: str | None = None
    ) -> tuple[list[Message], list[Message]]:
        """The context (as :meth:`get`) and the whole active window it was built from, both
        from one read of the session (for adapters that need the stored originals)."""
        validate_id(session_id)
        snapshot = self.store.read_session(session_id)
        memory_text = None
        if self.blocks:
            q = self._query_from(snapshot.window, query)
            sections: list[tuple[str, list[str]]] = []
            shares = self._shares()
            block, share = next(shares)
            while True:
                try:
                    items = block.get(**self._block_kwargs(snapshot, q, share)) if share > 0 else []
                except AgentMemoryError:
                    raise
                except Exception as e:
                    raise _block_error(block, e) from e
                sections.append((block.name, items))
                try:
                    block, share = shares.send(self._used(items))
                except StopIteration:
                    break
            memory_text = render_memory(sections, self.token_counter, self.memory_token_limit)
        return self._assemble(snapshot, memory_text), snapshot.window

    async def aget_with_window(
        self, session_id: str, query: str | None = None
    ) -> tuple[list[Message], list[Message]]:
        validate_id(session_id)
        snapshot = await self.store.aread_session(session_id)
        memory_text = None
        if self.blocks:
            q = self._query_from(snapshot.window, query)
            sections: list[tuple[str, list[str]]] = []
            shares = self._shares()
            block, share = next(shares)
            while True:
                try:
                    items = (
                        await block.aget(**self._block_kwargs(snapshot, q, share))
                        if share > 0
                        else []
                    )
                except AgentMemoryError:
                    raise
                except Exception as e:
                    raise _block_error(block, e) from e
                sections.append((block.name, items))
                try:
                    block, share = shares.send(self._used(items))
                except StopIteration:
                    break
            memory_text = render_memory(sections, self.token_counter, self.memory_token_limit)
        return self._assemble(snapshot, memory_text), snapshot.window

    def history(self, session_id: str) -> list[Message]:
        """Every message of the session, archived and summarized ones included."""
        return self.store.get_history(session_id)

    async def ahistory(self, session_id: str) -> list[Message]:
        return await self.store.aget_history(session_id)

    # -- writes ---------------------------------------------------------------------------

    def add(
        self,
        session_id: str,
        messages: Message | Iterable[Message],
        *,
        user_id: str | None = None,
    ) -> AppendResult:
        """Append ``messages`` (committed at once), then handle any overflow.

        If the overflow fails (model or block error), the messages stay stored
        and the error is raised; the next ``add`` retries the overflow.
        """
        validate_optional_id(user_id)
        stored = self.store.append(session_id, self._count(messages), user_id=user_id)
        if self._over(stored):
            self.compact(session_id)
        return stored

    async def aadd(
        self,
        session_id: str,
        messages: Message | Iterable[Message],
        *,
        user_id: str | None = None,
    ) -> AppendResult:
        validate_optional_id(user_id)
        stored = await self.store.aappend(session_id, self._count(messages), user_id=user_id)
        if self._over(stored):
            await self.acompact(session_id)
        return stored

    def _over(self, stored: AppendResult) -> bool:
        if not stored:
            return False
        budget = self._window_budget(stored.system_tokens, stored.summary_tokens)
        return self.overflow.should_run(stored.active_tokens, budget)

    def _plan(
        self, snapshot: SessionSnapshot, everything: bool = False
    ) -> tuple[OverflowContext, list[Group]] | None:
        state = snapshot.state
        system_tokens = state.system_message.token_count or 0 if state.system_message else 0
        summary_tokens = state.summary.token_count if state.summary else 0
        ctx = OverflowContext(
            session_id=state.session_id,
            state=state,
            store=self.store,
            counter=self.token_counter,
            window_budget=self._window_budget(system_tokens, summary_tokens),
        )
        if everything:
            evicted = group_messages(snapshot.window)
            return (ctx, evicted) if evicted else None
        if not self.overflow.should_run(state.active_tokens, ctx.window_budget):
            return None
        evicted = self.overflow.select(group_messages(snapshot.window), ctx)
        return (ctx, evicted) if evicted else None

    def _report(self, ctx: OverflowContext, evicted: list[Group], commit, applied: bool) -> None:
        tokens = sum(g.tokens for g in evicted)
        event = OverflowEvent(
            session_id=ctx.session_id,
            strategy=self.overflow.name,
            messages_evicted=sum(len(g.messages) for g in evicted),
            groups_evicted=len(evicted),
            tokens_before=ctx.state.active_tokens,
            tokens_after=ctx.state.active_tokens - tokens if applied else ctx.state.active_tokens,
            model_latency_ms=round(ctx.model_latency_ms, 3),
            summary_tokens=commit.summary_tokens if commit is not None else 0,
            applied=applied,
        )
        logger.info(
            "overflow %s session=%s evicted=%d tokens %d->%d model=%.1fms applied=%s",
            event.strategy,
            event.session_id,
            event.messages_evicted,
            event.tokens_before,
            event.tokens_after,
            event.model_latency_ms,
            applied,
            extra={"overflow_event": event},
        )
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a broken callback must not break memory
                logger.exception("on_event callback failed")

    def compact(self, session_id: str) -> bool:
        """Run the overflow strategy now if the window is over budget. True if applied."""
        return self._compact(session_id, everything=False)

    def flush(self, session_id: str) -> bool:
        """Run the overflow strategy on the whole active window now, e.g. when a session ends.

        With :class:`FlushToLongTerm` the session's last turns reach long-term memory
        (other sessions of the user can recall them); with :class:`Summarize` they are
        folded into the summary; with :class:`Trim` they are archived. True if applied.
        """
        return self._compact(session_id, everything=True)

    async def aflush(self, session_id: str) -> bool:
        return await self._acompact(session_id, everything=True)

    def _compact(self, session_id: str, *, everything: bool) -> bool:
        validate_id(session_id)
        for _ in range(_ATTEMPTS):
            plan = self._plan(self.store.read_session(session_id), everything)
            if plan is None:
                return False
            ctx, evicted = plan
            if self.overflow._uses_base and not _same_base(
                ctx.state, self.store.get_session(session_id)
            ):
                continue  # a torn read: the summary or marks predate the window
            commit = self.overflow.prepare([m for g in evicted for m in g.messages], ctx)
            if commit is None:
                self._report(ctx, evicted, None, applied=False)
                return False
            applied = self.store.commit_overflow(session_id, commit)
            self._report(ctx, evicted, commit, applied)
            if applied:
                return True
        return False

    async def acompact(self, session_id: str) -> bool:
        return await self._acompact(session_id, everything=False)

    async def _acompact(self, session_id: str, *, everything: bool) -> bool:
        validate_id(session_id)
        for _ in range(_ATTEMPTS):
            plan = self._plan(await self.store.aread_session(session_id), everything)
            if plan is None:
                return False
            ctx, evicted = plan
            if self.overflow._uses_base and not _same_base(
                ctx.state, await self.store.aget_session(session_id)
            ):
                continue  # a torn read: the summary or marks predate the window
            commit = await self.overflow.aprepare([m for g in evicted for m in g.messages], ctx)
            if commit is None:
                self._report(ctx, evicted, None, applied=False)
                return False
            applied = await self.store.acommit_overflow(session_id, commit)
            self._report(ctx, evicted, commit, applied)
            if applied:
                return True
        return False

    # -- system message -----------------------------------------------------------------

    @staticmethod
    def _system(content: str | Message | None) -> Message | None:
        if content is None or isinstance(content, Message):
            return content
        if not isinstance(content, str):
            raise TypeError("system message must be a str, a Message or None")
        return Message("system", content)

    def _checked_system(self, content: str | Message | None) -> Message | None:
        message = self._count_one(self._system(content))
        room = self.token_limit - self.memory_token_limit
        if message is not None and (message.token_count or 0) > room // 2:
            raise BudgetError(
                f"the system message takes {message.token_count} tokens; at most {room // 2} "
                f"(half of what token_limit={self.token_limit} leaves after memory blocks) fit"
            )
        return message

    def set_system_message(self, session_id: str, content: str | Message | None) -> None:
        """Set the session's system message (never evicted); None clears it.

        A system message larger than half the room left by the memory blocks is
        refused with :class:`BudgetError`, so the context can always fit a turn.
        """
        self.store.set_system_message(session_id, self._checked_system(content))

    async def aset_system_message(self, session_id: str, content: str | Message | None) -> None:
        await self.store.aset_system_message(session_id, self._checked_system(content))

    def _count_one(self, message: Message | None) -> Message | None:
        return None if message is None else self._count([message])[0]

    def get_system_message(self, session_id: str) -> Message | None:
        return self.store.get_session(session_id).system_message

    async def aget_system_message(self, session_id: str) -> Message | None:
        return (await self.store.aget_session(session_id)).system_message

    def clear_system_message(self, session_id: str) -> None:
        self.set_system_message(session_id, None)

    async def aclear_system_message(self, session_id: str) -> None:
        await self.aset_system_message(session_id, None)

    # -- deletion ------------------------------------------------------------------------

    def delete(self, session_id: str) -> bool:
        """Delete the session's messages, summaries and system message, and what long-term
        blocks keep per session (the vectors of its turns)."""
        validate_id(session_id)
        for block in self.blocks:
            block.delete_session(session_id)
        return self.store.delete_session(session_id)

    async def adelete(self, session_id: str) -> bool:
        validate_id(session_id)
        for block in self.blocks:
            await block.adelete_session(session_id)
        return await self.store.adelete_session(session_id)

    def delete_user(self, user_id: str) -> int:
        """Delete everything stored about ``user_id``: sessions and long-term block data."""
        validate_id(user_id, "user_id")
        for block in self.blocks:
            block.delete_user(user_id)
        return self.store.delete_user(user_id)

    async def adelete_user(self, user_id: str) -> int:
        validate_id(user_id, "user_id")
        for block in self.blocks:
            await block.adelete_user(user_id)
        return await self.store.adelete_user(user_id)
