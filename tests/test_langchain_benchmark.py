"""The LangChain adapter benchmark runs end to end (quick mode, SQLite); no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_langchain_quick_writes_a_table(tmp_path: Path) -> None:
    """`python -m benchmarks.bench_langchain --quick` reports core, adapter and peer per op."""
    out = tmp_path / "langchain.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_langchain", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = out.read_text(encoding="utf-8")
    rows = [line for line in report.splitlines() if line.startswith("| sqlite ")]
    assert len(rows) == 2  # one size x (turn, read)
    assert all(line.count("|") == 10 and line.rstrip().endswith("x |") for line in rows)
    assert report in proc.stdout
