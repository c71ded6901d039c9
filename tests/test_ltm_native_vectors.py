"""Native vector search: pgvector for real (a private PostgreSQL with the extension), SQL
Server 2025's VECTOR type for real when MSSQL_URL points at one, and the T-SQL compiled."""

from __future__ import annotations

import pytest
from conftest import unique_table
from ltm_helpers import KeywordEmbedder, stored, turn
from mssql_memory import LongTermStore, StoreError, VectorMemory
from mssql_memory.ltm.embedders import to_bytes
from mssql_memory.ltm.native import NativeVectors, native_kind, vector_literal
from mssql_memory.ltm.schema import build_ltm_tables
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.dialects import mssql, postgresql
from sqlalchemy.schema import CreateTable

pytest_plugins = ["ltm_fixtures"]

TOPICS = [
    ("My sister's wedding is in Lisbon on June 3rd.", "Book the flights early."),
    ("The vet said my dog Rex needs his vaccine booster.", "Put a reminder in your calendar."),
    ("I filed my tax return; the refund comes in April.", "That's a relief."),
    ("I'm training for the Berlin marathon, 50 km a week.", "Taper in the last three weeks."),
    ("Our team switched from Jira to Linear.", "Linear is fast."),
    ("I bake sourdough bread on weekends.", "A healthy starter helps."),
]
QUERIES = ["wedding flights", "dog vaccine", "tax refund", "marathon training", "bread baking"]


def conversation(pairs=TOPICS, first_seq: int = 1):
    messages = []
    for i, (u, a) in enumerate(pairs):
        messages += turn(u, a, minutes=i * 60)
    return stored(messages, first_seq)


def key_count(lts: LongTermStore, dimension: int) -> int:
    keys = lts._native.table(dimension)
    with lts.engines.sync.connect() as conn:
        return conn.execute(select(func.count()).select_from(keys)).scalar_one()


def recall(vm: VectorMemory, query: str, user: str | None = "u", session: str = "s") -> list[str]:
    return vm.get(query=query, user_id=user, session_id=session, max_tokens=100_000)


@pytest.fixture(params=["pgvector", pytest.param("mssql", marks=pytest.mark.mssql)])
def native_url(request: pytest.FixtureRequest, backend_urls) -> str:
    """A database with native vectors: pgvector, or a SQL Server that has VECTOR (2025)."""
    url = backend_urls[request.param]
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            kind, why = native_kind(conn, create=False)
    finally:
        engine.dispose()
    if kind is None:
        pytest.skip(f"{request.param}: {why}")
    return url


@pytest.fixture
def native_store(native_url):
    stores: list[LongTermStore] = []

    def make(**kwargs) -> LongTermStore:
        kwargs.setdefault("table_prefix", unique_table())
        store = LongTermStore(native_url, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in reversed(stores):
        store.drop_schema()
        store.close()


def test_native_search_is_used_and_stores_one_key_per_vector(native_store, embedder):
    lts = native_store()
    vm = VectorMemory(embedder, store=lts, top_k=2)
    vm.update(conversation(), user_id="u", session_id="s")
    assert lts.native_search(embedder.dimension) in ("postgresql", "mssql")
    whole_turns = len(TOPICS)
    sentences = sum(len(vm._turns(conversation([t]), "s")[2]) for t in TOPICS)
    assert key_count(lts, embedder.dimension) == whole_turns + sentences
    assert "marathon" in recall(vm, "How far do I run each week for the race?")[0]


def test_native_and_in_process_recall_agree(native_store, embedder):
    """Same turns, same order, same texts, whichever side computes the cosine."""
    lts = native_store()
    far = native_store(table_prefix=lts.table_prefix, native_vectors=False)
    native = VectorMemory(embedder, store=lts, top_k=3, lexical_weight=0.0, min_score=-1.0)
    local = VectorMemory(embedder, store=far, top_k=3, lexical_weight=0.0, min_score=-1.0)
    native.update(conversation(), user_id="u", session_id="s")
    for query in QUERIES:
        assert recall(native, query) == recall(local, query)
    hybrid = VectorMemory(embedder, store=lts, top_k=1)
    hybrid_local = VectorMemory(embedder, store=far, top_k=1)
    for query in QUERIES:
        assert recall(hybrid, query) == recall(hybrid_local, query)


def test_turns_stored_without_keys_are_indexed_on_first_native_use(native_store, embedder):
    """Turns written by an instance with native search off get their keys later: none is
    missing from native recall."""
    plain = native_store(native_vectors=False)
    VectorMemory(embedder, store=plain).update(conversation(), user_id="u", session_id="s")
    native = native_store(table_prefix=plain.table_prefix)
    vm = VectorMemory(embedder, store=native, top_k=100, min_score=-1.0)
    assert len(recall(vm, "anything")) == len(TOPICS)
    assert key_count(native, embedder.dimension) >= len(TOPICS)


def test_deleting_turns_deletes_their_keys(native_store, embedder):
    lts = native_store()
    vm = VectorMemory(embedder, store=lts, top_k=100, min_score=-1.0)
    vm.update(conversation(TOPICS[:3]), user_id="alice", session_id="a1")
    vm.update(conversation(TOPICS[3:]), user_id="bob", session_id="b1")
    before = key_count(lts, embedder.dimension)
    vm.delete_user("alice")
    assert recall(vm, "wedding", "alice") == []
    after_user = key_count(lts, embedder.dimension)
    assert 0 < after_user < before
    vm.delete_session("b1")
    assert key_count(lts, embedder.dimension) == 0
    assert recall(vm, "marathon", "bob") == []


def test_native_neighbors_and_isolation(native_store, embedder):
    lts = native_store()
    vm = VectorMemory(embedder, store=lts, top_k=1, neighbors=1)
    vm.update(conversation(), user_id="u", session_id="s1")
    secret = ("My locker code at the gym is 4417.", "I won't tell anyone.")
    vm.update(conversation([secret]), user_id="other", session_id="s2")
    hits = recall(vm, "Berlin marathon training")
    assert len(hits) == 3
    assert "tax return" in hits[0] and "marathon" in hits[1] and "Linear" in hits[2]
    assert not any("4417" in h for h in recall(vm, "What is my locker code at the gym?"))


async def test_native_async_update_and_get(native_store, embedder):
    lts = native_store()
    vm = VectorMemory(embedder, store=lts, top_k=1)
    await vm.aupdate(conversation(), user_id="u", session_id="s")
    assert await lts.anative_search(embedder.dimension) is not None
    (hit,) = await vm.aget(query="my dog's shots", user_id="u", session_id="x", max_tokens=1000)
    assert "Rex" in hit
    await lts.aclose()


def test_another_dimension_on_native_is_still_a_clear_error(native_store, embedder):
    lts = native_store()
    VectorMemory(embedder, store=lts).update(conversation(), user_id="u", session_id="s")
    with pytest.raises(Exception, match="dimensions"):
        recall(VectorMemory(KeywordEmbedder(), store=lts), "wedding")


# -- databases without native vectors ----------------------------------------------------


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_auto_falls_back_and_true_refuses_without_native_vectors(backend, backend_urls):
    url = backend_urls[backend]
    if backend == "postgresql":
        with LongTermStore(url, auto_create=False).engines.sync.connect() as conn:
            available = "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
            if conn.execute(text(available)).first() is not None:
                pytest.skip("this PostgreSQL can install pgvector")
    auto = LongTermStore(url, table_prefix=unique_table())
    required = LongTermStore(url, table_prefix=auto.table_prefix, native_vectors=True)
    try:
        assert auto.native_search(384) is None
        rows = [
            {
                "user_id": "u",
                "session_id": "s",
                "first_seq": 1,
                "last_seq": 2,
                "content": "x",
                "token_count": 1,
                "dimension": 3,
                "embedding": to_bytes([1.0, 0.0, 0.0]),
            }
        ]
        with pytest.raises(StoreError, match="native vector search was required"):
            required.add_vectors("b", rows)
        assert auto.load_vectors("b", "u", "s") == []  # nothing half-stored
        assert auto.add_vectors("b", rows) == 1
    finally:
        auto.drop_schema()
        auto.close()
        required.close()
    with pytest.raises(ValueError, match="native_vectors"):
        LongTermStore(url, native_vectors="yes")


# -- the T-SQL and pgvector SQL, compiled ------------------------------------------------


def _native(prefix: str = "AgentMemory") -> NativeVectors:
    tables = build_ltm_tables(prefix)
    return NativeVectors(tables.vectors, tables.metadata, prefix)


def test_key_table_ddl_on_sql_server_and_postgresql():
    keys = _native().table(384)
    tsql = str(CreateTable(keys).compile(dialect=mssql.dialect()))
    assert "embedding VECTOR(384) NOT NULL" in tsql
    assert "FOREIGN KEY(vector_id) REFERENCES [AgentMemory_vectors] (id) ON DELETE CASCADE" in tsql
    assert "NVARCHAR(max)" not in tsql  # every key column is indexable
    pg = str(CreateTable(keys).compile(dialect=postgresql.dialect()))
    assert "embedding VECTOR(384) NOT NULL" in pg and "ON DELETE CASCADE" in pg


def test_search_and_insert_compile_for_sql_server():
    native = _native()
    stmt = native.search_statement("mssql", 3, "vector_memory", "alice", "s", [0.1, 0.2, 0.3], 50)
    sql = str(stmt.compile(dialect=mssql.dialect(), compile_kwargs={"render_postcompile": True}))
    assert "VECTOR_DISTANCE('cosine', [AgentMemory_vec3].embedding, CAST(" in sql
    assert "AS VECTOR(3))" in sql and "TOP 50" in sql
    assert "[AgentMemory_vec3].user_id = " in sql and "GROUP BY top_keys.vector_id" in sql
    assert "TOP 200" in sql
    params = stmt.compile(dialect=mssql.dialect()).params
    assert "[0.1,0.2,0.3]" in params.values() and "alice" in params.values()
    assert "alice" not in sql  # parameters, never inlined
    insert = native.table(3).insert().values()
    assert "INSERT INTO [AgentMemory_vec3]" in str(insert.compile(dialect=mssql.dialect()))


def test_search_compiles_for_pgvector_with_the_cosine_operator():
    stmt = _native().search_statement("postgresql", 3, "b", None, "s1", [1, 0, 0], 10)
    sql = str(stmt.compile(dialect=postgresql.dialect()))
    assert '"AgentMemory_vec3".embedding <=> CAST(' in sql and "AS VECTOR(3))" in sql
    assert '"AgentMemory_vec3".user_id IS NULL' in sql and "LIMIT" in sql


def test_vector_literal_is_what_both_databases_parse():
    assert vector_literal([1.0, -0.5, 1e-9]) == "[1,-0.5,1e-09]"
