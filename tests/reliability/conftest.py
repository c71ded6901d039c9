"""Fixtures of the reliability suite, and the figures it prints at the end of the run.

The fast subset runs with the normal test command; ``RELIABILITY_FULL=1`` runs the
issue's counts (see the README's "Reliability" section).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mssql_memory import LongTermStore, SQLStore

from .helpers import FIGURES, FULL


@pytest.fixture
def make_ltm_for() -> Iterator[Callable[[SQLStore], LongTermStore]]:
    """``make_ltm_for(store)``: a LongTermStore sharing ``store``'s engines, on tables named
    after it (``<table>_l_facts``, ``<table>_l_vectors``), dropped at teardown."""
    created: list[LongTermStore] = []

    def make(store: SQLStore) -> LongTermStore:
        ltm = LongTermStore(store, table_prefix=f"{store.table_name}_l")
        ltm.create_schema()
        created.append(ltm)
        return ltm

    yield make
    for ltm in reversed(created):
        ltm.drop_schema()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    mode = "full run" if FULL else "fast subset (RELIABILITY_FULL=1 for the full run)"
    terminalreporter.section(f"reliability figures, {mode}")
    for line in FIGURES:
        terminalreporter.write_line(line)
