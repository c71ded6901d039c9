"""``mssql-memory``: inspect and manage the memory database from a terminal.

    mssql-memory [--url URL] [--table NAME] [--ltm-prefix NAME] COMMAND ...

Commands: ``sessions list|show|export|import|delete``, ``users forget``,
``stats``, ``init-db [--sql]``. The URL defaults to ``$MSSQL_MEMORY_URL`` or
the embedded SQLite file the demo uses. Errors print one line, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateIndex, CreateTable

from .admin import export_lines, export_session, import_session, read_export, render_markdown
from .admin import totals as compute_totals
from .defaults import ENV_URL, default_url
from .errors import AgentMemoryError
from .ltm.native import MAX_DIMENSIONS, NativeVectors
from .ltm.schema import build_ltm_tables
from .ltm.store import LongTermStore
from .stores.sql import SQLStore
from .stores.sql_schema import build_tables

__all__ = ["main"]


class _Output:
    """Rich tables and progress when rich is installed, plain text otherwise."""

    def __init__(self) -> None:
        try:
            from rich.console import Console

            self.console: Any = Console(highlight=False)
        except ImportError:
            self.console = None

    def print(self, text: str = "") -> None:
        if self.console is not None:
            self.console.print(text, markup=False, soft_wrap=True)
        else:
            print(text)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.console is not None:
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*[str(v) for v in row])
            self.console.print(table)
            return
        print(title)
        print("\t".join(columns))
        for row in rows:
            print("\t".join(str(v) for v in row))

    def progress(self, total: int, label: str) -> Any:
        if self.console is None or total <= 0:
            return _NoProgress()
        from rich.progress import Progress

        return _RichProgress(Progress(console=self.console, transient=True), total, label)


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, n: int) -> None:
        return None


class _RichProgress:
    def __init__(self, progress: Any, total: int, label: str) -> None:
        self.progress, self.total, self.label = progress, total, label

    def __enter__(self) -> _RichProgress:
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)


def _stores(args: argparse.Namespace) -> tuple[SQLStore, LongTermStore]:
    store = SQLStore(args.url or default_url(), table_name=args.table)
    return store, LongTermStore(store, table_prefix=args.ltm_prefix)


def _cmd_list(args: argparse.Namespace, out: _Output) -> int:
    store, _ = _stores(args)
    rows = store.list_sessions(user_id=args.user, limit=args.limit, after=args.after)
    out.table(
        f"sessions ({len(rows)})",
        ["session", "user", "messages", "in window", "window tokens", "updated"],
        [
            (
                r.session_id,
                r.user_id or "",
                r.message_count,
                r.active_count,
                r.active_tokens,
                r.updated_at or "",
            )
            for r in rows
        ],
    )
    return 0


def _cmd_show(args: argparse.Namespace, out: _Output) -> int:
    store, _ = _stores(args)
    document = export_session(store, args.session_id)
    if document["system_message"]:
        out.print(f"system message: {document['system_message']['content']}")
    if document["summary"]:
        out.print(
            f"summary ({document['summary']['token_count']} tokens): "
            f"{document['summary']['content']}"
        )
    out.table(
        f"session {args.session_id} (user {document['user_id'] or '-'})",
        ["seq", "role", "status", "tokens", "content"],
        [
            (
                r["seq"],
                r["role"],
                r["status"],
                r["token_count"],
                (r["content"][:100] + ("…" if len(r["content"]) > 100 else "")).replace("\n", " "),
            )
            for r in document["messages"]
        ],
    )
    return 0


def _cmd_export(args: argparse.Namespace, out: _Output) -> int:
    store, _ = _stores(args)
    document = export_session(store, args.session_id)
    if args.format == "json":
        text = json.dumps(document, ensure_ascii=False, indent=2)
    elif args.format == "jsonl":
        text = "\n".join(export_lines(document))
    else:
        text = render_markdown(document)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        out.print(f"exported {len(document['messages'])} messages to {args.output}")
    else:
        sys.stdout.write(text + "\n")
    return 0


def _cmd_import(args: argparse.Namespace, out: _Output) -> int:
    store, _ = _stores(args)
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read {args.file}: {e.strerror}") from None
    document = read_export(text)
    with out.progress(len(document["messages"]), "importing") as bar:
        sid = import_session(store, document, session_id=args.session_id, progress=bar.advance)
    out.print(f"imported {len(document['messages'])} messages into session {sid}")
    return 0


def _cmd_delete(args: argparse.Namespace, out: _Output) -> int:
    store, lts = _stores(args)
    existed = store.delete_session(args.session_id)
    lts.delete_session_vectors([args.session_id])
    out.print(f"deleted session {args.session_id}" if existed else "no such session")
    return 0 if existed else 1


def _cmd_forget(args: argparse.Namespace, out: _Output) -> int:
    store, lts = _stores(args)
    sessions = store.delete_user(args.user_id)
    rows = lts.delete_user(args.user_id)
    out.print(f"forgot user {args.user_id}: {sessions} sessions, {rows} facts and vectors")
    return 0


def _cmd_stats(args: argparse.Namespace, out: _Output) -> int:
    store, lts = _stores(args)
    figures = compute_totals(store, lts)
    out.table(f"memory in {store!r}", ["what", "count"], list(figures.items()))
    return 0


def _cmd_init(args: argparse.Namespace, out: _Output) -> int:
    if args.sql:  # compile only: no connection, no driver needed
        url = make_url(args.url or default_url())
        dialect = registry.load(url.get_backend_name())()
        ltm = build_ltm_tables(args.ltm_prefix, args.schema)
        if args.vector_dimension:  # the native key table (SQL Server 2025, pgvector)
            if dialect.name not in MAX_DIMENSIONS:
                raise ValueError(
                    f"{dialect.name} has no native vector type "
                    "(SQL Server 2025 and PostgreSQL with pgvector have)"
                )
            if dialect.name == "postgresql":
                out.print("CREATE EXTENSION IF NOT EXISTS vector;\n")
            NativeVectors(ltm.vectors, ltm.metadata, args.ltm_prefix).table(args.vector_dimension)
        tables = [build_tables(args.table, args.schema).metadata, ltm.metadata]
        for metadata in tables:
            for table in metadata.sorted_tables:
                out.print(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
                for index in sorted(table.indexes, key=lambda i: i.name or ""):
                    out.print(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";")
                out.print()
        return 0
    url = args.url or default_url()
    store = SQLStore(url, table_name=args.table, schema=args.schema)
    lts = LongTermStore(store, table_prefix=args.ltm_prefix, schema=args.schema)
    store.create_schema()
    lts.create_schema()
    if args.vector_dimension:
        kind = lts.native_search(args.vector_dimension)
        where = f"native ({kind})" if kind else "in the process (no native vector type here)"
        out.print(f"vectors of {args.vector_dimension} dimensions are searched {where}")
    out.print(f"schema ready in {store!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mssql-memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help=f"database URL (default: ${ENV_URL} or the SQLite file)")
    parser.add_argument("--table", default="ChatMessages", help="messages table name")
    parser.add_argument("--ltm-prefix", default="AgentMemory", help="long-term tables prefix")
    commands = parser.add_subparsers(dest="command", required=True)

    sessions = commands.add_parser("sessions", help="list, show, export, import, delete sessions")
    sub = sessions.add_subparsers(dest="action", required=True)
    p = sub.add_parser("list", help="list sessions")
    p.add_argument("--user")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--after", help="continue after this session id (paging)")
    p.set_defaults(run=_cmd_list)
    p = sub.add_parser("show", help="full history with status and token counts")
    p.add_argument("session_id")
    p.set_defaults(run=_cmd_show)
    p = sub.add_parser("export", help="export a session")
    p.add_argument("session_id")
    p.add_argument("--format", choices=["json", "jsonl", "md"], default="json")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.set_defaults(run=_cmd_export)
    p = sub.add_parser("import", help="import a json/jsonl export")
    p.add_argument("file")
    p.add_argument("--as", dest="session_id", help="import under this session id")
    p.set_defaults(run=_cmd_import)
    p = sub.add_parser("delete", help="delete a session")
    p.add_argument("session_id")
    p.set_defaults(run=_cmd_delete)

    users = commands.add_parser("users", help="per-user data")
    sub = users.add_subparsers(dest="action", required=True)
    p = sub.add_parser("forget", help="delete everything stored about a user")
    p.add_argument("user_id")
    p.set_defaults(run=_cmd_forget)

    p = commands.add_parser("stats", help="sessions, messages, tokens, summaries, facts, vectors")
    p.set_defaults(run=_cmd_stats)
    p = commands.add_parser("init-db", help="create the schema")
    p.add_argument("--sql", action="store_true", help="print the DDL instead of running it")
    p.add_argument("--schema", help="database schema for the tables (SQL Server: e.g. memory)")
    p.add_argument(
        "--vector-dimension",
        type=int,
        metavar="N",
        help="also create the native vector key table for N-float embeddings (e.g. 384)",
    )
    p.set_defaults(run=_cmd_init)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = _Output()
    try:
        return int(args.run(args, out))
    except (AgentMemoryError, ValueError, TypeError) as e:
        print(f"mssql-memory: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
