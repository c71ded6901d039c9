"""The store benchmark runs end to end (quick mode, SQLite only); no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (
    str(ROOT) not in sys.path
):  # `benchmarks` is a top-level package of the repository, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks.common import interleave, markdown_table, percentile  # noqa: E402


def test_bench_store_quick_writes_a_table(tmp_path: Path) -> None:
    """`python -m benchmarks.bench_store --quick` completes and reports every op at every size."""
    out = tmp_path / "store.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_store",
            "--quick",
            "--backends",
            "sqlite",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = out.read_text(encoding="utf-8")
    rows = [line for line in report.splitlines() if line.startswith("| sqlite ")]
    assert len(rows) == 2 * 4  # quick sizes x ops
    assert all(line.count("|") == 7 and line.rstrip().endswith("x |") for line in rows)
    assert report in proc.stdout


def test_interleave_alternates_and_counts() -> None:
    """Each system is timed exactly `samples` times, in rounds whose order rotates."""
    calls: list[str] = []
    timings = interleave(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        7,
        round_size=3,
        warmup=1,
    )
    assert {k: len(v) for k, v in timings.items()} == {"a": 7, "b": 7}
    assert "".join(calls) == "ab" + "aaabbb" + "bbbaaa" + "ab"


def test_percentile_and_table() -> None:
    """Nearest-rank p95; numeric columns right-aligned."""
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([3.0], 95) == 3.0
    table = markdown_table(["name", "ms"], [["x", "1.5"], ["yy", "10.25"]])
    assert table.splitlines()[1] == "|------|------:|"
    assert table.splitlines()[2] == "| x    |   1.5 |"
