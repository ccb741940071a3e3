"""Remote control: ``app.control`` on the client, ``ControlListener`` in workers.

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
"""

from __future__ import annotations

import json
import logging
import os
import signal as _signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from .broker.keys import GROUP
from .broker.redis import CONNECTION_ERRORS
from .messages import decode_fields, message_decoder_for

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


def channel_prefix(app) -> str:
    """``<prefix>control`` plus the Redis database number: pub/sub channels are
    shared by all databases of a server, so apps on different databases must not
    hear each other (kombu prefixes its fanout channels the same way)."""
    db = app.broker.db
    return f"{app.broker.keys.control}:{db}"


def online_workers(app, window: float = ONLINE_WINDOW) -> list[str]:
    """Hostnames whose heartbeat is younger than ``window`` seconds (on Redis's clock)."""
    keys = app.broker.keys
    rows = app.broker.client.zrangebyscore(keys.workers, app.broker.clock(keys.workers) - window, "+inf")
    return sorted(h.decode() for h in rows)


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
        channel = channel_prefix(app)
        reply_to = f"{channel}:reply:{req_id}" if reply else None
        body = _json({"id": req_id, "command": command, "arguments": arguments or {}, "destination": dest,
                      "reply_to": reply_to, "ts": time.time()})
        client = app.broker.client
        if not reply:
            with app.broker.retrying():
                client.publish(channel, body)
            return None
        expected = limit
        if expected is None:  # stop early once every worker that should answer did
            expected = len(dest) if dest else len(online_workers(app))
        pubsub = client.pubsub(ignore_subscribe_messages=False)
        replies: list[dict] = []
        try:
            pubsub.subscribe(reply_to)
            # Wait for the subscription to be confirmed: a reply published before
            # it would be lost.
            deadline = time.monotonic() + max(timeout, 2.0)
            while time.monotonic() < deadline:
                m = pubsub.get_message(timeout=0.5)
                if m is not None and m["type"] == "subscribe":
                    break
            client.publish(channel, body)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or (expected and len(replies) >= expected):
                    break
                m = pubsub.get_message(timeout=min(left, 0.5))
                if m is None or m["type"] != "message":
                    continue
                try:
                    data = json.loads(m["data"])
                    replies.append({str(data["hostname"]): data.get("reply")})
                except (ValueError, KeyError, TypeError):  # not a reply a worker wrote
                    continue
        finally:
            try:
                pubsub.unsubscribe()
                pubsub.close()
            except CONNECTION_ERRORS:
                pass
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
        keys = app.broker.keys
        now = time.time()
        until = now + float(expires if expires is not None else app.conf.worker_revoke_expires)
        with app.broker.retrying():
            pipe = app.broker.client.pipeline(transaction=False)
            pipe.zadd(keys.revoked, {i: until for i in ids})
            pipe.zremrangebyscore(keys.revoked, "-inf", now)
            pipe.execute()
        return self.broadcast("revoke", {"task_id": ids, "terminate": terminate, "signal": signal, "expires": until},
                              destination, reply, timeout)

    def rate_limit(self, task_name: str, rate_limit, destination=None, reply: bool = False, timeout: float = 1.0):
        """Change a task's rate limit (``"10/s"``, ``"5/m"``, a number, or None) on the workers."""

        from .ratelimit import set_rate_limit as store_rate_limit

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
        from .broker.keys import validate_queue_name

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
        """The tasks each worker is running."""
        return self._request("active")

    def reserved(self) -> dict:
        """Messages each worker has fetched and not started yet."""
        return self._request("reserved")

    def scheduled(self) -> dict:
        """Delayed messages (countdown, ETA, retries) of the queues each worker consumes.

        fastq keeps them in Redis rather than in a worker, so workers of the same
        queue report the same ones."""
        return self._request("scheduled")

    def registered(self) -> dict:
        """The task names each worker knows."""
        return self._request("registered")

    def stats(self) -> dict:
        """Pool, counters, memory and uptime of each worker."""
        return self._request("stats")

    def revoked(self) -> dict:
        """The revoked task ids each worker knows."""
        return self._request("revoked")

    def active_queues(self) -> dict:
        """The queues each worker consumes."""
        return self._request("active_queues")


# --- reading messages (for active/reserved/scheduled) -----------------------------------


def request_info(msg, queue: str | None = None) -> dict:
    """What inspect and the dashboard show of a task message."""
    return {
        "id": msg.id, "name": msg.task, "args": msg.args, "kwargs": msg.kwargs, "retries": msg.retries,
        "eta": msg.eta, "expires": msg.expires, "priority": msg.priority, "parent_id": msg.parent_id,
        "root_id": msg.root_id, "queue": queue, "created": msg.created,
    }


def decode_delayed(member: bytes):
    """A delayed-set member (field byte, priority digit, payload) -> Message or None."""
    if member[:1] == b"g":  # a fair queue's member carries its group first (fastq.fairness)
        from .broker.fair import split_member

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
    c = client or app.broker.client
    out: list[tuple[str, bytes, str]] = []
    for q in queues:
        for stream in app.broker.keys.queue(q).fetch_order:
            for name in consumer_names:
                rows = c.xpending_range(stream, GROUP, min="-", max="+", count=limit, consumername=name)
                out.extend((q, r["message_id"], name) for r in rows)
                if len(out) >= limit:
                    return out[:limit]
    return out


def read_messages(app, entries: list[tuple[str, bytes]], client=None) -> list[dict]:
    """[(queue, entry id)] -> request infos of the entries still in their stream."""
    c = client or app.broker.client
    out = []
    for q, entry_id in entries:
        for stream in app.broker.keys.queue(q).fetch_order:
            rows = c.xrange(stream, entry_id, entry_id)
            if rows:
                msg = decode_fields(rows[0][1])
                if msg is not None:
                    out.append(request_info(msg, q))
                break
    return out


def scheduled_messages(app, queues: list[str], limit: int = MAX_LISTED, client=None) -> list[dict]:
    c = client or app.broker.client
    out = []
    for q in queues:
        for member, score in c.zrange(app.broker.keys.queue(q).delayed, 0, limit - 1, withscores=True):
            msg = decode_delayed(member)
            if msg is not None:
                out.append({"eta": score / 1000.0, "priority": msg.priority, "request": request_info(msg, q)})
    out.sort(key=lambda r: r["eta"])
    return out[:limit]


# --- revokes ---------------------------------------------------------------------------


class RevokeState:
    """The revoked ids one process knows, mirrored into its executors' sets.

    ``Executor.revoked`` is a plain set the worker checks before running a
    message; entries are removed when they expire so the set stays small (a
    non-empty set sends every message through the slower checked path)."""

    def __init__(self, app, executors: Callable[[], list]) -> None:
        self.app = app
        self.executors = executors
        self.expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, ids: Iterable[str], until: float | None = None) -> None:
        until = until or time.time() + float(self.app.conf.worker_revoke_expires)
        with self._lock:
            for i in ids:
                self.expiry[i] = max(until, self.expiry.get(i, 0.0))
            self._apply()

    def sync(self, client=None) -> None:
        """Load the revokes kept in Redis (at start and after a reconnect)."""
        c = client or self.app.broker.client
        rows = c.zrangebyscore(self.app.broker.keys.revoked, time.time(), "+inf", withscores=True)
        self.add_many({i.decode(): score for i, score in rows})

    def add_many(self, items: dict[str, float]) -> None:
        with self._lock:
            for i, until in items.items():
                self.expiry[i] = max(until, self.expiry.get(i, 0.0))
            self._apply()

    def prune(self) -> None:
        now = time.time()
        with self._lock:
            gone = [i for i, until in self.expiry.items() if until <= now]
            for i in gone:
                del self.expiry[i]
            for ex in self.executors():
                for i in gone:
                    ex.revoked.discard(i)

    def _apply(self) -> None:
        for ex in self.executors():
            # update in place: the consumer holds a reference to this set
            ex.revoked.update(self.expiry)

    def ids(self) -> list[str]:
        return sorted(self.expiry)


def set_rate_limit(app, task_name: str, rate_limit) -> None:
    """Change a registered task's rate limit in this process."""
    from .options import parse_rate

    task = app.tasks.get(task_name)
    if task is None:
        raise KeyError(f"unknown task {task_name!r}")
    task.rate = None if rate_limit in (None, 0, "0") else parse_rate(rate_limit, f"task {task_name!r}")
    task.rate_limit = rate_limit
    task._refresh()


# --- worker side -------------------------------------------------------------------------


class ControlListener:
    """Subscribes to the control channel in a daemon thread and runs handlers.

    ``handlers`` maps a command to a callable taking the request's arguments as
    keywords; its return value is the reply (``NO_REPLY`` for none). With
    ``reply=False`` (pool children) nothing is ever published. ``tick`` is
    called about every ``tick_interval`` seconds from the same thread, and
    ``on_connect`` after every (re)subscription. Never raises: Redis outages
    are logged once and retried.
    """

    def __init__(self, app, hostname: str, handlers: dict[str, Callable[..., Any]], reply: bool = True,
                 tick: Callable[[], None] | None = None, tick_interval: float = 1.0,
                 on_connect: Callable[[Any], None] | None = None) -> None:
        self.app = app
        self.hostname = hostname
        self.handlers = handlers
        self.reply = reply
        self.tick = tick
        self.tick_interval = tick_interval
        self.on_connect = on_connect
        self.channel = channel_prefix(app)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None

    def start(self, wait: float = 5.0) -> None:
        """Start listening; wait up to ``wait`` seconds for the subscription."""
        self._thread = threading.Thread(target=self._run, name="fastq-control", daemon=True)
        self._thread.start()
        self._ready.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=3)

    def _run(self) -> None:
        down = False
        backoff = 0.5
        next_tick = 0.0
        while not self._stop.is_set():
            pubsub = None
            try:
                # Our own connections: fork-safe, and never contended with the worker's.
                self._client = self.app.broker.new_client()
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                pubsub.get_message(timeout=1.0)  # the subscribe confirmation
                if self.on_connect is not None:
                    self.on_connect(self._client)
                self._ready.set()
                if down:
                    log.warning("Control channel reconnected")
                    down, backoff = False, 0.5
                while not self._stop.is_set():
                    m = pubsub.get_message(timeout=min(1.0, self.tick_interval))
                    if m is not None and m["type"] == "message":
                        self._dispatch(m["data"])
                    if self.tick is not None and time.monotonic() >= next_tick:
                        next_tick = time.monotonic() + self.tick_interval
                        self._safe(self.tick)
            except CONNECTION_ERRORS as exc:
                if not down:
                    log.warning("Control channel lost its Redis connection (%s); retrying", exc)
                    down = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("Control listener failed; restarting it")
                self._stop.wait(1.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - closing a broken connection
                        pass

    def _safe(self, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except CONNECTION_ERRORS:
            raise
        except Exception:
            log.exception("Control tick failed")

    def _dispatch(self, raw: bytes) -> None:
        try:
            req = json.loads(raw)
            command = req["command"]
        except (ValueError, KeyError, TypeError):
            log.warning("Ignored a malformed control message")
            return
        dest = req.get("destination")
        if dest and self.hostname not in dest:
            return
        handler = self.handlers.get(command)
        reply_to = req.get("reply_to")
        if handler is None:
            if self.reply and reply_to:
                self._publish(reply_to, {"error": f"unknown command {command!r}"})
            return
        try:
            value = handler(**(req.get("arguments") or {}))
        except Exception as exc:  # noqa: BLE001 - the error is the reply
            log.warning("Control command %s failed: %s", command, exc)
            value = {"error": f"{type(exc).__name__}: {exc}"}
        if self.reply and reply_to and value is not NO_REPLY:
            self._publish(reply_to, value)

    def _publish(self, reply_to: str, value: Any) -> None:
        self._client.publish(reply_to, _json({"hostname": self.hostname, "reply": value}))


class WorkerControl:
    """The commands a worker answers, for its pool (process, thread or solo)."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.pool = worker.pool
        self.process_pool = hasattr(self.pool, "children")
        # The pool parent has no executor: its children keep their own revokes.
        self.revokes = RevokeState(self.app, self._executors)
        self.listener = ControlListener(self.app, worker.hostname, self.handlers(), reply=True, tick=self._tick,
                                        tick_interval=5.0, on_connect=self.revokes.sync)

    def _executors(self) -> list:
        if self.process_pool:
            return []
        return [c.executor for c in getattr(self.pool, "consumers", [])]

    def _tick(self) -> None:
        self.revokes.prune()

    def start(self) -> None:
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {name: getattr(self, name) for name in (
            "ping", "stats", "registered", "active", "reserved", "scheduled", "revoked", "active_queues",
            "revoke", "rate_limit", "shutdown", "pool_grow", "pool_shrink", "add_consumer", "cancel_consumer",
        )}

    # --- inspect --------------------------------------------------------------------------

    def ping(self) -> dict:
        return {"ok": "pong"}

    def registered(self) -> list[str]:
        return sorted(self.app.tasks)

    def active_queues(self) -> list[dict]:
        return [{"name": q} for q in self.worker.queues]

    def revoked(self) -> list[str]:
        return self.revokes.ids()

    def stats(self) -> dict:
        import psutil

        from . import __version__
        from .broker import safe_url
        from .worker.maintenance import tree_rss

        me = psutil.Process()
        rss = tree_rss()
        counters = self.pool.counters() if hasattr(self.pool, "counters") else {}
        times = me.cpu_times()
        return {
            "hostname": self.worker.hostname, "pid": os.getpid(), "version": __version__,
            "uptime": time.time() - self.worker.started,
            "pool": {"implementation": self.worker.pool_name, "max-concurrency": self.pool.concurrency
                     if hasattr(self.pool, "concurrency") else self.worker.concurrency,
                     "processes": [c.process.pid for c in self.pool.children] if self.process_pool else [os.getpid()]},
            "prefetch": self.worker.prefetch, "queues": list(self.worker.queues),
            "broker": {"url": safe_url(self.app.broker_url)},
            "rusage": {"utime": times.user, "stime": times.system, "rss": rss},
            "loadavg": list(os.getloadavg()), **counters,
        }

    def active(self) -> list[dict]:
        return self.pool.active()

    def reserved(self) -> list[dict]:
        names = self.pool.maintenance.consumers()
        running = {t.get("entry_id") for t in self.pool.active()}
        entries = [(q, e) for q, e, _ in held_entries(self.app, list(self.worker.queues), names)
                   if e.decode() not in running]
        return read_messages(self.app, entries)

    def scheduled(self) -> list[dict]:
        return scheduled_messages(self.app, list(self.worker.queues))

    # --- control --------------------------------------------------------------------------

    def revoke(self, task_id, terminate: bool = False, signal: str = "SIGKILL", expires: float | None = None) -> dict:
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        self.revokes.add(ids, expires)
        msg = f"tasks {', '.join(ids)} flagged as revoked"
        if terminate:
            if not hasattr(self.pool, "terminate"):
                return {"ok": msg + "; terminate is not supported by the " + self.worker.pool_name + " pool"}
            killed = self.pool.terminate(ids, _signal.Signals[signal] if isinstance(signal, str) else signal)
            if killed:
                msg += f"; terminated {', '.join(killed)}"
        return {"ok": msg}

    def rate_limit(self, task_name: str, rate_limit) -> dict:
        set_rate_limit(self.app, task_name, rate_limit)
        return {"ok": f"new rate limit set successfully for {task_name}: {rate_limit}"}

    def shutdown(self) -> dict:
        # Reply first: stop a moment later from another thread.
        threading.Timer(0.2, self.pool.stop).start()
        log.warning("Remote shutdown requested")
        return {"ok": "shutdown signal sent"}

    def pool_grow(self, n: int = 1) -> dict:
        if not hasattr(self.pool, "grow"):
            raise ValueError(f"the {self.worker.pool_name} pool cannot grow")
        size = self.pool.grow(int(n))
        return {"ok": f"pool will grow to {size}"}

    def pool_shrink(self, n: int = 1) -> dict:
        if not hasattr(self.pool, "shrink"):
            raise ValueError(f"the {self.worker.pool_name} pool cannot shrink")
        size = self.pool.shrink(int(n))
        return {"ok": f"pool will shrink to {size}"}

    def add_consumer(self, queue: str) -> dict:
        from .broker.keys import validate_queue_name

        validate_queue_name(queue)
        if queue in self.worker.queues:
            return {"ok": f"already consuming from {queue!r}"}
        self.app.broker.ensure_queue(queue)
        self.pool.set_queues([*self.worker.queues, queue])
        return {"ok": f"add consumer {queue}"}

    def cancel_consumer(self, queue: str) -> dict:
        if queue not in self.worker.queues:
            return {"ok": f"not consuming from {queue!r}"}
        if len(self.worker.queues) == 1:
            raise ValueError("cannot cancel the last queue (shut the worker down instead)")
        self.pool.set_queues([q for q in self.worker.queues if q != queue])
        return {"ok": f"no longer consuming from {queue}"}


class ChildAgent:
    """In a process-pool child: applies revokes and rate limits to its consumer
    (without replying: the parent answers for the worker) and copies the
    consumer's counters into shared memory for the parent."""

    def __init__(self, app, hostname: str, consumer, counts=None) -> None:
        self.consumer = consumer
        self.counts = counts
        self.revokes = RevokeState(app, lambda: [consumer.executor])
        self._synced = time.monotonic()
        self.listener = ControlListener(
            app, hostname, {"revoke": self._revoke, "rate_limit": self._rate_limit}, reply=False,
            tick=self._tick, tick_interval=1.0, on_connect=self.revokes.sync,
        )
        self.app = app

    def start(self) -> None:
        try:
            self.revokes.sync()  # before the first fetch
        except CONNECTION_ERRORS:
            pass
        self.listener.start(wait=0)

    def _revoke(self, task_id, expires: float | None = None, **_: Any):
        self.revokes.add([task_id] if isinstance(task_id, str) else task_id, expires)
        return NO_REPLY

    def _rate_limit(self, task_name: str, rate_limit):
        if task_name in self.app.tasks:
            set_rate_limit(self.app, task_name, rate_limit)
        return NO_REPLY

    def _tick(self) -> None:
        c = self.consumer
        if self.counts is not None:
            self.counts[0] = c.processed
            self.counts[1] = getattr(c.executor, "failures", 0)
            busy = getattr(c, "busy", None)  # an AsyncConsumer runs many at once
            self.counts[2] = busy() if busy is not None else (0 if c.runner.current is None else 1)
        self.revokes.prune()
        if time.monotonic() - self._synced > 30:  # pub/sub can drop a message while reconnecting
            self._synced = time.monotonic()
            self.revokes.sync(self.listener._client)


__all__ = ["NO_REPLY", "ChildAgent", "Control", "ControlListener", "Inspect", "RevokeState", "WorkerControl"]
