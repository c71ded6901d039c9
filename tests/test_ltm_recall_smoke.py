"""The recall evaluation and the LTM benchmark run end to end in quick mode.

The evaluation's numbers are asserted only where they state a real property: long-term
memory recalls at least as many questions as the newest-first window, although its window
is smaller (part of the same 2,000-token budget goes to memory).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level package of the repository
    sys.path.insert(0, str(ROOT))

from benchmarks import recall_eval  # noqa: E402

pytest_plugins = ["ltm_fixtures"]


def test_recall_eval_quick_reports_and_ltm_beats_the_window(tmp_path, embedder):
    """Quick eval: every configuration scored within budget; default >= newest-first."""
    data = recall_eval.make_dataset(**recall_eval.QUICK)
    assert data[0].turns >= 60 and len(data[0].questions) >= 6
    run = recall_eval.evaluate(
        data,
        embedder,
        f"sqlite:///{tmp_path / 'recall.db'}",
        recall_eval.configs(quick=True),
        log=lambda _: None,
    )
    scores = dict(run.rows)
    assert len(scores) == 1 + len(recall_eval.configs(quick=True))
    for s in scores.values():
        assert s.questions == len(data[0].questions)
        assert max(s.context_tokens) <= recall_eval.TOKEN_LIMIT
    newest = scores[recall_eval.NEWEST_FIRST].recall
    hybrid = scores[recall_eval.DEFAULT].recall
    assert hybrid >= newest
    assert hybrid > 0
    text = recall_eval.report(run, data)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == len(scores)
    assert all(re.search(r"\d+\.\d%", line) for line in rows)


def test_bench_ltm_quick_writes_both_tables(tmp_path):
    """`python -m benchmarks.bench_ltm --quick` (SQLite) reports recall and extraction."""
    out = tmp_path / "ltm.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_ltm",
            "--quick",
            "--no-model",
            "--vectors",
            "300",
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
    assert len([line for line in report.splitlines() if line.startswith("| sqlite ")]) == 6
    assert "300 stored turns" in report
