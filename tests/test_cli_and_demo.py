"""The `mssql-memory` CLI and the main demo, run as a user runs them (real SQLite files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mssql_memory import (
    AgentMemory,
    ExtractiveMemory,
    HashingEmbedder,
    LongTermStore,
    Message,
    SQLStore,
    Summarize,
    VectorMemory,
)
from mssql_memory.cli import main
from mssql_memory.demo import HR_TURNS, ExtractiveSummarizer, PatternFactExtractor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite file holding one summarized session of Sarah, plus facts and vectors."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = SQLStore(url)
    memory = AgentMemory(
        store, token_limit=320, overflow=Summarize(ExtractiveSummarizer(), keep_recent=4)
    )
    memory.set_system_message("hr-1", "You are the HR assistant.")
    for question, answer in HR_TURNS:
        memory.add(
            "hr-1", [Message("user", question), Message("assistant", answer)], user_id="sarah"
        )
    lts = LongTermStore(store)
    ExtractiveMemory(PatternFactExtractor(), store=lts).update(
        store.get_history("hr-1"), user_id="sarah", session_id="hr-1"
    )
    VectorMemory(HashingEmbedder(), store=lts).update(
        store.get_history("hr-1")[:4], user_id="sarah", session_id="hr-1"
    )
    memory.add("bob-1", Message("user", "hello"), user_id="bob")
    store.close()
    return url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sessions_list_and_show(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """list shows every session; show gives each message's status and token count."""
    code, out, _ = run(capsys, "--url", db, "sessions", "list")
    assert code == 0 and "hr-1" in out and "bob-1" in out
    code, out, _ = run(capsys, "--url", db, "sessions", "list", "--user", "bob")
    assert code == 0 and "bob-1" in out and "hr-1" not in out
    code, out, _ = run(capsys, "--url", db, "sessions", "show", "hr-1")
    assert code == 0
    assert "summarized" in out and "active" in out and "CONVERSATION SUMMARY" in out


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_export_import_round_trip(
    db: str, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exported session imported under a new id has the same messages, statuses, summary."""
    target = tmp_path / f"hr.{fmt}"
    code, _, _ = run(
        capsys, "--url", db, "sessions", "export", "hr-1", "--format", fmt, "-o", str(target)
    )
    assert code == 0 and target.stat().st_size > 0
    code, out, _ = run(capsys, "--url", db, "sessions", "import", str(target), "--as", "hr-copy")
    assert code == 0 and "hr-copy" in out
    store = SQLStore(db)
    try:
        original, copy = store.get_history("hr-1"), store.get_history("hr-copy")
        assert [(m.role, m.content, m.status) for m in copy] == [
            (m.role, m.content, m.status) for m in original
        ]
        a, b = store.get_session("hr-1"), store.get_session("hr-copy")
        assert b.summary is not None and b.summary.content == a.summary.content
        assert b.system_message.content == a.system_message.content
        assert b.user_id == "sarah" and b.active_tokens == a.active_tokens
    finally:
        store.close()
    code, _, err = run(capsys, "--url", db, "sessions", "import", str(target), "--as", "hr-copy")
    assert code == 1 and "already exists" in err and err.count("\n") == 1


def test_export_markdown_to_stdout(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The markdown export is a readable transcript with statuses."""
    code, out, _ = run(capsys, "--url", db, "sessions", "export", "hr-1", "--format", "md")
    assert code == 0 and out.startswith("# Session `hr-1`") and "_summarized," in out


def test_stats_delete_and_forget(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """stats counts everything; delete removes a session; forget removes a user's data only."""
    code, out, _ = run(capsys, "--url", db, "stats")
    assert code == 0
    for word in ("sessions", "messages", "summaries", "facts", "vectors"):
        assert word in out
    code, out, _ = run(capsys, "--url", db, "users", "forget", "sarah")
    assert code == 0 and "1 sessions" in out
    store = SQLStore(db)
    lts = LongTermStore(store)
    try:
        assert not store.get_session("hr-1").exists
        assert store.get_session("bob-1").exists
        assert lts.facts("extractive_memory", "sarah") == []
        assert lts.load_vectors("vector_memory", "sarah", "hr-1") == []
    finally:
        store.close()
    code, out, _ = run(capsys, "--url", db, "sessions", "delete", "bob-1")
    assert code == 0
    code, _, _ = run(capsys, "--url", db, "sessions", "delete", "bob-1")
    assert code == 1


def test_init_db_sql_prints_tsql_without_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    """init-db --sql compiles the DDL for the URL's dialect; no driver or server is needed."""
    url = "mssql+pyodbc://user:secret@nohost/db?driver=ODBC+Driver+18+for+SQL+Server"
    code, out, _ = run(capsys, "--url", url, "init-db", "--sql", "--schema", "memory")
    assert code == 0
    assert "CREATE TABLE memory.[ChatMessages]" in out and "NVARCHAR(max)" in out
    assert "IF NOT EXISTS" not in out and "secret" not in out
    assert out.count("CREATE TABLE") == 5


def test_init_db_sql_with_a_vector_dimension_adds_the_native_key_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--vector-dimension prints the VECTOR(n) key table for SQL Server and pgvector (with
    the extension), and is refused where no native vector type exists."""
    url = "mssql+pyodbc://user:secret@nohost/db?driver=ODBC+Driver+18+for+SQL+Server"
    code, out, _ = run(capsys, "--url", url, "init-db", "--sql", "--vector-dimension", "384")
    assert code == 0 and "embedding VECTOR(384) NOT NULL" in out
    assert "REFERENCES [AgentMemory_vectors] (id) ON DELETE CASCADE" in out
    pg = "postgresql+psycopg://u@nohost/db"
    code, out, _ = run(capsys, "--url", pg, "init-db", "--sql", "--vector-dimension", "384")
    assert code == 0 and out.startswith("CREATE EXTENSION IF NOT EXISTS vector;")
    lite = "sqlite:///unused.db"
    code, _, err = run(capsys, "--url", lite, "init-db", "--sql", "--vector-dimension", "384")
    assert code == 1 and "no native vector type" in err


def test_init_db_creates_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """init-db creates the tables; running it twice is fine."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert run(capsys, "--url", url, "init-db")[0] == 0
    assert run(capsys, "--url", url, "init-db")[0] == 0
    code, out, _ = run(capsys, "--url", url, "stats")
    assert code == 0 and "sessions" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--table", "x; DROP TABLE y", "stats"], "invalid table_name"),
        (["sessions", "show", "nope"], "no session"),
        (["sessions", "show", " padded "], "whitespace"),
        (["sessions", "import", "/nonexistent/file.json"], "cannot read"),
    ],
)
def test_errors_are_one_line(
    db: str, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad input gives exit code 1 and one clear line on stderr, never a traceback."""
    code, _, err = run(capsys, "--url", db, *args)
    assert code == 1 and needle in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.integration
def test_dead_database_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable server is reported in one line."""
    code, _, err = run(capsys, "--url", "postgresql+psycopg://u@127.0.0.1:1/x", "stats")
    assert code == 1 and "unavailable" in err and err.count("\n") == 1


def test_console_script_is_declared() -> None:
    """pyproject declares the mssql-memory console script pointing at this main()."""
    text = (ROOT / "pyproject.toml").read_text()
    assert 'mssql-memory = "mssql_memory.cli:main"' in text


@pytest.mark.slow
def test_demo_runs_offline_and_survives_a_restart(tmp_path: Path) -> None:
    """The README's first command: the demo runs offline, says so, and a second process
    finds the memory after the restart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(
        MSSQL_MEMORY_URL=f"sqlite:///{tmp_path / 'demo.db'}",
        HF_HUB_OFFLINE="1",
        COLUMNS="140",
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-m", "mssql_memory.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "OFFLINE: no model is called" in out
    for marker in ("trim:", "summarize:", "flush:", "CONVERSATION SUMMARY:", "<memory>"):
        assert marker in out, marker
    assert "The memory survived the restart." in out
    assert "The user's name is Sarah." in out.split("4. A new process")[1]
    store = SQLStore(env["MSSQL_MEMORY_URL"])
    try:
        sessions = {s.session_id for s in store.list_sessions()}
        assert {"demo-hr-trim", "demo-hr-summarize", "demo-hr-flush"} <= sessions
        export = json.dumps([m.content for m in store.get_history("demo-hr-summarize")])
        assert "Form HR-101" in export
    finally:
        store.close()
