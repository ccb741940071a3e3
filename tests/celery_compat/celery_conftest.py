"""Celery's t/integration/conftest.py, for fastq: the same names and fixtures.

Copied over Celery's conftest.py by harness.prepare() (so it is not collected
from here). The tests import from it TEST_BROKER, TEST_BACKEND, flaky,
check_for_logs, get_active_redis_channels and get_redis_connection; they use the
fixtures celery_session_app, celery_session_worker, app, manager.

* Broker and results: a private redis-server (started here unless TEST_BROKER is
  set, as the runner does); tasks.py's get_redis_connection() reaches it through
  REDIS_HOST/REDIS_PORT.
* The session worker: one ``fastq worker -A compat_app:app -c 4`` subprocess,
  named like Celery's test worker (anon_nodename(): celery@<host>).
* Tests listed in tests/celery_compat/not_applicable.py are skipped with
  "not applicable: <reason>"; the per-test timeout (CELERY_COMPAT_TIMEOUT
  seconds, default 25) caps Celery's own @pytest.mark.timeout(300); see _Timeout.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.celery_compat.not_applicable import NOT_APPLICABLE
from tests.celery_compat.shim import Manager, anon_nodename
from tests.conftest import RedisServer, WorkerProcess, wait_for

logger = logging.getLogger(__name__)

if not os.environ.get("TEST_BROKER"):  # run directly: start a private Redis
    _server = RedisServer()
    atexit.register(_server.stop)
    os.environ["TEST_BROKER"] = os.environ["TEST_BACKEND"] = _server.url
    os.environ["REDIS_HOST"], os.environ["REDIS_PORT"] = "127.0.0.1", str(_server.port)

import compat_app  # noqa: E402  (the session app: Celery always has a current app, even at collection)
from t.integration.tasks import get_redis_connection  # noqa: E402  (reads REDIS_PORT)

TEST_BROKER = os.environ["TEST_BROKER"]
TEST_BACKEND = os.environ.get("TEST_BACKEND", TEST_BROKER)
TIMEOUT_CAP = float(os.environ.get("CELERY_COMPAT_TIMEOUT", "25"))


def flaky(fn):
    """Celery's @flaky (pytest-rerunfailures, five reruns): no reruns here."""
    return fn


__all__ = ("TEST_BACKEND", "TEST_BROKER", "check_for_logs", "flaky", "get_active_redis_channels",
           "get_redis_connection")


def get_active_redis_channels():
    return get_redis_connection().execute_command("PUBSUB CHANNELS")


def check_for_logs(caplog, message: str, max_wait: float = 1.0, interval: float = 0.1) -> bool:
    start_time = time.monotonic()
    while time.monotonic() - start_time < max_wait:
        if any(re.search(message, record.message) for record in caplog.records):
            return True
        time.sleep(interval)
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        key = item.nodeid.split("[")[0]
        reason = NOT_APPLICABLE.get(item.nodeid) or NOT_APPLICABLE.get(key)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"not applicable: {reason}"))


class _Timeout:
    """The per-test timeout (pytest-timeout is off: a subtest swallows its one Failed).

    After TIMEOUT_CAP seconds (or the test's own @pytest.mark.timeout, if shorter)
    Failed("Timeout") is raised, then again every half second until the phase
    ends, so each remaining subtest (and each blocking get()) gives up at once."""

    def __init__(self, item) -> None:
        marker = item.get_closest_marker("timeout")
        own = (marker.kwargs.get("timeout") or (marker.args[0] if marker.args else None)) if marker else None
        self.seconds = min(float(own or TIMEOUT_CAP), TIMEOUT_CAP)

    def _fire(self, signum, frame):
        pytest.fail(f"Timeout (>{self.seconds:g}s) [celery_compat]", pytrace=False)

    def _watch(self) -> None:
        # a thread, and SIGUSR2: code under test may use SIGALRM/setitimer itself
        if self.done.wait(self.seconds):
            return
        while not self.done.is_set():
            signal.pthread_kill(self.main, signal.SIGUSR2)
            self.done.wait(0.5)

    def __enter__(self):
        self.previous = signal.signal(signal.SIGUSR2, self._fire)
        self.main = threading.main_thread().ident
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="celery-compat-timeout")
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        signal.signal(signal.SIGUSR2, self.previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _Timeout(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _Timeout(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with _Timeout(item):
        return (yield)


@pytest.fixture(scope="session")
def celery_session_app():
    return compat_app.app


@pytest.fixture(scope="session")
def celery_session_worker(celery_session_app):
    import redis

    root = Path(__file__).resolve().parents[2]  # the prepared directory (compat_app.py)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    name = anon_nodename()
    wp = WorkerProcess(["-A", "compat_app:app", "-c", "4", "--hostname", name, "--loglevel", "INFO"], env, name)
    sys.stderr.write(f"\nfastq worker {name}: log {wp.log_path}\n")
    wp.wait_ready(redis.Redis.from_url(TEST_BROKER))
    yield wp
    wp.stop(10)
    dest = os.environ.get("CELERY_COMPAT_WORKER_LOG")
    if dest:
        Path(dest).write_bytes(wp.log_path.read_bytes())


@pytest.fixture
def celery_worker():
    pytest.fail("The integration suite runs against a single shared session worker (celery_session_worker).")


@pytest.fixture
def celery_app(celery_session_app):
    from tests.celery_compat.session_app import make_app

    app = make_app()
    yield app
    celery_session_app.set_default()


@pytest.fixture
def app(celery_app):
    yield celery_app


@pytest.fixture
def manager(app, celery_session_worker):
    manager = Manager(app)
    yield manager
    try:
        manager.wait_until_idle()
    except Exception as e:  # noqa: BLE001 - as Celery's conftest
        logger.warning("Failed to stop Celery test manager cleanly: %s", e)


@pytest.fixture(autouse=True)
def ZZZZ_set_app_current(app, celery_session_app):  # noqa: N802 - Celery's name
    app.set_default()  # fastq has one notion of "current" (Celery: set_current + set_default)
    yield


_ = wait_for  # re-exported for helpers that poll
