"""Helpers shared by the benchmarks: timing, statistics, backends, raw connections, reports.

Every benchmark times its systems with :func:`interleave` (systems alternate in
small rounds, so a noisy neighbour hurts all of them alike), summarizes with
:func:`summarize` (median and p95 in milliseconds) and writes a markdown table
with :func:`markdown_table` / :func:`write_report`.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import math
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.engine import URL, make_url

__all__ = [
    "ALL_BACKENDS",
    "BACKENDS",
    "DEFAULT_URLS",
    "ENV_VARS",
    "Backend",
    "RawDB",
    "Stats",
    "command_line",
    "environment_line",
    "fmt_ms",
    "fmt_ratio",
    "interleave",
    "interleave_capped",
    "markdown_table",
    "parse_list",
    "percentile",
    "probe",
    "resolve_backends",
    "summarize",
    "time_call",
    "unique_name",
    "utcnow",
    "workdir",
    "write_report",
]

#: The message-store benchmarks' default databases.
BACKENDS = ("sqlite", "postgresql", "mariadb")
#: Also accepted by name: ``pgvector`` (a private PostgreSQL with the vector extension).
ALL_BACKENDS = (*BACKENDS, "pgvector")
#: Server URLs used when the environment variable in :data:`ENV_VARS` is unset.
#: SQLite defaults to files in a temporary directory (see :func:`resolve_backends`).
DEFAULT_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}
ENV_VARS = {
    "sqlite": "BENCH_SQLITE_URL",
    "postgresql": "BENCH_POSTGRESQL_URL",
    "mariadb": "BENCH_MARIADB_URL",
    "pgvector": "BENCH_PGVECTOR_URL",
}
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


# -- timing and statistics -----------------------------------------------------------


def time_call(fn: Callable[[], Any]) -> int:
    """Run ``fn`` once; its wall time in nanoseconds."""
    start = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - start


def interleave(
    systems: Mapping[str, Callable[[], Any]],
    samples: int,
    *,
    round_size: int = 5,
    warmup: int = 5,
) -> dict[str, list[int]]:
    """Time every system ``samples`` times, alternating systems in rounds of ``round_size``.

    Round ``r`` runs each system ``round_size`` times, the systems' order rotated
    by ``r`` so none always goes first. ``warmup`` untimed calls per system come
    first (connections, prepared statements, caches). Returns nanoseconds per call.
    """
    names = list(systems)
    for _ in range(warmup):
        for name in names:
            systems[name]()
    gc.collect()
    timings: dict[str, list[int]] = {name: [] for name in names}
    r = 0
    while len(timings[names[0]]) < samples:
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, out = systems[name], timings[name]
            for _ in range(min(round_size, samples - len(out))):
                start = time.perf_counter_ns()
                fn()
                out.append(time.perf_counter_ns() - start)
        r += 1
    return timings


def interleave_capped(
    systems: Mapping[str, Callable[[], Any]],
    samples: int,
    *,
    round_size: int = 5,
    warmup: int = 2,
    max_seconds: float = 10.0,
    min_samples: int = 3,
) -> dict[str, list[int]]:
    """:func:`interleave` for systems whose speeds differ by orders of magnitude.

    Systems alternate in rounds of ``round_size`` exactly as in :func:`interleave`,
    but a system that has spent ``max_seconds`` in timed calls (and has at least
    ``min_samples``) leaves the rotation, so a slow peer cannot stretch the run;
    the others keep alternating until each has ``samples``. Returns nanoseconds
    per call; a capped system has fewer than ``samples`` timings.
    """
    names = list(systems)
    for _ in range(warmup):
        for name in names:
            systems[name]()
    gc.collect()
    timings: dict[str, list[int]] = {name: [] for name in names}
    spent = dict.fromkeys(names, 0)
    budget = int(max_seconds * 1e9)

    def active(name: str) -> bool:
        done = len(timings[name])
        return done < samples and (spent[name] < budget or done < min_samples)

    r = 0
    while any(active(name) for name in names):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, out = systems[name], timings[name]
            for _ in range(round_size):
                if not active(name):
                    break
                start = time.perf_counter_ns()
                fn()
                elapsed = time.perf_counter_ns() - start
                out.append(elapsed)
                spent[name] += elapsed
        r += 1
    return timings


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Stats:
    """Median and p95 of one series of timings, in milliseconds."""

    n: int
    median_ms: float
    p95_ms: float


def summarize(samples_ns: Sequence[int]) -> Stats:
    return Stats(
        len(samples_ns),
        statistics.median(samples_ns) / 1e6,
        percentile(samples_ns, 95) / 1e6,
    )


# -- backends and raw connections ----------------------------------------------------


def unique_name(prefix: str = "bench") -> str:
    """A table name no other run (or process) uses: lowercase, valid on every dialect."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}".lower()
    if not _NAME.match(name):
        raise ValueError(f"bad table prefix {prefix!r}")
    return name


def utcnow() -> datetime:
    """Naive UTC now, as the store writes ``created_at``."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@contextmanager
def workdir() -> Iterator[Path]:
    """A temporary directory (SQLite files), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mssql-memory-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Backend:
    """One database to benchmark. ``url_for(tag)`` gives each system its own SQLite file
    (unless ``BENCH_SQLITE_URL`` names one) and the same server for the others."""

    name: str
    url: URL
    shared_file: bool = True

    def url_for(self, tag: str) -> URL:
        if self.shared_file or self.url.get_backend_name() != "sqlite":
            return self.url
        path = Path(self.url.database or "bench.db")
        return self.url.set(database=str(path.with_name(f"{path.stem}-{tag}{path.suffix}")))

    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)


_PGSERVERS: list[Any] = []


def private_pgvector() -> str:
    """A URL of a private PostgreSQL with pgvector (the ``pgserver`` package), started once per
    process and stopped at exit; an unusable URL (the probe then says why) without it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            data = tempfile.mkdtemp(prefix="bench-pgvector-")
            server = pgserver.get_server(data, cleanup_mode="delete")
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    except Exception as e:
        print(f"pgvector: no private server ({type(e).__name__}: {e})", file=sys.stderr)
        return "postgresql+psycopg://postgres@/postgres?host=/nonexistent-pgvector"
    _PGSERVERS.append(server)
    atexit.register(server.cleanup)
    return f"postgresql+psycopg://postgres@/postgres?host={data}"


def resolve_backends(names: Sequence[str], directory: Path) -> list[Backend]:
    """Backends by name; URLs from :data:`ENV_VARS` or the defaults (SQLite: in ``directory``)."""
    backends = []
    for name in names:
        if name not in ALL_BACKENDS:
            raise ValueError(
                f"unknown backend {name!r}; expected some of {', '.join(ALL_BACKENDS)}"
            )
        env = os.environ.get(ENV_VARS[name])
        if name == "sqlite" and not env:
            backends.append(Backend(name, make_url(f"sqlite:///{directory / 'bench.db'}"), False))
        elif name == "pgvector" and not env:
            backends.append(Backend(name, make_url(private_pgvector())))
        else:
            backends.append(Backend(name, make_url(env or DEFAULT_URLS[name])))
    return backends


class RawDB:
    """A plain DBAPI connection (sqlite3, psycopg, pymysql) opened from a SQLAlchemy URL.

    It is the baseline: no pool, no SQLAlchemy on the execution path. SQL is
    written with ``?`` placeholders; :meth:`sql` converts them for ``%s`` drivers.
    SQLite gets the pragmas the store sets (WAL, busy timeout) so both do the same I/O.
    """

    def __init__(self, url: str | URL) -> None:
        url = make_url(url)
        if url.get_backend_name() in ("mysql", "mariadb") and "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})  # as the store's engine does
        dialect = url.get_dialect()()
        self.dbapi = dialect.import_dbapi()
        self.backend = url.get_backend_name()
        cargs, cparams = dialect.create_connect_args(url)
        if self.backend == "sqlite":
            cparams.setdefault("timeout", 30)
        self.conn = self.dbapi.connect(*cargs, **cparams)
        self._qmark = self.dbapi.paramstyle == "qmark"
        if self.backend == "sqlite":
            self.conn.execute("PRAGMA busy_timeout = 30000")
            self.conn.execute("PRAGMA journal_mode = WAL")

    def sql(self, text: str) -> str:
        return text if self._qmark else text.replace("?", "%s")

    def server_version(self) -> str:
        cur = self.conn.cursor()
        if self.backend == "sqlite":
            cur.execute("SELECT sqlite_version()")
            prefix = "SQLite "
        elif self.backend == "postgresql":
            cur.execute("SHOW server_version")
            prefix = "PostgreSQL "
        else:
            cur.execute("SELECT VERSION()")
            prefix = "MySQL "
        version = str(cur.fetchone()[0])
        cur.close()
        self.conn.commit()
        if "mariadb" in version.lower():
            prefix, version = "MariaDB ", version.split("-")[0]
        return prefix + version.split()[0]

    def close(self) -> None:
        self.conn.close()


def probe(backend: Backend) -> str | None:
    """None if the backend answers, else why not."""
    try:
        raw = RawDB(backend.url_for("probe"))
        raw.close()
    except Exception as e:
        return f"{type(e).__name__}: {e}".splitlines()[0]
    if backend.url.get_backend_name() == "sqlite" and not backend.shared_file:
        Path(str(backend.url_for("probe").database)).unlink(missing_ok=True)
    return None


# -- reports -----------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def fmt_ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base > 0 else "n/a"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; columns whose values all look numeric are right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    numeric = [
        bool(cells) and all(re.match(r"^[\d.,/ x]+$", row[i]) for row in cells)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    columns = list(zip(widths, numeric, strict=True))

    def line(values: Sequence[str]) -> str:
        if len(values) != len(columns):
            raise ValueError(f"expected {len(columns)} cells, got {len(values)}")
        padded = [
            v.rjust(w) if num else v.ljust(w) for v, (w, num) in zip(values, columns, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if num else "-" * (w + 2) for w, num in columns) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in cells)])


def environment_line(server_versions: Sequence[str] = ()) -> str:
    """One line describing where the figures were measured."""
    parts = [
        f"Python {platform.python_version()}",
        f"SQLAlchemy {sqlalchemy.__version__}",
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        *server_versions,
    ]
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f} at the end")
    return ", ".join(parts)


_WORDS = (
    "the policy allows employees to carry over up to five days of annual leave into the "
    "next calendar year provided their manager approves the request before december "
    "remote work is permitted two days per week for roles that do not require on site "
    "presence parental leave is sixteen weeks at full pay please check the handbook"
).split()


def words(rng: random.Random) -> str:
    """A chat message of 20 to 80 words (about 25 to 100 tokens)."""
    return " ".join(rng.choices(_WORDS, k=rng.randint(20, 80)))


def log(text: str) -> None:
    """Progress to stderr (reports go to files)."""
    print(text, file=sys.stderr, flush=True)


NOTES_MARKER = "<!-- notes below are kept when the benchmark rewrites this file -->"


def kept_notes(path: Path) -> str:
    """The hand-written part of an existing report (after :data:`NOTES_MARKER`)."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    return "\n\n" + NOTES_MARKER + text.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in text else ""


def write_report(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (parent directories created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return out


def parse_list(text: str, cast: Callable[[str], Any] = str) -> list[Any]:
    """``"a,b , c"`` -> ``["a", "b", "c"]`` (with ``cast`` applied)."""
    return [cast(part.strip()) for part in text.split(",") if part.strip()]


def bench_parser(
    module: str,
    doc: str | None,
    *,
    backends: Sequence[str],
    sizes: Sequence[int],
    repeat: int,
    out: Path,
) -> argparse.ArgumentParser:
    """The options every per-issue benchmark takes: ``--backends``, ``--sizes``, ``--repeat``,
    ``--out`` and ``--quick`` (defaults shown in ``--help``); a benchmark adds its own."""
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{module}", description=(doc or "").split("\n")[0]
    )
    p.add_argument(
        "--backends",
        type=parse_list,
        default=list(backends),
        help=f"comma-separated: {','.join(BACKENDS)} (default {','.join(backends)})",
    )
    p.add_argument(
        "--sizes",
        type=lambda text: parse_list(text, int),
        default=None,
        help=f"messages in the session (default {','.join(map(str, sizes))})",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help=f"timed calls per system and cell (default {repeat})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"markdown report (default benchmarks/results/{out.name}; none with --quick)",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes and few repeats: a smoke run of seconds"
    )
    return p


def command_line() -> str:
    """How this benchmark was invoked, for the report."""
    module = Path(sys.argv[0]).stem
    args = " ".join(sys.argv[1:])
    return f"python -m benchmarks.{module} {args}".strip()


def available_backends(
    names: Sequence[str], directory: Path, log: Callable[[str], None]
) -> Iterator[tuple[Backend, str]]:
    """Each named backend that answers, with its server version; the others are logged."""
    for backend in resolve_backends(names, directory):
        problem = probe(backend)
        if problem is not None:
            log(f"skipping {backend.name}: {problem}")
            continue
        raw = RawDB(backend.url_for("probe"))
        try:
            version = raw.server_version()
        finally:
            raw.close()
        yield backend, version
