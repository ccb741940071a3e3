"""Stand-ins the rewritten import lines point at, for names fastq does not have.

Three kinds (``shared_task`` is fastq's own: it takes every option tasks.py
uses, ``typing=`` and ``pydantic=`` included):

* test-harness helpers (Celery's ``Manager``, ``anon_nodename``, ``uuid``): small
  equivalents on top of fastq's public API;
* ``missing(...)``: a Celery feature fastq lacks (``StampingVisitor``...). It keeps
  the test module importable; a test that uses it fails, and is counted as failed;
* ``celery_only(...)``: a Celery internal (kombu, backend classes, in-process worker
  state, Django fixup). Tests that need one are listed in ``not_applicable.py``.
"""

from __future__ import annotations

import socket
import sys
import time
import uuid as _uuid
from functools import partial
from itertools import count
from typing import Any

from fastq import states
from fastq.exceptions import TimeoutError as FastqTimeoutError

# --- placeholders --------------------------------------------------------------


class MissingFeatureError(NotImplementedError):
    """A Celery name fastq does not have was used."""


class CeleryOnlyError(NotImplementedError):
    """A Celery internal was used (the test should be in not_applicable.py)."""


class _PlaceholderMeta(type):
    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise cls._error(f"{cls._celery_name}.{attr}: {cls._what}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls._decorator_factory:  # @control_command(...): keep the module importable
            return lambda fn: fn
        if cls.__dict__.get("_placeholder_root", False):
            raise cls._error(f"{cls._celery_name}(): {cls._what}")
        return super().__call__(*args, **kwargs)  # a subclass defined by the tests


def _placeholder(celery_name: str, error: type, what: str, decorator_factory: bool = False) -> type:
    short = celery_name.rsplit(".", 1)[-1]
    return _PlaceholderMeta(short, (), {"_celery_name": celery_name, "_error": error, "_what": what,
                                        "_decorator_factory": decorator_factory, "_placeholder_root": True,
                                        "__module__": __name__})


def missing(celery_name: str, decorator_factory: bool = False) -> type:
    """A Celery feature fastq lacks: importable, subclassable, fails when used."""
    return _placeholder(celery_name, MissingFeatureError, "fastq has no equivalent", decorator_factory)


def celery_only(celery_name: str, decorator_factory: bool = False) -> type:
    """A Celery internal with no meaning in fastq: importable, fails when used."""
    return _placeholder(celery_name, CeleryOnlyError, "a Celery internal (test not applicable)", decorator_factory)


# --- pure test-harness helpers --------------------------------------------------------


def anon_nodename(hostname: str | None = None, prefix: str = "celery") -> str:
    """celery.utils.nodenames.anon_nodename: the session worker is started with this name."""
    return f"{prefix}@{hostname or socket.gethostname()}"


def uuid() -> str:
    """celery.uuid (a str uuid4)."""
    return str(_uuid.uuid4())


class Sentinel(Exception):
    """Signifies the end of something."""


def retry_over_time(fun, catch, args=(), kwargs=None, errback=None, max_retries=None, interval_start=2,
                    interval_step=2, interval_max=30, timeout=None, **_):
    """kombu.utils.functional.retry_over_time, as Manager uses it."""
    kwargs = kwargs or {}
    end = time.monotonic() + timeout if timeout else None

    def intervals():
        interval = interval_start
        while True:
            yield min(interval, interval_max)
            interval += interval_step

    ivals = intervals()
    for retries in count():
        try:
            return fun(*args, **kwargs)
        except catch as exc:
            if max_retries is not None and retries >= max_retries:
                raise
            if end is not None and time.monotonic() > end:
                raise
            sleep_for = errback(exc, ivals, retries) if errback else next(ivals)
            time.sleep(sleep_for or 0)


class Manager:
    """celery.contrib.testing.manager.Manager, the same method names, on fastq's API."""

    def __init__(self, app, block_timeout: float = 30 * 60.0, no_join: bool = False, stdout=None, stderr=None) -> None:
        self.app = app
        self.stdout = sys.stdout if stdout is None else stdout
        self.stderr = sys.stderr if stderr is None else stderr
        self.block_timeout = block_timeout
        self.no_join = no_join

    def remark(self, s: str, sep: str = "-") -> None:
        print(f"{sep}{s}", file=self.stdout)

    def warn(self, s: str) -> None:
        self.stderr.write(s + "\n")

    def missing_results(self, r) -> list[str]:
        return [res.id for res in r.results if not res.ready()]

    def wait_for(self, fun, catch, desc="thing", args=(), kwargs=None, errback=None, max_retries=10,
                 interval_start=0.1, interval_step=0.5, interval_max=5.0, emit_warning=False, **options):
        def on_error(exc, intervals, retries):
            interval = next(intervals)
            if emit_warning:
                self.warn(f"Still waiting for {desc}.  Trying again in {interval}s: {exc!r}")
            if errback:
                errback(exc, interval, retries)
            return interval

        return retry_over_time(fun, catch, args=args, kwargs=kwargs, errback=on_error, max_retries=max_retries,
                               interval_start=interval_start, interval_step=interval_step,
                               interval_max=interval_max, **options)

    def ensure_not_for_a_while(self, fun, catch, desc="thing", max_retries=20, interval_start=0.1,
                               interval_step=0.02, interval_max=1.0, emit_warning=False, **options):
        try:
            self.wait_for(fun, catch, desc=desc, max_retries=max_retries, interval_start=interval_start,
                          interval_step=interval_step, interval_max=interval_max, emit_warning=emit_warning)
        except catch:
            pass
        else:
            raise AssertionError(f"Should not have happened: {desc}")

    def join(self, r, propagate=False, max_retries=10, **kwargs):
        from fastq.result import ResultSet

        if self.no_join:
            return None
        if not isinstance(r, ResultSet):
            r = ResultSet([r])
        kwargs.pop("callback", None)
        for _ in range(max_retries) if max_retries else count(0):
            try:
                return r.get(propagate=propagate, **kwargs)
            except (OSError, FastqTimeoutError) as exc:  # socket.timeout is an OSError
                self.remark(f"Still waiting for {self.missing_results(r)}: {exc!r}", "!")
        raise AssertionError("Test failed: Missing task results")

    def inspect(self, timeout: float = 3.0):
        return self.app.control.inspect(timeout=timeout)

    def _task_states(self, timeout: float) -> dict[str, set]:
        """{'active'|'reserved': {task ids}}, from inspect (fastq has no query_task)."""
        insp = self.inspect(timeout)
        found: dict[str, set] = {"active": set(), "reserved": set()}
        for kind in found:
            for tasks in (getattr(insp, kind)() or {}).values():
                found[kind].update(t.get("id") for t in tasks or ())
        return found

    def _ids_match(self, kinds: list[str], ids, timeout: float = 0.5) -> bool:
        found = self._task_states(timeout)
        done = {i for i in ids if self.app.AsyncResult(i).ready()}
        return all(i in done or any(i in found[k] for k in kinds) for i in ids)

    def is_received(self, ids, **kwargs) -> bool:
        return self._ids_match(["reserved", "active"], ids, **kwargs)

    def is_accepted(self, ids, **kwargs) -> bool:
        return self._ids_match(["active"], ids, **kwargs)

    @staticmethod
    def is_result_task_in_progress(results, **kwargs) -> bool:
        return all(result.state in (states.STARTED, states.SUCCESS) for result in results)

    def true_or_raise(self, fun, *args, **kwargs):
        res = fun(*args, **kwargs)
        if not res:
            raise Sentinel()
        return res

    def assert_task_worker_state(self, fun, ids, interval=0.5, **policy):
        return self.wait_for(partial(self.true_or_raise, fun, ids, timeout=interval), (Sentinel,), **policy)

    def assert_accepted(self, ids, interval=0.5, desc="waiting for tasks to be accepted", **policy):
        return self.assert_task_worker_state(self.is_accepted, ids, interval=interval, desc=desc, **policy)

    def assert_received(self, ids, interval=0.5, desc="waiting for tasks to be received", **policy):
        return self.assert_task_worker_state(self.is_received, ids, interval=interval, desc=desc, **policy)

    def assert_task_state_from_result(self, fun, results, interval=0.5, **policy):
        return self.wait_for(partial(self.true_or_raise, fun, results, timeout=interval), (Sentinel,), **policy)

    def assert_result_tasks_in_progress_or_completed(self, async_results, interval=0.5,
                                                     desc="waiting for tasks to be started or completed", **policy):
        return self.assert_task_state_from_result(self.is_result_task_in_progress, async_results,
                                                  interval=interval, desc=desc, **policy)

    def wait_until_idle(self, timeout: float = 10.0) -> None:
        """Purge the default queue, then wait until the worker runs nothing."""
        queue = self.app.conf.task_default_queue
        while self.app.broker.purge(queue):
            pass
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not sum(len(t or ()) for t in (self.inspect(1.0).active() or {}).values()):
                return
            time.sleep(0.1)
