"""Overflow strategies: what happens when a session's window passes its budget.

Each strategy is a small, validated object that (1) decides whether to run,
(2) selects the oldest whole message groups to evict, and (3) prepares the
state change — calling a model or long-term blocks *outside* any database
transaction — as an :class:`OverflowCommit` that the store applies atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .blocks import MemoryBlock
from .errors import BlockError, ModelError
from .groups import Group, start_on_user
from .messages import Message
from .models import ChatModel, agenerate_within, as_chat_model, generate_within
from .stores.base import OverflowCommit, SessionState, SessionStore
from .tokens import TokenCounter

__all__ = [
    "DEFAULT_SUMMARY_PROMPT",
    "SUMMARY_PREFIX",
    "FlushToLongTerm",
    "OverflowContext",
    "OverflowStrategy",
    "Summarize",
    "Trim",
]

logger = logging.getLogger("mssql_memory.overflow")

SUMMARY_PREFIX = "CONVERSATION SUMMARY: "
DEFAULT_SUMMARY_PROMPT = (
    "You maintain a running summary of a conversation between a user and an assistant. "
    "Summarize the key facts and user intent from the conversation below, merged with the "
    "previous summary if one is given: who the user is, what they asked, what was decided or "
    "answered, and anything still open. Be concise and factual; write plain sentences."
)


@dataclass
class OverflowContext:
    """What a strategy may use while preparing an overflow."""

    session_id: str
    state: SessionState
    store: SessionStore
    counter: TokenCounter
    window_budget: int
    model_latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _check_positive(value: Any, name: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int")


def _evict_until(
    groups: Sequence[Group], target: int, step: int | None = None, limit: int | None = None
) -> list[Group]:
    """The oldest groups whose removal brings the rest within ``target`` tokens.

    The newest group is never evicted; with ``step``, at least ``step`` messages
    leave per round; leading non-user groups left behind are evicted too. When
    that would leave a window with no user message, the turn's user message is
    kept instead if the rest then stays within ``limit`` (a soft target's hard
    bound), so a turn is not split between memory tiers.
    """
    total = sum(g.tokens for g in groups)
    evicted: list[Group] = []
    index = 0
    while index < len(groups) - 1 and total > target:
        round_messages = 0
        while index < len(groups) - 1:
            group = groups[index]
            evicted.append(group)
            total -= group.tokens
            round_messages += len(group.messages)
            index += 1
            if step is None or round_messages >= step:
                break
    if limit is not None and index < len(groups) and groups[index].first.role != "user":
        users = [i for i in range(index) if groups[i].first.role == "user"]
        if users and not any(g.first.role == "user" for g in groups[index:]):
            back = users[-1]
            if total + sum(g.tokens for g in groups[back:index]) <= limit:
                evicted, index = evicted[: len(evicted) - (index - back)], back
    rest = start_on_user(groups[index:])
    evicted.extend(groups[index : len(groups) - len(rest)])
    return evicted


class OverflowStrategy:
    """Base of the strategies (see :class:`Trim`, :class:`Summarize`, :class:`FlushToLongTerm`)."""

    name = "overflow"
    #: prepare() builds on the session's summary or block marks, so a plan made from a
    #: torn read (record older than the window) must be re-checked before it runs
    _uses_base = True

    def should_run(self, window_tokens: int, window_budget: int) -> bool:
        return window_tokens > window_budget

    def select(self, groups: Sequence[Group], ctx: OverflowContext) -> list[Group]:
        return _evict_until(groups, ctx.window_budget)

    def prepare(self, evicted: Sequence[Message], ctx: OverflowContext) -> OverflowCommit | None:
        """The state change for ``evicted``; None when there is nothing to apply now."""
        return OverflowCommit(evict=list(evicted))

    async def aprepare(
        self, evicted: Sequence[Message], ctx: OverflowContext
    ) -> OverflowCommit | None:
        return self.prepare(evicted, ctx)

    def blocks(self) -> Sequence[MemoryBlock]:
        return ()


class Trim(OverflowStrategy):
    """Archive the oldest message groups until the window fits (the default).

    With ``trim_count``, messages leave ``trim_count`` at a time (rounded up
    to whole groups). With ``headroom`` (a fraction of the window's budget,
    default 0.1), trimming goes that far below the budget, so the next turns
    fit without another overflow: one trim every few turns instead of one per
    turn, which halves the per-turn cost of a full window. ``headroom=0``
    trims to the exact fit.
    """

    name = "trim"
    _uses_base = False

    def __init__(self, *, trim_count: int | None = None, headroom: float = 0.1) -> None:
        _check_positive(trim_count, "trim_count", allow_none=True)
        if not isinstance(headroom, (int, float)) or not 0 <= headroom < 1:
            raise ValueError("headroom must be in [0, 1)")
        self.trim_count = trim_count
        self.headroom = float(headroom)

    def select(self, groups: Sequence[Group], ctx: OverflowContext) -> list[Group]:
        target = int(ctx.window_budget * (1 - self.headroom))
        return _evict_until(groups, target, self.trim_count, limit=ctx.window_budget)

    def __repr__(self) -> str:
        return f"Trim(trim_count={self.trim_count}, headroom={self.headroom})"


def _transcript(messages: Sequence[Message]) -> str:
    lines = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            calls = ", ".join(f"{c.name}({c.arguments_text()})" for c in m.tool_calls)
            text = f"{m.content} [called {calls}]".strip()
        elif m.role == "tool":
            text = f"[result of {m.name or m.tool_call_id or 'tool'}] {m.content}"
        else:
            text = m.content
        lines.append(f"{m.role}: {text}")
    return "\n".join(lines)


def truncate_to_tokens(text: str, max_tokens: int, counter: TokenCounter) -> str:
    """The longest prefix of ``text`` (cut at a word when possible) within ``max_tokens``."""
    if counter.count_text(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if counter.count_text(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    cut = text[:lo]
    space = cut.rfind(" ")
    return cut[:space] if space > lo * 0.8 else cut


class Summarize(OverflowStrategy):
    """Summarize the evicted groups with a model, rolling the previous summary in.

    Keeps the newest ``keep_recent`` messages (whole groups) verbatim. The
    summary is stored as a system message starting ``CONVERSATION SUMMARY:``
    and capped at ``max_summary_tokens``. If the model fails or exceeds
    ``timeout`` seconds, nothing changes and :class:`ModelError` is raised —
    or, with ``on_error="trim"``, the groups are trimmed instead (a warning is logged).
    """

    name = "summarize"

    def __init__(
        self,
        model: ChatModel | Any,
        *,
        prompt: str = DEFAULT_SUMMARY_PROMPT,
        keep_recent: int = 6,
        max_summary_tokens: int = 512,
        timeout: float | None = 60.0,
        on_error: Literal["raise", "trim"] = "raise",
    ) -> None:
        self.model = as_chat_model(model)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty str")
        if not isinstance(keep_recent, int) or isinstance(keep_recent, bool) or keep_recent < 0:
            raise ValueError("keep_recent must be a non-negative int")
        _check_positive(max_summary_tokens, "max_summary_tokens")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive or None")
        if on_error not in ("raise", "trim"):
            raise ValueError("on_error must be 'raise' or 'trim'")
        self.prompt = prompt
        self.keep_recent = keep_recent
        self.max_summary_tokens = max_summary_tokens
        self.timeout = timeout
        self.on_error = on_error

    def select(self, groups: Sequence[Group], ctx: OverflowContext) -> list[Group]:
        # Room for the new summary: it replaces the current one.
        current = ctx.state.summary.token_count if ctx.state.summary else 0
        target = ctx.window_budget + current - self.summary_budget(ctx)
        kept_messages = 0
        split = len(groups)
        kept_tokens = 0
        while split > 0:
            group = groups[split - 1]
            if kept_messages >= self.keep_recent or kept_tokens + group.tokens > target:
                break
            kept_messages += len(group.messages)
            kept_tokens += group.tokens
            split -= 1
        split = max(min(split, len(groups) - 1), 0)
        rest = start_on_user(groups[split:])
        if rest and rest[0].first.role != "user":
            # keep_recent cut inside a turn (no user message is kept): reach back to
            # the turn's user message when it fits, so the window opens on the user
            kept_tokens = sum(g.tokens for g in rest)
            for back in range(split - 1, -1, -1):
                kept_tokens += groups[back].tokens
                if kept_tokens > target:
                    break
                if groups[back].first.role == "user":
                    return list(groups[:back])
        return list(groups[: len(groups) - len(rest)])

    def summary_budget(self, ctx: OverflowContext) -> int:
        """``max_summary_tokens``, but never more than half the room the window has.

        A budget too small for the configured summary would otherwise leave no
        room for recent turns and call the model on every add.
        """
        current = ctx.state.summary.token_count if ctx.state.summary else 0
        return max(min(self.max_summary_tokens, (ctx.window_budget + current) // 2), 16)

    def _request(self, evicted: Sequence[Message], ctx: OverflowContext) -> list[Message]:
        previous = ctx.state.summary.content if ctx.state.summary else ""
        previous = previous.removeprefix(SUMMARY_PREFIX)
        body = (f"Previous summary:\n{previous}\n\n" if previous else "") + (
            f"Conversation:\n{_transcript(evicted)}"
        )
        return [Message("system", self.prompt), Message("user", body)]

    def _commit(self, text: Any, evicted: Sequence[Message], ctx: OverflowContext):
        if not isinstance(text, str) or not text.strip():
            raise ModelError("the summarizer returned no text")
        budget = self.summary_budget(ctx) - ctx.counter.count_text(SUMMARY_PREFIX) - 8
        summary = SUMMARY_PREFIX + truncate_to_tokens(text.strip(), max(budget, 1), ctx.counter)
        tokens = ctx.counter.count_message(Message("system", summary))
        return OverflowCommit(evict=list(evicted), summary=summary, summary_tokens=tokens)

    def _fallback(self, error: Exception, evicted: Sequence[Message]) -> OverflowCommit:
        if self.on_error == "raise":
            if isinstance(error, ModelError):
                raise error
            raise ModelError(f"summarizer failed: {error!r}") from error
        logger.warning("summarizer failed (%r); trimming instead", error)
        return OverflowCommit(evict=list(evicted))

    def prepare(self, evicted: Sequence[Message], ctx: OverflowContext) -> OverflowCommit:
        request = self._request(evicted, ctx)
        started = time.perf_counter()
        try:
            text = generate_within(self.model, request, self.timeout, "summarizer")
            return self._commit(text, evicted, ctx)
        except Exception as e:
            return self._fallback(e, evicted)
        finally:
            ctx.model_latency_ms = (time.perf_counter() - started) * 1000

    async def aprepare(self, evicted: Sequence[Message], ctx: OverflowContext) -> OverflowCommit:
        request = self._request(evicted, ctx)
        started = time.perf_counter()
        try:
            text = await agenerate_within(self.model, request, self.timeout, "summarizer")
            return self._commit(text, evicted, ctx)
        except Exception as e:
            return self._fallback(e, evicted)
        finally:
            ctx.model_latency_ms = (time.perf_counter() - started) * 1000

    def __repr__(self) -> str:
        return (
            f"Summarize(keep_recent={self.keep_recent}, "
            f"max_summary_tokens={self.max_summary_tokens})"
        )


class FlushToLongTerm(OverflowStrategy):
    """Hand evicted groups to long-term blocks, then archive them.

    Runs when the window passes ``max_stm_token_ratio`` of its budget and
    evicts down to ``target_ratio`` (default: half the trigger ratio). Each
    block's progress is recorded per session, so a retry after a failure never
    feeds a block the same messages twice. If a block fails, the messages stay
    in the window and :class:`BlockError` is raised (``on_error="raise"``), or a
    warning is logged (``on_error="keep"``); the next overflow retries.
    """

    name = "flush"

    def __init__(
        self,
        blocks: Sequence[MemoryBlock],
        *,
        max_stm_token_ratio: float = 0.7,
        target_ratio: float | None = None,
        on_error: Literal["raise", "keep"] = "raise",
    ) -> None:
        blocks = list(blocks)
        if not blocks:
            raise ValueError("FlushToLongTerm needs at least one long-term memory block")
        names = [getattr(b, "name", None) for b in blocks]
        if None in names or len(set(names)) != len(names):
            raise ValueError("long-term blocks need distinct names")
        if not 0 < max_stm_token_ratio <= 1:
            raise ValueError("max_stm_token_ratio must be in (0, 1]")
        target = max_stm_token_ratio / 2 if target_ratio is None else target_ratio
        if not 0 <= target < max_stm_token_ratio:
            raise ValueError("target_ratio must be in [0, max_stm_token_ratio)")
        if on_error not in ("raise", "keep"):
            raise ValueError("on_error must be 'raise' or 'keep'")
        self._blocks = blocks
        self.max_stm_token_ratio = max_stm_token_ratio
        self.target_ratio = target
        self.on_error = on_error

    def blocks(self) -> Sequence[MemoryBlock]:
        return self._blocks

    def should_run(self, window_tokens: int, window_budget: int) -> bool:
        return window_tokens > self.max_stm_token_ratio * window_budget

    def select(self, groups: Sequence[Group], ctx: OverflowContext) -> list[Group]:
        target = int(self.target_ratio * ctx.window_budget)
        return _evict_until(groups, target, limit=ctx.window_budget)

    def _pending(self, block: MemoryBlock, evicted: Sequence[Message], ctx: OverflowContext):
        if getattr(block, "read_only", False):
            return []  # static memory takes nothing from conversations
        mark = ctx.state.block_marks.get(block.name, 0)
        return [m for m in evicted if (m.seq or 0) > mark]

    def _failed(self, block: MemoryBlock, error: Exception) -> None:
        if self.on_error == "raise":
            raise BlockError(f"long-term block {block.name!r} failed: {error!r}") from error
        logger.warning(
            "long-term block %r failed (%r); messages stay in the window", block.name, error
        )

    def _marks(self, evicted: Sequence[Message]) -> dict[str, int]:
        last = max((m.seq or 0) for m in evicted)
        return {b.name: last for b in self._blocks}

    def prepare(self, evicted: Sequence[Message], ctx: OverflowContext) -> OverflowCommit | None:
        started = time.perf_counter()
        try:
            for block in self._blocks:
                pending = self._pending(block, evicted, ctx)
                if not pending:
                    continue
                try:
                    block.update(pending, user_id=ctx.state.user_id, session_id=ctx.session_id)
                except Exception as e:
                    self._failed(block, e)
                    return None
                ctx.store.set_block_mark(ctx.session_id, block.name, pending[-1].seq or 0)
        finally:
            ctx.model_latency_ms = (time.perf_counter() - started) * 1000
        return OverflowCommit(evict=list(evicted), block_marks=self._marks(evicted))

    async def aprepare(
        self, evicted: Sequence[Message], ctx: OverflowContext
    ) -> OverflowCommit | None:
        started = time.perf_counter()
        try:
            for block in self._blocks:
                pending = self._pending(block, evicted, ctx)
                if not pending:
                    continue
                try:
                    await block.aupdate(
                        pending, user_id=ctx.state.user_id, session_id=ctx.session_id
                    )
                except Exception as e:
                    self._failed(block, e)
                    return None
                await ctx.store.aset_block_mark(ctx.session_id, block.name, pending[-1].seq or 0)
        finally:
            ctx.model_latency_ms = (time.perf_counter() - started) * 1000
        return OverflowCommit(evict=list(evicted), block_marks=self._marks(evicted))

    def __repr__(self) -> str:
        names = ", ".join(b.name for b in self._blocks)
        return f"FlushToLongTerm([{names}], max_stm_token_ratio={self.max_stm_token_ratio})"
