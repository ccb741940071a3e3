"""Read-only views of a fastq deployment, shared by the CLI, the dashboard and metrics:
the workers registry, queue rates and dead letters.

Queue rates come from Redis itself: ``XINFO STREAM`` reports how many entries a
stream ever received (``entries-added``, Redis 7). Finished messages are deleted
from their stream, so between two samples a queue's *in* rate is the growth of
``entries-added`` and its *out* (done) rate is the growth of
``entries-added - length``. No per-message bookkeeping is needed.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import json
import reprlib
import time

from . import states
from .control import ONLINE_WINDOW, decode_delayed, request_info
from .messages import dead_letter_row, decode_fields


def workers(app, forget_after: float = 3600.0) -> list[dict]:
    """Every worker seen in the last ``forget_after`` seconds: its last heartbeat
    (hostname, pid, queues, pool, concurrency, processed, failed, active, rss,
    loadavg) and ``online`` (heartbeat younger than 10 s)."""
    now, rows = app.broker.workers_seen(forget_after)
    out = []
    for host, ts, raw in rows:
        info = {}
        if raw:
            try:
                info = json.loads(raw)
            except ValueError:
                info = {}
            if not isinstance(info, dict):  # anything may write to the key: keep only what the heartbeat says
                info = {}
        info["hostname"] = host
        info["last_heartbeat"] = ts
        info["online"] = now - ts < ONLINE_WINDOW
        out.append(info)
    out.sort(key=lambda w: (not w["online"], w["hostname"]))
    return out


def queue_totals(app, names: list[str]) -> dict[str, tuple[int, int] | None]:
    """queue -> (entries ever added, entries now present) over its streams; None
    when Redis does not report ``entries-added`` (before 7.0)."""
    return app.broker.queue_totals(names)


class QueueRates:
    """Per-queue in/out rates (messages per second) from two samples."""

    def __init__(self, app) -> None:
        self.app = app
        self._last: dict[str, tuple[float, tuple[int, int]]] = {}
        #: queue -> {"rate_in": ..., "rate_out": ...} after the second sample
        self.rates: dict[str, dict] = {}

    def sample(self, names: list[str]) -> dict[str, dict]:
        now = time.monotonic()
        for q, totals in queue_totals(self.app, names).items():
            prev = self._last.get(q)
            if totals is None:
                continue
            if prev is not None and now > prev[0]:
                dt = now - prev[0]
                (a0, l0), (a1, l1) = prev[1], totals
                self.rates[q] = {"rate_in": max(0.0, (a1 - a0) / dt),
                                 "rate_out": max(0.0, ((a1 - l1) - (a0 - l0)) / dt)}
            self._last[q] = (now, totals)
        return self.rates


def queue_rows(app, rates: dict[str, dict] | None = None) -> list[dict]:
    """queue_stats of every known queue, with rates when known."""
    rows = []
    for q in app.broker.known_queues():
        row = app.broker.queue_stats(q)
        r = (rates or {}).get(q)
        row["rate_in"] = r["rate_in"] if r else None
        row["rate_out"] = r["rate_out"] if r else None
        rows.append(row)
    return rows


#: Dead letters read per queue when looking ids up (``fastq dlq requeue/purge ID``).
DLQ_SCAN_LIMIT = 100_000

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlist = _short.maxtuple = _short.maxdict = 5


def short_args(args, kwargs) -> str:
    """``(1, 'x')`` / ``(1, x=2)``, cut short, for one-line listings."""
    parts = [_short.repr(a) for a in (args or ())]
    parts += [f"{k}={_short.repr(v)}" for k, v in (kwargs or {}).items()]
    text = f"({', '.join(parts)})"
    return text if len(text) <= 80 else text[:77] + "..."


def dead_letters(app, queues: list[str], limit: int = 100) -> list[dict]:
    """Decoded dead letters (``dead_letter_row``) of these queues, oldest first, up to ``limit`` per queue."""
    return [dead_letter_row(item) for q in queues for item in app.broker.dlq_list(q, limit)]


def find_dead_letters(app, queues: list[str], wanted: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Look up dead letters by entry id or task id: ({queue: [entry id, ...]}, ids found nowhere)."""
    want = set(wanted)
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    for q in queues:
        for item in app.broker.dlq_list(q, DLQ_SCAN_LIMIT):
            match = item["id"] if item["id"] in want else None
            if match is None:
                row = dead_letter_row(item)
                match = row["task_id"] if row["task_id"] in want else None
            if match is not None:
                found.setdefault(q, []).append(item["id"])
                seen.add(match)
    return found, [i for i in wanted if i not in seen]


def locate_task(app, task_id: str, limit: int = 5000) -> dict | None:
    """Find a task's message in the queues (waiting, in flight, delayed or dead),
    looking at up to ``limit`` entries of each stream: {"state", "queue", "where",
    "request", ...}, or None."""
    broker = app.broker
    for q in broker.known_queues():
        for stream, entry_id, fields in broker.stream_entries(q, limit):
            msg = decode_fields(fields)
            if msg is not None and msg.id == task_id:
                held = broker.is_held(stream, entry_id)
                return {"state": states.RECEIVED if held else states.PENDING, "queue": q,
                        "where": "in flight" if held else "waiting", "request": request_info(msg, q)}
        for member, score in broker.delayed_members(q, limit):
            msg = decode_delayed(member)
            if msg is not None and msg.id == task_id:
                return {"state": "SCHEDULED", "queue": q, "where": "delayed", "eta": score / 1000.0,
                        "request": request_info(msg, q)}
        for item in broker.dlq_list(q, limit):
            field = b"p" if item.get("serializer") == "msgpack" else b"j"
            msg = decode_fields({field: item.get("payload", b"")})
            if msg is not None and msg.id == task_id:
                return {"state": "DEAD", "queue": q, "where": "dead-lettered", "reason": item.get("reason"),
                        "error": item.get("error"), "dead_letter_id": item["id"], "request": request_info(msg, q)}
    return None


__all__ = ["QueueRates", "dead_letter_row", "dead_letters", "find_dead_letters", "locate_task", "queue_rows", "queue_totals",
           "short_args", "workers"]
