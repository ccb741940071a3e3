"""More tasks for the Core tests (``-A tests.apps.extra:app`` and friends).

``app`` is the tests' app of ``tests.apps.basic`` with more tasks registered on
it, so a worker started with ``-A tests.apps.extra:app`` (or ``-A tests.apps.extra``)
runs every basic task too. ``started_app`` and ``expiring_app`` are separate
apps with app-wide settings (``task_track_started``, ``result_expires``).

Tasks that must stay running until the test lets them finish ("block" tasks)
mark themselves running in the ledger (``<key>:running``) and wait until the
test sets ``<key>:release`` there, so no test depends on how fast a task runs.
"""

import os
import time

from tests.apps.basic import app, ledger

from fastq import FastQ
from fastq.exceptions import Reject

#: Result TTL of ``expiring_app`` (seconds).
EXPIRING_RESULT_EXPIRES = 120


def _block(key: str, limit: float) -> str:
    ledger().set(f"{key}:running", os.getpid())
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if ledger().get(f"{key}:release") is not None:
            return "released"
        time.sleep(0.02)
    return "gave up"


@app.task
def plain_add(x, y):
    """No name given: the name is ``tests.apps.extra.plain_add``."""
    return x + y


@app.task(bind=True, name="proj.fetch", queue="io", ignore_result=False)
def fetch(self, url):
    r = self.request
    return {"url": url, "id": r.id, "retries": r.retries, "hostname": r.hostname, "queue": r.queue}


@app.task(name="extra.block")
def block(key, limit=60.0):
    """Runs until the test releases it (acks late: the default)."""
    return _block(key, limit)


@app.task(name="extra.block_early", acks_late=False)
def block_early(key, limit=60.0):
    """Like extra.block, but acknowledged before it runs."""
    return _block(key, limit)


@app.task(name="extra.retry_later", bind=True, max_retries=3)
def retry_later(self):
    """Asks for a retry far in the future: stays in RETRY for the test."""
    raise self.retry(exc=ValueError("try again later"), countdown=300)


@app.task(name="extra.retry_once", bind=True, max_retries=3)
def retry_once(self):
    """Retries once at once; the second try reports its request."""
    if self.request.retries < 1:
        raise self.retry(countdown=0)
    return {"id": self.request.id, "retries": self.request.retries, "hostname": self.request.hostname}


@app.task(name="extra.private_error")
def private_error():
    """Raises an exception whose module the producer has never imported."""
    cls = type("PrivateError", (Exception,), {"__module__": "tests.apps.never_imported_anywhere"})
    raise cls("hidden cause")


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")
        self.a, self.b = a, b


@app.task(name="extra.needs_two_args")
def needs_two_args():
    """Raises an exception that cannot be rebuilt from its message alone."""
    raise NeedsTwoArgs("left", "right")


class ExpectedException(Exception):
    """As in Celery's integration tests: raised with two arguments."""


class Pair(Exception):
    def __init__(self, left, right):
        super().__init__(left, right)
        self.left, self.right = left, right


@app.task(name="extra.expected_exception")
def expected_exception():
    raise ExpectedException("Task expected to fail", "test")


@app.task(name="extra.pair_error")
def pair_error():
    """Raises an exception whose constructor takes two arguments, and passes them on."""
    raise Pair("left", {"n": 2})


@app.task(name="extra.base_exception")
def base_exception():
    raise BaseException("the base of all")


@app.task(name="extra.generator_result")
def generator_result():
    return (i for i in range(3))


# --- apps with app-wide settings ----------------------------------------------------

started_app = FastQ("extra_started", task_track_started=True)


@started_app.task(name="extra.tracked")
def tracked(key, limit=60.0):
    """track_started comes from the app setting task_track_started."""
    return _block(key, limit)


expiring_app = FastQ("extra_expiring")
expiring_app.conf.update(result_expires=EXPIRING_RESULT_EXPIRES)


@expiring_app.task(name="extra.expiring_add")
def expiring_add(x, y):
    return x + y


@expiring_app.task(name="extra.expiring_fail")
def expiring_fail():
    raise ValueError("expiring failure")


# --- helpers for the tests (run in the test process) ----------------------------------


def is_running(key: str) -> bool:
    return ledger().get(f"{key}:running") is not None


def release(key: str) -> None:
    ledger().set(f"{key}:release", 1)


def _request_info(request) -> dict:
    return {"delivery_info": request.delivery_info, "time_limit": request.time_limit,
            "soft_time_limit": request.soft_time_limit}


@app.task(name="extra.request_info", bind=True)
def request_info(self):
    """What Celery's tasks read from their request: delivery_info and time limits."""
    return _request_info(self.request)


# In the extra app: a hard time limit makes a solo worker of the basic app warn at start.
@app.task(name="extra.declared_limits", bind=True, time_limit=60, soft_time_limit=45)
def declared_limits(self):
    return _request_info(self.request)


class Recorded(app.Task):
    """A base class with Celery's handler methods: each call is pushed to the ledger
    list ``handlers:<first argument>``."""

    def _note(self, args, *what):
        ledger().rpush(f"handlers:{args[0]}", " ".join(str(w) for w in what))

    def before_start(self, task_id, args, kwargs):
        self._note(args, "before_start", task_id == self.request.id)

    def on_success(self, retval, task_id, args, kwargs):
        self._note(args, "on_success", retval)

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        self._note(args, "on_retry", type(exc).__name__)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        self._note(args, "on_failure", type(exc).__name__, "Traceback" in (einfo or ""))

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        self._note(args, "after_return", status)


@app.task(name="extra.handled", base=Recorded, bind=True, max_retries=1, default_retry_delay=0.05)
def handled(self, key, outcome):
    """Succeeds, fails, or fails once and then succeeds ("retry"), per ``outcome``."""
    if outcome == "fail":
        raise ValueError("handled boom")
    if outcome == "retry" and self.request.retries == 0:
        raise self.retry(exc=KeyError("once"))
    return outcome


class AutoRetryClassTask(app.Task):
    """Celery's class-based task, as its integration tests declare one."""

    name = "extra.auto_retry_class_task"
    autoretry_for = (ValueError,)
    retry_kwargs = {"max_retries": 1, "countdown": 0.05}

    def run(self, key):
        ledger().incr(key)
        if self.request.retries:
            return self.request.retries
        raise ValueError("first try fails")


auto_retry_class_task = app.register_task(AutoRetryClassTask())


@app.task(name="extra.retry_with", bind=True, max_retries=1)
def retry_with(self, foo, bar, label=None, how="args"):
    """First try: retries with new arguments (Celery's retry(args=/kwargs=)); then reports them."""
    if not self.request.retries:
        if how == "args":
            raise self.retry(args=(foo + 1, bar + 1), countdown=0)
        raise self.retry(kwargs={"foo": foo + 1}, countdown=0)
    return [foo, bar, label, self.request.retries, self.request.is_eager]


@app.task(name="extra.reject_once", bind=True)
def reject_once(self, always=False):
    """Rejects with requeue until its message comes back redelivered (or always)."""
    if always or not self.request.delivery_info["redelivered"]:
        raise Reject("again", requeue=True)
    return "second pass"
