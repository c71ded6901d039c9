"""Faults during an overflow: failing or slow models, failing blocks, and a process that dies
between an overflow's steps. Nothing a caller handed over is ever lost, and a failed
overflow changes nothing (it is retried later)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import backend_params
from hr_scenario import (
    CRASH_TOKEN_LIMIT,
    SESSION,
    FakeSummarizer,
    RecordingBlock,
    crash_conversation,
    file_seqs,
    hr_messages,
    replay,
    summarize_memory,
)
from mssql_memory import (
    SUMMARY_PREFIX,
    AgentMemory,
    BlockError,
    FlushToLongTerm,
    Message,
    ModelError,
    Summarize,
    group_messages,
)

TESTS = Path(__file__).resolve().parent
FAULT_BACKENDS = backend_params(("memory", "sqlite", "postgresql", "mariadb", "mssql"))
CRASH_BACKENDS = backend_params(("sqlite", "postgresql", "mariadb", "mssql"))


def snapshot(memory: AgentMemory, session: str = SESSION) -> dict[str, Any]:
    """Everything an overflow may change: history with statuses, window, summary, block marks."""
    state = memory.store.get_session(session)
    return {
        "history": [(m.id, m.seq, m.status, m.content) for m in memory.history(session)],
        "window": [m.id for m in memory.store.get_window(session)],
        "summary": state.summary.content if state.summary else None,
        "active_tokens": state.active_tokens,
        "marks": dict(state.block_marks),
    }


@pytest.fixture(params=FAULT_BACKENDS)
def fault_store(request: pytest.FixtureRequest, make_store: Any) -> Any:
    return make_store(request.param)


# -- models --------------------------------------------------------------------------------


def test_model_failure_changes_nothing_but_keeps_the_new_message(fault_store: Any) -> None:
    """Model raises: ModelError, state unchanged but for the new message; a retry completes."""
    model = FakeSummarizer(fail_times=1)
    memory = summarize_memory(fault_store, model)
    replay(memory, count=12)
    before = snapshot(memory)
    last = hr_messages()[12]
    with pytest.raises(ModelError) as info:
        memory.add(SESSION, last)
    assert isinstance(info.value.__cause__, RuntimeError)
    after = snapshot(memory)
    assert after["history"][:-1] == before["history"]
    assert after["history"][-1][0] == last.id and after["history"][-1][2] == "active"
    assert after["window"] == [*before["window"], last.id]
    assert after["summary"] is None and after["marks"] == before["marks"]

    assert memory.compact(SESSION) is True
    assert len(model.calls) == 2
    assert snapshot(memory)["summary"].startswith(SUMMARY_PREFIX)
    assert [m.status for m in memory.history(SESSION)][:6] == ["summarized"] * 6


def test_model_timeout_is_a_model_error(fault_store: Any) -> None:
    """A model slower than Summarize(timeout=...) raises ModelError and changes nothing."""
    model = FakeSummarizer(delay=30)
    memory = summarize_memory(fault_store, model, timeout=0.2)
    replay(memory, count=12)
    before = snapshot(memory)
    try:
        with pytest.raises(ModelError, match="timed out"):
            memory.add(SESSION, hr_messages()[12])
    finally:
        model.release.set()  # let the abandoned call finish
    after = snapshot(memory)
    assert after["history"][:-1] == before["history"]
    assert after["summary"] is None and len(after["window"]) == len(before["window"]) + 1


async def test_async_model_timeout_is_a_model_error(make_store: Any) -> None:
    """The async path honours the timeout too."""
    memory = summarize_memory(make_store("sqlite"), FakeSummarizer(delay=30), timeout=0.2)
    replay(memory, count=12)
    before = snapshot(memory)
    with pytest.raises(ModelError, match="timed out"):
        await memory.aadd(SESSION, hr_messages()[12])
    assert snapshot(memory)["history"][:-1] == before["history"]
    assert snapshot(memory)["summary"] is None


@pytest.mark.parametrize("backend", backend_params(("memory", "sqlite")))
def test_on_error_trim_falls_back_to_trimming(
    make_store: Any, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Summarize(on_error='trim'): a failing model logs a warning and groups are trimmed."""
    memory = summarize_memory(make_store(backend), FakeSummarizer(fail_times=1), on_error="trim")
    with caplog.at_level(logging.WARNING, logger="mssql_memory"):
        replay(memory, count=13)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("trimming instead" in r.getMessage() for r in warnings)
    assert warnings[0].name.startswith("mssql_memory")
    assert snapshot(memory)["summary"] is None
    assert [m.status for m in memory.history(SESSION)] == ["archived"] * 6 + ["active"] * 7


# -- blocks --------------------------------------------------------------------------------


def test_failing_block_keeps_messages_and_retry_never_duplicates(fault_store: Any) -> None:
    """A failing block keeps messages in the window; retries never feed a block twice."""
    first, second = RecordingBlock("first"), RecordingBlock("second", fail_times=1)
    memory = AgentMemory(fault_store, token_limit=320, overflow=FlushToLongTerm([first, second]))
    memory.set_system_message(SESSION, "You are the HR assistant.")
    failed_at = None
    for index, message in enumerate(hr_messages()):
        before = snapshot(memory)
        try:
            memory.add(SESSION, message)
        except BlockError:
            failed_at = index
            after = snapshot(memory)
            assert after["history"][:-1] == before["history"]
            assert after["window"] == [*before["window"], message.id]
            assert set(after["marks"]) == {"first"}  # first took its share, second did not
            assert [m.seq for m in first.received] == list(range(1, after["marks"]["first"] + 1))
    assert failed_at is not None and second.failures == 1
    for _ in range(3):
        memory.add(SESSION, [Message("user", "More questions " * 10), Message("assistant", "ok")])
    evicted = [m.seq for m in memory.history(SESSION) if m.status != "active"]
    assert evicted, "overflows must have run"
    assert [m.seq for m in first.received] == evicted
    assert [m.seq for m in second.received] == evicted
    assert len(first.updates) > 1  # the retry did not re-send the first batch


# -- crashes -----------------------------------------------------------------------------------


def _child(url: str, table: str, mode: str, work: Path) -> subprocess.Popen[bytes]:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from hr_scenario import child_crash_overflow;"
        "child_crash_overflow(*sys.argv[2:])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(TESTS), url, table, SESSION, mode, str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for(path: Path, proc: subprocess.Popen[bytes], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"child exited early: {err.decode()[-2000:]}")
        assert time.monotonic() < deadline, "child never reached the overflow"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("backend", CRASH_BACKENDS)
@pytest.mark.parametrize("mode", ["summarize-exit", "summarize-kill", "flush-kill"])
def test_crash_mid_overflow_changes_nothing(
    make_store: Any, backend_urls: Any, backend: str, mode: str, tmp_path: Path
) -> None:
    """A process killed mid-overflow changes nothing; a later compact completes it, no repeats."""
    store = make_store(backend)
    messages = crash_conversation()
    store.append(SESSION, messages)  # stored without an overflow: the child will run it
    observer = AgentMemory(store, token_limit=CRASH_TOKEN_LIMIT)
    before = snapshot(observer)

    child_mode = {"summarize-kill": "summarize-hang", "flush-kill": "flush-hang"}.get(mode, mode)
    proc = _child(backend_urls[backend], store.table_name, child_mode, tmp_path)
    try:
        if mode == "summarize-exit":
            assert proc.wait(timeout=60) == 1
        else:
            _wait_for(tmp_path / "marker", proc)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    after = snapshot(observer)
    if mode == "flush-kill":
        # the first block took the evicted messages and recorded it; nothing else changed
        taken = file_seqs(tmp_path / "first")
        assert taken and after["marks"] == {"first": taken[-1]}
        after["marks"] = before["marks"]
    assert after == before

    if mode == "flush-kill":
        first, second = RecordingBlock("first"), RecordingBlock("second")
        strategy: Any = FlushToLongTerm([first, second], max_stm_token_ratio=0.5)
    else:
        strategy = Summarize(FakeSummarizer(), keep_recent=2, max_summary_tokens=60)
    memory = AgentMemory(store, token_limit=CRASH_TOKEN_LIMIT, overflow=strategy)
    assert memory.compact(SESSION) is True
    history = memory.history(SESSION)
    assert [m.id for m in history] == [m.id for m in messages]
    evicted = [m.seq for m in history if m.status != "active"]
    assert evicted and all(
        len({m.status for m in g.messages}) == 1 for g in group_messages(history)
    )
    if mode == "flush-kill":
        assert file_seqs(tmp_path / "first") == evicted  # the crashed run's share, once
        assert first.received == []
        assert [m.seq for m in second.received] == evicted
        assert {m.status for m in history if m.seq in evicted} == {"archived"}
    else:
        assert snapshot(memory)["summary"].startswith(SUMMARY_PREFIX)
        assert {m.status for m in history if m.seq in evicted} == {"summarized"}
