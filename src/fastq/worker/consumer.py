"""The consumer: one connection, one fetch/run/ack loop.

Every pool runs consumers: ``solo`` one, ``thread`` one per thread, ``process``
one per child process. A consumer keeps one fetch in flight while it runs the
batch it has, so Redis prepares the next batch while tasks run:

    read fetch reply (batch k)  ->  send fetch k+1  ->  run batch k  ->  send acks + results of k

Replies are read in the order the commands were sent; acks are sent as soon as a
batch is done (and mid-batch once ``worker_ack_flush_interval`` has passed), so
results become visible at once and "everything finished so far" is acked in one
call. Connection loss never loses work: unsent and unconfirmed acks and results
are kept and sent again after reconnecting (they are idempotent or fenced), and
the consumer re-reads its own pending entries.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque

from redis.exceptions import ResponseError

from .._speedups import Output, Runner, pack_command, parse_fetch_reply, parse_xread_reply
from ..broker.keys import GROUP
from ..broker.redis import CONNECTION_ERRORS, safe_url
from ..broker.scripts import SCRIPTS
from ..events import pack_events
from .execute import Executor

log = logging.getLogger("fastq.worker")


class Consumer:
    """Fetches, runs and acknowledges messages from some queues."""

    def __init__(self, app, queues: list[str], hostname: str, name: str, prefetch: int | None = None,
                 slot=None) -> None:
        self.app = app
        self.broker = app.broker
        conf = app.conf
        self.queues = [self.broker.ensure_queue(q) for q in queues]
        self.name = name
        self.hostname = hostname
        self.prefetch = int(prefetch or conf.worker_prefetch)
        self.block_ms = max(1, int(conf.worker_block_timeout * 1000))
        queue_of = {k: qk.name for qk in self.queues for k in qk.fetch_order}
        self.by_name = {k.encode(): k for k in queue_of}
        self.executor = Executor(app, hostname, name, queue_of)
        self.runner = Runner(app.tasks, self.executor, hostname, f"{conf.key_prefix}r:".encode(),
                             conf.result_expires, self.executor.encode_success, queue_of)
        self.runner.max_size = int(conf.max_message_size)
        self.runner.flush_interval = float(conf.worker_ack_flush_interval)
        self.runner.flush = self._flush_mid_batch
        self.runner.notify = self.executor.log_tasks
        self.events = bool(conf.worker_send_task_events)
        self.runner.events = self.events
        self.executor.events = self.events
        self.events_key = self.broker.keys.events
        self.runner.slot = slot
        self.executor.ack_now = self._ack_now
        self.executor.flush_now = self._flush_mid_batch
        self._fetch_cmds = [
            pack_command((b"EVALSHA", SCRIPTS.fetch.sha_bytes, len(qk.fetch_order), *qk.fetch_order,
                          GROUP, name, self.prefetch))
            for qk in self.queues
        ]
        keys = [k for qk in self.queues for k in qk.fetch_order]
        self._block_cmd = pack_command((b"XREADGROUP", b"GROUP", GROUP, name, b"COUNT", self.prefetch,
                                        b"BLOCK", self.block_ms, b"STREAMS", *keys, *([b">"] * len(keys))))
        self.out = Output()
        self.conn = None
        self.stopping = False
        self._rr = 0
        self._outstanding: deque = deque()  # ("out", Output, n) | ("fetch", QueueKeys)
        self._broken = False
        self._warned = False
        self._pending_outs: list = []  #: writes to send again after reconnecting

    # --- control -------------------------------------------------------------------

    def stop(self) -> None:
        """Warm stop: finish the running task, hand back the rest, return."""
        self.stopping = True
        self.runner.stopping = True

    @property
    def processed(self) -> int:
        return self.runner.processed

    # --- I/O -------------------------------------------------------------------------

    def _connect(self) -> None:
        self.conn = self.broker.new_channel(socket_timeout=self.block_ms / 1000 + 10)
        self.conn.connect()
        self._broken = False

    def _send(self, data: bytes) -> None:
        self.conn.send(data)

    def _read(self):
        return self.conn.read()

    def _pack_output(self, out: Output) -> tuple[bytes, int]:
        parts = list(out.commands)
        n = out.replies
        if out.events:
            parts.append(pack_events(self.events_key, self.hostname, out.events))
            n += 1
        for stream, ids in out.acks.items():
            parts.append(pack_command((b"EVALSHA", SCRIPTS.ack.sha_bytes, 1, stream, GROUP, *ids)))
            n += 1
        return b"".join(parts), n

    def _send_output(self, out: Output) -> None:
        data, n = self._pack_output(out)
        self._outstanding.append(("out", out, n))
        self._send(data)

    def _flush(self) -> None:
        if self.out:
            self._send_output(self.out.take())

    def _flush_mid_batch(self, out: Output) -> None:
        """Send what is finished so far; a dead connection is dealt with after the batch."""
        if self._broken or not out:
            return
        try:
            self._send_output(out.take())
        except CONNECTION_ERRORS:
            self._broken = True

    def _ack_now(self, d) -> None:
        o = Output()
        o.ack(d.stream, d.entry_id)
        o.count = 0
        self._flush_mid_batch(o)

    def _send_fetch(self) -> None:
        i = self._rr % len(self.queues)
        self._rr += 1
        self._outstanding.append(("fetch", self.queues[i]))
        self._send(self._fetch_cmds[i])

    def _read_reply(self, item, missing_scripts: list) -> list | None:
        """Read the replies of one outstanding item; a fetch returns its batch."""
        if item[0] == "out":
            out, n = item[1], item[2]
            for reply in self.conn.read_many(n):
                if isinstance(reply, ResponseError):
                    if "NOSCRIPT" in str(reply):
                        if out not in missing_scripts:
                            missing_scripts.append(out)
                    else:
                        log.error("Redis refused a write: %s", reply)
            return None
        try:
            reply = self._read()
        except ResponseError as exc:
            if "NOSCRIPT" in str(exc):
                missing_scripts.append(None)
            else:
                log.error("Fetch failed: %s", exc)
            return []
        return parse_fetch_reply(reply, item[1].fetch_order)

    def _read_until_fetch(self) -> list:
        missing: list = []
        batch: list | None = None
        while self._outstanding:
            item = self._outstanding.popleft()
            got = self._read_reply(item, missing)
            if got is not None:
                batch = got
                break
        if missing:
            self._reload_scripts(missing)
        return batch or []

    def _drain(self) -> None:
        missing: list = []
        while self._outstanding:
            batch = self._read_reply(self._outstanding.popleft(), missing)
            if batch:  # a fetch we no longer want: hand it back
                self._release(batch)
        if missing:
            self._reload_scripts(missing)

    def _reload_scripts(self, outs: list) -> None:
        """Redis lost its scripts (restart): load them and send the affected writes again."""
        SCRIPTS.load_all(self.broker.client)
        for out in outs:
            if out is not None:
                self._send_output(out)
        self._drain()

    def _blocking_fetch(self) -> list:
        self._send(self._block_cmd)
        try:
            reply = self._read()
        except ResponseError as exc:
            # NOGROUP / UNBLOCKED: a stream or its group was deleted (purge,
            # FLUSHDB, a Redis restart without persistence): re-create them.
            log.warning("Queue keys vanished (%s); re-creating the consumer groups", exc)
            for qk in self.queues:
                self.broker.ensure_queue(qk.name)
            return []
        return parse_xread_reply(reply, self.by_name)

    def _release(self, deliveries) -> None:
        """Hand back unstarted messages to the front of their queue."""
        by_stream: dict[str, list] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        client = self.broker.client
        for stream, ids in by_stream.items():
            queue = self.executor.queue_of[stream]
            for attempt in range(10):
                try:
                    self.broker.release(stream, queue, self.name, ids, client=client)
                    break
                except CONNECTION_ERRORS:  # the lease will return them if Redis stays away
                    time.sleep(0.2 * (attempt + 1))
        if deliveries:
            log.info("Handed back %d unstarted message(s)", len(deliveries))

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Consume until stopped. Survives Redis outages."""
        recovered: list = []
        backoff = 0.1
        while True:
            try:
                if self.conn is None:
                    self._connect()
                    recovered = self._recover() if self._warned else []
                    if self._warned:
                        log.warning("Reconnected to Redis at %s", safe_url(self.broker.url))
                        self._warned = False
                    backoff = 0.1
                self._loop(recovered)
                return
            except CONNECTION_ERRORS as exc:
                self._lost_connection(exc)
            except Exception as exc:
                log.exception("Consumer error (%s); reconnecting and carrying on", exc)
                self._warned = True
                self._lost_connection(exc)
            recovered = []
            if self.stopping and not self.out and not self._pending_outs:
                return
            time.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)

    def _lost_connection(self, exc: BaseException) -> None:
        if not self._warned:
            log.warning("Lost connection to Redis at %s (%s); retrying with backoff", safe_url(self.broker.url), exc)
            self._warned = True
        # Keep every write whose reply we did not see: they are sent again.
        keep = [item[1] for item in self._outstanding if item[0] == "out"]
        self._pending_outs = [*self._pending_outs, *keep]
        if self.out:
            self._pending_outs.append(self.out.take())
        self._outstanding.clear()
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def _recover(self) -> list:
        """After reconnecting: resend unconfirmed writes, then take back our own
        pending entries (fetched before the outage, never run)."""
        SCRIPTS.load_all(self.broker.client)
        for qk in self.queues:
            self.broker.ensure_queue(qk.name)
        for out in self._pending_outs:
            self._send_output(out)
        self._drain()
        self._pending_outs = []
        batch: list = []
        for qk in self.queues:
            for key in qk.fetch_order:
                self._send(pack_command((b"XREADGROUP", b"GROUP", GROUP, self.name, b"COUNT", 100000,
                                         b"STREAMS", key, b"0")))
                batch.extend(d for d in parse_xread_reply(self._read(), self.by_name) if d.payload)
        if batch:
            log.warning("Recovered %d message(s) fetched before the connection was lost", len(batch))
        return batch

    def _loop(self, batch: list) -> None:
        if not batch and not self.stopping:
            self._send_fetch()
        empty_rounds = 0
        while True:
            if not batch:
                batch = self._read_until_fetch()
            if self.stopping:
                self._release(batch)
                break
            if not batch:
                empty_rounds += 1
                if empty_rounds < len(self.queues):
                    self._send_fetch()
                    continue
                self._drain()
                batch = self._blocking_fetch()
                empty_rounds = 0
                if not batch:
                    if not self.stopping:
                        self._send_fetch()
                    continue
                if self.stopping:
                    continue
            empty_rounds = 0
            self._send_fetch()  # the next batch is prepared while this one runs
            if self.events:
                self.out.event("task-received", None, None, None, {"n": len(batch)})
            started = self.runner.run_batch(batch, self.out)
            if self._broken:
                raise ConnectionError("connection lost during the batch")
            self._flush()
            if started < len(batch):
                self._release(batch[started:])
            batch = []
        self._flush()
        self._drain()
