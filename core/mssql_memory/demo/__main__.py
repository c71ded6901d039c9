"""The main demo: the seeds' HR-policy conversation through AgentMemory.

    python -m mssql_memory.demo [--url URL]

Shows, turn by turn, the window's tokens against the budget and each overflow
(trim, then summarize, then flush to long-term memory), the summary message and
the ``<memory>`` block; then a second process opens the same database and shows
that the memory survived the restart. Runs on the embedded SQLite file unless
``--url`` (or ``MSSQL_MEMORY_URL``) names another database. With
``OPENAI_API_KEY`` set, a real model writes the answers, summaries and facts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import (
    AgentMemory,
    ExtractiveMemory,
    FlushToLongTerm,
    LongTermStore,
    Message,
    OverflowEvent,
    SQLStore,
    StaticMemory,
    Summarize,
    VectorMemory,
)
from ..defaults import ENV_URL, default_url
from ..errors import AgentMemoryError, MissingDependencyError
from .scenario import (
    HR_POLICY_FACTS,
    HR_TURNS,
    ExtractiveSummarizer,
    PatternFactExtractor,
    RecordedAssistant,
)

# The demo writes to the default tables (so `mssql-memory sessions list` shows it), under ids of
# its own: it resets only these sessions, this user and its own static block.
USER = "demo-sarah"
SESSIONS = {"trim": "demo-hr-trim", "summarize": "demo-hr-summarize", "flush": "demo-hr-flush"}
FOLLOW_UP = ("demo-hr-followup", "Can I work from another country for a few weeks?")
POLICY_BLOCK = "demo_hr_policies"


def _console() -> Any:
    try:
        from rich.console import Console
    except ImportError:
        raise MissingDependencyError(
            "the demo needs rich: pip install 'mssql-agent-memory[demo]'"
        ) from None
    return Console(highlight=False)


@dataclass
class Models:
    """What writes the answers, summaries and facts, and how to describe it honestly."""

    label: str
    summarizer: Any
    extractor: Any
    answer: Any  # (context messages) -> str
    embedder: Any
    embedder_label: str


def _embedder() -> tuple[Any, str]:
    try:
        import sentence_transformers  # noqa: F401

        from ..ltm import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder()
        return embedder, f"local sentence-transformers model ({embedder.model_name_or_path})"
    except ImportError:
        from ..ltm import HashingEmbedder

        return HashingEmbedder(), "HashingEmbedder (lexical, no model; see the embeddings extra)"


def _models(offline: bool) -> Models:
    embedder, embedder_label = _embedder()
    if not offline and os.environ.get("OPENAI_API_KEY"):
        try:
            from langchain_openai import ChatOpenAI

            from langchain_mssql_memory import as_chat_model
        except ImportError:
            raise MissingDependencyError(
                "live mode needs pip install 'mssql-agent-memory[langchain,openai]' "
                "(or run with --offline)"
            ) from None
        name = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
        model = as_chat_model(ChatOpenAI(model=name, temperature=0))
        system = Message("system", "You are the company's HR policy assistant. Be brief.")
        return Models(
            f"LIVE: {name} via langchain-openai"
            + (f" at {os.environ['OPENAI_BASE_URL']}" if os.environ.get("OPENAI_BASE_URL") else ""),
            model,
            model,
            lambda context: model.generate([system, *context]),
            embedder,
            embedder_label,
        )
    recorded = RecordedAssistant()
    return Models(
        "OFFLINE: no model is called. Answers are the scenario's recorded responses, summaries "
        "come from a local extractive summarizer, facts from a pattern extractor",
        ExtractiveSummarizer(),
        PatternFactExtractor(),
        recorded.answer,
        embedder,
        embedder_label,
    )


def _bar(used: int, budget: int, width: int = 20) -> str:
    filled = min(width, round(width * used / budget)) if budget else 0
    color = "red" if used > budget else "yellow" if used > 0.8 * budget else "green"
    return f"[{color}]{'█' * filled}{'·' * (width - filled)}[/] {used:>4}/{budget}"


def _event_text(event: OverflowEvent) -> str:
    text = (
        f"[bold magenta]{event.strategy}[/]: {event.messages_evicted} msgs out, "
        f"{event.tokens_before}→{event.tokens_after} tok"
    )
    if event.summary_tokens:
        text += f", summary {event.summary_tokens} tok"
    if event.model_latency_ms >= 1:
        text += f", model {event.model_latency_ms:.0f} ms"
    return text


def _context_tokens(memory: AgentMemory, session_id: str) -> int:
    return sum(m.token_count or 0 for m in memory.get(session_id))


def _converse(console: Any, title: str, memory: AgentMemory, session_id: str, models: Models):
    from rich.table import Table

    events: list[OverflowEvent] = []
    memory.on_event = events.append
    table = Table(title=title, title_justify="left", expand=True)
    table.add_column("#", justify="right", width=3)
    table.add_column("message", ratio=3)
    table.add_column("context tokens / budget", ratio=2, no_wrap=True)
    table.add_column("overflow", ratio=2)
    memory.set_system_message(session_id, "You are the company's HR policy assistant.")
    for turn, (question, _) in enumerate(HR_TURNS, start=1):
        for role, text in (("user", question), ("assistant", None)):
            if role == "assistant":
                text = models.answer(memory.get(session_id))
            before = len(events)
            memory.add(session_id, Message(role, text), user_id=USER)
            label = f"[cyan]{role}[/]: {text[:70]}{'…' if len(text) > 70 else ''}"
            used = _context_tokens(memory, session_id)
            happened = "; ".join(_event_text(e) for e in events[before:])
            table.add_row(str(turn), label, _bar(used, memory.token_limit), happened)
    console.print(table)
    return events


def _show_context(console: Any, title: str, messages: Sequence[Message], style: str) -> None:
    from rich.panel import Panel

    body = "\n\n".join(f"[bold]{m.role}[/]: {_escape(m.content)}" for m in messages)
    console.print(Panel(body, title=title, border_style=style))


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _stores(url: str) -> tuple[SQLStore, LongTermStore]:
    store = SQLStore(url)
    return store, LongTermStore(store)


def _flush_memory(store: SQLStore, lts: LongTermStore, models: Models, **kw: Any) -> AgentMemory:
    static = StaticMemory(HR_POLICY_FACTS, store=lts, max_tokens=100, name=POLICY_BLOCK)
    extractive = ExtractiveMemory(models.extractor, store=lts, max_tokens=120)
    vector = VectorMemory(models.embedder, store=lts, top_k=3, max_tokens=280, min_score=0.1)
    return AgentMemory(
        store,
        token_limit=1000,
        memory_token_limit=500,
        overflow=FlushToLongTerm([extractive, vector], max_stm_token_ratio=0.6),
        blocks=[static],
        **kw,
    )


def run_conversation(console: Any, url: str, models: Models) -> None:
    from rich.rule import Rule

    store, lts = _stores(url)
    for session in [*SESSIONS.values(), FOLLOW_UP[0]]:  # reset the demo's own data only
        store.delete_session(session)
    lts.delete_user(USER)

    console.print(Rule("[bold]1. Trim[/] — the default: the oldest turns leave the window"))
    _converse(
        console,
        "token_limit=320, Trim()",
        AgentMemory(store, token_limit=320),
        SESSIONS["trim"],
        models,
    )

    console.print(Rule("[bold]2. Summarize[/] — a model folds the oldest turns into a summary"))
    summarize = AgentMemory(
        store,
        token_limit=320,
        overflow=Summarize(models.summarizer, keep_recent=4, max_summary_tokens=110),
    )
    _converse(
        console,
        "token_limit=320, Summarize(keep_recent=4)",
        summarize,
        SESSIONS["summarize"],
        models,
    )
    _show_context(
        console,
        "context sent to the model after summarizing (system, summary, recent turns)",
        summarize.get(SESSIONS["summarize"]),
        "magenta",
    )

    console.print(Rule("[bold]3. Flush to long-term memory[/] — facts and vectors per user"))
    flush = _flush_memory(store, lts, models)
    _converse(
        console,
        "token_limit=1000, FlushToLongTerm([extractive, vector]), static policy facts",
        flush,
        SESSIONS["flush"],
        models,
    )
    session, question = FOLLOW_UP
    flush.add(session, Message("user", question), user_id=USER)
    _show_context(
        console,
        f"a NEW session of the same user ({session}): long-term memory in context",
        flush.get(session),
        "green",
    )


def show_after_restart(console: Any, url: str, models: Models) -> None:
    from rich.rule import Rule
    from rich.table import Table

    console.print(Rule(f"[bold]4. A new process (pid {os.getpid()}) opens the same database"))
    store, lts = _stores(url)
    table = Table(title="sessions found after the restart", title_justify="left")
    for column in ("session", "user", "stored messages", "in window", "window tokens", "summary"):
        table.add_column(column)
    for info in store.list_sessions(user_id=USER):
        state = store.get_session(info.session_id)
        table.add_row(
            info.session_id,
            info.user_id or "",
            str(info.message_count),
            str(info.active_count),
            str(info.active_tokens),
            f"{state.summary.token_count} tok" if state.summary else "",
        )
    console.print(table)
    session, question = FOLLOW_UP
    memory = _flush_memory(store, lts, models)
    _show_context(
        console,
        f"context for {session} rebuilt from the database by a fresh process",
        memory.get(session, query=question),
        "blue",
    )
    console.print("[bold green]The memory survived the restart.[/]")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mssql_memory.demo", description=__doc__)
    parser.add_argument("--url", help=f"database URL (default: ${ENV_URL} or the SQLite file)")
    parser.add_argument("--offline", action="store_true", help="never call a model")
    parser.add_argument(
        "--phase", choices=["all", "restart"], default="all", help=argparse.SUPPRESS
    )
    parser.add_argument("--no-restart", action="store_true", help="skip the second process")
    args = parser.parse_args(argv)
    console = _console()
    url = args.url or default_url()
    try:
        models = _models(args.offline)
        if args.phase == "restart":
            show_after_restart(console, url, models)
            return 0
        shown = SQLStore(url, auto_create=False)
        console.print(f"[bold]mssql-agent-memory demo[/] on {shown!r}")
        console.print(f"[yellow]{models.label}[/]; embeddings: {models.embedder_label}.")
        run_conversation(console, url, models)
        if not args.no_restart:
            env = {**os.environ, ENV_URL: url}  # the URL travels by environment, not argv
            child = [sys.executable, "-m", "mssql_memory.demo", "--phase", "restart"]
            if args.offline:
                child.append("--offline")
            return subprocess.call(child, env=env)
        return 0
    except AgentMemoryError as e:
        console.print(f"[red]error:[/] {e}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
