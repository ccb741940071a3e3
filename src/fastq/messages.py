"""The wire format: one msgspec Struct for task messages, one for stored results.

Messages are msgpack by default (``task_serializer="json"`` selects JSON). The
serializer is named by the stream field that carries the payload (``p`` for
msgpack, ``j`` for JSON), so a worker decodes either without guessing. Pickle is
never used: a message can only carry plain data.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from .exceptions import ImproperlyConfigured

#: Stream/delayed-set field name per serializer.
SERIALIZER_FIELDS = {"msgpack": b"p", "json": b"j"}


class Message(msgspec.Struct, array_like=True, omit_defaults=False):
    """The task message envelope (array-encoded: small and fast)."""

    id: str
    task: str
    args: list = []
    kwargs: dict = {}
    retries: int = 0
    eta: float | None = None  #: epoch seconds
    expires: float | None = None  #: epoch seconds
    priority: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    created: float = 0.0
    #: Per-call options the worker acts on (ignore_result, link, link_error,
    #: group/chord membership, time limits); None when there are none.
    options: dict | None = None
    headers: dict | None = None


class ResultMeta(msgspec.Struct, array_like=True, omit_defaults=False):
    """What the backend stores for a task."""

    state: str
    result: Any = None
    exc_type: str | None = None
    exc_module: str | None = None
    exc_message: str | None = None
    traceback: str | None = None
    date_done: float | None = None
    runtime: float | None = None
    hostname: str | None = None
    retries: int = 0
    task: str | None = None
    meta: dict | None = None  #: extra info, e.g. revoke reason or progress
    children: list | None = None
    #: The exception's arguments, when they are plain data (see exception_args):
    #: the producer rebuilds the exception with them, as it was raised.
    exc_args: list | None = None


def check_serializer(name: str | None, where: str) -> None:
    """A serializer named on a task or a call (Celery's ``serializer=``): one fastq
    has is accepted, and every message still takes the app's ``task_serializer``
    (both are safe to decode); pickle and the rest are refused, not ignored."""
    if name is not None and name not in SERIALIZER_FIELDS:
        raise ValueError(f"{where}: serializer must be one of {sorted(SERIALIZER_FIELDS)}, not {name!r} "
                         f"(pickle is never supported)")


def encode_hook(obj: Any) -> Any:
    """What msgspec cannot encode by itself, made data: a signature (a task's
    argument or return value, as Celery allows) becomes its dict form, which
    ``Signature.from_dict`` / ``fastq.signature()`` rebuild; a result handle
    (``AsyncResult``, ``GroupResult``) becomes its ``as_tuple()``, as Celery
    stores one. Anything else stays refused (msgspec's TypeError names its type)."""
    as_dict = getattr(obj, "as_dict", None)
    if as_dict is not None and hasattr(obj, "subtask_type"):  # a fastq Signature (canvas is above this layer)
        return as_dict()
    as_tuple = getattr(obj, "as_tuple", None)
    if as_tuple is not None and hasattr(obj, "parent"):  # a fastq result handle (result is above this layer)
        return as_tuple()
    raise TypeError(f"Encoding objects of type {type(obj).__name__} is unsupported")


class Serializer:
    """Encodes and decodes messages and results in one format."""

    def __init__(self, name: str = "msgpack") -> None:
        if name not in SERIALIZER_FIELDS:
            raise ImproperlyConfigured(
                f"task_serializer must be one of {sorted(SERIALIZER_FIELDS)}, not {name!r} (pickle is never supported)"
            )
        self.name = name
        self.field = SERIALIZER_FIELDS[name]
        mod = msgspec.msgpack if name == "msgpack" else msgspec.json
        self.encode = mod.Encoder(enc_hook=encode_hook).encode
        self.decode_message = mod.Decoder(Message).decode
        self.decode_result = mod.Decoder(ResultMeta).decode
        self.error = (msgspec.EncodeError, TypeError, OverflowError, ValueError)


_msgpack_decoders = {
    b"p": msgspec.msgpack.Decoder(Message).decode,
    b"j": msgspec.json.Decoder(Message).decode,
}


def message_decoder_for(field: bytes):
    """The Message decoder for a stream field name, or None for an unknown one."""
    return _msgpack_decoders.get(field)


_result_encoder = msgspec.msgpack.Encoder(enc_hook=encode_hook)
_result_decoder = msgspec.msgpack.Decoder(ResultMeta)


def exception_args(exc: BaseException) -> list | None:
    """``exc.args`` as a list when they can be stored as data (msgpack), else None:
    ``ExpectedException("failed", "test")`` then comes back with both arguments,
    and an exception whose constructor takes several comes back as its own type."""
    args = getattr(exc, "args", None)
    if not isinstance(args, tuple) or not args:
        return None
    try:
        _result_encoder.encode(args)
    except (TypeError, ValueError, OverflowError):
        return None
    return list(args)


def encode_result(meta: ResultMeta) -> bytes:
    """Results are always msgpack: only fastq itself reads them."""
    return _result_encoder.encode(meta)


def decode_result(raw: bytes) -> ResultMeta:
    """The stored result; one fastq cannot read (written by something else) is a
    FAILURE saying so, so a reader gets a clear error rather than a decoder's."""
    try:
        meta = _result_decoder.decode(raw)
    except (msgspec.DecodeError, TypeError, ValueError) as exc:
        return ResultMeta("FAILURE", None, "ValueError", "builtins", f"the stored result cannot be read: {exc}")
    if not isinstance(meta.state, str):  # pragma: no cover - the decoder checks the type
        return ResultMeta("FAILURE", None, "ValueError", "builtins", "the stored result has no state")
    return meta


def now() -> float:
    return time.time()


def decode_fields(fields: dict):
    """A stream entry's fields -> Message, or None when it cannot be decoded."""
    for field, payload in fields.items():
        decode = message_decoder_for(field)
        if decode is not None:
            try:
                return decode(payload)
            except Exception:  # noqa: BLE001 - a bad payload is simply not shown
                return None
    return None


def dead_letter_row(item: dict) -> dict:
    """A ``broker.dlq_list`` item -> what a person reads: the entry id, queue,
    task id and name, args and kwargs (decoded; None when the payload cannot be
    decoded), reason, error, deliveries, and when it was dead-lettered (seconds
    since the epoch, from the entry id: Redis's clock); a fair queue's also its ``group``."""
    payload = item.get("payload")
    field = b"p" if item.get("serializer", "msgpack") == "msgpack" else b"j"
    msg = decode_fields({field: payload}) if payload else None
    try:
        dead_at = int(item["id"].split("-")[0]) / 1000
    except ValueError:
        dead_at = None
    try:
        deliveries = int(item.get("dc", 0))
    except ValueError:
        deliveries = None
    return {"id": item["id"], "queue": item["queue"],
            "task_id": msg.id if msg is not None else None, "task": msg.task if msg is not None else None,
            "args": list(msg.args) if msg is not None else None, "kwargs": msg.kwargs if msg is not None else None,
            "reason": item.get("reason"), "error": item.get("error"), "deliveries": deliveries,
            "dead_lettered_at": dead_at, **({"tenant": item["g"]} if "g" in item else {})}
