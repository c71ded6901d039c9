"""The LlamaIndex benchmark runs end to end (quick mode, SQLite); no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_llamaindex_quick_writes_a_table(tmp_path: Path) -> None:
    """`python -m benchmarks.bench_llamaindex --quick` reports both ops for all four systems."""
    out = tmp_path / "llamaindex.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_llamaindex", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text(encoding="utf-8")
    rows = [line for line in report.splitlines() if line.startswith("| sqlite ")]
    assert len(rows) == 2
    assert all(line.count("|") == 10 and "n/a" not in line for line in rows)
    assert report in proc.stdout
