"""Testing your own tasks: an in-process worker, eager mode, and waiting helpers.

Two ways to test code that sends tasks:

- **Against a real Redis, with a real worker** (integration tests): ``start_worker(app)``
  (or the ``fastq_worker`` pytest fixture) runs a thread-pool worker inside the test
  process. Tasks go through Redis exactly as in production (serialization, routing,
  retries, results), but they run in this process, so they see the test's state.
- **Eagerly** (unit tests, no Redis): ``with eager(app):`` makes ``delay()`` and
  ``apply_async()`` run the task at once, in the caller's thread, and re-raise its
  exception.

The pytest plugin is opt-in. In your ``conftest.py``::

    pytest_plugins = ["fastq.testing"]

    @pytest.fixture
    def fastq_app():
        from proj.tasks import app
        app.conf.broker_url = "redis://127.0.0.1:6379/15"  # a database for tests only
        return app

and then::

    def test_add(fastq_worker):
        assert add.delay(2, 2).get(timeout=10) == 4

Fixtures: ``fastq_config`` (settings of the default app), ``fastq_app`` (the app; override
it), ``fastq_worker_parameters`` (keyword arguments of ``start_worker``), ``fastq_worker``
(a worker for one test), ``fastq_eager`` (the app in eager mode for one test).
See docs/testing.md.

Layer: apps; may import any layer.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from . import signals
from .app import FastQ
from .exceptions import TimeoutError as FastQTimeout
from .worker import Worker

__all__ = ["WorkerThread", "eager", "start_worker", "wait_for", "wait_for_drain"]

_counter = itertools.count(1)


class WorkerThread:
    """A fastq worker (thread pool) running in a thread of this process.

    ``start()`` returns once the worker is consuming; ``stop()`` is a warm
    shutdown (running tasks finish, unstarted messages go back to their queue)
    and waits for the thread. Use it as a context manager, or ``start_worker()``.

    ``block_timeout`` (seconds) is how long an idle consumer waits in one
    blocking read; it bounds how long ``stop()`` takes, so it is short here
    (a production worker uses ``worker_block_timeout``, 1 s by default).
    """

    def __init__(self, app: FastQ, queues: Iterable[str] | None = None, concurrency: int = 1,
                 hostname: str | None = None, prefetch: int | None = None, block_timeout: float = 0.1) -> None:
        if not isinstance(block_timeout, (int, float)) or block_timeout <= 0:
            raise ValueError(f"block_timeout must be a positive number of seconds, not {block_timeout!r}")
        self.app = app
        self.block_timeout = float(block_timeout)
        hostname = hostname or f"testing-{os.getpid()}-{next(_counter)}@{socket.gethostname()}"
        # The thread pool: the solo pool would run its consumer in the caller's thread.
        self.worker = Worker(app, list(queues) if queues else None, concurrency=concurrency, pool="thread",
                             hostname=hostname, prefetch=prefetch)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def hostname(self) -> str:
        return self.worker.hostname

    @property
    def queues(self) -> list[str]:
        return list(self.worker.queues)

    def start(self, timeout: float = 30.0) -> WorkerThread:
        """Start the worker; return once it consumes (or raise after ``timeout`` seconds)."""
        if self._thread is not None:
            raise RuntimeError(f"worker {self.hostname} was already started")
        try:  # fail here, with the URL, rather than in a thread that retries forever
            self.app.broker.ping()
        except Exception as exc:  # any connection problem
            raise RuntimeError(f"fastq.testing: cannot reach the broker at {self.app.broker_safe_url}: {exc}") from exc

        def on_ready(sender=None, **_: Any) -> None:
            if sender is self.worker:
                self._ready.set()

        conf = self.app.conf
        saved = conf.worker_block_timeout
        conf.worker_block_timeout = self.block_timeout  # read once, when the pool makes its consumers
        signals.worker_ready.connect(on_ready)
        self._thread = threading.Thread(target=self._run, name=f"fastq-testing-worker-{self.hostname}", daemon=True)
        self._thread.start()
        broker = self.app.broker
        # Ready: the pool has its consumers (worker_ready) and the worker is in the
        # registry (its maintenance thread runs: heartbeats, delayed messages).
        try:
            deadline = time.monotonic() + timeout
            while not (self._ready.wait(0.02) and broker.last_heartbeat(self.hostname) is not None):
                if self._error is not None or not self._thread.is_alive():
                    raise RuntimeError(f"fastq.testing: worker {self.hostname} failed to start: {self._error!r}")
                if time.monotonic() > deadline:
                    if self.worker.pool is not None:
                        self.worker.pool.stop()
                    raise RuntimeError(f"fastq.testing: worker {self.hostname} not ready after {timeout}s")
        finally:
            signals.worker_ready.disconnect(on_ready)
            conf.worker_block_timeout = saved
        return self

    def _run(self) -> None:
        try:
            self.worker.start()
        except BaseException as exc:  # noqa: BLE001 - reported by start()/stop()
            self._error = exc

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown: running tasks finish; wait up to ``timeout`` seconds for the thread."""
        if self._thread is None:
            return
        pool = self.worker.pool
        if pool is not None:
            pool.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"fastq.testing: worker {self.hostname} still running a task {timeout}s after stop()")
        if self._error is not None:
            raise RuntimeError(f"fastq.testing: worker {self.hostname} failed: {self._error!r}") from self._error

    @property
    def processed(self) -> int:
        """Messages this worker has run so far."""
        pool = self.worker.pool
        return pool.counters()["processed"] if pool is not None else 0

    def __enter__(self) -> WorkerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<WorkerThread {self.hostname} queues={self.queues}>"


@contextmanager
def start_worker(app: FastQ, queues: Iterable[str] | None = None, concurrency: int = 1, **options: Any) -> Iterator[WorkerThread]:
    """Run an in-process worker for the ``with`` block (like ``celery.contrib.testing.worker.start_worker``)::

        with start_worker(app, queues=["default", "mail"]) as w:
            assert send_mail.delay("a@example.com").get(timeout=10) == "sent"

    ``options``: ``hostname``, ``prefetch``, ``block_timeout`` (see WorkerThread)."""
    w = WorkerThread(app, queues, concurrency, **options)
    w.start()
    try:
        yield w
    finally:
        w.stop()


@contextmanager
def eager(app: FastQ, propagate: bool = True) -> Iterator[FastQ]:
    """Run tasks locally for the ``with`` block: ``delay()``/``apply_async()`` call the
    task at once and return an EagerResult; with ``propagate`` (the default) its
    exception is raised at the call. The previous settings come back afterwards."""
    conf = app.conf
    saved = conf.task_always_eager, conf.task_eager_propagates
    conf.task_always_eager, conf.task_eager_propagates = True, bool(propagate)
    try:
        yield app
    finally:
        conf.task_always_eager, conf.task_eager_propagates = saved


def wait_for(what: Any, timeout: float = 10.0, interval: float = 0.05, propagate: bool = True,
             message: str | None = None) -> Any:
    """Wait for a result or a condition and return its value.

    - an ``AsyncResult``, ``EagerResult``, ``ResultSet`` or ``GroupResult``: its
      value (``get(timeout=...)``; the task's exception is raised when ``propagate``);
    - a callable: called every ``interval`` seconds until it returns something
      truthy, which is returned.

    Raises ``fastq.exceptions.TimeoutError`` after ``timeout`` seconds (naming
    ``message`` or the task)."""
    if hasattr(what, "get") and hasattr(what, "ready"):
        try:
            return what.get(timeout=timeout, propagate=propagate)
        except FastQTimeout as exc:
            raise FastQTimeout(f"{message or what!r}: not ready after {timeout}s") from exc
    if not callable(what):
        raise TypeError(f"wait_for() takes a result or a callable, not {type(what).__name__}")
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise FastQTimeout(f"timed out after {timeout}s waiting for {message or getattr(what, '__name__', what)}")
        time.sleep(interval)


def queue_pending(app: FastQ, queues: Iterable[str] | None = None, delayed: bool = True) -> dict[str, int]:
    """Messages not yet finished, per queue: waiting + in flight (+ delayed)."""
    names = list(queues) if queues is not None else sorted(set(app.broker.known_queues()) | {app.conf.task_default_queue})
    out = {}
    for q in names:
        st = app.broker.queue_stats(q)
        out[q] = st["waiting"] + st["in_flight"] + (st["delayed"] if delayed else 0)
    return out


def wait_for_drain(app: FastQ, queues: Iterable[str] | None = None, timeout: float = 30.0, delayed: bool = True,
                   interval: float = 0.05) -> None:
    """Wait until the queues hold nothing waiting, in flight (fetched, not yet
    acknowledged) or, with ``delayed``, scheduled (countdown, ETA, retries).

    ``queues`` defaults to every queue the broker knows. A message is acknowledged
    after its result is written, so once this returns the results are readable.
    Dead-lettered messages do not count."""
    names = list(queues) if queues is not None else None
    last: dict[str, int] = {}

    def drained() -> bool:
        last.clear()
        last.update(queue_pending(app, names, delayed))
        return not any(last.values())

    try:
        wait_for(drained, timeout, interval)
    except FastQTimeout:
        left = ", ".join(f"{q}: {n}" for q, n in last.items() if n)
        raise FastQTimeout(f"queues not drained after {timeout}s ({left} message(s) left)") from None


# --- the pytest plugin (opt-in: pytest_plugins = ["fastq.testing"]) ---------------------------

try:
    import pytest
except ImportError:  # the helpers above work without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def fastq_config() -> dict:
        """Settings of the default ``fastq_app`` (override to change them). The broker is
        ``FASTQ_BROKER_URL`` (else redis://127.0.0.1:6379/0): point it at a database for tests."""
        return {}

    @pytest.fixture
    def fastq_app(fastq_config: dict) -> FastQ:
        """The app under test. Override it to return your own app::

            @pytest.fixture
            def fastq_app():
                from proj.tasks import app
                return app
        """
        return FastQ("fastq-testing", **fastq_config)

    @pytest.fixture
    def fastq_worker_parameters() -> dict:
        """Keyword arguments for the ``fastq_worker`` fixture's ``start_worker()``:
        ``queues``, ``concurrency``, ``hostname``, ``prefetch``, ``block_timeout``."""
        return {}

    @pytest.fixture
    def fastq_worker(fastq_app: FastQ, fastq_worker_parameters: dict) -> Iterator[WorkerThread]:
        """An in-process worker for ``fastq_app``, started before the test and
        stopped (warm) after it. Its tasks run in a thread of the test process."""
        with start_worker(fastq_app, **fastq_worker_parameters) as w:
            yield w

    @pytest.fixture
    def fastq_eager(fastq_app: FastQ) -> Iterator[FastQ]:
        """``fastq_app`` with ``task_always_eager`` (and ``task_eager_propagates``) for one test."""
        with eager(fastq_app) as app:
            yield app
