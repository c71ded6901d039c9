"""The main demo (``python -m mssql_memory.demo``) and its offline scenario pieces."""

from .scenario import (
    HR_POLICY_FACTS,
    HR_TURNS,
    ExtractiveSummarizer,
    PatternFactExtractor,
    RecordedAssistant,
)

__all__ = [
    "HR_POLICY_FACTS",
    "HR_TURNS",
    "ExtractiveSummarizer",
    "PatternFactExtractor",
    "RecordedAssistant",
]
