"""The event loop consumer of the asyncio pool: many tasks at once on one loop.

``fastq worker -P asyncio -c 500`` runs up to 500 tasks at a time in one
process; ``-P process -c 4 --async-concurrency 100`` runs such a loop in each
of 4 child processes. Coroutine tasks run on the loop; sync tasks run in a
thread pool (``loop.run_in_executor``), so they never block it.

An ``AsyncConsumer`` has three parts, all on the loop:

- the fetcher fetches only as many messages as there are free slots (so nothing
  waits here unstarted: a warm stop has nothing to hand back but one fetch in
  flight), on a connection of its own, and starts one asyncio task per message;
- each message runs through the ``Executor`` (``start_run`` / ``end_run``), the
  same code as the sync pools' slow path: expiry, revokes, rate limits, retries,
  results, acks, events and signals behave the same;
- the writer sends what finished tasks left in the shared ``Output`` (results,
  acks, events) on another connection as soon as it can: each task is acked
  when it finishes, never before (unless it has ``acks_late=False``).

Nothing is lost: a message is acked only after its task finished; unconfirmed
writes are sent again after a reconnect; after a lost connection the consumer
re-reads the entries it holds and runs the ones it was not running. A killed
process's messages come back through the lease and the reaper like any other
worker's (the maintenance thread renews the leases of everything held).

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from .. import states
from .._speedups import Output, current_request, parse_fetch_reply, parse_xread_reply
from ..broker.connect import ReplyError
from ..broker.fair import ack_gates
from ..broker.redis import CONNECTION_ERRORS, is_oom, safe_url, transaction_replies
from ..coroutines import Limits, call_limited
from ..exceptions import TaskRevokedError
from ..ratelimit import Limiter
from .execute import Executor
from .limits import SoftLimit

log = logging.getLogger("fastq.worker")

#: Default ``-c`` of ``-P asyncio`` (the CPU count, right for processes, is far too few coroutines).
DEFAULT_CONCURRENCY = 100
#: Most threads for sync tasks in one event loop worker.
MAX_SYNC_THREADS = 32
#: A message that was in flight when its process died this many times runs alone
#: (one death is most often not the message's doing: a deploy's SIGKILL, a host
#: lost, the OOM killer: those messages run at full concurrency again).
SUSPECT_DELIVERIES = 2


class _Run:
    """One message being run: its delivery, asyncio task and why we cancelled it."""

    __slots__ = ("d", "limits", "msg", "started", "task")

    def __init__(self, d) -> None:
        self.d = d
        self.msg = None
        self.task: asyncio.Task | None = None
        self.limits: Limits | None = None
        self.started = time.time()


def _call_sync(task, args, kwargs, soft):
    """A sync task in a thread of the loop's pool (soft limit: the timer-thread kind)."""
    with SoftLimit(soft):
        return task.run(*args, **kwargs)


class AsyncConsumer:
    """Fetches from some queues and keeps up to ``concurrency`` tasks running on an event loop."""

    def __init__(self, app, queues: list[str], hostname: str, name: str, concurrency: int,
                 prefetch: int | None = None, slot=None, weights: dict[str, int] | None = None) -> None:
        self.app = app
        self.broker = app.broker
        conf = app.conf
        self.queues = [self.broker.ensure_queue(q) for q in queues]
        self._fair_acks = ack_gates(self.broker, self.queues)  # a fair queue's acks also free tenant slots
        weights = weights or {}
        self._turns = [i for i, q in enumerate(queues) for _ in range(max(1, int(weights.get(q, 1))))]
        self.name = name
        self.hostname = hostname
        self.concurrency = int(concurrency)
        self.prefetch = int(prefetch or conf.worker_prefetch)
        self.block_ms = max(1, int(conf.worker_block_timeout * 1000))
        #: A fetch whose reply comes this long after it was sent may hold entries whose
        #: leases lapsed (the process was paused): they are checked, not run blindly.
        self.hold_limit = float(conf.worker_lease_timeout) / 2
        queue_of = {k: qk.name for qk in self.queues for k in qk.fetch_order}
        self.by_name = {k.encode(): k for k in queue_of}
        # The process child's slot (one entry id, one deadline) cannot describe many
        # running tasks: it stays empty, and hard limits are cancellations here.
        self.executor = Executor(app, hostname, name, queue_of)
        self.events = self.executor.events = bool(conf.worker_send_task_events)
        self.limiter = self.executor.limiter = Limiter(app, queues)
        self.executor.ack_now = self._ack_now
        self.executor.flush_now = self._flush_now
        self.max_size = int(conf.max_message_size)
        self.max_tasks = int(conf.get("worker_max_tasks_per_child") or 0) if slot is not None else 0
        self.max_memory_kib = int(conf.get("worker_max_memory_per_child") or 0) if slot is not None else 0
        self._memory_checked = 0.0
        backend_broker = app.backend.broker
        self.result_url = None if backend_broker is self.broker else backend_broker.url
        self.out = Output()
        self.running: dict[bytes, _Run] = {}  #: entry id -> the run
        self.processed = 0
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None  #: a slot freed, or stop
        self._dirty: asyncio.Event | None = None  #: the output has something to send
        self._closing = False
        self._done_ids: list[bytes] = []  #: finished since the output was last taken
        self._pending_outs: list[tuple] = []  #: (Output, entry ids) taken, not yet confirmed
        self._block_turn = 0
        self._rr = 0
        self._warned = False
        self._recover_soon = False  #: re-read our held entries at the next fetch
        #: A suspect message (in flight at SUSPECT_DELIVERIES deaths of its process), to run alone
        self._suspect = None
        self._alone: bytes | None = None  #: the suspect running alone, until its writes are confirmed
        self._careful = False  #: the last fetch brought a suspect: fetch one at a time
        self._threads: ThreadPoolExecutor | None = None
        self._fetch_ch = self.broker.new_async_channel(socket_timeout=self.block_ms / 1000 + 10)
        self._write_ch = self.broker.new_async_channel()
        self._result_ch = backend_broker.new_async_channel() if self.result_url else None

    # --- control (from any thread or a signal handler) -------------------------------

    def stop(self) -> None:
        """Warm stop: fetch no more, let the running tasks finish, send everything, return."""
        self.stopping = True
        self.notify()

    def notify(self) -> None:
        """Wake the fetcher (concurrency changed, or stop)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._poke)
            except RuntimeError:  # the loop just closed
                pass

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def busy(self) -> int:
        """How many tasks run now."""
        return len(self.running)

    def terminate(self, task_ids: list[str]) -> list[str]:
        """Cancel the running coroutines of these tasks (revoke with terminate);
        they end REVOKED. Sync tasks in threads cannot be stopped."""
        wanted = set(task_ids)
        found = [r for r in list(self.running.values())
                 if r.msg is not None and r.msg.id in wanted and r.limits is not None]
        loop = self._loop
        if found and loop is not None:
            for r in found:
                loop.call_soon_threadsafe(r.limits.cancel, r.task, "terminate")
        return [r.msg.id for r in found]

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        """Consume until stopped (blocks; runs its own event loop)."""
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._threads = ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, MAX_SYNC_THREADS)),
                                           thread_name_prefix="fastq-sync")
        writer = asyncio.ensure_future(self._writer())
        try:
            await self._fetch_loop()
            while self.running:  # warm stop: the running tasks finish
                await asyncio.wait([r.task for r in list(self.running.values())])
        finally:
            self._closing = True
            self._dirty.set()
            try:
                await writer
            finally:
                self._hand_back_rest()
                for ch in (self._fetch_ch, self._write_ch, self._result_ch):
                    if ch is not None:
                        await ch.close()
                self._threads.shutdown(wait=False)

    def _free(self) -> int:
        free = self.concurrency - len(self.running)
        if self.max_tasks:
            free = min(free, self.max_tasks - self.processed - len(self.running))
        return min(free, self.prefetch)

    async def _fetch_loop(self) -> None:
        recover = False
        backoff = 0.1
        while not self.stopping:
            if self._suspect is not None or self._alone is not None:
                await self._run_suspect_alone()
                continue
            n = min(self._free(), 1) if self._careful else self._free()
            if n <= 0:
                self._wake.clear()
                if self._free() <= 0 and not self.stopping:
                    await self._wake.wait()
                continue
            try:
                if recover or self._recover_soon:
                    self._recover_soon = False
                    batch = await self._recover()
                    recover = False
                else:
                    sent = time.monotonic()
                    batch = await self._fetch(n)
                    if batch and time.monotonic() - sent > self.hold_limit:
                        batch = self._held_too_long(batch)
                self.limiter.refresh()
                if self._warned:
                    log.warning("Reconnected to Redis at %s", safe_url(self.broker.url))
                    self._warned = False
                backoff = 0.1
            except CONNECTION_ERRORS as exc:
                self._lost_connection(exc)
                await self._fetch_ch.close()
                recover = True
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
                continue
            if not batch:
                continue
            if self.stopping:
                self._release(batch)
                break
            if self.events:
                self.out.event("task-received", None, None, None, {"n": len(batch)})
            self._careful = any(d.dc >= SUSPECT_DELIVERIES for d in batch)
            if self._careful:
                batch = self._set_suspect_aside(batch)
            for d in batch:
                self._start(d)

    def _held_too_long(self, batch: list) -> list:
        """A fetch answered long after it was sent (the process was paused): its
        entries' leases may have lapsed and another worker may run them. Hand back
        what is still ours (fenced); drop the rest with a warning. Runs nothing."""
        moved = 0
        by_stream: dict[str, list] = {}
        for d in batch:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        for stream, ids in by_stream.items():
            moved += sum(self.broker.release(stream, self.executor.queue_of[stream], self.name, ids))
        if len(batch) > moved:
            log.warning("Dropped %d message(s) held for over %.1f s without starting: their leases lapsed "
                        "(this worker was paused or cut off) and another worker recovered them",
                        len(batch) - moved, self.hold_limit)
        return []

    def _set_suspect_aside(self, batch: list) -> list:
        """Keep one suspect message to run alone; hand the other ones back
        (no strike) for later fetches, one at a time. Returns the rest, to run now."""
        suspects = [d for d in batch if d.dc >= SUSPECT_DELIVERIES]
        self._suspect = suspects[0]
        if len(suspects) > 1 and not self._release(suspects[1:]):
            self._recover_soon = True  # Redis is away: they stay held; recovery runs them
        return [d for d in batch if d.dc < SUSPECT_DELIVERIES]

    async def _run_suspect_alone(self) -> None:
        """One step of running a suspect message with nothing else running and
        every earlier write confirmed: if it kills the process again, it is the
        only message held and the only one struck (pool.py, release.lua, reap.lua),
        so a message that crashes its process is dead-lettered after
        max_deliveries, and the batch-mates that happened to run with it are not."""
        settled = not self.running and not self._done_ids and not self._pending_outs
        if not settled:
            self._wake.clear()
            try:  # a run ending wakes us; confirmed writes do not, so look again soon
                await asyncio.wait_for(self._wake.wait(), 0.01)
            except asyncio.TimeoutError:
                pass
            return
        self._alone = None
        if self._suspect is not None:
            d, self._suspect = self._suspect, None
            self._alone = d.entry_id
            self._start(d)

    async def _fetch(self, n: int) -> list:
        """Up to ``n`` messages: fetch.lua round the queues, then one blocking read of all."""
        ch = self._fetch_ch
        for _ in range(len(self._turns)):
            qk = self.queues[self._turns[self._rr % len(self._turns)]]
            self._rr += 1
            await ch.send(self.broker.fetch_command(qk.name, self.name, n))
            try:
                reply = await ch.read()
            except ReplyError as exc:
                if "NOSCRIPT" in str(exc):
                    self.broker.load_scripts()
                else:
                    log.error("Fetch failed: %s", exc)
                    await asyncio.sleep(0.5)
                return []
            batch = parse_fetch_reply(reply, qk.fetch_order)
            if batch:
                return batch
        # one read of every queue's streams; on a cluster one per queue, taken in turn
        cmds = self.broker.blocking_fetch_commands([qk.name for qk in self.queues], self.name, n, self.block_ms)
        self._block_turn += 1
        await ch.send(cmds[self._block_turn % len(cmds)])
        try:
            reply = await ch.read()
        except ReplyError as exc:  # NOGROUP: the queue's keys were deleted
            log.warning("Queue keys vanished (%s); re-creating the consumer groups", exc)
            for qk in self.queues:
                self.broker.ensure_queue(qk.name)
            return []
        return parse_xread_reply(reply, self.by_name)

    def _known(self) -> set:
        """Entries this consumer runs, or finished without the writes being confirmed yet."""
        known = set(self.running)
        if self._suspect is not None:
            known.add(self._suspect.entry_id)
        known.update(self._done_ids)
        for _, ids in self._pending_outs:
            known.update(ids)
        return known

    async def _recover(self) -> list:
        """After a lost connection: the entries we hold but do not run (fetched
        while the connection broke) are run now."""
        self.broker.load_scripts()
        for qk in self.queues:
            self.broker.ensure_queue(qk.name)
        known = self._known()
        batch: list = []
        for qk in self.queues:
            for key in qk.fetch_order:
                await self._fetch_ch.send(self.broker.held_command(key, self.name))
                batch.extend(d for d in parse_xread_reply(await self._fetch_ch.read(), self.by_name) if d.payload)
        known |= self._known()
        batch = [d for d in batch if d.entry_id not in known]
        if batch:
            log.warning("Recovered %d message(s) fetched before the connection was lost", len(batch))
        return batch

    def _lost_connection(self, exc: BaseException) -> None:
        if not self._warned:
            log.warning("Lost connection to Redis at %s (%s); retrying with backoff", safe_url(self.broker.url), exc)
            self._warned = True

    def _release(self, deliveries: list) -> bool:
        """Hand back unstarted messages to the front of their queue; False if Redis
        could not be reached (they stay held by this consumer)."""
        by_stream: dict[str, list] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        ok = True
        for stream, ids in by_stream.items():
            try:
                self.broker.release(stream, self.executor.queue_of[stream], self.name, ids)
            except CONNECTION_ERRORS:
                ok = False
        if deliveries:
            log.info("Handed back %d unstarted message(s)", len(deliveries))
        return ok

    def _hand_back_rest(self) -> None:
        """At the end: anything still held (a fetch that came back as we stopped) goes back."""
        try:
            for qk in self.queues:
                for stream in qk.fetch_order:
                    ids = [i for i in self.broker.pending_of(stream, self.name) if i not in self.running]
                    if ids:
                        moved, _ = self.broker.release(stream, qk.name, self.name, ids)
                        if moved:
                            log.info("Handed back %d unstarted message(s)", moved)
        except CONNECTION_ERRORS:
            pass  # their lease expires and the reaper returns them

    # --- running one message ------------------------------------------------------------

    def _start(self, d) -> None:
        run = _Run(d)
        self.running[d.entry_id] = run
        run.task = self._loop.create_task(self._run(run))

    async def _run(self, run: _Run) -> None:
        d = run.d
        ex = self.executor
        out = self.out
        handed_back = False
        try:
            admitted = ex.admit(d, out, self.max_size)
            if admitted is None:  # dead-lettered with its reason
                return
            msg, task = admitted
            run.msg = msg
            await self._execute(task, d, msg, run)
        except asyncio.CancelledError:
            raise  # the loop is going away: not acked, the lease returns it
        except Exception as exc:
            if not isinstance(exc, CONNECTION_ERRORS):  # the message itself: dead-letter it, never loop on it
                ex.crashed(d, exc, out)
                return
            # Not the task's failure (Redis went away during a rate-limit claim):
            # hand the message back; if that fails too, the next recovery runs it again.
            log.exception("Running message %s failed; handing it back", d.entry_id.decode())
            handed_back = True
            if not self._release([d]):
                self._recover_soon = True
        finally:
            if not handed_back:  # its writes are in the output: not to be recovered meanwhile
                self._done_ids.append(d.entry_id)
            self.running.pop(d.entry_id, None)
            self.processed += 1
            self._wake.set()
            self._dirty.set()
            self._check_recycle()

    async def _execute(self, task, d, msg, run: _Run) -> None:
        ex = self.executor
        out = self.out
        started = ex.start_run(task, d, msg, out)
        if started is None:  # expired, revoked or deferred by a rate limit
            return
        token, soft, hard, args, kwargs = started
        t0 = time.perf_counter()
        try:
            if task.is_async:
                run.limits = Limits()
                retval = await call_limited(task.run(*args, **kwargs), soft, hard, run.limits)
            else:
                retval = await self._loop.run_in_executor(self._threads, contextvars.copy_context().run,
                                                          _call_sync, task, args, kwargs, soft)
        except asyncio.CancelledError:
            current_request.reset(token)
            raise
        except TaskRevokedError as exc:
            if run.limits is not None and run.limits.reason == "terminate":
                ex._revoked(d, msg, out, "terminated")
                ex._postrun(task, msg, None, states.REVOKED)
                current_request.reset(token)
                return
            ex.end_run(task, d, msg, out, token, None, time.perf_counter() - t0, exc)
            return
        except BaseException as exc:  # noqa: BLE001 - a task may raise anything
            ex.end_run(task, d, msg, out, token, None, time.perf_counter() - t0, exc)
            return
        ex.end_run(task, d, msg, out, token, retval, time.perf_counter() - t0)

    def _ack_now(self, d) -> None:
        """acks_late=False: the ack goes out before the task runs."""
        self.out.ack(d.stream, d.entry_id)
        self._dirty.set()

    def _flush_now(self, out) -> None:
        self._dirty.set()

    def _check_recycle(self) -> None:
        """Process-pool children: stop (and be replaced) after --max-tasks-per-child
        tasks or above --max-memory-per-child KiB."""
        if self.stopping:
            return
        if self.max_tasks and self.processed >= self.max_tasks:
            log.warning("Pool process %s ran %d tasks (--max-tasks-per-child): replacing it", os.getpid(), self.processed)
            self.stop()
        elif self.max_memory_kib and time.monotonic() - self._memory_checked > 1.0:

            self._memory_checked = time.monotonic()
            rss_kib = psutil.Process().memory_info().rss // 1024
            if rss_kib > self.max_memory_kib:
                log.warning("Pool process %s uses %d KiB, over --max-memory-per-child %d KiB: replacing it",
                            os.getpid(), rss_kib, self.max_memory_kib)
                self.stop()

    # --- writing -----------------------------------------------------------------------

    async def _writer(self) -> None:
        """Send finished work as it comes; after a connection loss, send it again."""
        backoff = 0.1
        while True:
            if self.out:
                ids, self._done_ids = self._done_ids, []
                self._pending_outs.append((self.out.take(), ids))
            elif self._done_ids and not self._pending_outs:
                self._done_ids = []
            if not self._pending_outs:
                if self._closing:
                    return
                self._dirty.clear()
                await self._dirty.wait()
                continue
            try:
                await self._send_pending()
                if self._warned and self.stopping:
                    log.warning("Reconnected to Redis at %s", safe_url(self.broker.url))
                    self._warned = False
                backoff = 0.1
            except CONNECTION_ERRORS as exc:
                self._lost_connection(exc)
                await self._write_ch.close()
                if self._result_ch is not None:
                    await self._result_ch.close()
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)

    async def _send_pending(self) -> None:
        while self._pending_outs:
            out = self._pending_outs[0][0]
            if self._result_ch is not None and out.results:
                # A separate result backend: results first, then the acks, so a crash
                # in between runs a task again rather than losing its result.
                await self._result_ch.send(b"".join(out.results))
                for reply in await self._result_ch.read_many(out.result_replies):
                    if is_oom(reply):  # kept (not acked) and sent again after the backoff
                        raise ConnectionError(f"Redis is out of memory and refused results ({reply})")
                    if isinstance(reply, ReplyError):
                        log.error("Redis refused a result write: %s", reply)
                out.results, out.result_replies = [], 0
            data, n, in_tx = self.broker.output_command(out, self.hostname, self._fair_acks)
            if n:
                await self._write_ch.send(data)
                replies = await self._write_ch.read_many(n)
                if in_tx:
                    replies = transaction_replies(replies)
                if any(isinstance(r, ReplyError) and "NOSCRIPT" in str(r) for r in replies):
                    self.broker.load_scripts()  # Redis restarted: send it again
                    continue
                refused = next((r for r in replies if is_oom(r)), None)
                if refused is not None:  # refused with the results (a transaction): still in flight, sent again
                    raise ConnectionError(f"Redis is out of memory and refused results and acks ({refused})")
                for reply in replies:
                    if isinstance(reply, ReplyError):
                        log.error("Redis refused a write: %s", reply)
            self._pending_outs.pop(0)


__all__ = ["DEFAULT_CONCURRENCY", "AsyncConsumer"]
