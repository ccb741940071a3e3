"""A raw RESP channel for pipelined batches.

redis-py makes the connection (AUTH, SELECT, TLS, timeouts); after that a batch
goes out as one packed write and the replies are parsed straight off the socket
by hiredis, without redis-py's per-reply bookkeeping, which cProfile showed
dominating the producer and the result reads. Error replies come back as
``ResponseError`` instances; ``read()`` raises them, ``read_many()`` returns
them in place so one bad reply does not hide the others.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import atexit
import weakref

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency; fall back to redis-py's parser
    hiredis = None

_READ_SIZE = 65536

#: Connected channels, closed when the interpreter exits: a socket collected open at
#: exit is a ResourceWarning, and a process that only sends should exit quietly.
_connected: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for ch in list(_connected):
        try:
            ch.close()
        except Exception:  # noqa: BLE001 - exiting: a socket that will not close is the OS's
            pass


class Channel:
    """Packed commands out, parsed replies in, over one redis-py connection."""

    __slots__ = ("__weakref__", "_reader", "_sock", "conn")

    def __init__(self, conn) -> None:
        self.conn = conn
        self._sock = None
        self._reader = None

    def connect(self) -> None:
        self.conn.connect()
        self._sock = self.conn._sock
        self._reader = hiredis.Reader(replyError=ResponseError) if hiredis is not None else None
        _connected.add(self)

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        self._sock = None
        self._reader = None
        _connected.discard(self)
        self.conn.disconnect()

    def send(self, data: bytes) -> None:
        if self._sock is None:
            self.connect()
        self._sock.sendall(data)

    def _next(self):
        reader = self._reader
        if reader is None:  # pragma: no cover - no hiredis
            try:
                return self.conn.read_response(disable_decoding=True)
            except ResponseError as exc:
                return exc
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            data = self._sock.recv(_READ_SIZE)
            if not data:
                raise RedisConnectionError("Redis closed the connection")
            reader.feed(data)

    def read(self):
        """The next reply; an error reply is raised."""
        reply = self._next()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def read_one(self):
        """The next reply; an error reply is returned, not raised."""
        return self._next()

    def read_many(self, n: int) -> list:
        """The next ``n`` replies; error replies are returned, not raised."""
        reader = self._reader
        if reader is None:  # pragma: no cover - no hiredis
            nxt = self._next
            return [nxt() for _ in range(n)]
        # _next inlined: a worker reads two replies per result, and the call per reply showed in profiles.
        out: list = []
        gets, append = reader.gets, out.append
        while len(out) < n:
            reply = gets()
            if reply is False:
                data = self._sock.recv(_READ_SIZE)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                reader.feed(data)
            else:
                append(reply)
        return out
