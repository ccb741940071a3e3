"""Auto-pipelining: concurrent sends of one process share writes and round trips.

A web app sends tasks from many request handlers at once, as coroutines on one
event loop or as threads. Each send is a short write and one reply; sent one
round trip each, concurrent callers mostly wait on each other's latency. Here a
send issued while another is in flight is queued and goes out with the others
in the next write, and each caller is woken when its own replies have arrived
(Redis answers in order, so the replies are dealt out in the order of the
writes). A lone caller does not wait for company: its write goes out at once.
ioredis and node-redis call this auto-pipelining.

- ``SharedChannel`` (threads): one connection per process and no thread of its
  own. The first caller to find the connection idle becomes the *leader*: it
  writes everything queued and reads the replies, while later callers queue
  theirs and sleep on a lock. When its round is answered, the leader writes
  what queued meanwhile (Redis works on it while the callers wake), wakes the
  callers it served, and hands the reading of the new round to that round's
  oldest caller; so no caller serves others for longer than one round, and a
  round is always on the wire while threads are waiting. (Measured: one write
  per caller, with a reader dealing out replies, was slower: a thread's
  wake-up costs more here than a round trip, and a write per caller adds
  one more hand-over of the GIL per call.)
- ``LoopPipeline`` (asyncio): one connection per event loop. The first send of a
  loop step schedules the write for the end of the step, so every send of that
  step goes in it; the transport's data callback parses the replies (hiredis)
  and resolves each caller's future. No task of its own, so a loop that only
  sends leaves nothing pending behind; the connection is closed by the loop's
  ``shutdown_asyncgens()`` (``asyncio.run`` calls it) or ``fastq.aio.aclose()``.

Both fail only the calls in flight on a connection that breaks, each with the
connection error (``execute_packed`` turns it into a retry or BrokerError); the
next call connects again. Neither is ever inherited: a forked child makes its
own. Blocking commands (a worker's fetch, a result wait) never come here: one
caller's block would stall everyone behind it.

redis-py makes the connection either way (AUTH, SELECT, TLS, Sentinel); the
asyncio side then takes over its transport, which reaches into two attributes
of ``redis.asyncio.Connection`` (``_reader``/``_writer``, present since redis-py
4.2): when they are missing, ``LoopPipeline.open`` says so and the caller keeps
redis-py's own path.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ..exceptions import BrokerError

# --- threads -------------------------------------------------------------------------


class _Call:
    """One caller's write and, once answered, its replies or the error that ended it."""

    __slots__ = ("abandoned", "data", "error", "lead", "n", "replies", "wake")

    def __init__(self, data: bytes, n: int) -> None:
        self.data = data
        self.n = n
        self.replies: list | None = None
        self.error: BaseException | None = None
        self.lead = False  # it reads (and writes) for the others now
        self.abandoned = False  # its caller stopped waiting (Ctrl-C)
        self.wake: threading.Lock | None = None  # held while the caller sleeps

    def outcome(self) -> list:
        if self.error is not None:
            raise self.error
        return self.replies  # type: ignore[return-value]


class SharedChannel:
    """One connection that the threads of a process share (see the module's text).

    ``open_channel()`` makes the raw ``Channel`` (connected on its first send)."""

    def __init__(self, open_channel, conf: dict | None = None) -> None:
        self.pid = os.getpid()
        self._open = open_channel
        # The app's settings: broker_pool_acquire_timeout (Celery's name), read when a
        # caller has to wait for its turn, so a change at run time applies.
        self._conf = conf or {}
        self._mu = threading.Lock()  # guards _queue, _busy and the hand-over of the lead
        self._queue: list[_Call] = []  # calls waiting for the next write
        self._busy = False  # a leader is at work
        self._written: list[_Call] | None = None  # a round written, its replies still to read
        self._ch = None
        self._stale = False  # connect again before the next round (a demoted master)
        self._locks = threading.local()  # one sleeping lock per thread, reused

    def execute(self, data: bytes, n: int) -> list:
        """Write ``data`` (``n`` packed commands) and return its ``n`` replies; error
        replies come back in place, connection errors are raised."""
        mu = self._mu
        with mu:
            solo = not self._busy
            if solo:
                self._busy = True
        if solo:  # nobody else is sending: no queue, no bookkeeping (a lone caller's path)
            try:
                if self._ch is None or self._stale:
                    self._write(())
                ch = self._ch
                ch.send(data)  # type: ignore[union-attr]
                replies = ch.read_many(n)  # type: ignore[union-attr]
            except BaseException:
                self.close()
                self._pass_lead()
                raise
            self._pass_lead()
            return replies
        call = _Call(data, n)
        with mu:
            self._queue.append(call)
            if self._busy:
                wake = self._locks.__dict__.get("lock")
                if wake is None:
                    wake = self._locks.lock = threading.Lock()
                wake.acquire()
                call.wake = wake
            else:
                self._busy = call.lead = True
        if not call.lead:
            wait = self._conf.get("broker_pool_acquire_timeout")  # seconds behind the others; None: no bound
            try:  # answered, or handed the lead
                woken = call.wake.acquire(timeout=-1 if wait is None else wait)  # type: ignore[union-attr]
            except BaseException:  # interrupted (Ctrl-C in the main thread)
                self._abandon(call)
                raise
            if not woken:
                self._abandon(call)  # (runs the round itself if it was handed the lead meanwhile)
                if call.replies is None and call.error is None:
                    raise BrokerError(
                        f"waited {wait:g}s for a turn on the shared connection to Redis behind other senders "
                        f"(broker_pool_acquire_timeout); the message may still go out with their write")
                return call.outcome()
            call.wake.release()  # type: ignore[union-attr]  # ready for this thread's next call
            if not call.lead:
                return call.outcome()
        self._lead()
        return call.outcome()

    def reconnect(self) -> None:
        """Make the next round use a new connection (a master that was demoted:
        reconnecting asks Sentinel again)."""
        self._stale = True

    def close(self) -> None:
        ch, self._ch = self._ch, None
        if ch is not None:
            ch.close()

    def _lead(self) -> None:
        """Rounds as the leader: write the queue (unless the last leader already
        wrote it), read its replies, write what queued meanwhile (so Redis works on
        it while the callers wake), wake the callers, and hand the reading of the
        new round to its oldest caller still waiting."""
        while True:
            batch, self._written = self._written, None
            try:
                if batch is None:
                    with self._mu:
                        batch, self._queue = self._queue, []
                        if not batch:
                            self._busy = False
                            return
                    self._write(batch)
                ch = self._ch
                for c in batch:
                    c.replies = ch.read_many(c.n)  # type: ignore[union-attr]
            except BaseException as exc:  # noqa: BLE001 - Ctrl-C too: the other callers must still be woken
                # The connection's state is unknown (a reply half read): close it; the
                # calls of the round not answered yet get the error.
                self.close()
                _fail([c for c in batch or () if c.replies is None], exc)
            with self._mu:
                nxt, self._queue = self._queue, []
                if not nxt:
                    self._busy = False
            again = False
            if nxt:
                try:
                    self._write(nxt)
                except BaseException as exc:  # noqa: BLE001 - as above
                    self.close()
                    _fail(nxt, exc)
                    batch, nxt = [*(batch or ()), *nxt], []
                    with self._mu:  # what queued since makes a round of its own, led by us
                        again = bool(self._queue)
                        self._busy = again
            for c in batch or ():
                if not c.lead and c.wake is not None:
                    c.wake.release()
            if again:
                continue
            if not nxt:
                return
            self._written = nxt
            with self._mu:
                target = next((c for c in nxt if not c.abandoned), None)
                if target is not None:
                    target.lead = True
            if target is not None:
                target.wake.release()  # type: ignore[union-attr]
                return
            # every caller of the new round gave up waiting: read it ourselves

    def _pass_lead(self) -> None:
        """After a lone caller's round: hand the lead to the oldest caller that queued
        meanwhile (it writes the queue), or mark the connection idle."""
        with self._mu:
            nxt = next((c for c in self._queue if not c.abandoned), None)
            if nxt is not None:
                nxt.lead = True
            elif self._queue:  # only callers that gave up: their writes still go out, and we read them
                nxt = self._queue[0]
            else:
                self._busy = False
        if nxt is None:
            return
        if nxt.abandoned:
            self._lead()
        else:
            nxt.wake.release()  # type: ignore[union-attr]

    def _write(self, batch) -> None:
        """Write the calls' data (none: only make sure there is a live connection)."""
        if self._stale:
            self._stale = False
            self.close()
        ch = self._ch
        if ch is None:
            ch = self._ch = self._open()
        if batch:
            ch.send(b"".join([c.data for c in batch]) if len(batch) > 1 else batch[0].data)

    def _abandon(self, call: _Call) -> None:
        """A waiting caller gave up (Ctrl-C). Its lock may still be released for it,
        so the thread takes a new one; if it had just been handed the lead, it does
        that round first, so the others are not left waiting."""
        self._locks.lock = None
        with self._mu:
            call.abandoned = True
            lead = call.lead
        if lead:
            self._lead()


def _fail(calls: list[_Call], exc: BaseException) -> None:
    err = exc if isinstance(exc, Exception) else RedisConnectionError(f"interrupted: {exc!r}")
    for c in calls:
        c.error = err if not c.lead else exc


# --- asyncio -------------------------------------------------------------------------


class _Protocol(asyncio.Protocol):
    """The transport's protocol once the pipeline owns it."""

    def __init__(self, pipe: LoopPipeline, transport) -> None:
        self.pipe = pipe
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.pipe._received(data)

    def eof_received(self) -> None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.pipe._transport is self.transport:  # not one closed earlier, since replaced
            self.pipe._lost(exc or RedisConnectionError("Redis closed the connection"))


class LoopPipeline:
    """One connection that the coroutines of one event loop share (see the module's text)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str, make_client) -> None:
        self.pid = os.getpid()
        self.loop = loop
        self.url = url
        self._make_client = make_client  # () -> a redis.asyncio client for the handshake
        self._lock = asyncio.Lock()
        self._transport = None
        self._writer = None  # held: a StreamWriter closes its transport when collected
        self._client = None
        self._parser = None
        self._waiting: deque = deque()  # [future, replies still to come, replies], or execute_one's future
        self._out: list[bytes] = []
        self._flush_handle = None
        self._closer = None

    async def execute(self, data: bytes, n: int) -> list:
        """Queue ``data`` (``n`` packed commands) for this loop step's write and
        return its ``n`` replies; error replies come back in place, connection
        errors are raised."""
        if self._transport is None:
            await self.open()
        fut = self.loop.create_future()
        self._queue(data, [fut, n, []])
        return await fut

    async def execute_one(self, data: bytes):
        """``execute`` for one command: its reply (the common send, kept lean: a
        bare future in the queue instead of a reply list)."""
        if self._transport is None:
            await self.open()
        fut = self.loop.create_future()
        self._queue(data, fut)
        return await fut

    def _queue(self, data: bytes, waiter) -> None:
        """Add a write and its waiter; the first of a loop step schedules the step's write."""
        self._waiting.append(waiter)
        self._out.append(data)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    async def open(self) -> None:
        async with self._lock:
            if self._transport is not None:
                return
            # The client is kept with the connection: Sentinel's connection reaches the
            # master's address through a weak reference to the client's pool.
            self._client = self._make_client()
            conn = self._client.connection_pool.make_connection()
            await conn.connect()
            writer = getattr(conn, "_writer", None)
            if writer is None:  # pragma: no cover - a redis-py without the attribute
                await conn.disconnect()
                raise NotImplementedError("this redis-py's asyncio connection cannot be shared")
            transport = writer.transport
            # The pipeline owns the transport from here: redis-py's connection object
            # must neither read from it nor close it when it is collected, and the
            # stream writer (which would close it when collected) is kept.
            conn._reader = conn._writer = None
            self._writer = writer
            self._parser = hiredis.Reader(replyError=ResponseError)
            transport.set_protocol(_Protocol(self, transport))
            self._transport = transport
            if self._closer is None:
                self._closer = self._close_at_shutdown()
                await self._closer.__anext__()  # registers it with the loop's shutdown_asyncgens()

    async def _close_at_shutdown(self):
        # An async generator the loop knows about: asyncio.run's shutdown_asyncgens()
        # closes it, and with it the connection, before the loop closes.
        try:
            yield
        finally:
            self.close()

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._writer = None
        self._fail(RedisConnectionError("the connection was closed"))

    def _flush(self) -> None:
        self._flush_handle = None
        out, self._out = self._out, []
        if not out:  # failed and cleared since it was scheduled
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            self._fail(RedisConnectionError("the connection to Redis was lost"))
            return
        transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _received(self, data: bytes) -> None:
        parser, waiting = self._parser, self._waiting
        try:
            parser.feed(data)
            while True:
                reply = parser.gets()
                if reply is False:
                    return
                w = waiting[0]
                if w.__class__ is not list:  # execute_one's bare future
                    waiting.popleft()
                    if not w.done():  # a cancelled caller's reply is read and dropped
                        w.set_result(reply)
                    continue
                w[2].append(reply)
                w[1] -= 1
                if w[1] == 0:
                    waiting.popleft()
                    if not w[0].done():
                        w[0].set_result(w[2])
        except Exception as exc:  # noqa: BLE001 - a protocol error or a reply nobody asked for
            self.close()
            self._fail(RedisConnectionError(f"unexpected data from Redis: {exc}"))

    def _lost(self, exc: BaseException) -> None:
        self._transport = None
        self._fail(exc if isinstance(exc, Exception) else RedisConnectionError(str(exc)))

    def _fail(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, deque()
        self._out = []
        for w in waiting:
            fut = w if w.__class__ is not list else w[0]
            if not fut.done():
                fut.set_exception(exc)


__all__ = ["LoopPipeline", "SharedChannel"]
