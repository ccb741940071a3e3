"""Pure-Python reference implementation of fastq's hot path.

``_core.pyx`` is the compiled twin of this module: same names, same behaviour.
``fastq._speedups`` picks one (``FASTQ_NO_EXTENSIONS=1`` forces this one). Only
per-message work lives here: RESP packing, decoding fetched batches, the
token bucket, and the loop that runs a batch and collects acks and results.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import binascii
import threading
import time
import uuid
from contextvars import ContextVar

COMPILED = False

#: The running task's request (``Task.request`` reads it).
current_request: ContextVar = ContextVar("fastq_request", default=None)


# --- RESP ----------------------------------------------------------------------


def _as_bytes(a) -> bytes:
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        return a.encode()
    if isinstance(a, int):
        return b"%d" % a
    if isinstance(a, float):
        return repr(a).encode()
    if isinstance(a, (bytearray, memoryview)):
        return bytes(a)
    raise TypeError(f"cannot send {type(a).__name__} to Redis")


def pack_command(args) -> bytes:
    """Encode one Redis command (a sequence of str/bytes/int/float) as RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _as_bytes(a)
        parts.append(b"$%d\r\n" % len(b))
        parts.append(b)
        parts.append(b"\r\n")
    return b"".join(parts)


# --- Cluster routing -------------------------------------------------------------

KEYLESS = -1  #: the "slot" of a command any node may run (PING, PUBLISH, EVALSHA without keys)
WAIT_SLOT = -2  #: WAIT asks the node that got the command before it

_EVALS = (b"EVALSHA", b"EVAL", b"EVALSHA_RO", b"EVAL_RO")
_XREADS = (b"XREADGROUP", b"XREAD")
_NO_KEY = (b"PUBLISH", b"PING", b"WAIT", b"SCRIPT", b"INFO")


def key_slot(key: bytes) -> int:
    """The Redis Cluster slot of ``key``: CRC16 of its hash tag (``{...}``), or of all of it."""
    start = key.find(b"{")
    if start > -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) & 16383


def _routing_key(name: bytes, args: list[bytes]) -> bytes | None:
    if name in _EVALS:
        return args[3] if len(args) > 3 and args[2].isdigit() and int(args[2]) > 0 else None
    if name in _XREADS:
        upper = [a.upper() for a in args[1:]]
        at = upper.index(b"STREAMS") + 2 if b"STREAMS" in upper else len(args)
        return args[at] if at < len(args) else None
    if name in _NO_KEY:
        return None
    return args[1] if len(args) > 1 else None


def split_packed(data: bytes) -> list[tuple[int, int, bytes | None, int]]:
    """Each packed RESP command in ``data`` as ``(start, end, key, slot)``: where
    it lies in ``data``, the key that decides its node on a cluster, and that
    key's slot (KEYLESS: any node; WAIT_SLOT: the node of the command before)."""
    out = []
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        argc, pos = _resp_length(data, pos, 0x2A)  # '*'
        args = []
        for _ in range(argc):
            size, pos = _resp_length(data, pos, 0x24)  # '$'
            if data[pos + size : pos + size + 2] != b"\r\n":
                raise ValueError("a packed command is cut short")
            args.append(data[pos : pos + size])
            pos += size + 2
        name = args[0].upper() if args else b""
        key = _routing_key(name, args)
        if name == b"WAIT":
            slot = WAIT_SLOT
        else:
            slot = KEYLESS if key is None else key_slot(key)
        out.append((start, pos, key, slot))
    return out


def _resp_length(data: bytes, pos: int, kind: int) -> tuple[int, int]:
    """The number after a ``*`` or ``$`` at ``pos``, and where the next part starts."""
    nl = data.find(b"\r\n", pos)
    if pos >= len(data) or data[pos] != kind or nl < 0 or not data[pos + 1 : nl].isdigit():
        raise ValueError("not a packed command")
    return int(data[pos + 1 : nl]), nl + 2


# --- task ids --------------------------------------------------------------------


def new_task_id() -> str:
    """A random (version 4) UUID string."""
    return str(uuid.uuid4())


# --- Fetched batches -------------------------------------------------------------


class Delivery:
    """One fetched stream entry: where it came from and its undecoded payload."""

    __slots__ = ("dc", "entry_id", "error", "field", "message", "payload", "stream")

    def __init__(self, stream, entry_id, field, payload, dc=0, error=None):
        self.stream = stream  #: stream key (str)
        self.entry_id = entry_id  #: stream entry id (bytes)
        self.field = field  #: payload field name: b"p" msgpack, b"j" JSON
        self.payload = payload  #: raw bytes
        self.dc = dc  #: deliveries of this message that ended without an ack
        self.message = None  #: the decoded Message, once decoded
        self.error = error  #: what is wrong with the entry's fields (it is dead-lettered), else None

    def __repr__(self) -> str:
        return f"<Delivery {self.stream} {self.entry_id!r} dc={self.dc}>"


#: The longest delivery count field read (9 digits: well below any C long).
MAX_DC_DIGITS = 9


def _entry(stream, entry) -> Delivery:
    entry_id, fields = entry[0], entry[1]
    if not fields:  # entry deleted while pending
        return Delivery(stream, entry_id, b"", b"", 0)
    n = len(fields)
    if n < 2 or not isinstance(fields[0], bytes) or not isinstance(fields[1], bytes):
        return Delivery(stream, entry_id, b"", b"", 0, "the entry has no payload field")
    dc = 0
    i = 2
    while i + 1 < n:
        if fields[i] == b"dc":
            # Anything may write to a stream: a bad count must not stop the batch.
            v = fields[i + 1]
            if not isinstance(v, bytes) or not v.isdigit() or len(v) > MAX_DC_DIGITS:
                return Delivery(stream, entry_id, fields[0], fields[1], 0,
                                f"delivery count field dc={v!r:.60} is not a whole number below 10**9")
            dc = int(v)
        i += 2
    return Delivery(stream, entry_id, fields[0], fields[1], dc)


def parse_fetch_reply(reply, streams) -> list:
    """Parse fetch.lua's reply: ``[[key_index, [[id, fields], ...]], ...]``.

    ``streams`` is the list of keys passed to the script (1-based indexes)."""
    out = []
    if not reply:
        return out
    for group in reply:
        stream = streams[group[0] - 1]
        for entry in group[1]:
            out.append(_entry(stream, entry))
    return out


def parse_xread_reply(reply, by_name) -> list:
    """Parse an XREADGROUP reply ``[[key, [[id, fields], ...]], ...]``;
    ``by_name`` maps key bytes to the key str."""
    out = []
    if not reply:
        return out
    for group in reply:
        stream = by_name[group[0]]
        for entry in group[1]:
            out.append(_entry(stream, entry))
    return out


# --- Rate limiting ---------------------------------------------------------------


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``capacity``.

    Used on its own for per-worker limits, and as the local side of the
    cluster-wide limit, where ``add()`` puts in tokens claimed from Redis."""

    __slots__ = ("capacity", "rate", "refill", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, refill: bool = True) -> None:
        if rate < 0 or capacity <= 0:
            raise ValueError("rate must be >= 0 and capacity > 0")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.tokens = float(capacity) if refill else 0.0
        self.stamp = time.monotonic()
        self.refill = refill

    def _fill(self, now: float) -> None:
        if self.refill:
            t = self.tokens + (now - self.stamp) * self.rate
            self.tokens = t if t < self.capacity else self.capacity
        self.stamp = now

    def consume(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if there are enough; True when taken."""
        self._fill(time.monotonic())
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def expected_wait(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens will be there (0 when they are now)."""
        self._fill(time.monotonic())
        if self.tokens >= n:
            return 0.0
        if self.rate <= 0:
            return float("inf")
        return (n - self.tokens) / self.rate

    def add(self, n: float) -> None:
        """Put in ``n`` tokens claimed elsewhere (never more than the capacity)."""
        t = self.tokens + n
        self.tokens = t if t < self.capacity else self.capacity


# --- Running a batch -------------------------------------------------------------


def pack_result(key: bytes, blob: bytes, expires) -> list[bytes]:
    """How a final state is stored: RPUSH on the task's one-element result list
    (waiters BLMOVE it: no polling) and its expiry. ``Output.store_result``
    writes the same two commands."""
    return [pack_command((b"RPUSH", key, blob)), pack_command((b"EXPIRE", key, expires))]


class Output:
    """What a consumer must still send: acks per stream and packed result writes.

    The hold watch (another thread) may ``take()`` while the runner adds: each
    method is one step under a lock here (the compiled twin's methods hold the
    GIL throughout), so an add lands wholly in the taken output or the new one."""

    __slots__ = ("_lock", "acks", "commands", "count", "events", "replies", "result_replies", "results")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acks = {}  #: stream -> [entry_id, ...]
        self.commands = []  #: packed broker commands (bytes)
        self.replies = 0  #: replies the packed commands will produce
        self.results = []  #: packed result writes (they go to the result backend)
        self.result_replies = 0
        self.count = 0  #: messages finished
        self.events = []  #: task events, sent as one stream entry per flush

    def ack(self, stream, entry_id) -> None:
        with self._lock:
            ids = self.acks.get(stream)
            if ids is None:
                self.acks[stream] = [entry_id]
            else:
                ids.append(entry_id)
            self.count += 1

    def add_command(self, packed: bytes, replies: int = 1) -> None:
        with self._lock:
            self.commands.append(packed)
            self.replies += replies

    def add_result(self, packed: bytes, replies: int = 1) -> None:
        with self._lock:
            self.results.append(packed)
            self.result_replies += replies

    def store_result(self, key: bytes, blob: bytes, expires) -> None:
        """A task's final state: ``pack_result`` (the result list and its expiry)."""
        cmds = pack_result(key, blob, expires)
        with self._lock:
            self.results.extend(cmds)
            self.result_replies += 2

    def event(self, kind: str, task_id: str, name: str, runtime, info) -> None:
        """Record a task event: (kind, task id, task name, wall time, runtime, info)."""
        with self._lock:
            self.events.append((kind, task_id, name, time.time(), runtime, info))

    def __bool__(self) -> bool:
        return bool(self.acks) or bool(self.commands) or bool(self.events) or bool(self.results)

    def take(self) -> Output:
        """Hand over the contents and start empty."""
        o = Output()
        with self._lock:
            o.acks, o.commands, o.replies, o.count = self.acks, self.commands, self.replies, self.count
            o.events, o.results, o.result_replies = self.events, self.results, self.result_replies
            self.acks, self.commands, self.replies, self.count, self.events = {}, [], 0, 0, []
            self.results, self.result_replies = [], 0
        return o


def _requeued(message) -> bool:
    """A message put back by ``Reject(requeue=True)`` (execute.py marks it)."""
    headers = message.headers
    return bool(headers and headers.get("requeued"))


class Request:
    """The running task's context: ``self.request`` in a bound task.

    A thin view over the message: fields are read when asked for, so building
    one per message costs next to nothing."""

    __slots__ = ("_extra", "_task_obj", "delivery", "hostname", "message", "queue")

    def __init__(self, message, hostname, delivery=None, queue=None, task_obj=None) -> None:
        self.message = message
        self.hostname = hostname
        self.delivery = delivery
        self.queue = queue
        self._extra = None
        self._task_obj = task_obj  #: the Task that runs (its declared time limits)

    id = property(lambda self: self.message.id)
    task = property(lambda self: self.message.task)
    args = property(lambda self: self.message.args)
    kwargs = property(lambda self: self.message.kwargs)
    retries = property(lambda self: self.message.retries)
    eta = property(lambda self: self.message.eta)
    expires = property(lambda self: self.message.expires)
    priority = property(lambda self: self.message.priority)
    parent_id = property(lambda self: self.message.parent_id)
    # A task sent from outside any task is its own root (as in Celery); the
    # message leaves it out rather than carry its id twice.
    root_id = property(lambda self: self.message.root_id or self.message.id)
    options = property(lambda self: self.message.options)
    headers = property(lambda self: self.message.headers)
    called_directly = property(lambda self: self.delivery is None)

    @property
    def delivery_count(self) -> int:
        return self.delivery.dc + 1 if self.delivery is not None else 0

    @property
    def delivery_info(self) -> dict:
        """Celery's shape: where the message came from (``priority`` 0-9, higher first)."""
        return {"exchange": "", "routing_key": self.queue, "priority": self.message.priority,
                "redelivered": self.delivery is not None and (self.delivery.dc > 0 or _requeued(self.message))}

    @property
    def time_limit(self):
        """The hard time limit this run has: the call's, else the task's; None when neither set one."""
        opts = self.message.options
        limit = opts.get("time_limit") if opts else None
        return limit if limit is not None else getattr(self._task_obj, "time_limit", None)

    @property
    def soft_time_limit(self):
        """The soft time limit this run has: the call's, else the task's; None when neither set one."""
        opts = self.message.options
        limit = opts.get("soft_time_limit") if opts else None
        return limit if limit is not None else getattr(self._task_obj, "soft_time_limit", None)

    @property
    def is_eager(self) -> bool:
        """True while the task runs eagerly (``apply()``, ``task_always_eager``), which names its host "eager"."""
        return self.delivery is None and self.hostname == "eager"

    @property
    def reply_to(self):
        opts = self.message.options
        return opts.get("reply_to") if opts else None

    @property
    def replaced_task_nesting(self) -> int:
        """How many ``Task.replace`` calls led to this task (0: none), as in Celery."""
        headers = self.message.headers
        n = headers.get("replaced_task_nesting") if headers else None
        return n if n.__class__ is int else 0

    @property
    def stamped_headers(self):
        """The names of the stamps the message carries (fastq.stamping), as Celery's."""
        headers = self.message.headers
        names = headers.get("stamped_headers") if headers else None
        return [n for n in names if n.__class__ is str] if names.__class__ is list else []

    @property
    def stamps(self):
        """``{name: value}`` of the message's stamps (fastq.stamping), as Celery's: None
        for a name whose value is missing; {} for malformed headers."""
        headers = self.message.headers
        stamps = headers.get("stamps") if headers else None
        if stamps.__class__ is not dict:
            stamps = {}
        return {n: stamps.get(n) for n in self.stamped_headers}

    @property
    def properties(self) -> dict:
        """Celery's message properties: the id as correlation_id, reply_to, priority, app_id."""
        headers = self.message.headers
        return {"correlation_id": self.message.id, "reply_to": self.reply_to, "priority": self.message.priority,
                "delivery_mode": 2, "app_id": headers.get("app_id") if headers else None}

    def __repr__(self) -> str:
        return f"<Request {self.task}[{self.id}]>"


def _mark(slot, entry_id) -> None:
    n = min(len(entry_id), 39)  # 40 bytes for the entry id; a deadline follows
    slot[:n] = entry_id[:n]
    slot[n] = 0


class Runner:
    """Runs fetched batches: decode, look up, call, record the ack and result.

    The common case (a registered task that returns normally, with no extra
    options) runs entirely here; everything else is handed to ``handler`` (the
    Python ``Executor``): bad messages, exceptions, retries, time limits,
    signals, workflows. ``handler`` methods add what must be sent to ``out``.
    """

    def __init__(self, registry, handler, hostname, result_prefix, result_expires, encode_result, queue_of):
        self.registry = registry  #: task name -> Task
        self.handler = handler
        self.hostname = hostname
        self.result_prefix = result_prefix  #: bytes, e.g. b"fastq:r:"
        self.result_expires = int(result_expires)
        self.encode_result = encode_result  #: (task, message, retval, runtime) -> bytes
        self.queue_of = queue_of  #: stream key -> queue name
        self.stopping = False
        #: time.monotonic() after which no further message of the batch is started
        #: (its lease may be gone: the consumer checks before running the rest); 0: none
        self.deadline = 0.0
        self.processed = 0
        self.current = None  #: the Delivery being run (None between tasks)
        self.flush_interval = 0.01
        self.flush = None  #: callable(out) sending what is due mid-batch
        self.notify = False  #: call handler.succeeded (task logging on)
        self.events = False  #: record task events in the output
        self.slow_streams = set()  #: streams whose messages all take the slow path (rate-limited queues)
        self.max_size = 16 * 1024 * 1024  #: larger payloads are dead-lettered unread
        #: A shared-memory buffer (process pool): the entry id being run is
        #: written here, so the parent knows which message a dead child held.
        self.slot = None

    def run_batch(self, deliveries, out) -> int:
        """Run deliveries in order; return how many were started.

        Stops between messages once ``stopping`` is set, so the caller can hand
        back the rest. Never raises because of a message."""
        handler = self.handler
        registry = self.registry
        decoders = handler.decoders
        slow_streams = self.slow_streams
        started = 0
        last_flush = time.monotonic()
        for d in deliveries:
            self.current = d  # before the check: a warm stop's early hand-back keeps it
            if self.stopping or (self.deadline and time.monotonic() > self.deadline):
                break
            started += 1
            if self.slot is not None:
                _mark(self.slot, d.entry_id)
            try:
                self._run_one(d, out, handler, registry, decoders, slow_streams)
            except Exception as exc:  # noqa: BLE001 - one message must never stop the loop
                handler.crashed(d, exc, out)  # dead-letters it (re-raises connection errors)
            if self.flush is not None:
                now = time.monotonic()
                if now - last_flush > self.flush_interval:
                    self.flush(out)
                    last_flush = now
        self.current = None
        self.processed += started
        return started

    def _run_one(self, d, out, handler, registry, decoders, slow_streams) -> None:
        msg = d.message
        if d.error is not None:
            handler.malformed(d, out, d.error)
            return
        if len(d.payload) > self.max_size:
            handler.too_large(d, out, self.max_size)
            return
        if msg is None:
            decode = decoders.get(d.field)
            if decode is None:
                handler.undecodable(d, out, f"unknown payload field {d.field!r}")
                return
            try:
                msg = decode(d.payload)
            except Exception as exc:  # noqa: BLE001 - any bad payload
                handler.undecodable(d, out, str(exc))
                return
            d.message = msg
        task = registry.get(msg.task)
        if task is None:
            handler.unknown_task(d, msg, out)
            return
        if (not task._fast or msg.options is not None or msg.expires is not None or handler.revoked
                or (handler.revoked_stamps and msg.headers is not None)
                or (slow_streams and d.stream in slow_streams)):
            handler.execute(task, d, msg, out)
            return
        token = current_request.set(Request(msg, self.hostname, d, self.queue_of[d.stream], task))
        t0 = time.perf_counter()
        try:
            retval = task.run(*msg.args, **msg.kwargs)
        except BaseException as exc:  # noqa: BLE001 - a task may raise anything
            current_request.reset(token)
            handler.failed(task, d, msg, exc, time.perf_counter() - t0, out)
            return
        runtime = time.perf_counter() - t0
        current_request.reset(token)
        if not task.ignore_result:
            try:
                blob = self.encode_result(task, msg, retval, runtime)
            except Exception as exc:  # noqa: BLE001 - unserializable result
                handler.result_not_serializable(task, d, msg, exc, runtime, out)
                return
            out.store_result(self.result_prefix + msg.id.encode(), blob, self.result_expires)
        out.ack(d.stream, d.entry_id)
        if self.events:
            out.event("task-succeeded", msg.id, msg.task, runtime, None)
        if self.notify:
            handler.succeeded(task, d, msg, runtime)
