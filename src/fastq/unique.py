"""Unique and debounced sends.

Unique: ``apply_async(unique_key="report:42", unique_for=600)`` (or
``@app.task(unique=True)``, which derives the key from the task name and its
arguments). ``unique_publish.lua`` takes the lock ``<prefix>{queue}:u:<key>``
(SET with the task id) and sends the message in one step, or answers with the
id of the task holding the lock, so a second send while the first waits, is
delayed or runs returns the first one's AsyncResult and sends nothing. The
message carries the lock's name in ``options["unique"]``; the worker frees the
lock in the flush that acks the message (``release``) when the task ends for
good: success, failure, rejection, revocation or expiry. A task waiting for a
retry keeps it. ``unique_for`` seconds after the send the lock expires anyway
(a lost worker, a message dead-lettered by the reaper, a purged queue).

Debounce: ``apply_async(debounce_key="reindex:7", countdown=5)``. Sends of one
key within the window collapse into one run with the latest arguments, due
``countdown`` seconds after the latest send (``debounce.lua``, over the queue's
delayed set and the record ``<prefix>{queue}:db:<key>``). Every send of a
window returns the same id.

Both keys carry the queue's hash tag: a key is unique per queue.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import msgspec

from .options import SPECIAL_OPTIONS

#: apply_async options of unique and debounced sends (fastq.producer sends them).
OPTIONS = SPECIAL_OPTIONS
#: Lock lifetime when neither the call nor the task says (seconds).
DEFAULT_UNIQUE_FOR = 3600.0
#: A debounce record outlives its due time by this much (seconds): a pending
#: message is found through it, so it must last as long as workers may be away.
DEBOUNCE_RECORD_TTL = 86400

_hash_encode = msgspec.msgpack.Encoder(order="sorted").encode


# --- checking options --------------------------------------------------------------------


def check_key(value: Any, option: str, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where}: {option} must be a non-empty string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{where}: {option} must be a non-empty string, not ''")
    return value


def check_seconds(value: Any, option: str, where: str) -> float:
    """A positive number of seconds."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{where}: {option} must be a positive number of seconds, not {type(value).__name__}")
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{where}: {option} must be a positive number of seconds, not {value!r}")
    return float(value)


def derived_key(task, args, kwargs) -> str:
    """The unique key of ``@app.task(unique=True)``: the task name and a hash of
    its arguments, bound to the signature (``f(1)``, ``f(x=1)`` and, with a default
    ``y=2``, ``f(1, 2)`` are one call); the encoding sorts dict keys."""
    try:
        bound = task._signature.bind(*(args or ()), **(kwargs or {}))
    except TypeError:
        data: Any = [list(args or ()), dict(kwargs or {})]  # a bad call: the worker will say so
    else:
        bound.apply_defaults()
        data = bound.arguments
    try:
        blob = _hash_encode(data)
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"task {task.name!r}: arguments cannot be serialized for the unique key: {exc}") from None
    return f"{task.name}:{hashlib.sha256(blob).hexdigest()[:32]}"


def prepare(task, args, kwargs, options: dict) -> None:
    """``@app.task(unique=True)``: add the derived key to a send's options
    (unless the call gives its own key, or debounces)."""
    if options.get("unique_key") is None and options.get("debounce_key") is None:
        options["unique_key"] = derived_key(task, args, kwargs)


# --- the worker side -----------------------------------------------------------------------


def release(broker, msg, out) -> None:
    """The message's task ended for good: free its unique lock in the same flush
    as its ack (a no-op for other messages)."""
    opts = msg.options
    if opts:
        lock = opts.get("unique")
        if lock:
            out.add_command(broker.unique_release_command(lock, msg.id), 1)


__all__ = ["DEFAULT_UNIQUE_FOR", "OPTIONS", "check_key", "check_seconds", "derived_key", "prepare", "release"]
