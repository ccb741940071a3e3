"""Pools: how many consumers run, and where.

- ``solo``: one consumer in the main thread.
- ``thread``: N consumers in N threads of one process.
- ``process``: N child processes, each a full consumer with its own Redis
  connection (no parent that every message passes through). The parent only
  supervises: it renews leases, restarts a child that dies and hands back what
  that child held (the message it was running gets a strike), and forwards
  signals.

Signals: the first SIGINT/SIGTERM is a warm shutdown (stop fetching, hand back
unstarted messages, finish running tasks, exit 0); a second one exits at once.

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time

from .. import signals, states
from ..broker.connect import ReplyError
from ..broker.redis import CONNECTION_ERRORS
from ..control import request_info
from ..exceptions import TimeLimitExceeded, WorkerLostError
from ..messages import ResultMeta, decode_fields
from .async_consumer import AsyncConsumer
from .consumer import Consumer
from .limits import read_deadline
from .maintenance import Maintenance
from .remote_control import ChildAgent

log = logging.getLogger("fastq.worker")

#: Bytes of shared memory per child for the id of the entry it is running.
SLOT_SIZE = 48


def dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` writes every thread's stack to stderr and the process
    runs on (Celery's worker does the same): what a stuck worker is doing, without
    a debugger. faulthandler writes from the signal handler itself, so it answers
    even when the process's Python code is blocked."""
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)


class _Signals:
    """Counts shutdown signals; the pool decides what each one means."""

    def __init__(self, on_first, on_second) -> None:
        self.count = 0
        self.on_first = on_first
        self.on_second = on_second

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        dump_stacks_on_sigusr1()

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            log.warning("%s: warm shutdown (finishing running tasks; signal again to exit now)",
                        signal.Signals(signum).name)
            self.on_first()
        else:
            log.warning("%s again: exiting now", signal.Signals(signum).name)
            self.on_second()


class SoloPool:
    """Consumers in threads of this process (``solo`` is one, run in the main thread)."""

    def __init__(self, worker, concurrency: int) -> None:
        self.worker = worker
        self.concurrency = concurrency
        self._made = 0
        self.consumers = [self._new_consumer() for _ in range(self._consumer_count())]
        self.maintenance = Maintenance(worker.app, worker.queues, worker.hostname,
                                       lambda: [c.name for c in self.consumers], worker.info)
        self.stopping = False
        self._restart = False  #: set when the queues change: run the consumers again
        self._lock = threading.Lock()
        self._done = [0, 0]  #: processed, failed of consumers removed by pool_shrink
        self._threads: list[threading.Thread] = []

    def _consumer_count(self) -> int:
        return self.concurrency  # a consumer per thread

    def _make_consumer(self, name: str):
        w = self.worker
        return Consumer(w.app, w.queues, w.hostname, name, w.prefetch, weights=w.weights)

    def _new_consumer(self):
        w = self.worker
        self._made += 1
        c = self._make_consumer(f"{w.hostname}/{os.getpid()}.{self._made - 1}")
        revokes = getattr(getattr(w, "control", None), "revokes", None)
        if revokes is not None:  # a consumer added at run time learns the known revokes
            c.executor.revoked.update(revokes.expiry)
            c.executor.revoked_stamps = revokes.stamps
        return c

    def stop(self) -> None:
        self.stopping = True
        for c in self.consumers:
            c.stop()

    def info(self) -> dict:
        return {"concurrency": self.concurrency, **self.counters()}

    def counters(self) -> dict:
        cs = list(self.consumers)
        return {"processed": self._done[0] + sum(c.processed for c in cs),
                "failed": self._done[1] + sum(getattr(c.executor, "failures", 0) for c in cs),
                "active": sum(1 for c in cs if c.runner.current is not None)}

    def active(self) -> list[dict]:
        out = []
        for c in list(self.consumers):
            d = c.runner.current
            if d is not None and d.message is not None:
                info = request_info(d.message, c.executor.queue_of.get(d.stream))
                info.update(hostname=self.worker.hostname, worker_pid=os.getpid(), entry_id=d.entry_id.decode())
                out.append(info)
        return out

    def grow(self, n: int) -> int:
        """Add ``n`` consumer threads (thread pool)."""
        if self.worker.pool_name == "solo":
            raise ValueError("the solo pool runs one consumer: use -P thread or -P process to resize")
        with self._lock:
            for _ in range(n):
                c = self._new_consumer()
                self.consumers.append(c)
                t = threading.Thread(target=self._run_consumer, args=(c,), name=f"fastq-consumer-{self._made}",
                                     daemon=True)
                self._threads.append(t)
                t.start()
            self.concurrency = len(self.consumers)
            return self.concurrency

    def shrink(self, n: int) -> int:
        """Stop ``n`` consumer threads (warm: each finishes its running task)."""
        if self.worker.pool_name == "solo":
            raise ValueError("the solo pool runs one consumer: use -P thread or -P process to resize")
        with self._lock:
            keep = max(1, len(self.consumers) - n)
            for c in self.consumers[keep:]:
                c.stop()
            self.concurrency = keep
            return keep

    def set_queues(self, queues: list[str]) -> None:
        """Consume other queues: stop the consumers (warm) and run new ones."""
        self.worker.queues = list(queues)
        self.maintenance.queues = list(queues)
        self._restart = True
        for c in self.consumers:
            c.stop()

    def _run_consumer(self, c: Consumer) -> None:
        try:
            c.run()
        finally:
            with self._lock:
                if c.stopping and c in self.consumers and not self._restart and not self.stopping:
                    self.consumers.remove(c)  # shrunk
                    self._done[0] += c.processed
                    self._done[1] += getattr(c.executor, "failures", 0)

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():  # fastq.testing runs a worker in a thread
            _Signals(self.stop, lambda: os._exit(1)).install()
        self.maintenance.start()
        try:
            while True:
                if self.worker.pool_name == "solo":
                    self.consumers[0].run()
                else:
                    with self._lock:
                        self._threads = [threading.Thread(target=self._run_consumer, args=(c,),
                                                          name=f"fastq-consumer-{i}", daemon=True)
                                         for i, c in enumerate(self.consumers)]
                        for t in self._threads:
                            t.start()
                    # pool_grow may add threads while we wait
                    while any(t.is_alive() for t in list(self._threads)):
                        time.sleep(0.2)
                if self.stopping or not self._restart:
                    break
                # add_consumer / cancel_consumer: the same pool on the new queues
                with self._lock:
                    self._restart = False
                    for c in self.consumers:
                        self._done[0] += c.processed
                        self._done[1] += getattr(c.executor, "failures", 0)
                    self.consumers = [self._new_consumer() for _ in range(self.concurrency)]
        finally:
            self.maintenance.stop()
            self.maintenance.deregister()
        return 0


def _child_main(app, queues, hostname, name, prefetch, slot, counts=None, weights=None, async_concurrency=0) -> None:
    """A pool child: one consumer (an event loop of them with --async-concurrency). Dies with its parent."""
    _die_with_parent()
    # The parent's handlers are inherited: replace them before anything else, so
    # a SIGTERM that comes early (pool_shrink right after a spawn) is a warm stop.
    early: list = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates shutdown
    signal.signal(signal.SIGTERM, lambda *_: early.append(1))
    dump_stacks_on_sigusr1()
    if async_concurrency:
        consumer = AsyncConsumer(app, queues, hostname, name, async_concurrency, prefetch, slot=slot, weights=weights)
    else:
        consumer = Consumer(app, queues, hostname, name, prefetch, slot=slot, weights=weights)
    # revokes and rate limits from the control channel; counters for the parent
    ChildAgent(app, hostname, consumer, counts).start()
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    if early:
        consumer.stop()
    signals.worker_process_init.send(sender=None)
    consumer.run()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the child notices the parent's death in its loop
        pass


class _Child:
    __slots__ = ("counts", "index", "many", "name", "process", "slot")

    def __init__(self, process, name, slot, index, counts=None, many: bool = False) -> None:
        self.process = process
        self.name = name
        self.slot = slot
        self.index = index
        #: Shared with the child: processed, failed, busy (updated about every second).
        self.counts = counts
        #: Runs many messages at once (an event loop, --async-concurrency): its slot stays empty.
        self.many = many


class ProcessPool:
    """N child processes, supervised by this one."""

    def __init__(self, worker, concurrency: int) -> None:
        self.worker = worker
        self.concurrency = concurrency
        self.ctx = multiprocessing.get_context("fork")
        self.children: list[_Child] = []
        self.timed_out: set[str] = set()  #: children killed for a hard time limit
        self.generation = 0
        self.stopping = False
        self.maintenance = Maintenance(worker.app, worker.queues, worker.hostname,
                                       lambda: [c.name for c in self.children], self.info)
        #: Children told to exit by pool_shrink or a queue change (not replaced when they do).
        self.retiring: set[str] = set()
        self._done = [0, 0]  #: processed, failed of children that are gone
        self._retire_all = False
        self.terminated: set[int] = set()  #: pids killed by revoke(terminate=True)
        #: (max, min) processes with --autoscale, else None.
        self.autoscale = getattr(worker, "autoscale", None)
        self._scale_check = 0.0
        self._idle_since: float | None = None

    def info(self) -> dict:
        return {"pool": "process", "concurrency": self.concurrency,
                "children": [c.process.pid for c in self.children], **self.counters()}

    # --- remote control (called from the control thread) ------------------------------

    def counters(self) -> dict:
        cs = [c for c in self.children if c.counts is not None]
        return {"processed": self._done[0] + sum(c.counts[0] for c in cs),
                "failed": self._done[1] + sum(c.counts[1] for c in cs),
                "active": sum(c.counts[2] for c in cs)}

    def grow(self, n: int) -> int:
        self.concurrency += n  # the main loop spawns (fork only from the main thread)
        return self.concurrency

    def shrink(self, n: int) -> int:
        self.concurrency = max(1, self.concurrency - n)
        return self.concurrency

    def set_queues(self, queues: list[str]) -> None:
        """Consume other queues: replace every child (warm) with one on the new queues."""
        self.worker.queues = list(queues)
        self.maintenance.queues = list(queues)
        self._retire_all = True

    def _running(self) -> list[tuple[_Child, str, bytes]]:
        """(child, queue, entry id) of what each child runs now (its entry is still un-acked)."""
        out = []
        for c in list(self.children):
            entry = bytes(c.slot).split(b"\0", 1)[0]
            if entry:
                for q in self.worker.app.broker.expand_queues(self.worker.queues):
                    if self.worker.app.broker.read_entry(q, entry) is not None:
                        out.append((c, q, entry))
                        break
        return out

    def active(self) -> list[dict]:
        out = []
        for c, q, entry in self._running():
            found = self.worker.app.broker.read_entry(q, entry)
            msg = decode_fields(found[1]) if found else None
            if msg is not None:
                info = request_info(msg, q)
                info.update(hostname=self.worker.hostname, worker_pid=c.process.pid, entry_id=entry.decode())
                out.append(info)
        return out

    def terminate(self, task_ids: list[str], sig) -> list[str]:
        """Kill the children running these tasks; their messages are handed back."""
        wanted = set(task_ids)
        killed = []
        for t in self.active():
            if t["id"] in wanted:
                self.terminated.add(t["worker_pid"])
                os.kill(t["worker_pid"], sig)
                killed.append(t["id"])
        return killed

    def _autoscale(self) -> None:
        """--autoscale MAX,MIN: one more process a second while messages wait, one
        fewer every few seconds once nothing waits and some processes are idle."""
        if self.autoscale is None or self.stopping:
            return
        now = time.monotonic()
        if now < self._scale_check:
            return
        self._scale_check = now + 1.0
        high, low = self.autoscale
        try:
            stats = [self.worker.app.broker.queue_stats(q) for q in self.worker.queues]
        except CONNECTION_ERRORS:
            return
        # Work beyond what the processes run right now: waiting, plus fetched but not started.
        waiting = sum(st["waiting"] + st["in_flight"] for st in stats) - self.counters()["active"]
        active = self.counters()["active"]
        if waiting > 0:
            self._idle_since = None
            if self.concurrency < high:
                self.concurrency += 1
                log.info("Autoscale: %d waiting, growing to %d processes", waiting, self.concurrency)
        elif active < self.concurrency and self.concurrency > low:
            self._idle_since = self._idle_since or now
            if now - self._idle_since >= 3.0:
                self.concurrency -= 1
                self._idle_since = now
                log.info("Autoscale: idle, shrinking to %d processes", self.concurrency)
        else:
            self._idle_since = None

    def _resize(self) -> None:
        """Bring the number of children to ``concurrency`` (main loop only)."""
        if self.stopping:
            return
        if self._retire_all:
            self._retire_all = False
            for c in self.children:
                self._retire(c)
        live = [c for c in self.children if c.name not in self.retiring]
        for c in live[self.concurrency:]:
            self._retire(c)
        used = {c.index for c in live}
        free = (i for i in range(len(self.children) + self.concurrency) if i not in used)
        for _ in range(self.concurrency - len(live)):
            self.children.append(self._spawn(next(free)))

    def _retire(self, child: _Child) -> None:
        if child.name not in self.retiring and child.process.is_alive():
            self.retiring.add(child.name)
            os.kill(child.process.pid, signal.SIGTERM)  # warm: finishes its task, hands back the rest

    def _spawn(self, index: int) -> _Child:
        self.generation += 1
        w = self.worker
        name = f"{w.hostname}/{os.getpid()}.{self.generation}"
        slot = self.ctx.RawArray("B", SLOT_SIZE)
        counts = self.ctx.RawArray("Q", 3)
        async_concurrency = getattr(w, "async_concurrency", 0)
        p = self.ctx.Process(target=_child_main, name=f"ForkPoolWorker-{index + 1}",
                             args=(w.app, w.queues, w.hostname, name, w.prefetch, slot, counts, w.weights,
                                   async_concurrency), daemon=False)
        p.start()
        return _Child(p, name, slot, index, counts, many=bool(async_concurrency))

    def stop(self) -> None:
        self.stopping = True
        for c in self.children:
            if c.process.is_alive():
                os.kill(c.process.pid, signal.SIGTERM)

    def kill(self) -> None:
        for c in self.children:
            if c.process.is_alive():
                os.kill(c.process.pid, signal.SIGKILL)
        for c in self.children:
            c.process.join(5)
            self._hand_back(c, strike=False)
        os._exit(1)

    def run(self) -> int:
        # Signals are installed before the children exist, and the children
        # replace the handlers with their own.
        _Signals(self.stop, self.kill).install()
        self.children = [self._spawn(i) for i in range(self.concurrency)]
        while self.children:
            self._autoscale()
            self._resize()
            self._enforce_time_limits()
            wait = self.maintenance.tick()
            sentinels = {c.process.sentinel: c for c in self.children}
            for s in multiprocessing.connection.wait(list(sentinels), timeout=min(wait, 0.25)):
                child = sentinels[s]
                child.process.join()
                self.children.remove(child)
                try:
                    self._child_exited(child)
                except Exception:
                    log.exception("Handling the exit of pool child %s failed", child.index + 1)
                    if not self.stopping:
                        self.children.append(self._spawn(child.index))
        self.maintenance.deregister()
        return 0

    def _enforce_time_limits(self) -> None:
        """Kill a child whose task ran past its hard time limit (the deadline the
        child wrote into its slot); _child_exited records the failure."""
        now = time.time()
        for c in self.children:
            deadline = read_deadline(c.slot)
            if deadline and now > deadline and c.name not in self.timed_out and c.process.is_alive():
                self.timed_out.add(c.name)
                log.error("Pool child %s (pid %s): task passed its hard time limit; killing the process",
                          c.index + 1, c.process.pid)
                os.kill(c.process.pid, signal.SIGKILL)

    def _time_limit_failure(self, child: _Child) -> None:
        """The task of a child killed for its hard limit fails with TimeLimitExceeded
        and is acknowledged: it is not redelivered."""
        app = self.worker.app
        entry_id = bytes(child.slot).split(b"\0", 1)[0]
        for q in self.worker.app.broker.expand_queues(self.worker.queues):
            found = app.broker.read_entry(q, entry_id, client=self.maintenance.client)
            if found is None:
                continue
            stream, fields = found
            field, payload = next(iter(fields.items()))
            try:
                msg = app.serializer.decode_message(payload) if field == app.serializer.field else None
            except Exception:  # noqa: BLE001
                msg = None
            if msg is not None:
                exc = TimeLimitExceeded(f"task {msg.task}[{msg.id}] ran past its hard time limit")
                app.backend.store(msg.id, ResultMeta(states.FAILURE, None, "TimeLimitExceeded", "fastq.exceptions",
                                                     str(exc), None, time.time(), None, self.worker.hostname,
                                                     msg.retries, msg.task, {"reason": "time_limit"}))
            app.broker.ack_entry(stream, entry_id, self.maintenance.client)
            return

    def _child_exited(self, child: _Child) -> None:
        code = child.process.exitcode
        if child.name in self.timed_out:
            self.timed_out.discard(child.name)
            self._time_limit_failure(child)
            self._hand_back(child, strike=False)
            if not self.stopping:
                self.children.append(self._spawn(child.index))
            return
        if child.counts is not None:
            self._done[0] += child.counts[0]
            self._done[1] += child.counts[1]
        retired = child.name in self.retiring
        self.retiring.discard(child.name)
        if (self.stopping or retired) and code == 0:
            return
        if code == 0:  # recycled (--max-tasks-per-child / --max-memory-per-child): it handed back its work
            self._hand_back(child, strike=False)
            self.children.append(self._spawn(child.index))
            return
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        if child.process.pid in self.terminated:
            self.terminated.discard(child.process.pid)
            log.warning("Pool child %s (pid %s) terminated by a revoke", child.index + 1, child.process.pid)
        else:
            log.error("Pool child %s (pid %s) died with %s", child.index + 1, child.process.pid, how)
        self._hand_back(child, strike=True, how=how)
        if not self.stopping and not retired:
            self.children.append(self._spawn(child.index))

    def _hand_back(self, child: _Child, strike: bool, how: str = "") -> None:
        """Return what a dead child held; the message it was running gets a strike.
        A child that ran many at once cannot say which one killed it: every
        message it held gets a strike, and consumers run such messages alone
        (async_consumer), so the next death points at one."""
        broker = self.worker.app.broker
        if not strike:
            current = b""
        elif child.many:
            current = b"*"
        else:
            current = bytes(child.slot).split(b"\0", 1)[0]
        for _ in range(20):
            try:
                for entry_id in self._struck(child, current):
                    self._record_lost(entry_id, child, how)
                for q in self.worker.app.broker.expand_queues(self.worker.queues):
                    moved, buried = broker.release_consumer(q, child.name, current, client=self.maintenance.client)
                    if moved or buried:
                        log.warning("Handed back %d message(s) of the dead child (%d dead-lettered)", moved, buried)
                return
            except CONNECTION_ERRORS:
                time.sleep(0.5)  # the lease returns them if Redis stays away
            except ReplyError as exc:  # e.g. the queue's keys were deleted: nothing to hand back
                log.warning("Could not hand back the dead child's messages: %s", exc)
                return

    def _struck(self, child: _Child, current: bytes) -> list[bytes]:
        if current != b"*":
            return [current] if current else []
        broker = self.worker.app.broker
        return [i for q in broker.expand_queues(self.worker.queues) for stream in broker.streams_of(q)
                for i in broker.pending_of(stream, child.name, self.maintenance.client)]

    def _record_lost(self, entry_id: bytes, child: _Child, how: str) -> None:
        """Record in the task's state that its process died (RETRY, or FAILURE on
        the delivery that dead-letters it)."""
        app = self.worker.app
        for q in self.worker.app.broker.expand_queues(self.worker.queues):
            found = app.broker.read_entry(q, entry_id, client=self.maintenance.client)
            if found is None:
                continue
            fields = found[1]
            field, payload = next(iter(fields.items()))
            try:
                msg = app.serializer.decode_message(payload) if field == app.serializer.field else None
            except Exception:  # noqa: BLE001
                msg = None
            if msg is None:
                return
            dc = int(fields.get(b"dc", 0)) + 1
            final = dc >= int(app.conf.worker_max_deliveries)
            exc = WorkerLostError(f"worker process died with {how} while running the task (delivery {dc})")
            meta = ResultMeta(states.FAILURE if final else states.RETRY, None, "WorkerLostError",
                              "fastq.exceptions", str(exc), None, time.time(), None, self.worker.hostname,
                              msg.retries, msg.task, {"reason": "worker_lost", "deliveries": dc})
            app.backend.store(msg.id, meta)
            if final:
                log.error("Dead-lettered task %s[%s]: its pool process died running it, delivery %d of "
                          "max_deliveries %d", msg.task, msg.id, dc, int(app.conf.worker_max_deliveries),
                          extra={"task_name": msg.task, "task_id": msg.id, "state": "DEAD"})
            return


class AsyncioPool(SoloPool):
    """``-P asyncio``: one AsyncConsumer on an event loop in the main thread, running
    up to ``concurrency`` coroutines; maintenance (leases, reaping, heartbeats) in a
    thread of its own. Stopping, info and queue changes are SoloPool's."""

    def _consumer_count(self) -> int:
        return 1  # one consumer; concurrency is how many coroutines it runs

    def _make_consumer(self, name: str) -> AsyncConsumer:
        w = self.worker
        return AsyncConsumer(w.app, w.queues, w.hostname, name, self.concurrency, w.prefetch, weights=w.weights)

    def counters(self) -> dict:
        cs = list(self.consumers)
        return {"processed": self._done[0] + sum(c.processed for c in cs),
                "failed": self._done[1] + sum(c.executor.failures for c in cs),
                "active": sum(c.busy() for c in cs)}

    def active(self) -> list[dict]:
        out = []
        for c in list(self.consumers):
            for r in list(c.running.values()):
                if r.msg is not None:
                    info = request_info(r.msg, c.executor.queue_of.get(r.d.stream))
                    info.update(hostname=self.worker.hostname, worker_pid=os.getpid(), entry_id=r.d.entry_id.decode())
                    out.append(info)
        return out

    def grow(self, n: int) -> int:
        """More coroutines at once (takes effect at the next fetch)."""
        self.concurrency += n
        for c in self.consumers:
            c.concurrency = self.concurrency
            c.notify()
        return self.concurrency

    def shrink(self, n: int) -> int:
        """Fewer coroutines at once (running ones finish)."""
        self.concurrency = max(1, self.concurrency - n)
        for c in self.consumers:
            c.concurrency = self.concurrency
        return self.concurrency

    def terminate(self, task_ids: list[str], sig) -> list[str]:
        """revoke(terminate=True): cancel the coroutines (the signal does not apply)."""
        return [i for c in list(self.consumers) for i in c.terminate(task_ids)]

    def run(self) -> int:
        _Signals(self.stop, lambda: os._exit(1)).install()
        self.maintenance.start()
        try:
            while True:
                self.consumers[0].run()
                if self.stopping or not self._restart:
                    break
                self._restart = False
                old = self.consumers[0]
                self._done[0] += old.processed
                self._done[1] += old.executor.failures
                self.consumers = [self._new_consumer()]
        finally:
            self.maintenance.stop()
            self.maintenance.deregister()
        return 0
