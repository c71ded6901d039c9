"""The neutral message record and its JSON codec.

A :class:`Message` carries the fields every framework shares (role, text,
name, tool calls, tool-call id) plus, in ``raw``, the originating framework's
own serialized form, so an adapter can return exactly the object it stored.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Literal, get_args

from .errors import InvalidMessageError

__all__ = [
    "ROLES",
    "STATUSES",
    "Message",
    "Role",
    "Status",
    "ToolCall",
    "message_from_dict",
    "message_from_json",
    "message_to_dict",
    "message_to_json",
]

Role = Literal["system", "user", "assistant", "tool"]
Status = Literal["active", "archived", "summarized"]
ROLES: frozenset[str] = frozenset(get_args(Role))
STATUSES: frozenset[str] = frozenset(get_args(Status))
_CODEC_VERSION = 1


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _new_id() -> str:
    return uuid.uuid4().hex


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidMessageError(f"{what} must be JSON-serializable: {e}") from e


def _str_keys(value: Any) -> bool:
    """True if every mapping inside ``value`` has only string keys (JSON would coerce others)."""
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _str_keys(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_str_keys(v) for v in value)
    return True


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool invocation requested by an assistant message."""

    id: str
    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not isinstance(self.name, str):
            raise InvalidMessageError("ToolCall.id and ToolCall.name must be strings")
        if not isinstance(self.arguments, (Mapping, str)):
            raise InvalidMessageError(
                f"ToolCall.arguments must be a mapping or a JSON string, "
                f"not {type(self.arguments).__name__}"
            )

    def arguments_text(self) -> str:
        """The arguments as JSON text (as a model sees them)."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        args = self.arguments if isinstance(self.arguments, str) else dict(self.arguments)
        return {"id": self.id, "name": self.name, "arguments": args}


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message as the stores keep it.

    ``seq``, ``status`` and ``token_count`` are assigned by the store when the
    message is written; ``raw`` and ``source`` hold a framework's own form.
    """

    role: Role
    content: str = ""
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    id: str = field(default_factory=_new_id)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=_utcnow)
    token_count: int | None = None
    source: str | None = None
    raw: Any = None
    seq: int | None = None
    status: Status = "active"

    def __post_init__(self) -> None:
        if not self._plainly_valid():
            self._validate()

    def _plainly_valid(self) -> bool:
        """The common case (exact built-in types) checked cheaply; else the full checks run."""
        return (
            self.role in ROLES
            and type(self.content) is str
            and type(self.id) is str
            and self.id != ""
            and self.status in STATUSES
            and (self.name is None or type(self.name) is str)
            and (self.tool_call_id is None or type(self.tool_call_id) is str)
            and (self.source is None or type(self.source) is str)
            and (
                self.token_count is None
                or (type(self.token_count) is int and self.token_count >= 0)
            )
            and type(self.created_at) is datetime
            and self.created_at.tzinfo is not None
            and type(self.metadata) is dict
            and (not self.metadata or _str_keys(self.metadata))
            and type(self.tool_calls) is tuple
            and (
                not self.tool_calls
                or (self.role == "assistant" and all(type(c) is ToolCall for c in self.tool_calls))
            )
        )

    def _validate(self) -> None:
        if self.role not in ROLES:
            raise InvalidMessageError(
                f"unknown role {self.role!r}; expected one of {sorted(ROLES)}"
            )
        if not isinstance(self.content, str):
            raise InvalidMessageError(f"content must be a str, not {type(self.content).__name__}")
        for attr in ("name", "tool_call_id", "source"):
            value = getattr(self, attr)
            if value is not None and not isinstance(value, str):
                raise InvalidMessageError(f"{attr} must be a str or None")
        if not isinstance(self.id, str) or not self.id:
            raise InvalidMessageError("id must be a non-empty str")
        if not isinstance(self.tool_calls, tuple):
            if isinstance(self.tool_calls, (list, Sequence)) and not isinstance(
                self.tool_calls, str
            ):
                object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
            else:
                raise InvalidMessageError("tool_calls must be a sequence of ToolCall")
        if not all(isinstance(tc, ToolCall) for tc in self.tool_calls):
            raise InvalidMessageError("tool_calls must contain ToolCall objects")
        if self.tool_calls and self.role != "assistant":
            raise InvalidMessageError("only assistant messages carry tool_calls")
        if not isinstance(self.metadata, Mapping):
            raise InvalidMessageError("metadata must be a mapping")
        if not _str_keys(self.metadata):
            raise InvalidMessageError("metadata keys must be strings (JSON objects)")
        if not isinstance(self.created_at, datetime):
            raise InvalidMessageError("created_at must be a datetime")
        if self.created_at.tzinfo is None:
            object.__setattr__(self, "created_at", self.created_at.replace(tzinfo=timezone.utc))
        if self.token_count is not None and (
            not isinstance(self.token_count, int) or self.token_count < 0
        ):
            raise InvalidMessageError("token_count must be a non-negative int")
        if self.status not in STATUSES:
            raise InvalidMessageError(f"unknown status {self.status!r}")

    def with_fields(self, **changes: Any) -> Message:
        """A copy with ``changes`` applied (the record itself is immutable)."""
        if changes.keys() <= _STORE_FIELDS and _store_values_valid(changes):
            # the fields a store assigns, checked here: copy without re-validating the rest
            return _copy(self, **changes)
        return replace(self, **changes)

    @property
    def is_tool_result(self) -> bool:
        return self.role == "tool"


def message_to_dict(message: Message) -> dict[str, Any]:
    """Encode a message as a JSON-ready dict (store-assigned fields excluded)."""
    if not isinstance(message, Message):
        raise InvalidMessageError(f"expected a Message, got {type(message).__name__}")
    data: dict[str, Any] = {
        "v": _CODEC_VERSION,
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "created_at": message.created_at.isoformat(),
    }
    if message.name is not None:
        data["name"] = message.name
    if message.tool_calls:
        data["tool_calls"] = [tc.to_dict() for tc in message.tool_calls]
    if message.tool_call_id is not None:
        data["tool_call_id"] = message.tool_call_id
    if message.metadata:
        data["metadata"] = dict(message.metadata)
    if message.source is not None:
        data["source"] = message.source
    if message.raw is not None:
        data["raw"] = message.raw
    return data


def message_to_json(message: Message) -> str:
    """Encode a message as compact JSON text; non-JSON metadata or raw is an error."""
    data = message_to_dict(message)
    try:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidMessageError(f"message {message.id} is not JSON-serializable: {e}") from e


def _tool_calls_from(value: Any) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidMessageError("tool_calls must be a list")
    calls = []
    for item in value:
        if not isinstance(item, Mapping) or not {"id", "name"} <= item.keys():
            raise InvalidMessageError(f"malformed tool call: {item!r}")
        calls.append(ToolCall(item["id"], item["name"], item.get("arguments", {})))
    return tuple(calls)


def message_from_dict(
    data: Any,
    *,
    seq: int | None = None,
    status: Status = "active",
    token_count: int | None = None,
) -> Message:
    """Decode :func:`message_to_dict` output; anything malformed raises InvalidMessageError."""
    if not isinstance(data, Mapping):
        raise InvalidMessageError(f"message payload must be an object, not {type(data).__name__}")
    if "role" not in data:
        raise InvalidMessageError("message payload has no role")
    try:
        created = data.get("created_at")
        created_at = datetime.fromisoformat(created) if created else _utcnow()
        kwargs: dict[str, Any] = {
            "role": data["role"],
            "content": data.get("content", ""),
            "name": data.get("name"),
            "tool_calls": _tool_calls_from(data.get("tool_calls")),
            "tool_call_id": data.get("tool_call_id"),
            "metadata": data.get("metadata") or {},
            "created_at": created_at,
            "source": data.get("source"),
            "raw": data.get("raw"),
            "seq": seq,
            "status": status,
            "token_count": token_count,
        }
        if data.get("id"):
            kwargs["id"] = data["id"]
        return Message(**kwargs)
    except InvalidMessageError:
        raise
    except (TypeError, ValueError) as e:
        raise InvalidMessageError(f"malformed message payload: {e}") from e


try:  # orjson decodes payloads ~3x faster when it is installed; json is the fallback
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = json.loads  # type: ignore[assignment]

# orjson turns integers beyond 64 bits into floats; json keeps them exact. A run of 19 digits
# (in a number or a string: either way json is right) sends the text to json.
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")


def _loads(text: str | bytes) -> Any:
    """JSON ``text`` decoded exactly as :func:`json.loads` would (big integers included)."""
    pattern = _LONG_DIGITS if isinstance(text, str) else _LONG_DIGITS_BYTES
    if pattern.search(text) is None:  # type: ignore[arg-type]
        return _fast_loads(text)
    return json.loads(text)


_FIELD_NAMES = tuple(f.name for f in fields(Message))
_STORE_FIELDS = frozenset({"seq", "status", "token_count"})


def _store_values_valid(changes: dict[str, Any]) -> bool:
    seq = changes.get("seq")
    count = changes.get("token_count")
    return (
        (seq is None or type(seq) is int)
        and changes.get("status", "active") in STATUSES
        and (count is None or (type(count) is int and count >= 0))
    )


_PLAIN_KEYS = frozenset({"v", "id", "role", "content", "created_at", "name", "source"})
#: The metadata of decoded plain messages: empty and read-only, so they can be shared.
NO_METADATA: Mapping[str, Any] = MappingProxyType({})
_set = object.__setattr__
_new = object.__new__


def _plain_message(data: Any, seq: Any, status: Any, token_count: Any) -> Message | None:
    """The message of a plain payload (text only: no tool calls, metadata or raw form), built
    without the generic checks — every field's type is checked here; None otherwise."""
    if type(data) is not dict or not data.keys() <= _PLAIN_KEYS:
        return None
    role, content, mid = data.get("role"), data.get("content", ""), data.get("id")
    name, source, created = data.get("name"), data.get("source"), data.get("created_at")
    if not (
        role in ROLES
        and type(content) is str
        and type(mid) is str
        and mid
        and type(created) is str
        and (name is None or type(name) is str)
        and (source is None or type(source) is str)
        and status in STATUSES
        and (seq is None or type(seq) is int)
        and (token_count is None or (type(token_count) is int and token_count >= 0))
    ):
        return None
    try:
        created_at = datetime.fromisoformat(created)
    except ValueError:
        return None
    if created_at.tzinfo is None:
        return None
    message = _new(Message)
    _set(message, "role", role)
    _set(message, "content", content)
    _set(message, "name", name)
    _set(message, "tool_calls", ())
    _set(message, "tool_call_id", None)
    _set(message, "id", mid)
    _set(message, "metadata", NO_METADATA)
    _set(message, "created_at", created_at)
    _set(message, "token_count", token_count)
    _set(message, "source", source)
    _set(message, "raw", None)
    _set(message, "seq", seq)
    _set(message, "status", status)
    return message


def shareable(message: Message) -> Message | None:
    """``message`` in a form no caller can change (text only: no tool calls, metadata or raw
    form; its metadata the read-only empty mapping), or None if it has mutable parts."""
    if message.raw is not None or message.tool_calls or message.metadata:
        return None
    if message.metadata is NO_METADATA:
        return message
    return _copy(message, metadata=NO_METADATA)


class FrozenMessage:
    """An immutable copy of a message with mutable parts (raw form, metadata, tool calls):
    the message without them plus their JSON text. :meth:`thaw` builds a new message with
    new parts each time, equal to what decoding the stored payload gives."""

    __slots__ = ("_bare", "_parts")

    def __init__(self, bare: Message, parts: str) -> None:
        self._bare, self._parts = bare, parts

    @property
    def seq(self) -> int | None:
        return self._bare.seq

    def thaw(self) -> Message:
        raw, metadata, calls = _loads(self._parts)
        b = self._bare
        m = _new(Message)
        _set(m, "role", b.role)
        _set(m, "content", b.content)
        _set(m, "name", b.name)
        calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in calls) if calls else ()
        _set(m, "tool_calls", calls)
        _set(m, "tool_call_id", b.tool_call_id)
        _set(m, "id", b.id)
        _set(m, "metadata", metadata)
        _set(m, "created_at", b.created_at)
        _set(m, "token_count", b.token_count)
        _set(m, "source", b.source)
        _set(m, "raw", raw)
        _set(m, "seq", b.seq)
        _set(m, "status", b.status)
        return m


def freeze(message: Message) -> Message | FrozenMessage | None:
    """``message`` as something a cache can hold and hand out safely: the message itself
    when it is :func:`shareable`, else a :class:`FrozenMessage`; None if not JSON."""
    plain = shareable(message)
    if plain is not None:
        return plain
    parts = [message.raw, dict(message.metadata), [tc.to_dict() for tc in message.tool_calls]]
    try:
        text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None
    return FrozenMessage(_copy(message, raw=None, metadata=NO_METADATA, tool_calls=()), text)


def _copy(message: Message, **changes: Any) -> Message:
    """A copy with ``changes`` (values already valid), without re-running the checks."""
    copy = _new(Message)
    for name in _FIELD_NAMES:
        _set(copy, name, changes[name] if name in changes else getattr(message, name))
    return copy


def message_from_json(
    text: str | bytes,
    *,
    seq: int | None = None,
    status: Status = "active",
    token_count: int | None = None,
) -> Message:
    """Decode :func:`message_to_json` output."""
    try:
        data = _loads(text)
    except (TypeError, ValueError) as e:
        raise InvalidMessageError(f"message payload is not valid JSON: {e}") from e
    plain = _plain_message(data, seq, status, token_count)
    if plain is not None:
        return plain
    return message_from_dict(data, seq=seq, status=status, token_count=token_count)


def coerce_messages(messages: Message | Iterable[Message]) -> list[Message]:
    """Accept one message or an iterable of messages; reject anything else."""
    if isinstance(messages, Message):
        return [messages]
    if isinstance(messages, (str, bytes, Mapping)):
        raise InvalidMessageError(
            f"expected a Message or a list of Message, not {type(messages).__name__}"
        )
    try:
        items = list(messages)
    except TypeError as e:
        raise InvalidMessageError(
            f"expected a Message or a list of Message, not {type(messages).__name__}"
        ) from e
    for item in items:
        if not isinstance(item, Message):
            raise InvalidMessageError(f"expected Message, got {type(item).__name__}")
    return items
