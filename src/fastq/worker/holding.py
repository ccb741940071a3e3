"""How much a consumer holds, and handing back what waits behind a long task.

``--concurrency N`` must mean N tasks running whenever N are waiting, for tasks
of any length. A consumer (one per thread or pool process) that fetched a batch
runs it in order, so every message it holds but has not started waits for the
ones before it; while it waits, a free slot elsewhere could have run it. Two
mechanisms keep that wait short without giving up batching for fast tasks:

- ``Window``: how many messages a consumer fetches at once. It starts at 1 and
  doubles per batch while tasks finish quickly, up to the size whose run takes
  about half of ``worker_hold_time`` (and at most ``--prefetch``); it drops to 1
  as soon as tasks take long. A consumer also keeps a fetch in flight while it
  runs a batch only when the batch takes less than ``worker_hold_time``: a
  slow task's consumer holds nothing but the task it runs. This is TCP's congestion window applied to
  batches: a no-op drain reaches the full batch in a few round trips, a queue of
  100 ms tasks is spread one per slot.
- ``HoldWatch``: one thread per process looks at its consumers every
  ``worker_hold_time / 2`` while any of them holds more than the task it runs
  (it sleeps otherwise). When a consumer's task has run longer than
  ``worker_hold_time`` and the consumer holds messages it has not started (the
  rest of its batch, or what a fetch in flight brought), they are handed back at
  once to the front of their priority (release.lua, fenced), where any idle
  slot, on this worker or another, takes them. That covers what the window
  cannot predict: a 5 s task among 1 ms ones.

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("fastq.worker")


class Window:
    """The number of messages a consumer fetches at once (see the module docstring)."""

    __slots__ = ("cap", "per_task", "size", "target")

    def __init__(self, cap: int, hold_time: float) -> None:
        self.cap = max(1, int(cap))
        #: seconds one batch should take to run: what a message may wait behind its batch-mates
        self.target = max(hold_time, 1e-4) / 2
        self.size = 1
        self.per_task: float | None = None  #: seconds per message, smoothed

    def update(self, started: int, seconds: float) -> None:
        """A batch ran ``started`` messages in ``seconds``."""
        if started <= 0:
            return
        per = seconds / started
        # Smoothed, but a long task counts at once: one is enough to stop batching.
        self.per_task = per if self.per_task is None or per > self.per_task else (self.per_task + per) / 2
        # Rounded, not floored: tasks of 5.5 ms against a 10 ms target run two at a
        # time (11 ms), which halves the round trips and Redis work per task.
        fits = round(self.target / max(self.per_task, 1e-7))
        self.size = max(1, min(self.cap, fits, self.size * 2))

    @property
    def pipelined(self) -> bool:
        """Fetch the next batch while this one runs only when the next one would
        wait less than the hold time for it: a consumer of slow tasks holds
        nothing but the task it runs, one of 10 ms tasks hides the fetch's round trip."""
        return self.per_task is not None and self.size * self.per_task <= 2 * self.target


class HoldWatch:
    """One thread per process: hands back what consumers hold behind a long task."""

    _instance: tuple[int, HoldWatch] | None = None
    _guard = threading.Lock()

    @classmethod
    def join(cls, consumer) -> HoldWatch:
        """The watch of this process (started on first use; a forked child starts its own)."""
        with cls._guard:
            inst = cls._instance
            if inst is None or inst[0] != os.getpid():
                inst = cls._instance = (os.getpid(), cls())
            watch = inst[1]
            watch.consumers.append(consumer)
            watch.interval = min(watch.interval, max(0.002, consumer.hold_time / 2))
            if watch.thread is None:
                watch.thread = threading.Thread(target=watch._run, name="fastq-hold-watch", daemon=True)
                watch.thread.start()
            return watch

    def __init__(self) -> None:
        self.consumers: list = []
        self.interval = 1.0
        self.thread: threading.Thread | None = None
        self.client = None  #: its own connection: the consumers' are busy running tasks
        # Set while some consumer may hold something behind the task it runs. The
        # watch sleeps on it otherwise: a thread waking every few milliseconds in
        # the process costs an idle worker CPU, and a busy one its GIL at the
        # moment a reply comes in (measured: 4% on the one-task round trip).
        self._armed = threading.Event()

    def arm(self) -> None:
        """A consumer started a batch that holds more than the task it runs."""
        if not self._armed.is_set():  # set() takes a lock and notifies: once, not every batch
            self._armed.set()

    def leave(self, consumer) -> None:
        with self._guard:
            if consumer in self.consumers:
                self.consumers.remove(consumer)

    def _run(self) -> None:
        while True:
            self._armed.wait()
            time.sleep(self.interval)
            # Cleared before the consumers are looked at, so an arm() from now on is kept.
            self._armed.clear()
            now = time.monotonic()
            for c in list(self.consumers):
                try:
                    if c.check_hold(now):
                        self._armed.set()
                except Exception:  # never let the watch die; the lease is the fallback
                    log.exception("Handing back held messages failed")
                    self._armed.set()


__all__ = ["HoldWatch", "Window"]
