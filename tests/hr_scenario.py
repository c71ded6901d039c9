"""The HR-policy chatbot scenario of seed 003 (section 4), with deterministic fakes.

Shared by the AgentMemory tests, the benchmarks and the demo: the conversation
between Sarah and the HR assistant, budgets under which the seed's overflows
happen exactly where the seed shows them, a fake summarizer model and a
recording long-term block. Nothing here calls a real model.

The conversation (14 messages, cl100k_base token counts) overflows for the
first time when Sarah's 7th message arrives: the window then holds 400 tokens.
The seed's "after" snapshots keep the last seven messages, from "What if my
manager initially says no?" on.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mssql_memory import (
    AgentMemory,
    BaseMemoryBlock,
    FlushToLongTerm,
    Message,
    SQLStore,
    Summarize,
    ToolCall,
)

SESSION = "hr-sarah"
USER = "sarah"
SYSTEM_PROMPT = "You are the HR policy assistant. Answer employees' questions about HR policies."

#: The seed's conversation, one (user, assistant) pair per turn.
TURNS: tuple[tuple[str, str], ...] = (
    (
        "Hi, I'm Sarah from the Marketing team. I need to understand our remote work policy.",
        "Hello Sarah! I'm here to help you with HR policies. Our remote work policy allows "
        "eligible employees to work remotely up to 3 days per week with manager approval. "
        "Would you like me to explain the eligibility criteria or application process?",
    ),
    (
        "What are the eligibility criteria?",
        "For remote work eligibility, you need to: 1. Have completed at least 6 months with the "
        "company 2. Have satisfactory performance ratings 3. Hold a role suitable for remote "
        "work (as determined by your manager) 4. Have necessary equipment and reliable internet "
        "connection. Are you meeting these criteria, Sarah?",
    ),
    (
        "Yes, I've been here for 2 years and have good performance reviews. How do I apply?",
        "Great! Since you meet the criteria, here's the application process: 1. Submit Form "
        "HR-101 (Remote Work Application) 2. Get manager approval and signature... The form is "
        'available on the employee portal under "HR Forms".',
    ),
    (
        "What if my manager initially says no?",
        "If your manager declines your request, you have options: 1. Ask for specific "
        "feedback... 2. Propose a trial period... 3. Request mediation through HR...",
    ),
    (
        "No, just want to be prepared. What about equipment - does the company provide anything?",
        "Yes, the company provides essential equipment for remote work: - Laptop/desktop "
        "computer... - Ergonomic chair allowance up to $300...",
    ),
    (
        "Perfect! One more question - can I work from abroad occasionally?",
        "Working from abroad has additional restrictions: - Maximum 2 weeks per year... - Must "
        "be approved 30 days in advance...",
    ),
    (
        "That's very helpful! I think I have everything I need for now.",
        "Excellent! I'm glad I could help you understand our remote work policy, Sarah. "
        "Remember to submit Form HR-101 when you're ready to apply.",
    ),
)

#: The first message the seed's STM keeps after summarizing or flushing (4.1.3 and 4.2.3).
FIRST_KEPT = "What if my manager initially says no?"
#: How many messages the seed's "after" snapshots keep (the summary aside).
KEPT_MESSAGES = 7
#: The 13th message (Sarah's 7th) is the one that overflows the window.
OVERFLOW_AT = 13

# Budgets (cl100k_base): the first 12 messages take 381 tokens, the first 13 take 400,
# the last 7 of those 13 take 169. The system prompt is counted outside the window.
#: Summarize / Trim: a window budget of 390 tokens, system prompt aside.
SUMMARIZE_WINDOW = 390
MAX_SUMMARY_TOKENS = 120
#: Flush: the window budget is 490 tokens; 0.8 of it (392) triggers, 0.4 (196) is the target.
FLUSH_WINDOW = 490
FLUSH_RATIO = 0.8
FLUSH_TARGET = 0.4
FLUSH_MEMORY_TOKENS = 120

#: The summary the seed shows (4.1.3) for the part of the conversation that was evicted.
SEED_SUMMARY_FACTS: tuple[tuple[str, str], ...] = (
    ("Sarah", "Sarah from Marketing team inquired about remote work policy."),
    ("3 days", "Key discussion points: Remote work allows 3 days/week with approval."),
    ("years", "Sarah meets eligibility criteria (2+ years experience, good performance)."),
    ("HR-101", "Discussed application process using Form HR-101, manager approval requirement."),
    ("declines", "Options if manager declines (feedback, trial periods, HR mediation)."),
    ("equipment for remote", "The company provides essential equipment for remote work."),
    ("abroad", "Working from abroad: max 2 weeks/year, approved 30 days in advance."),
)


def hr_messages() -> list[Message]:
    """The 14 messages of the conversation, fresh objects each call."""
    out: list[Message] = []
    for user_text, assistant_text in TURNS:
        out.append(Message("user", user_text))
        out.append(Message("assistant", assistant_text))
    return out


def system_tokens(memory: AgentMemory) -> int:
    """What the scenario's system prompt costs with ``memory``'s token counter."""
    return memory.token_counter.count_message(Message("system", SYSTEM_PROMPT))


def summarize_memory(store: Any, model: Any, **kwargs: Any) -> AgentMemory:
    """AgentMemory for scenario 1 (4.1): Summarize, overflowing first at message 13."""
    limit = SUMMARIZE_WINDOW + _system_cost()
    strategy = Summarize(
        model, keep_recent=KEPT_MESSAGES, max_summary_tokens=MAX_SUMMARY_TOKENS, **kwargs
    )
    return AgentMemory(store, token_limit=limit, overflow=strategy)


def flush_memory(store: Any, blocks: Sequence[Any], **kwargs: Any) -> AgentMemory:
    """AgentMemory for scenario 2 (4.2): FlushToLongTerm, overflowing first at message 13."""
    limit = FLUSH_WINDOW + _system_cost() + FLUSH_MEMORY_TOKENS
    strategy = FlushToLongTerm(
        blocks, max_stm_token_ratio=FLUSH_RATIO, target_ratio=FLUSH_TARGET, **kwargs
    )
    return AgentMemory(
        store, token_limit=limit, overflow=strategy, memory_token_limit=FLUSH_MEMORY_TOKENS
    )


def _system_cost() -> int:
    from mssql_memory import default_token_counter

    return default_token_counter().count_message(Message("system", SYSTEM_PROMPT))


def replay(
    memory: AgentMemory, session_id: str = SESSION, count: int | None = None, **kw: Any
) -> None:
    """Set the system prompt, then add the conversation (its first ``count`` messages) one
    message at a time, as an agent would."""
    memory.set_system_message(session_id, SYSTEM_PROMPT)
    for message in hr_messages()[:count]:
        memory.add(session_id, message, **kw)


async def areplay(
    memory: AgentMemory, session_id: str = SESSION, count: int | None = None, **kw: Any
) -> None:
    """The async twin of :func:`replay`."""
    await memory.aset_system_message(session_id, SYSTEM_PROMPT)
    for message in hr_messages()[:count]:
        await memory.aadd(session_id, message, **kw)


# -- fake models -------------------------------------------------------------------------

_COVERED = re.compile(r"\[covered=(\d+)\]")
_LINE = re.compile(r"^(user|assistant|tool|system): ", re.MULTILINE)


def request_parts(messages: Sequence[Message]) -> tuple[str, str]:
    """(previous summary, transcript) of a summarization request made by ``Summarize``."""
    body = messages[-1].content
    previous, transcript = "", body
    if body.startswith("Previous summary:\n"):
        previous, _, transcript = body.removeprefix("Previous summary:\n").partition("\n\n")
    return previous, transcript.removeprefix("Conversation:\n")


class FakeSummarizer:
    """A deterministic summarizer (a :class:`~mssql_memory.ChatModel`).

    For the HR conversation it writes the seed's summary facts found in the
    previous summary or the transcript; for anything else it writes
    ``[covered=N]``, N being the messages summarized so far (the previous
    summary's N plus this transcript's lines), so a double or lost summary
    shows in the count. ``delay`` slows every call; ``fail_times`` makes the
    first calls raise; ``exit_code`` ends the process inside the call (a crash);
    ``verbose`` appends the whole transcript (a long-winded model).
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        fail_times: int = 0,
        exit_code: int | None = None,
        marker: str | os.PathLike[str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.verbose = verbose
        self.delay = delay
        self.fail_times = fail_times
        self.exit_code = exit_code
        self.marker = marker
        self.calls: list[list[Message]] = []
        self._lock = threading.Lock()

        #: set it to end a slow call early (a timed-out call keeps running in its thread)
        self.release = threading.Event()

    def _start(self, messages: Sequence[Message]) -> bool:
        with self._lock:
            self.calls.append(list(messages))
            failing = self.fail_times > 0
            if failing:
                self.fail_times -= 1
        if self.marker is not None:
            Path(self.marker).write_text("summarizing")
        if self.exit_code is not None:
            os._exit(self.exit_code)
        return failing

    def _finish(self, messages: Sequence[Message], failing: bool) -> str:
        if failing:
            raise RuntimeError("the summarizer is down")
        text = summarize_text(messages)
        return f"{text} {request_parts(messages)[1]}" if self.verbose else text

    def generate(self, messages: Sequence[Message]) -> str:
        failing = self._start(messages)
        if self.delay:
            self.release.wait(self.delay)
        return self._finish(messages, failing)

    async def agenerate(self, messages: Sequence[Message]) -> str:
        failing = self._start(messages)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._finish(messages, failing)


def summarize_text(messages: Sequence[Message]) -> str:
    """What :class:`FakeSummarizer` answers to a summarization request."""
    previous, transcript = request_parts(messages)
    seen = f"{previous}\n{transcript}"
    facts = [fact for key, fact in SEED_SUMMARY_FACTS if key in seen]
    if facts:
        return " ".join(facts)
    match = _COVERED.search(previous)
    covered = (int(match.group(1)) if match else 0) + len(_LINE.findall(transcript))
    return f"[covered={covered}]"


def covered_count(summary: str) -> int:
    """The N of a generic fake summary ``[covered=N]``."""
    match = _COVERED.search(summary)
    assert match, summary
    return int(match.group(1))


# -- fake long-term blocks ------------------------------------------------------------


class RecordingBlock(BaseMemoryBlock):
    """A long-term block that records every message handed to it, in order.

    ``fail_times`` makes the first updates raise; ``get`` returns the seed
    facts found in what it took (so rendering has something to show).
    """

    def __init__(self, name: str = "recorder", *, fail_times: int = 0, max_tokens: int = 60):
        self.name = name
        self.max_tokens = max_tokens
        self.fail_times = fail_times
        self.updates: list[list[Message]] = []
        self.failures = 0
        self.deleted_users: list[str] = []

    @property
    def received(self) -> list[Message]:
        return [m for batch in self.updates for m in batch]

    def update(self, messages: Sequence[Message], *, user_id: str | None, session_id: str) -> None:
        if self.fail_times > 0:
            self.fail_times -= 1
            self.failures += 1
            raise RuntimeError(f"block {self.name} is down")
        self.updates.append(list(messages))

    def get(
        self, *, query: str | None, user_id: str | None, session_id: str, max_tokens: int
    ) -> list[str]:
        seen = "\n".join(m.content for m in self.received)
        return [fact for key, fact in SEED_SUMMARY_FACTS if key in seen]

    def delete_user(self, user_id: str) -> int:
        self.deleted_users.append(user_id)
        return 0


class FileBlock(BaseMemoryBlock):
    """A block for child processes: appends the seqs it takes to a file, then may hang.

    With ``hang``, it writes ``marker`` after recording and sleeps, so the
    parent can kill the process between an overflow's steps.
    """

    def __init__(
        self, name: str, path: str, *, hang: bool = False, marker: str | None = None
    ) -> None:
        self.name = name
        self.max_tokens = 60
        self.path = path
        self.hang = hang
        self.marker = marker

    def update(self, messages: Sequence[Message], *, user_id: str | None, session_id: str) -> None:
        with open(self.path, "a") as f:
            f.write("".join(f"{m.seq}\n" for m in messages))
        if self.hang:
            if self.marker:
                Path(self.marker).write_text("in block")
            time.sleep(120)

    def get(
        self, *, query: str | None, user_id: str | None, session_id: str, max_tokens: int
    ) -> list[str]:
        return []


def file_seqs(path: str | os.PathLike[str]) -> list[int]:
    """The seqs a :class:`FileBlock` recorded."""
    p = Path(path)
    return [int(line) for line in p.read_text().split()] if p.exists() else []


# -- conversations with tool calls ----------------------------------------------------


def tool_turn(index: int, calls: int = 1, *, answer: bool = True) -> list[Message]:
    """A user question, an assistant message with ``calls`` parallel tool calls, their
    results and (optionally) the assistant's answer."""
    ids = [f"call_{index}_{k}" for k in range(calls)]
    out = [
        Message("user", f"Question {index}: how many leave days do I have left?"),
        Message(
            "assistant",
            "",
            tool_calls=tuple(
                ToolCall(cid, "lookup_leave", {"employee": "sarah", "n": k})
                for k, cid in enumerate(ids)
            ),
        ),
    ]
    out += [
        Message("tool", f"result {index}.{k}: 12 days", tool_call_id=cid, name="lookup_leave")
        for k, cid in enumerate(ids)
    ]
    if answer:
        out.append(Message("assistant", f"Answer {index}: you have 12 leave days left."))
    return out


# -- child processes (crash and concurrency tests) ------------------------------------


def child_crash_overflow(url: str, table: str, session_id: str, mode: str, work: str) -> None:
    """In a child process: start an overflow that dies midway (``mode``).

    ``summarize-exit``: the model calls ``os._exit(1)``; ``summarize-hang``: the
    model writes a marker and sleeps (the parent kills it); ``flush-hang``: the
    first block takes the messages, the second writes a marker and sleeps.
    """
    store = SQLStore(url, table_name=table)
    marker = str(Path(work) / "marker")
    if mode == "summarize-exit":
        strategy: Any = Summarize(
            FakeSummarizer(exit_code=1), keep_recent=2, max_summary_tokens=60, timeout=None
        )
    elif mode == "summarize-hang":
        strategy = Summarize(
            FakeSummarizer(delay=120, marker=marker),
            keep_recent=2,
            max_summary_tokens=60,
            timeout=None,
        )
    elif mode == "flush-hang":
        strategy = FlushToLongTerm(
            [
                FileBlock("first", str(Path(work) / "first")),
                FileBlock("second", str(Path(work) / "second"), hang=True, marker=marker),
            ],
            max_stm_token_ratio=0.5,
        )
    else:
        raise ValueError(mode)
    memory = AgentMemory(store, token_limit=CRASH_TOKEN_LIMIT, overflow=strategy)
    memory.compact(session_id)
    raise SystemExit(3)  # the overflow should never have returned


#: A budget the crash tests' conversation (see ``crash_conversation``) overflows.
CRASH_TOKEN_LIMIT = 150


def crash_conversation() -> list[Message]:
    """Twelve short messages (200 tokens) with a tool call group among them."""
    out: list[Message] = []
    for i in range(3):
        out.append(Message("user", f"Question {i}: what does policy {i} say about travel?"))
        out.append(Message("assistant", f"Policy {i} says travel needs approval {i} weeks ahead."))
    out += tool_turn(7)
    out.append(Message("user", "Thanks, and what about leave carry-over?"))
    out.append(Message("assistant", "Up to five days carry over to the next year."))
    return out


def writer_batches(writer: str, turns: int) -> list[list[Message]]:
    """The batches concurrent writer ``writer`` adds: turns, every fifth with a tool call."""
    batches = []
    for turn in range(turns):
        batch = [
            Message("user", f"{writer} question {turn}: what is rule {turn}?"),
            Message("assistant", f"{writer} answer {turn}: rule {turn} means do the right thing."),
        ]
        if turn % 5 == 4:
            call_id = f"{writer}_{turn}"
            batch[1:1] = [
                Message("assistant", "", tool_calls=(ToolCall(call_id, "lookup", {"rule": turn}),)),
                Message("tool", f"{writer} rule {turn} text", tool_call_id=call_id),
            ]
        batches.append(batch)
    return batches


def message_key(message: Message) -> str:
    """A message's identity across processes (contents are unique; calls by their id)."""
    if message.tool_calls:
        return "call:" + ",".join(c.id for c in message.tool_calls)
    return f"{message.role}:{message.content}"


def concurrent_memory(store: Any, model: Any, **kwargs: Any) -> AgentMemory:
    """The AgentMemory every concurrent writer (and the checking parent) uses."""
    return AgentMemory(
        store,
        token_limit=CONCURRENT_TOKEN_LIMIT,
        overflow=Summarize(model, keep_recent=4, max_summary_tokens=40),
        **kwargs,
    )


def child_concurrent_writer(
    url: str, table: str, session_id: str, writer: str, turns: str, delay: str, barrier: str
) -> dict[str, int]:
    """In a child process: add ``turns`` turns to a shared session with Summarize on.

    Signals ``<barrier>/<writer>.ready`` and waits for ``<barrier>/go`` so that the
    writers start together.
    """
    store = SQLStore(url, table_name=table)
    store.get_session(session_id)  # connect before the start line
    events: list[Any] = []
    model = FakeSummarizer(delay=float(delay))
    memory = concurrent_memory(store, model, on_event=events.append)
    Path(barrier, f"{writer}.ready").write_text("ready")
    go = Path(barrier, "go")
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    for batch in writer_batches(writer, int(turns)):
        memory.add(session_id, batch)
    store.close()
    applied = [e for e in events if e.applied]
    return {
        "model_calls": len(model.calls),
        "applied": len(applied),
        "refused": len(events) - len(applied),
    }


CONCURRENT_TOKEN_LIMIT = 220
