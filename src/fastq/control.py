"""Remote control: ``app.control`` on the client (the worker's half is fastq.worker.remote_control).

Requests go out on the pub/sub channel ``<prefix>control:<db>`` as JSON::

    {"id": ..., "command": "ping", "arguments": {...},
     "destination": ["w1@host"] | null, "reply_to": "<prefix>control:<db>:reply:<id>" | null}

Every worker process that listens checks ``destination`` against its hostname
and runs the handler registered for the command. Exactly one process per worker
answers (the pool parent, or the only process of a solo/thread worker): it
publishes ``{"hostname": ..., "reply": ...}`` on ``reply_to``, where the client
subscribed before sending. The client collects replies until its timeout, or
until every expected worker (the destination, or the workers whose heartbeat is
recent) has answered.

Process-pool children listen too, without answering: they apply what changes
their own state (``revoke``, ``rate_limit``). Revokes are also kept in the ZSET
``<prefix>revoked`` (task id -> expiry), so a worker that starts later, or a
child that missed a message while reconnecting, still knows them.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import time
import uuid
from collections.abc import Iterable
from importlib.metadata import version
from typing import Any

from . import __version__
from ._speedups import Request
from .broker import safe_url
from .broker.fair import split_member
from .broker.keys import validate_queue_name
from .messages import decode_fields, message_decoder_for
from .ratelimit import set_rate_limit as store_rate_limit
from .settings import DEFAULTS
from .stamping import revoke_values

log = logging.getLogger("fastq.control")

#: A handler returns this to send no reply.
NO_REPLY = object()
#: Seconds a heartbeat counts as "online" (the registry is refreshed every 2 s).
ONLINE_WINDOW = 10.0
#: Most entries reported by ``reserved`` and ``scheduled`` per worker.
MAX_LISTED = 200


def _json(value: Any) -> str:
    return json.dumps(value, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def _destination(destination: str | Iterable[str] | None) -> list[str] | None:
    if destination is None:
        return None
    if isinstance(destination, str):
        destination = destination.split(",")
    hosts = [h.strip() for h in destination if h and h.strip()]
    return hosts or None


def online_workers(app, window: float = ONLINE_WINDOW) -> list[str]:
    """Hostnames whose heartbeat is younger than ``window`` seconds (on Redis's clock)."""
    _now, rows = app.broker.workers_seen(window)
    return sorted(host for host, _ts, _info in rows)


# --- client side --------------------------------------------------------------------


class Control:
    """``app.control``: send commands to workers and collect their replies.

    Every method takes ``destination`` (a list of hostnames, or a
    comma-separated string) to address some workers only. Methods that change
    something return ``None`` unless called with ``reply=True``, as in Celery;
    then they return a list of ``{hostname: reply}``.
    """

    def __init__(self, app) -> None:
        self.app = app

    # --- transport ------------------------------------------------------------------

    def broadcast(self, command: str, arguments: dict | None = None, destination=None, reply: bool = False,
                  timeout: float = 1.0, limit: int | None = None) -> list[dict] | None:
        """Send ``command`` to the workers; with ``reply=True`` return their replies
        (a list of ``{hostname: reply}``) collected for at most ``timeout`` seconds."""
        app = self.app
        dest = _destination(destination)
        req_id = uuid.uuid4().hex
        reply_to = f"{app.broker.control_channel}:reply:{req_id}" if reply else None
        body = _json({"id": req_id, "command": command, "arguments": arguments or {}, "destination": dest,
                      "reply_to": reply_to, "ts": time.time()})
        if not reply:
            with app.broker.retrying():
                app.broker.send_control(body)
            return None
        expected = limit
        if expected is None:  # stop early once every worker that should answer did
            expected = len(dest) if dest else len(online_workers(app))
        replies: list[dict] = []
        for raw in app.broker.ask_workers(body, reply_to, expected, timeout):
            try:
                data = json.loads(raw)
                replies.append({str(data["hostname"]): data.get("reply")})
            except (ValueError, KeyError, TypeError, AttributeError):  # not a reply a worker wrote
                continue
        return replies

    # --- commands -------------------------------------------------------------------

    def inspect(self, destination=None, timeout: float = 1.0, limit: int | None = None) -> Inspect:
        """``app.control.inspect().active()`` and friends."""
        return Inspect(self, destination, timeout, limit)

    def ping(self, destination=None, timeout: float = 1.0) -> list[dict]:
        """``[{hostname: {"ok": "pong"}}, ...]`` for every worker that answered."""
        return self.broadcast("ping", destination=destination, reply=True, timeout=timeout) or []

    def revoke(self, task_id: str | Iterable[str], destination=None, terminate: bool = False,
               signal: str = "SIGKILL", reply: bool = False, timeout: float = 1.0, expires: float | None = None):
        """Revoke tasks: a worker that gets one of them stores REVOKED instead of
        running it. The ids are kept in Redis for ``worker_revoke_expires`` seconds
        (or ``expires``), so workers started later know them too. ``terminate=True``
        also kills the pool process running the task (process pool; the
        message is then handed back, and recorded as REVOKED when seen again), or
        cancels the coroutine running it (``-P asyncio``: recorded as REVOKED)."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        app = self.app
        until = time.time() + float(expires if expires is not None else app.conf.worker_revoke_expires)
        with app.broker.retrying():
            app.broker.revoke(ids, until)
        return self.broadcast("revoke", {"task_id": ids, "terminate": terminate, "signal": signal, "expires": until},
                              destination, reply, timeout)

    def revoke_by_stamped_headers(self, headers: dict, destination=None, terminate: bool = False,
                                  signal: str = "SIGKILL", reply: bool = False, timeout: float = 1.0,
                                  expires: float | None = None):
        """Revoke every task stamped (fastq.stamping) with one of these values:
        ``{"monitoring_id": ["42", "43"]}``. As ``revoke``: kept in Redis for
        ``worker_revoke_expires`` seconds (or ``expires``), for workers started
        later too, and ``terminate=True`` also stops the running ones."""
        values = revoke_values(headers)  # a bad argument fails here, not in every worker
        app = self.app
        until = time.time() + float(expires if expires is not None else app.conf.worker_revoke_expires)
        with app.broker.retrying():
            app.broker.revoke_stamps(values, until)
        return self.broadcast("revoke_by_stamped_headers", {"headers": values, "terminate": terminate,
                                                            "signal": signal, "expires": until},
                              destination, reply, timeout)

    def rate_limit(self, task_name: str, rate_limit, destination=None, reply: bool = False, timeout: float = 1.0):
        """Change a task's rate limit (``"10/s"``, ``"5/m"``, a number, or None) on the workers."""

        # Stored in Redis: the bucket uses it at once and every consumer (also ones
        # started later) picks it up; the broadcast makes running workers apply it now.
        store_rate_limit(self.app, task_name, rate_limit)  # a bad rate fails here, not in every worker
        return self.broadcast("rate_limit", {"task_name": task_name, "rate_limit": rate_limit}, destination, reply, timeout)

    def shutdown(self, destination=None, reply: bool = False, timeout: float = 1.0):
        """Warm shutdown: the workers finish their running tasks and exit."""
        return self.broadcast("shutdown", None, destination, reply, timeout)

    def pool_grow(self, n: int = 1, destination=None, reply: bool = False, timeout: float = 1.0):
        """Add ``n`` processes (or threads) to the workers' pools."""
        return self.broadcast("pool_grow", {"n": int(n)}, destination, reply, timeout)

    def pool_shrink(self, n: int = 1, destination=None, reply: bool = False, timeout: float = 1.0):
        """Remove ``n`` processes (or threads); each finishes its running task first."""
        return self.broadcast("pool_shrink", {"n": int(n)}, destination, reply, timeout)

    def add_consumer(self, queue: str, destination=None, reply: bool = False, timeout: float = 1.0):
        """Start consuming ``queue`` (the pool restarts its consumers, warm)."""
        return self.broadcast("add_consumer", {"queue": validate_queue_name(queue)}, destination, reply, timeout)

    def cancel_consumer(self, queue: str, destination=None, reply: bool = False, timeout: float = 1.0):
        """Stop consuming ``queue`` (the pool restarts its consumers, warm)."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, reply, timeout)


class Inspect:
    """Read-only questions to workers; each returns ``{hostname: reply}``."""

    def __init__(self, control: Control, destination=None, timeout: float = 1.0, limit: int | None = None) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.limit = limit

    def _request(self, command: str, **arguments: Any) -> dict:
        replies = self.control.broadcast(command, arguments, self.destination, reply=True, timeout=self.timeout,
                                         limit=self.limit) or []
        out: dict = {}
        for r in replies:
            out.update(r)
        return out

    def ping(self) -> dict:
        return self._request("ping")

    def active(self) -> dict:
        """The tasks each worker is running, as Celery's ``Request.info()``: ``id``,
        ``name``, ``args``, ``kwargs``, ``type``, ``hostname``, ``time_start``,
        ``acknowledged``, ``delivery_info`` (``routing_key`` is the queue) and
        ``worker_pid``."""
        return self._request("active")

    def reserved(self) -> dict:
        """Messages each worker has fetched and not started yet (the same shape)."""
        return self._request("reserved")

    def scheduled(self) -> dict:
        """Delayed messages (countdown, ETA, retries) of the queues each worker
        consumes, as Celery's ``{"eta": ISO time, "priority", "request"}``.

        fastq keeps them in Redis rather than in a worker, so workers of the same
        queue report the same ones."""
        return self._request("scheduled")

    def query_task(self, *ids: str | Iterable[str]) -> dict:
        """Where each worker has these tasks: ``{id: ["active" | "reserved" |
        "scheduled", request]}`` (empty when it has none of them)."""
        flat = [i for x in ids for i in ([x] if isinstance(x, str) else x)]
        return self._request("query_task", ids=flat)

    def registered(self, *taskinfoitems: str) -> dict:
        """The task names each worker knows; with attribute names (``"rate_limit"``),
        Celery's ``"name [rate_limit=10/s]"`` items."""
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def stats(self) -> dict:
        """Pool, counters, memory and uptime of each worker."""
        return self._request("stats")

    def revoked(self) -> dict:
        """The revoked task ids each worker knows."""
        return self._request("revoked")

    def active_queues(self) -> dict:
        """The queues each worker consumes, in Celery's (kombu's) queue shape."""
        return self._request("active_queues")

    def clock(self) -> dict:
        """Each worker's logical clock: ``{"clock": n}``, counting the control
        requests it has answered."""
        return self._request("clock")

    def conf(self, with_defaults: bool = False) -> dict:
        """Each worker's settings (only those changed from the defaults unless
        ``with_defaults``), passwords masked."""
        return self._request("conf", with_defaults=with_defaults)

    def report(self) -> dict:
        """Each worker's ``bugreport()``: versions, platform and settings: ``{"ok": text}``."""
        return self._request("report")


# --- reading messages (for active/reserved/scheduled) -----------------------------------


def request_info(msg, queue: str | None = None) -> dict:
    """What inspect and the dashboard show of a task message."""
    return {
        "id": msg.id, "name": msg.task, "args": msg.args, "kwargs": msg.kwargs, "retries": msg.retries,
        "eta": msg.eta, "expires": msg.expires, "priority": msg.priority, "parent_id": msg.parent_id,
        "root_id": msg.root_id, "queue": queue, "created": msg.created, "stamps": Request(msg, None).stamps,
    }


def celery_request(info: dict, acknowledged: bool) -> dict:
    """A request (``request_info`` with the worker's fields) in Celery's shape,
    which inspect replies use."""
    return {
        "id": info["id"], "name": info["name"], "args": info["args"], "kwargs": info["kwargs"],
        "type": info["name"], "hostname": info.get("hostname"), "time_start": info.get("time_start"),
        "acknowledged": acknowledged,
        "delivery_info": {"exchange": "", "routing_key": info.get("queue"), "priority": info.get("priority"),
                          "redelivered": bool(info.get("redelivered"))},
        "worker_pid": info.get("worker_pid"),
    }


def celery_queue(name: str) -> dict:
    """A queue in Celery's ``active_queues`` shape (kombu's ``Queue.as_dict``): a
    direct exchange of the queue's name, as Celery's Redis transport has it."""
    exchange = {"arguments": None, "auto_delete": False, "delivery_mode": None, "durable": True, "name": name,
                "no_declare": False, "passive": False, "type": "direct"}
    return {"alias": None, "auto_delete": False, "binding_arguments": None, "bindings": [],
            "consumer_arguments": None, "durable": True, "exchange": exchange, "exclusive": False, "expires": None,
            "max_length": None, "max_length_bytes": None, "max_priority": None, "message_ttl": None, "name": name,
            "no_ack": False, "no_declare": None, "queue_arguments": None, "routing_key": name}


def iso_eta(epoch: float) -> str:
    """Celery's ``eta`` text: ``2026-12-04T10:30:00.000000+00:00``."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00"


_SECRET_WORDS = ("password", "secret", "token", "api_key")


def settings_report(conf, with_defaults: bool = False) -> dict:
    """The settings as JSON-able values, URLs and secrets masked (inspect ``conf``
    and ``bugreport``)."""
    out = {}
    for name in sorted(conf):
        value = conf[name]
        if not with_defaults and name in DEFAULTS and value == DEFAULTS[name]:
            continue
        if isinstance(value, str) and "://" in value:
            value = safe_url(value)
        elif any(w in name.lower() for w in _SECRET_WORDS) and value:
            value = "********"
        out[name] = _jsonable(value)
    return out


def bugreport(app) -> str:
    """What to paste into a bug report: versions, platform, and the app's settings
    that differ from the defaults (passwords masked), as Celery's ``bugreport``."""
    lines = [
        f"software -> fastq:{__version__} py:{platform.python_version()} redis-py:{version('redis')} "
        f"msgspec:{version('msgspec')}",
        f"platform -> system:{platform.system()} arch:{platform.machine()} "
        f"kernel version:{platform.release()} imp:{platform.python_implementation()}",
        f"settings -> broker:{safe_url(app.broker_url)} results:{safe_url(app.conf.result_backend or app.broker_url)}",
        "",
    ]
    lines += [f"{k}: {v!r}" for k, v in settings_report(app.conf).items()]
    return "\n".join(lines) + "\n"


def decode_delayed(member: bytes):
    """A delayed-set member (field byte, priority digit, payload) -> Message or None."""
    if member[:1] == b"g":  # a fair queue's member carries its group first (fastq.fairness)
        member = split_member(member)[1]
    decode = message_decoder_for(member[:1])
    if decode is None:
        return None
    try:
        return decode(member[2:])
    except Exception:  # noqa: BLE001
        return None


def held_entries(app, queues: list[str], consumer_names: list[str], client=None,
                 limit: int = MAX_LISTED) -> list[tuple[str, bytes, str]]:
    """(queue, entry id, consumer) of messages the consumers hold (fetched, not acked)."""
    out: list[tuple[str, bytes, str]] = []
    for q in queues:
        out.extend((q, entry_id, name) for entry_id, name in
                   app.broker.held_entries(q, consumer_names, limit - len(out), client))
        if len(out) >= limit:
            return out[:limit]
    return out


def read_messages(app, entries: list[tuple[str, bytes]], client=None) -> list[dict]:
    """[(queue, entry id)] -> request infos of the entries still in their stream."""
    out = []
    for q, entry_id in entries:
        found = app.broker.read_entry(q, entry_id, client)
        if found is not None:
            msg = decode_fields(found[1])
            if msg is not None:
                out.append(celery_request(request_info(msg, q), False))
    return out


def scheduled_messages(app, queues: list[str], limit: int = MAX_LISTED, client=None) -> list[dict]:
    out = []
    for q in queues:
        for member, score in app.broker.delayed_members(q, limit, client):
            msg = decode_delayed(member)
            if msg is not None:
                out.append((score, {"eta": iso_eta(score / 1000.0), "priority": msg.priority,
                                    "request": celery_request(request_info(msg, q), False)}))
    out.sort(key=lambda r: r[0])
    return [r for _, r in out[:limit]]

__all__ = ["NO_REPLY", "Control", "Inspect"]
