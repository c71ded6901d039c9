"""Long-term memory blocks: static facts, extracted facts per user, vector recall per user."""

from ._common import ReadOnlyBlockError
from .embedders import HashingEmbedder, SentenceTransformerEmbedder
from .extractive import DEFAULT_EXTRACTION_PROMPT, ExtractiveMemory, parse_facts
from .static import StaticMemory
from .store import Fact, LongTermStore, NewFact, content_hash
from .vector import VectorMemory

__all__ = [
    "DEFAULT_EXTRACTION_PROMPT",
    "ExtractiveMemory",
    "Fact",
    "HashingEmbedder",
    "LongTermStore",
    "NewFact",
    "ReadOnlyBlockError",
    "SentenceTransformerEmbedder",
    "StaticMemory",
    "VectorMemory",
    "content_hash",
    "parse_facts",
]
