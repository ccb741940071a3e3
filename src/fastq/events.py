"""Task and worker events on a capped Redis stream (``<prefix>events``).

Workers record task events in the consumer's output and send them as ONE stream
entry per flush (a msgpack list), with ``XADD ... MAXLEN ~``, so events cost a
small, per-batch price instead of a write per task. An entry has the fields
``h`` (worker hostname) and ``e`` (the list of events); each event is the tuple
``(type, task_id, task_name, timestamp, runtime, info)``.

Types: task-received (one per fetched batch, info ``{"n": count}``),
task-started (tasks with track_started), task-succeeded, task-failed,
task-retried, task-revoked, task-rejected, task-progress (``update_state()``
in a worker, info ``{"state": "PROGRESS", "meta": {...}}``), worker-heartbeat,
worker-online, worker-offline. A fast task's succeeded event carries its runtime, so
received/started need not be sent per task.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec

#: Approximate number of stream entries kept (each holds a batch of events).
MAXLEN = 10_000

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def encode_events(events: list) -> bytes:
    """A batch of event tuples as one stream entry's ``e`` field."""
    return _encode(events)


#: Largest progress meta (msgpack bytes) carried in a task-progress event; a
#: larger one is left out (readers get it from the result backend).
MAX_PROGRESS_META = 4096


def publish_progress(app, hostname: str, task_id: str, name: str, state: str, meta) -> None:
    """The task-progress event of ``update_state()`` (the dashboard's task list shows it)."""
    info: dict = {"state": state}
    if meta is not None:
        try:
            if len(_encode(meta)) <= MAX_PROGRESS_META:
                info["meta"] = meta
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            pass  # the backend stored it; the event goes without it
    broker = app.broker
    with broker.retrying():
        broker.publish_events(hostname, [("task-progress", task_id, name, time.time(), None, info)])


def worker_event(kind: str, hostname: str, info: dict) -> tuple:
    return (kind, None, None, time.time(), None, info)


def unpack_entry(fields: dict) -> list[dict]:
    """A stream entry's fields -> events as dicts. An entry fastq did not write
    (anything may XADD to the stream) carries no task: it is skipped, with
    nothing raised."""
    host = fields.get(b"h", b"").decode(errors="replace")
    out = []
    try:
        rows = _decode(fields[b"e"])
        for kind, task_id, name, ts, runtime, info in rows:
            if not isinstance(kind, str) or not isinstance(ts, (int, float)):
                continue
            event = {"type": kind, "hostname": host, "timestamp": ts}
            if task_id is not None:
                event["uuid"] = task_id
            if name is not None:
                event["name"] = name
            if runtime is not None:
                event["runtime"] = runtime
            if isinstance(info, dict):
                event.update(info)
            out.append(event)
    except (KeyError, TypeError, ValueError, msgspec.DecodeError):
        return out
    return out


def tail(broker, since: str = "$", block_ms: int = 1000, client=None) -> Iterator[dict]:
    """Follow the event stream forever, yielding events as dicts."""
    last = since
    while True:
        for entry_id, _host, fields in broker.read_events(last, block_ms, 100, client):
            last = entry_id
            yield from unpack_entry(fields)
