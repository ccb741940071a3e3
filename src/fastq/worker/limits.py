"""Time limits for a running task.

Soft limit: ``SoftTimeLimitExceeded`` is raised inside the task, which may
clean up. In a process's main thread (solo pool, process-pool children) a
SIGALRM timer raises it; in a thread (thread pool) a timer thread raises it
asynchronously in the task's thread (it lands at the next Python bytecode, so a
long C call finishes first).

Hard limit: only a process can be stopped for sure. The running task's deadline
is written into the child's shared-memory slot, next to the entry id, and the
process pool's parent kills the child once the deadline passes (see pool.py).
Solo and thread pools cannot enforce it; the worker says so at start-up.

Layer: worker; imports base, broker and api, never the CLI or the dashboard.
"""

from __future__ import annotations

import ctypes
import signal
import struct
import threading

from ..exceptions import SoftTimeLimitExceeded

#: Where in a child's slot the hard deadline lives (the entry id comes first).
DEADLINE_OFFSET = 40


def write_deadline(slot, deadline: float) -> None:
    """0.0 clears it."""
    struct.pack_into("d", slot, DEADLINE_OFFSET, deadline)


def read_deadline(slot) -> float:
    return struct.unpack_from("d", slot, DEADLINE_OFFSET)[0]


def _raise_soft(signum, frame):
    raise SoftTimeLimitExceeded("soft time limit exceeded")


class SoftLimit:
    """``with SoftLimit(seconds):`` raises SoftTimeLimitExceeded in this thread after ``seconds``."""

    __slots__ = ("_main", "_old", "_timer", "seconds")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._timer = None
        self._old = None
        self._main = False

    def __enter__(self) -> SoftLimit:
        if not self.seconds:
            return self
        self._main = threading.current_thread() is threading.main_thread()
        if self._main:
            self._old = signal.signal(signal.SIGALRM, _raise_soft)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            ident = threading.get_ident()
            self._timer = threading.Timer(self.seconds, _async_raise, (ident,))
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.seconds:
            return
        if self._main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old or signal.SIG_DFL)
        elif self._timer is not None:
            self._timer.cancel()


def _async_raise(ident: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(SoftTimeLimitExceeded))
