# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled hot path of fastq: the typed twin of ``_core_py.py`` (same names,
same behaviour; that module documents each piece). Only per-message work lives
here: RESP packing, task ids, decoding fetched batches, the token bucket, and
the loop that runs a batch and collects acks and results.

Layer: base; imports only other base modules.
"""

import os
import time as _time
from contextvars import ContextVar

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.string cimport memcpy
from libc.time cimport time_t

cdef extern from "time.h" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk_id, timespec *tp)
    enum: CLOCK_MONOTONIC

COMPILED = True

#: The running task's request (``Task.request`` reads it).
current_request = ContextVar("fastq_request", default=None)

_perf_counter = _time.perf_counter
_time_time = _time.time
_monotonic = _time.monotonic


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


# --- RESP -------------------------------------------------------------------------

cdef inline bytes _as_bytes(object a):
    if type(a) is bytes:
        return <bytes>a
    if type(a) is str:
        return PyUnicode_AsUTF8String(a)
    if isinstance(a, bytes):
        return bytes(a)
    if isinstance(a, str):
        return PyUnicode_AsUTF8String(a)
    if isinstance(a, bool):
        return b"%d" % a
    if isinstance(a, int):
        return b"%d" % a
    if isinstance(a, float):
        return repr(a).encode()
    if isinstance(a, (bytearray, memoryview)):
        return bytes(a)
    raise TypeError(f"cannot send {type(a).__name__} to Redis")


cdef inline Py_ssize_t _digits(Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t d = 1
    while n >= 10:
        n //= 10
        d += 1
    return d


cdef inline char* _write_header(char* p, char kind, Py_ssize_t n) noexcept nogil:
    # "*<n>\r\n" or "$<n>\r\n"
    cdef Py_ssize_t d = _digits(n)
    cdef Py_ssize_t i
    p[0] = kind
    for i in range(d, 0, -1):
        p[i] = <char>(48 + n % 10)
        n //= 10
    p[d + 1] = 13
    p[d + 2] = 10
    return p + d + 3


cpdef bytes pack_command(args):
    """Encode one Redis command (a sequence of str/bytes/int/float) as RESP."""
    cdef list parts = [_as_bytes(a) for a in args]
    cdef Py_ssize_t n = len(parts)
    cdef Py_ssize_t size = 3 + _digits(n)
    cdef Py_ssize_t ln
    cdef bytes b
    for b in parts:
        ln = PyBytes_GET_SIZE(b)
        size += 5 + _digits(ln) + ln
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* p = PyBytes_AS_STRING(out)
    p = _write_header(p, 42, n)  # '*'
    for b in parts:
        ln = PyBytes_GET_SIZE(b)
        p = _write_header(p, 36, ln)  # '$'
        memcpy(p, PyBytes_AS_STRING(b), ln)
        p += ln
        p[0] = 13
        p[1] = 10
        p += 2
    return out


# --- Cluster routing -----------------------------------------------------------------

KEYLESS = -1
WAIT_SLOT = -2

cdef unsigned short _CRC16[256]  # CRC16-CCITT (XMODEM), Redis Cluster's key hash


cdef void _fill_crc16_table() noexcept:
    cdef unsigned int i, j, c
    for i in range(256):
        c = i << 8
        for j in range(8):
            c = ((c << 1) ^ 0x1021) if (c & 0x8000) else (c << 1)
        _CRC16[i] = c & 0xFFFF


_fill_crc16_table()


cdef inline int _slot_of(const char* k, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, s = -1, e
    cdef unsigned int crc = 0
    for i in range(n):
        if k[i] == 123:  # '{'
            s = i
            break
    if s >= 0:
        for e in range(s + 1, n):
            if k[e] == 125:  # '}'
                if e > s + 1:  # a non-empty tag: only it is hashed
                    k = k + s + 1
                    n = e - s - 1
                break
    for i in range(n):
        crc = ((crc << 8) ^ _CRC16[((crc >> 8) ^ <unsigned char>k[i]) & 0xFF]) & 0xFFFF
    return crc & 16383


cpdef int key_slot(bytes key):
    return _slot_of(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


cdef inline Py_ssize_t _resp_length(const char* p, Py_ssize_t pos, Py_ssize_t end, char kind,
                                    Py_ssize_t* value) except -1:
    cdef Py_ssize_t v = 0, first
    if pos >= end or p[pos] != kind:
        raise ValueError("not a packed command")
    pos += 1
    first = pos
    while pos < end and 48 <= p[pos] <= 57:
        v = v * 10 + (p[pos] - 48)
        pos += 1
    if pos == first or pos + 1 >= end or p[pos] != 13 or p[pos + 1] != 10:
        raise ValueError("not a packed command")
    value[0] = v
    return pos + 2


cdef inline bint _is_name(const char* s, Py_ssize_t n, const char* upper, Py_ssize_t m) noexcept nogil:
    # case-insensitive equality with an upper-case ASCII literal
    cdef Py_ssize_t i
    cdef char c
    if n != m:
        return False
    for i in range(n):
        c = s[i]
        if 97 <= c <= 122:
            c -= 32
        if c != upper[i]:
            return False
    return True


cdef enum _Kind:
    _PLAIN, _EVAL, _XREAD, _NO_KEY, _WAIT


cdef _Kind _kind_of(const char* s, Py_ssize_t n) noexcept nogil:
    if (_is_name(s, n, b"EVALSHA", 7) or _is_name(s, n, b"EVAL", 4) or _is_name(s, n, b"EVALSHA_RO", 10)
            or _is_name(s, n, b"EVAL_RO", 7)):
        return _EVAL
    if _is_name(s, n, b"XREADGROUP", 10) or _is_name(s, n, b"XREAD", 5):
        return _XREAD
    if _is_name(s, n, b"WAIT", 4):
        return _WAIT
    if (_is_name(s, n, b"PUBLISH", 7) or _is_name(s, n, b"PING", 4) or _is_name(s, n, b"SCRIPT", 6)
            or _is_name(s, n, b"INFO", 4)):
        return _NO_KEY
    return _PLAIN


cdef inline bint _positive(const char* s, Py_ssize_t n) noexcept nogil:
    # all digits and not all zeros
    cdef Py_ssize_t i
    cdef bint nonzero = False
    if n == 0:
        return False
    for i in range(n):
        if not 48 <= s[i] <= 57:
            return False
        if s[i] != 48:
            nonzero = True
    return nonzero


def split_packed(bytes data):
    """Each packed RESP command in ``data`` as ``(start, end, key, slot)``."""
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, start, argc, size, i, key_at, key_len
    cdef Py_ssize_t off[4]
    cdef Py_ssize_t length[4]
    cdef _Kind kind
    cdef bint after_streams
    cdef list out = []
    while pos < end:
        start = pos
        pos = _resp_length(p, pos, end, 42, &argc)  # '*'
        kind = _NO_KEY
        key_at = -1
        key_len = 0
        after_streams = False
        for i in range(argc):
            pos = _resp_length(p, pos, end, 36, &size)  # '$'
            if pos + size + 2 > end or p[pos + size] != 13 or p[pos + size + 1] != 10:
                raise ValueError("a packed command is cut short")
            if i == 0:
                kind = _kind_of(p + pos, size)
            elif kind == _XREAD and key_at < 0:
                if after_streams:
                    key_at, key_len = pos, size
                elif _is_name(p + pos, size, b"STREAMS", 7):
                    after_streams = True
            if i < 4:
                off[i] = pos
                length[i] = size
            pos += size + 2
        if kind == _EVAL and argc > 3 and _positive(p + off[2], length[2]):
            key_at, key_len = off[3], length[3]
        elif kind == _PLAIN and argc > 1:
            key_at, key_len = off[1], length[1]
        if kind == _WAIT:
            out.append((start, pos, None, WAIT_SLOT))
        elif key_at < 0:
            out.append((start, pos, None, KEYLESS))
        else:
            out.append((start, pos, PyBytes_FromStringAndSize(p + key_at, key_len), _slot_of(p + key_at, key_len)))
    return out


# --- task ids -----------------------------------------------------------------------

cdef bytes _random_pool = b""
cdef Py_ssize_t _random_pos = 0
cdef long _random_pid = -1
cdef const char* _HEX = b"0123456789abcdef"


def new_task_id():
    """A random (version 4) UUID string, like ``str(uuid.uuid4())``.

    Random bytes are drawn from the OS 4 KiB at a time (per process: a forked
    child draws its own), which makes ids several times cheaper than uuid4()."""
    global _random_pool, _random_pos, _random_pid
    cdef long pid = os.getpid()
    if _random_pos + 16 > PyBytes_GET_SIZE(_random_pool) or pid != _random_pid:
        _random_pool = os.urandom(4096)
        _random_pos = 0
        _random_pid = pid
    cdef unsigned char raw[16]
    memcpy(raw, PyBytes_AS_STRING(_random_pool) + _random_pos, 16)
    _random_pos += 16
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    cdef char buf[36]
    cdef int i, j = 0
    for i in range(16):
        if i == 4 or i == 6 or i == 8 or i == 10:
            buf[j] = 45  # '-'
            j += 1
        buf[j] = _HEX[raw[i] >> 4]
        buf[j + 1] = _HEX[raw[i] & 15]
        j += 2
    return buf[:36].decode("ascii")


# --- Fetched batches -------------------------------------------------------------------

cdef class Delivery:
    """One fetched stream entry: where it came from and its undecoded payload."""

    cdef public object stream
    cdef public bytes entry_id
    cdef public bytes field
    cdef public bytes payload
    cdef public long dc
    cdef public object message
    cdef public object error

    def __init__(self, stream, entry_id, field, payload, dc=0, error=None):
        self.stream = stream
        self.entry_id = entry_id
        self.field = field
        self.payload = payload
        self.dc = dc
        self.message = None
        self.error = error  # what is wrong with the entry's fields (it is dead-lettered), else None

    def __repr__(self):
        return f"<Delivery {self.stream} {self.entry_id!r} dc={self.dc}>"


#: The longest delivery count field read (9 digits: well below any C long).
MAX_DC_DIGITS = 9


cdef Delivery _entry(object stream, list entry):
    cdef bytes entry_id = entry[0]
    cdef object fields = entry[1]
    if not fields:  # entry deleted while pending
        return Delivery(stream, entry_id, b"", b"", 0)
    cdef list f = <list>fields
    cdef long dc = 0
    cdef Py_ssize_t n = len(f)
    cdef Py_ssize_t i = 2
    cdef object v
    if n < 2 or type(f[0]) is not bytes or type(f[1]) is not bytes:
        return Delivery(stream, entry_id, b"", b"", 0, "the entry has no payload field")
    while i + 1 < n:
        if f[i] == b"dc":
            # Anything may write to a stream: a bad count must not stop the batch.
            v = f[i + 1]
            if type(v) is not bytes or not (<bytes>v).isdigit() or len(<bytes>v) > MAX_DC_DIGITS:
                return Delivery(stream, entry_id, f[0], f[1], 0,
                                f"delivery count field dc={v!r:.60} is not a whole number below 10**9")
            dc = int(v)
        i += 2
    return Delivery(stream, entry_id, f[0], f[1], dc)


def parse_fetch_reply(reply, streams):
    """Parse fetch.lua's reply: ``[[key_index, [[id, fields], ...]], ...]``."""
    cdef list out = []
    cdef list group, entry
    if not reply:
        return out
    for group in reply:
        stream = streams[<Py_ssize_t>group[0] - 1]
        for entry in group[1]:
            out.append(_entry(stream, entry))
    return out


def parse_xread_reply(reply, by_name):
    """Parse an XREADGROUP reply ``[[key, [[id, fields], ...]], ...]``."""
    cdef list out = []
    cdef list group, entry
    if not reply:
        return out
    for group in reply:
        stream = by_name[group[0]]
        for entry in group[1]:
            out.append(_entry(stream, entry))
    return out


# --- Rate limiting ---------------------------------------------------------------------

cdef class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``capacity``."""

    cdef public double rate
    cdef public double capacity
    cdef public double tokens
    cdef public double stamp
    cdef public bint refill

    def __init__(self, double rate, double capacity, bint refill=True):
        if rate < 0 or capacity <= 0:
            raise ValueError("rate must be >= 0 and capacity > 0")
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity if refill else 0.0
        self.stamp = _now()
        self.refill = refill

    cdef inline void _fill(self, double now) noexcept nogil:
        cdef double t
        if self.refill:
            t = self.tokens + (now - self.stamp) * self.rate
            self.tokens = t if t < self.capacity else self.capacity
        self.stamp = now

    cpdef bint consume(self, double n=1.0):
        """Take ``n`` tokens if there are enough; True when taken."""
        with nogil:
            self._fill(_now())
            if self.tokens >= n:
                self.tokens -= n
                return True
            return False

    cpdef double expected_wait(self, double n=1.0):
        """Seconds until ``n`` tokens will be there (0 when they are now)."""
        self._fill(_now())
        if self.tokens >= n:
            return 0.0
        if self.rate <= 0:
            return float("inf")
        return (n - self.tokens) / self.rate

    cpdef add(self, double n):
        """Put in ``n`` tokens claimed elsewhere (never more than the capacity)."""
        cdef double t = self.tokens + n
        self.tokens = t if t < self.capacity else self.capacity


# --- Running a batch -------------------------------------------------------------------

def pack_result(bytes key, bytes blob, expires) -> list:
    """How a final state is stored: RPUSH on the task's one-element result list
    (waiters BLMOVE it: no polling) and its expiry. ``Output.store_result``
    writes the same two commands."""
    return [pack_command((b"RPUSH", key, blob)), pack_command((b"EXPIRE", key, expires))]


cdef class Output:
    """What a consumer must still send: acks per stream and packed result writes."""

    cdef public dict acks
    cdef public list commands
    cdef public long replies
    cdef public long count
    cdef public list events
    cdef public list results
    cdef public long result_replies

    def __init__(self):
        self.acks = {}
        self.commands = []
        self.replies = 0
        self.count = 0
        self.events = []
        self.results = []
        self.result_replies = 0

    cpdef ack(self, stream, entry_id):
        cdef object ids = self.acks.get(stream)
        if ids is None:
            self.acks[stream] = [entry_id]
        else:
            (<list>ids).append(entry_id)
        self.count += 1

    cpdef add_command(self, bytes packed, long replies=1):
        self.commands.append(packed)
        self.replies += replies

    cpdef add_result(self, bytes packed, long replies=1):
        self.results.append(packed)
        self.result_replies += replies

    cpdef store_result(self, bytes key, bytes blob, object expires):
        """A task's final state: ``pack_result`` (the result list and its expiry)."""
        self.results.append(pack_command((b"RPUSH", key, blob)))
        self.results.append(pack_command((b"EXPIRE", key, expires)))
        self.result_replies += 2

    cpdef event(self, kind, task_id, name, runtime, info):
        """Record a task event: (kind, task id, task name, wall time, runtime, info)."""
        self.events.append((kind, task_id, name, _time_time(), runtime, info))

    def __bool__(self):
        return bool(self.acks) or bool(self.commands) or bool(self.events) or bool(self.results)

    cpdef Output take(self):
        """Hand over the contents and start empty."""
        cdef Output o = Output.__new__(Output)
        o.acks, o.commands, o.replies, o.count, o.events = self.acks, self.commands, self.replies, self.count, self.events
        o.results, o.result_replies = self.results, self.result_replies
        self.acks, self.commands, self.replies, self.count, self.events = {}, [], 0, 0, []
        self.results, self.result_replies = [], 0
        return o


cdef inline bint _requeued(message):
    # A message put back by Reject(requeue=True) (execute.py marks it).
    headers = message.headers
    return bool(headers and headers.get("requeued"))


cdef class Request:
    """The running task's context: ``self.request`` in a bound task.

    A thin view over the message: fields are read when asked for."""

    cdef public object message, delivery, hostname, queue, _extra, _task_obj

    def __init__(self, message, hostname, delivery=None, queue=None, task_obj=None):
        self.message = message
        self.hostname = hostname
        self.delivery = delivery
        self.queue = queue
        self._extra = None
        self._task_obj = task_obj  # the Task that runs (its declared time limits)

    @property
    def id(self):
        return self.message.id

    @property
    def task(self):
        return self.message.task

    @property
    def args(self):
        return self.message.args

    @property
    def kwargs(self):
        return self.message.kwargs

    @property
    def retries(self):
        return self.message.retries

    @property
    def eta(self):
        return self.message.eta

    @property
    def expires(self):
        return self.message.expires

    @property
    def priority(self):
        return self.message.priority

    @property
    def parent_id(self):
        return self.message.parent_id

    @property
    def root_id(self):
        # A task sent from outside any task is its own root (as in Celery); the
        # message leaves it out rather than carry its id twice.
        return self.message.root_id or self.message.id

    @property
    def options(self):
        return self.message.options

    @property
    def headers(self):
        return self.message.headers

    @property
    def called_directly(self):
        return self.delivery is None

    @property
    def delivery_count(self):
        return (<Delivery>self.delivery).dc + 1 if self.delivery is not None else 0

    @property
    def delivery_info(self):
        """Celery's shape: where the message came from (``priority`` 0-9, higher first)."""
        return {"exchange": "", "routing_key": self.queue, "priority": self.message.priority,
                "redelivered": self.delivery is not None and ((<Delivery>self.delivery).dc > 0 or _requeued(self.message))}

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
    def is_eager(self):
        """True while the task runs eagerly (``apply()``, ``task_always_eager``), which names its host "eager"."""
        return self.delivery is None and self.hostname == "eager"

    @property
    def reply_to(self):
        opts = self.message.options
        return opts.get("reply_to") if opts else None

    @property
    def replaced_task_nesting(self):
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
    def properties(self):
        """Celery's message properties: the id as correlation_id, reply_to, priority, app_id."""
        headers = self.message.headers
        return {"correlation_id": self.message.id, "reply_to": self.reply_to, "priority": self.message.priority,
                "delivery_mode": 2, "app_id": headers.get("app_id") if headers else None}

    def __repr__(self):
        return f"<Request {self.task}[{self.id}]>"


cdef inline void _mark(unsigned char[:] slot, bytes entry_id) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(entry_id)
    if n >= slot.shape[0]:
        n = slot.shape[0] - 1
    memcpy(&slot[0], PyBytes_AS_STRING(entry_id), n)
    slot[n] = 0


cdef class Runner:
    """Runs fetched batches: decode, look up, call, record the ack and result.

    See ``_core_py.Runner``: the common case runs here, the rest is handed to
    ``handler`` (the Python ``Executor``)."""

    cdef public dict registry
    cdef public object handler
    cdef public object hostname
    cdef public bytes result_prefix
    cdef public long result_expires
    cdef public object encode_result
    cdef public dict queue_of
    cdef public bint stopping
    cdef public double deadline
    cdef public long processed
    cdef public object current
    cdef public double flush_interval
    cdef public object flush
    cdef public bint notify
    cdef public bint events
    cdef public set slow_streams
    cdef public Py_ssize_t max_size
    cdef object _slot
    cdef unsigned char[:] _slot_view
    cdef bytes _expire_arg

    def __init__(self, registry, handler, hostname, result_prefix, result_expires, encode_result, queue_of):
        self.registry = registry
        self.handler = handler
        self.hostname = hostname
        self.result_prefix = result_prefix
        self.result_expires = int(result_expires)
        self._expire_arg = b"%d" % self.result_expires
        self.encode_result = encode_result
        self.queue_of = queue_of
        self.stopping = False
        self.deadline = 0.0
        self.processed = 0
        self.current = None
        self.flush_interval = 0.01
        self.flush = None
        self.notify = False
        self.events = False
        self.slow_streams = set()
        self.max_size = 16 * 1024 * 1024
        self._slot = None

    @property
    def slot(self):
        return self._slot

    @slot.setter
    def slot(self, value):
        self._slot = value
        if value is not None:
            self._slot_view = memoryview(value).cast("B")[:40]  # entry id; a deadline follows

    def run_batch(self, list deliveries, Output out):
        """Run deliveries in order; return how many were started."""
        cdef object handler = self.handler
        cdef dict registry = self.registry
        cdef dict decoders = handler.decoders
        cdef set slow_streams = self.slow_streams
        cdef Py_ssize_t started = 0
        cdef double last_flush = _now()
        cdef double now
        cdef Delivery d
        cdef bint has_slot = self._slot is not None
        for d in deliveries:
            self.current = d  # before the check: a warm stop's early hand-back keeps it
            if self.stopping or (self.deadline > 0 and _now() > self.deadline):
                break
            started += 1
            if has_slot:
                _mark(self._slot_view, d.entry_id)
            try:
                self._run_one(d, out, handler, registry, decoders, slow_streams)
            except Exception as exc:  # one message must never stop the loop
                handler.crashed(d, exc, out)  # dead-letters it (re-raises connection errors)
            if self.flush is not None:
                now = _now()
                if now - last_flush > self.flush_interval:
                    self.flush(out)
                    last_flush = now
        self.current = None
        self.processed += started
        return started

    cdef _run_one(self, Delivery d, Output out, object handler, dict registry, dict decoders, set slow_streams):
        cdef double t0, runtime
        cdef object msg, task, decode, token, retval, blob
        cdef bytes key
        if d.error is not None:
            handler.malformed(d, out, d.error)
            return
        msg = d.message
        if PyBytes_GET_SIZE(d.payload) > self.max_size:
            handler.too_large(d, out, self.max_size)
            return
        if msg is None:
            decode = decoders.get(d.field)
            if decode is None:
                handler.undecodable(d, out, f"unknown payload field {d.field!r}")
                return
            try:
                msg = decode(d.payload)
            except Exception as exc:
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
        else:
            token = current_request.set(Request(msg, self.hostname, d, self.queue_of[d.stream], task))
            t0 = _now()
            try:
                retval = task.run(*msg.args, **msg.kwargs)
            except BaseException as exc:
                current_request.reset(token)
                handler.failed(task, d, msg, exc, _now() - t0, out)
                return
            runtime = _now() - t0
            current_request.reset(token)
            if not task.ignore_result:
                try:
                    blob = self.encode_result(task, msg, retval, runtime)
                except Exception as exc:
                    handler.result_not_serializable(task, d, msg, exc, runtime, out)
                    return
                out.store_result(self.result_prefix + PyUnicode_AsUTF8String(msg.id), blob, self._expire_arg)
            out.ack(d.stream, d.entry_id)
            if self.events:
                out.events.append(("task-succeeded", msg.id, msg.task, _time_time(), runtime, None))
            if self.notify:
                handler.succeeded(task, d, msg, runtime)

