"""The consumer: one connection, one fetch/run/ack loop.

Every pool runs consumers: ``solo`` one, ``thread`` one per thread, ``process``
one per child process. While tasks are quick, a consumer keeps one fetch in
flight while it runs the batch it has, so Redis prepares the next batch while
tasks run:

    read fetch reply (batch k)  ->  send fetch k+1  ->  run batch k  ->  send acks + results of k

A batch smaller than asked for emptied the queue: then nothing is fetched ahead,
and the blocking read for the next message goes out with the batch's results.

How many messages a fetch asks for adapts to how long tasks take, and what a
consumer holds behind a long task is handed back for a free slot
(``holding.py``): ``--concurrency N`` keeps N tasks running for any task length.
A batch held so long that its leases may have lapsed (the process was paused,
or cut off from Redis) is checked before it runs: what the reaper already gave
to another worker is dropped with a warning, not run twice.

Replies are read in the order the commands were sent; acks are sent as soon as a
batch is done (and mid-batch once ``worker_ack_flush_interval`` has passed), so
results become visible at once and "everything finished so far" is acked in one
call. Connection loss never loses work: unsent and unconfirmed acks and results
are kept and sent again after reconnecting (they are idempotent or fenced), and
the consumer re-reads its own pending entries.

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from operator import attrgetter

import psutil

from .. import signals
from .._speedups import Output, Runner, parse_fetch_reply, parse_xread_reply
from ..broker.cluster import is_redirect
from ..broker.connect import ReplyError
from ..broker.fair import ack_gates
from ..broker.keys import logical_queue
from ..broker.memory import check_memory_policy
from ..broker.redis import CONNECTION_ERRORS, is_oom, safe_url, transaction_replies
from ..ratelimit import Limiter
from .execute import Executor
from .holding import HoldWatch, Window

log = logging.getLogger("fastq.worker")
_dc, _stream = attrgetter("dc"), attrgetter("stream")  # per message: a C call, not a Python step


class Consumer:
    """Fetches, runs and acknowledges messages from some queues."""

    def __init__(self, app, queues: list[str], hostname: str, name: str, prefetch: int | None = None,
                 slot=None, weights: dict[str, int] | None = None) -> None:
        self.app = app
        self.broker = app.broker
        conf = app.conf
        # A sharded queue is read as all its shards (and itself), each shard a queue here.
        physical = self.broker.expand_queues(queues)
        self.queues = [self.broker.ensure_queue(q) for q in physical]
        # Fetches go round the queues; a queue of weight w gets w turns per round,
        # so busy queues share the worker in proportion and none starves another.
        weights = weights or {}
        self._turns = [i for i, q in enumerate(physical)
                       for _ in range(max(1, int(weights.get(logical_queue(q), 1))))]
        self.name = name
        self.hostname = hostname
        self.prefetch = int(prefetch or conf.worker_prefetch)
        self.hold_time = float(conf.worker_hold_time)
        self.window = Window(self.prefetch, self.hold_time)
        #: A batch not started within this long of its fetch may have lost its
        #: leases (renewed by maintenance; reaped after the lease): checked first.
        self.hold_limit = float(conf.worker_lease_timeout) / 2
        self.block_ms = max(1, int(conf.worker_block_timeout * 1000))
        queue_of = {k: qk.name for qk in self.queues for k in qk.fetch_order}
        self.by_name = {k.encode(): k for k in queue_of}
        self.executor = Executor(app, hostname, name, queue_of)
        self.runner = Runner(app.tasks, self.executor, hostname, app.backend.result_prefix,
                             conf.result_expires, self.executor.encode_success, queue_of)
        self.runner.max_size = int(conf.max_message_size)
        self.runner.flush_interval = self.flush_interval = float(conf.worker_ack_flush_interval)
        self.runner.flush = self._flush_mid_batch
        self.runner.notify = self.executor.log_tasks
        self.events = bool(conf.worker_send_task_events)
        self.runner.events = self.events
        self.executor.events = self.events
        backend_broker = app.backend.broker
        self.result_broker = None if backend_broker is self.broker and not self.broker.is_cluster else backend_broker
        self.limiter = Limiter(app, physical)
        self.executor.limiter = self.limiter
        self.runner.slow_streams = {k for qk in self.queues if qk.name in self.limiter.limited_queues
                                    for k in qk.fetch_order}
        if any((signals.task_received, signals.task_prerun, signals.task_postrun, signals.task_success,
                signals.task_failure)):
            # Receivers are connected (an integration): every task takes the path that sends signals.
            self.runner.slow_streams = set(queue_of)
        self.runner.slot = slot
        self.executor.slot = slot
        # Recycling limits apply to process-pool children (the parent replaces them).
        self.max_tasks = int(conf.get("worker_max_tasks_per_child") or 0) if slot is not None else 0
        self.max_memory_kib = int(conf.get("worker_max_memory_per_child") or 0) if slot is not None else 0
        self.executor.ack_now = self._ack_now
        self.executor.flush_now = self._flush_mid_batch
        self._fetch_cmds: dict[tuple[int, int], bytes] = {}  #: (queue index, count) -> packed fetch
        self._block_cmds: dict[int, list[bytes]] = {}  #: count -> packed blocking reads
        self._block_turn = 0
        #: stream -> gate args, for the streams of fair queues (acked by fair_ack.lua: fastq.fairness)
        self._fair_acks = ack_gates(self.broker, self.queues)
        self.out = Output()
        self.conn = None
        self.stopping = False
        self._rr = 0
        #: ("out", Output, n, sent as a transaction) | ("fetch" or "block", QueueKeys, sent at, count asked)
        self._outstanding: deque = deque()
        self._broken = False
        self._warned = False
        self._pending_outs: list = []  #: writes to send again after reconnecting
        self._returned = {k for qk in self.queues for k in qk.returned}
        self._batch: list = []  #: the batch being run
        self._prev_batch: list = []  #: the one before it (finished; its acks may still be in flight)
        self._fetched_at = 0.0  #: time.monotonic() when the batch's fetch was sent
        self._asked = 0  #: how many messages that fetch asked for
        # The hold watch (another thread) hands back what waits behind a long task;
        # the loop takes this lock after a batch, so it never runs what was handed back.
        self._hold_lock = threading.Lock()
        #: Writes during a batch come from the runner's thread or, behind a long task, the watch's.
        self._send_lock = threading.Lock()
        self._handed: set = set()  #: entry ids the watch handed back, not to be run or released here
        self._watched = None  #: (delivery, since) the watch saw running
        self._held_batch = False  #: the batch being run armed the watch (holds more than its task)
        self._watch: HoldWatch | None = None

    # --- control -------------------------------------------------------------------

    def stop(self) -> None:
        """Warm stop: hand back what was not started (at once), finish the running task, return."""
        if self.stopping:
            return
        self.stopping = True
        self.runner.stopping = True
        threading.Thread(target=self._hand_back_unstarted, name="fastq-hand-back", daemon=True).start()

    def _hand_back_unstarted(self) -> None:
        """Release now, on a connection of its own (the consumer's is busy with the
        running task), what this consumer holds and will not start. Kept back: the
        batch being run up to its current message (the runner publishes
        ``current`` before its stopping check, so a message it is about to start
        is kept), all of it between batches, and the previous batch (finished; its
        acks may not have reached Redis yet). The loop hands back what is left
        once the running task ends; release.lua is fenced, so twice is harmless."""
        keep = {d.entry_id for d in self._prev_batch}
        batch, current = self._batch, self.runner.current
        upto = next((i + 1 for i, d in enumerate(batch) if d is current), len(batch))
        keep.update(d.entry_id for d in batch[:upto])
        client = self.broker.new_client()
        try:
            for qk in self.queues:
                for stream in qk.fetch_order:
                    ids = [i for i in self.broker.pending_of(stream, self.name, client) if i not in keep]
                    if ids:
                        moved, _ = self.broker.release(stream, qk.name, self.name, ids, client=client)
                        log.info("Handed back %d unstarted message(s) at once", moved)
        except CONNECTION_ERRORS:
            pass  # the loop hands them back after the running task, or their lease expires
        finally:
            client.close()

    def _blocking_fetch_commands(self, count: int) -> list[bytes]:
        """One XREADGROUP BLOCK over every stream of every queue; on a cluster, where
        one command may only touch one slot, one per queue, taken in turn with a
        shorter block so an idle worker still looks at each queue often."""
        cmds = self._block_cmds.get(count)
        if cmds is None:
            cmds = self._block_cmds[count] = self.broker.blocking_fetch_commands(
                [qk.name for qk in self.queues], self.name, count, self.block_ms)
        return cmds

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

    def _pack_output(self, out: Output) -> tuple[bytes, int, bool]:
        # With a separate result backend the results went there first (_send_output).
        return self.broker.output_command(out, self.hostname, self._fair_acks, self.result_broker is None)

    def _send_output(self, out: Output) -> None:
        if self.result_broker is not None and out.results:
            # A separate result backend (or a cluster, where one transaction cannot
            # span the result keys): store the results first, then ack, so a crash
            # in between runs a task again rather than losing its result.
            try:
                self.result_broker.execute_packed(out.results)
            except CONNECTION_ERRORS:  # unreachable or out of memory: kept, sent again after the backoff
                self._outstanding.append(("out", out, 0, False))
                raise
            out.results, out.result_replies = [], 0
        data, n, in_tx = self._pack_output(out)
        self._outstanding.append(("out", out, n, in_tx))
        self._send(data)

    def _flush(self) -> None:
        if self.out:
            self._send_output(self.out.take())

    def _flush_mid_batch(self, out: Output) -> None:
        """Send what is finished so far; a dead connection is dealt with after the batch.
        The replies are read by the loop, in order, like any write's."""
        with self._send_lock:
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
        i = self._turns[self._rr % len(self._turns)]
        self._rr += 1
        n = self.window.size
        cmd = self._fetch_cmds.get((i, n))
        if cmd is None:
            cmd = self._fetch_cmds[(i, n)] = self.broker.fetch_command(self.queues[i].name, self.name, n)
        self._outstanding.append(("fetch", self.queues[i], time.monotonic(), n))
        self._send(cmd)

    def _send_block(self) -> None:
        """Send a blocking read over every queue (one command when there is one)."""
        n = self.window.size
        cmds = self._blocking_fetch_commands(n)
        cmd = cmds[self._block_turn % len(cmds)]
        self._block_turn += 1
        self._outstanding.append(("block", None, time.monotonic(), n))
        self._send(cmd)

    def _read_reply(self, item, missing_scripts: list) -> list | None:
        """Read the replies of one outstanding item; a fetch returns its batch."""
        if item[0] == "out":
            out, n = item[1], item[2]
            replies = self.conn.read_many(n)
            if item[3]:  # sent as a transaction (results and their acks)
                replies = transaction_replies(replies)
            errors = [r for r in replies if isinstance(r, ReplyError)]
            redirect = next((r for r in errors if is_redirect(r)), None)
            if redirect is not None:
                # Not applied (slot moved, master demoted): the write stays
                # outstanding and is sent again after reconnecting.
                raise ConnectionError(f"Redis redirected a write: {redirect}")
            refused = next((r for r in errors if is_oom(r)), None)
            if refused is not None:
                # Out of memory: a transaction's results and acks were refused together,
                # so the messages are still in flight; this write stays outstanding and
                # is sent again after the backoff, until Redis takes it.
                raise ConnectionError(f"Redis is out of memory and refused results and acks ({refused}); "
                                      "their messages stay in flight and are sent again")
            for reply in errors:
                if "NOSCRIPT" not in str(reply):
                    log.error("Redis refused a write: %s", reply)
                elif out not in missing_scripts:
                    missing_scripts.append(out)
            return None
        try:
            reply = self._read()
        except ReplyError as exc:
            if is_redirect(exc):
                raise ConnectionError(f"Redis redirected a fetch: {exc}") from exc
            if item[0] == "block":
                self._queues_vanished(exc)
            elif "NOSCRIPT" in str(exc):
                missing_scripts.append(None)
            else:
                log.error("Fetch failed: %s", exc)
            return []
        self._fetched_at, self._asked = item[2], item[3]
        if item[0] == "block":
            batch = parse_xread_reply(reply, self.by_name)
        else:
            batch = parse_fetch_reply(reply, item[1].fetch_order)
        if self._handed:  # the watch handed these back while we ran the last batch
            batch = [d for d in batch if d.entry_id not in self._handed]
            self._handed.clear()
        return batch

    def _read_until_fetch(self) -> list:
        missing: list = []
        batch: list | None = None
        while self._outstanding:
            # Popped only once its replies are read: a write whose replies never
            # came is still outstanding when the connection is lost, and is resent.
            got = self._read_reply(self._outstanding[0], missing)
            self._outstanding.popleft()
            if got is not None:
                batch = got
                break
        if missing:
            self._reload_scripts(missing)
        return batch or []

    def _drain(self) -> None:
        missing: list = []
        while self._outstanding:
            batch = self._read_reply(self._outstanding[0], missing)
            self._outstanding.popleft()
            if batch:  # a fetch we no longer want: hand it back
                self._release(batch)
        if missing:
            self._reload_scripts(missing)

    def _reload_scripts(self, outs: list) -> None:
        """Redis lost its scripts (restart): load them and send the affected writes again."""
        self.broker.load_scripts()
        for out in outs:
            if out is not None:
                self._send_output(out)
        self._drain()

    def _queues_vanished(self, exc: ReplyError) -> None:
        # NOGROUP / UNBLOCKED: a stream or its group was deleted (purge,
        # FLUSHDB, a Redis restart without persistence): re-create them.
        log.warning("Queue keys vanished (%s); re-creating the consumer groups", exc)
        for qk in self.queues:
            self.broker.ensure_queue(qk.name)

    def _release(self, deliveries, client=None, quiet: bool = False) -> int:
        """Hand back unstarted messages to the front of their priority; returns how
        many were still ours to hand back (release.lua is fenced: one the reaper
        already gave to another worker is not touched)."""
        by_stream: dict[str, list] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        moved = 0
        for stream, ids in by_stream.items():
            queue = self.executor.queue_of[stream]
            for attempt in range(10):
                try:
                    moved += sum(self.broker.release(stream, queue, self.name, ids, client=client))
                    break
                except CONNECTION_ERRORS:  # the lease will return them if Redis stays away
                    time.sleep(0.2 * (attempt + 1))
        if deliveries and not quiet:
            log.info("Handed back %d unstarted message(s)", len(deliveries))
        return moved

    # --- holding: see holding.py ---------------------------------------------------------

    def check_hold(self, now: float) -> bool:
        """Called by the hold watch (another thread): if the running task has run
        longer than ``hold_time`` while this consumer holds messages it has not
        started, hand them back now. Returns whether to look again."""
        cur = self.runner.current
        if cur is None or self.stopping:
            self._watched = None
            # A batch that armed the watch may not have started its first task yet:
            # keep looking until the loop says it is over.
            return self._held_batch and not self.stopping
        watched = self._watched
        if watched is None or watched[0] is not cur:
            self._watched = (cur, now)
            return True
        if watched[1] is None:
            return False  # already handed back for this task
        if now - watched[1] < self.hold_time:
            return True
        self._watched = (cur, None)
        batch = self._batch
        fetching = any(item[0] != "out" for item in list(self._outstanding))
        holds = (batch and batch[-1] is not cur) or fetching
        if not holds and not self.out:
            return False  # holds nothing else, and what finished before it was sent
        with self._hold_lock:
            if self.runner.current is not cur:
                return False  # it moved on meanwhile: the loop deals with the rest
            # What finished before this task is sent now (results visible, acks
            # done), not when it ends: on the consumer's connection, whose
            # replies the loop reads in order once the batch is over.
            self._flush_mid_batch(self.out)
            if not holds:
                return False
            # From here the runner starts no message after the one it shows as
            # current (it publishes current, then checks stopping); the loop puts
            # stopping back after the batch, under the lock.
            self.runner.stopping = True
            cur = self.runner.current
            upto = next((i + 1 for i, d in enumerate(batch) if d is cur), len(batch))
            rest = batch[upto:]
            watch = self._watch
            if watch.client is None:
                watch.client = self.broker.new_client()
            client = watch.client
            handed = [d.entry_id for d in rest]
            moved = self._release(rest, client=client, quiet=True) if rest else 0
            if fetching:  # what the fetch in flight brought: pending for us, in no batch
                known = {d.entry_id for d in batch} | {d.entry_id for d in self._prev_batch}
                for qk in self.queues:
                    for stream in qk.fetch_order:
                        ids = [i for i in self.broker.pending_of(stream, self.name, client) if i not in known]
                        if ids:
                            moved += sum(self.broker.release(stream, qk.name, self.name, ids, client=client))
                            handed.extend(ids)
            self._handed.update(handed)
        if moved:
            log.info("Handed back %d message(s) waiting behind a task running for over %.0f ms",
                     moved, self.hold_time * 1000)
        return False

    def _lost_leases(self, rest: list) -> None:
        """A batch held past ``hold_limit`` (the process was paused, or Redis was
        away): hand back what is still ours; what is not was recovered by another
        worker's reaper and runs there, so it is dropped here, not run twice."""
        moved = self._release(rest, quiet=True)
        lost = len(rest) - moved
        if lost > 0:
            log.warning("Dropped %d message(s) held for over %.1f s without starting: their leases lapsed "
                        "(this worker was paused or cut off) and another worker recovered them",
                        lost, self.hold_limit)
        if moved:
            log.info("Handed back %d message(s) held for over %.1f s", moved, self.hold_limit)

    def _check_recycle(self) -> None:
        """Stop (and so be replaced by the pool's parent) after --max-tasks-per-child
        tasks or above --max-memory-per-child KiB of resident memory."""
        if self.stopping:
            return
        if self.max_tasks and self.runner.processed >= self.max_tasks:
            log.warning("Pool process %s ran %d tasks (--max-tasks-per-child): replacing it",
                        os.getpid(), self.runner.processed)
            self.stop()
        elif self.max_memory_kib:
            rss_kib = psutil.Process().memory_info().rss // 1024
            if rss_kib > self.max_memory_kib:
                log.warning("Pool process %s uses %d KiB, over --max-memory-per-child %d KiB: replacing it",
                            os.getpid(), rss_kib, self.max_memory_kib)
                self.stop()

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Consume until stopped. Survives Redis outages."""
        self._watch = HoldWatch.join(self)
        try:
            self._run()
        finally:
            self._watch.leave(self)

    def _run(self) -> None:
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
                        check_memory_policy(self.broker, refuse=False)  # a failover may bring another policy
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
        self.broker.load_scripts()
        for qk in self.queues:
            self.broker.ensure_queue(qk.name)
        for out in self._pending_outs:
            self._send_output(out)
        self._drain()
        self._pending_outs = []
        batch: list = []
        for qk in self.queues:
            for key in qk.fetch_order:
                self._send(self.broker.held_command(key, self.name))
                batch.extend(d for d in parse_xread_reply(self._read(), self.by_name) if d.payload)
        if batch:
            log.warning("Recovered %d message(s) fetched before the connection was lost", len(batch))
        self._fetched_at = time.monotonic()
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
                if empty_rounds < len(self._turns):
                    self._send_fetch()
                    continue
                self._drain()
                self._send_block()
                batch = self._read_until_fetch()
                empty_rounds = 0
                if not batch:
                    if not self.stopping:
                        self._send_fetch()
                    continue
                if self.stopping:
                    continue
            empty_rounds = 0
            self.limiter.refresh()
            # A batch shorter than what was asked for emptied the queue: fetching
            # again before it runs would most likely find nothing, and Redis would
            # run that fetch ahead of this batch's results. After it, wait for the
            # next message at once (one queue: the blocking read covers every stream).
            drained = len(batch) < self._asked and len(self._turns) == 1
            pipelined = self.window.pipelined and not drained
            fetched_at = self._fetched_at
            if pipelined:
                self._send_fetch()  # the next batch is prepared while this one runs
            if pipelined or len(batch) > 1:
                # It holds more than the task it runs. A lone task's batch has
                # nothing to hand back; its task-received count waits for its result.
                self._held_batch = True  # before arm(): the watch keeps looking while it is set
                self._watch.arm()
            if self.events:
                self.out.event("task-received", None, None, None, {"n": len(batch)})
            # A batch with redelivered messages may hold the one that killed the last
            # process: ack each message before the next starts, so its batch-mates
            # are not run again with it (design note 4.7.5).
            redelivered = any(map(_dc, batch)) or not self._returned.isdisjoint(map(_stream, batch))
            self.runner.flush_interval = 0.0 if redelivered else self.flush_interval
            if self.max_tasks:  # run no more than the child may; hand back the rest
                left = max(0, self.max_tasks - self.runner.processed)
                if left < len(batch):
                    self._release(batch[left:])
                    batch = batch[:left]
            self._prev_batch, self._batch = self._batch, batch
            self.runner.deadline = fetched_at + self.hold_limit
            t0 = time.monotonic()
            started = self.runner.run_batch(batch, self.out)
            self.window.update(started, time.monotonic() - t0)
            with self._hold_lock:  # the watch is not handing anything back now
                self._held_batch = False
                self.runner.stopping = self.stopping
                handed, rest = self._handed, batch[started:]
                if handed:
                    rest = [d for d in rest if d.entry_id not in handed]
            if self._broken:
                raise ConnectionError("connection lost during the batch")
            self._flush()
            if rest:
                if self.runner.deadline and time.monotonic() > self.runner.deadline and not self.stopping:
                    self._lost_leases(rest)
                else:
                    self._release(rest)
            self._check_recycle()  # first: a child about to be replaced sends no next fetch
            if not pipelined and not self.stopping:
                if drained:
                    self._send_block()  # right behind the results, before their replies are read
                else:
                    self._send_fetch()
            batch = []
        self._flush()
        self._drain()
