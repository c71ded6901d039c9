"""The peers benchmark runs end to end (quick mode, SQLite only); no timing is asserted.

What is asserted is what the run checks itself: in W4 (8 threads and 64 asyncio
tasks writing 16 shared sessions) none of our systems lost, duplicated or
reordered a message, and every workload produced a row for every system.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("store", "agent", "lc-adapter", "li-adapter")


def _table(report: str, heading: str) -> list[dict[str, str]]:
    """The markdown table under the ``## <heading>...`` section, as dicts by header."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading}"))
    rows = []
    headers: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if headers:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not headers:
            headers = cells
        elif not set(line) <= set("|-: "):
            rows.append(dict(zip(headers, cells, strict=True)))
    return rows


def test_bench_peers_quick_on_sqlite(tmp_path: Path) -> None:
    out = tmp_path / "peers.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_peers",
            "--quick",
            "--backends",
            "sqlite",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = out.read_text(encoding="utf-8")
    assert (tmp_path / "w3.png").stat().st_size > 0

    w4 = _table(report, "W4")
    ours = [row for row in w4 if row["system"] in OURS]
    assert len(ours) == 2 * len(OURS)  # threads and asyncio tasks
    for row in ours:
        done, planned = (int(x.replace(",", "")) for x in row["turns done / planned"].split("/"))
        assert done == planned > 0, row
        assert row["errors"] == "0", row
        assert (row["lost"], row["duplicated"], row["reordered"]) == ("0", "0", "0"), row
        stored, expected = row["stored / acknowledged"].split("/")
        assert stored.strip() == expected.strip(), row
    assert {row["system"] for row in w4} >= {"raw", "lc-sql", "li-store", "li-memory"}

    for heading in ("W1", "W2"):
        systems = {row["system"] for row in _table(report, heading)}
        assert systems >= {"raw", *OURS, "lc-sql", "li-store", "li-memory"}, heading
    assert "## Summary" in report
