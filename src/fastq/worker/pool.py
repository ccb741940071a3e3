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
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time

from redis.exceptions import ResponseError

from .. import states
from ..broker.redis import CONNECTION_ERRORS
from ..exceptions import WorkerLostError
from .consumer import Consumer
from .maintenance import Maintenance

log = logging.getLogger("fastq.worker")

#: Bytes of shared memory per child for the id of the entry it is running.
SLOT_SIZE = 48


class _Signals:
    """Counts shutdown signals; the pool decides what each one means."""

    def __init__(self, on_first, on_second) -> None:
        self.count = 0
        self.on_first = on_first
        self.on_second = on_second

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

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
        self.consumers = [
            Consumer(worker.app, worker.queues, worker.hostname, f"{worker.hostname}/{os.getpid()}.{i}", worker.prefetch)
            for i in range(concurrency)
        ]
        self.maintenance = Maintenance(worker.app, worker.queues, worker.hostname,
                                       lambda: [c.name for c in self.consumers], worker.info)

    def stop(self) -> None:
        for c in self.consumers:
            c.stop()

    def info(self) -> dict:
        return {"processed": sum(c.processed for c in self.consumers)}

    def run(self) -> int:
        _Signals(self.stop, lambda: os._exit(1)).install()
        self.maintenance.start()
        try:
            if len(self.consumers) == 1:
                self.consumers[0].run()
            else:
                threads = [threading.Thread(target=c.run, name=f"fastq-consumer-{i}", daemon=True)
                           for i, c in enumerate(self.consumers)]
                for t in threads:
                    t.start()
                for t in threads:
                    while t.is_alive():
                        t.join(0.2)
        finally:
            self.maintenance.stop()
            self.maintenance.deregister()
        return 0


def _child_main(app, queues, hostname, name, prefetch, slot) -> None:
    """A pool child: one consumer. Dies with its parent."""
    _die_with_parent()
    consumer = Consumer(app, queues, hostname, name, prefetch, slot=slot)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates shutdown
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    from .. import signals

    signals.worker_process_init.send(sender=None)
    consumer.run()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the child notices the parent's death in its loop
        pass


class _Child:
    __slots__ = ("index", "name", "process", "slot")

    def __init__(self, process, name, slot, index) -> None:
        self.process = process
        self.name = name
        self.slot = slot
        self.index = index


class ProcessPool:
    """N child processes, supervised by this one."""

    def __init__(self, worker, concurrency: int) -> None:
        self.worker = worker
        self.concurrency = concurrency
        self.ctx = multiprocessing.get_context("fork")
        self.children: list[_Child] = []
        self.generation = 0
        self.stopping = False
        self.maintenance = Maintenance(worker.app, worker.queues, worker.hostname,
                                       lambda: [c.name for c in self.children], self.info)

    def info(self) -> dict:
        return {"pool": "process", "concurrency": self.concurrency,
                "children": [c.process.pid for c in self.children]}

    def _spawn(self, index: int) -> _Child:
        self.generation += 1
        w = self.worker
        name = f"{w.hostname}/{os.getpid()}.{self.generation}"
        slot = self.ctx.RawArray("B", SLOT_SIZE)
        p = self.ctx.Process(target=_child_main, name=f"ForkPoolWorker-{index + 1}",
                             args=(w.app, w.queues, w.hostname, name, w.prefetch, slot), daemon=False)
        p.start()
        return _Child(p, name, slot, index)

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

    def _child_exited(self, child: _Child) -> None:
        code = child.process.exitcode
        if self.stopping and code == 0:
            return
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        log.error("Pool child %s (pid %s) died with %s", child.index + 1, child.process.pid, how)
        self._hand_back(child, strike=True, how=how)
        if not self.stopping:
            self.children.append(self._spawn(child.index))

    def _hand_back(self, child: _Child, strike: bool, how: str = "") -> None:
        """Return what a dead child held; the message it was running gets a strike."""
        broker = self.worker.app.broker
        current = bytes(child.slot).split(b"\0", 1)[0] if strike else b""
        for _ in range(20):
            try:
                if current:
                    self._record_lost(current, child, how)
                for q in self.worker.queues:
                    moved, buried = broker.release_consumer(q, child.name, current, client=self.maintenance.client)
                    if moved or buried:
                        log.warning("Handed back %d message(s) of the dead child (%d dead-lettered)", moved, buried)
                return
            except CONNECTION_ERRORS:
                time.sleep(0.5)  # the lease returns them if Redis stays away
            except ResponseError as exc:  # e.g. the queue's keys were deleted: nothing to hand back
                log.warning("Could not hand back the dead child's messages: %s", exc)
                return

    def _record_lost(self, entry_id: bytes, child: _Child, how: str) -> None:
        """Record in the task's state that its process died (RETRY, or FAILURE on
        the delivery that dead-letters it)."""
        app = self.worker.app
        for q in self.worker.queues:
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
            from ..messages import ResultMeta

            exc = WorkerLostError(f"worker process died with {how} while running the task (delivery {dc})")
            meta = ResultMeta(states.FAILURE if final else states.RETRY, None, "WorkerLostError",
                              "fastq.exceptions", str(exc), None, time.time(), None, self.worker.hostname,
                              msg.retries, msg.task, {"reason": "worker_lost", "deliveries": dc})
            app.backend.store(msg.id, meta)
            return
