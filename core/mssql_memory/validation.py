"""Validation of ids and SQL identifiers shared by every store."""

from __future__ import annotations

import re
import unicodedata

MAX_ID_LENGTH = 255
MAX_IDENTIFIER_LENGTH = 128
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # \Z: "$" would accept a final "\n"


def validate_id(value: object, what: str = "session_id") -> str:
    """Return ``value`` if it is a usable session or user id, else raise.

    An id is a string of 1 to 255 characters without control characters and
    without leading or trailing whitespace (SQL Server and MySQL ignore trailing
    spaces in comparisons, so ``"a"`` and ``"a "`` would otherwise collide).
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters long; the maximum is {MAX_ID_LENGTH}")
    if value != value.strip():
        raise ValueError(f"{what} must not start or end with whitespace: {value!r}")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise ValueError(f"{what} must not contain control characters: {value!r}")
    return value


def validate_optional_id(value: object, what: str = "user_id") -> str | None:
    """Like :func:`validate_id`, but ``None`` is allowed."""
    return None if value is None else validate_id(value, what)


def validate_identifier(value: object, what: str = "table_name") -> str:
    """Return ``value`` if it is a safe SQL identifier (``^[A-Za-z_][A-Za-z0-9_]*$``, <= 128)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if len(value) > MAX_IDENTIFIER_LENGTH or not _IDENTIFIER.match(value):
        raise ValueError(
            f"invalid {what} {value[:140]!r}: use letters, digits and underscores, "
            f"not starting with a digit, at most {MAX_IDENTIFIER_LENGTH} characters"
        )
    return value
