"""Input checks and token accounting shared by the stores."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import InvalidMessageError
from ..messages import Message, coerce_messages, message_to_json
from ..tokens import TokenCounter
from ..validation import validate_id


def prepare_batch(
    session_id: str, messages: Message | Iterable[Message], counter: TokenCounter
) -> list[tuple[Message, str]]:
    """Validate a batch and return each message (token count filled in) with its JSON payload.

    Raises before anything is written: a bad id, a non-message or a payload
    that is not JSON-serializable rejects the whole batch.
    """
    validate_id(session_id)
    prepared = []
    for message in coerce_messages(messages):
        payload = message_to_json(message)
        try:
            payload.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate: no database can store it
            raise InvalidMessageError(
                f"message {message.id!r} is not valid Unicode: lone surrogate "
                f"{e.object[e.start]!r} cannot be encoded as UTF-8"
            ) from e
        if message.token_count is None:
            message = message.with_fields(token_count=counter.count_message(message))
        prepared.append((message, payload))
    return prepared


def check_seqs(seqs: Sequence[int]) -> list[int]:
    """Validate a list of sequence numbers (ints, no bools) and return it de-duplicated."""
    if isinstance(seqs, (str, bytes)):
        raise TypeError("seqs must be a sequence of int")
    out = []
    for s in seqs:
        if not isinstance(s, int) or isinstance(s, bool):
            raise TypeError(f"seqs must contain int, not {type(s).__name__}")
        out.append(s)
    return sorted(set(out))


def check_limit(limit: int | None, what: str = "limit") -> int | None:
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"{what} must be a non-negative int or None")
    return limit
