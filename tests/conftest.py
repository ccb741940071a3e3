"""Shared fixtures: a real Redis, private redis-servers, and `fastq worker` subprocesses.

Tests use DB 9 of the machine's Redis on 127.0.0.1:6379 (flushed per test) and
DB 10 as the execution ledger. Tests that stop or restart Redis start their own
`redis-server` on a free port (``redis_server`` fixture).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
# The tests' own modules (tests.apps...) import from the checkout; fastq itself
# comes from wherever it is installed (src/ is deliberately not on the path).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.apps.ledger import PATIENT  # noqa: E402  (needs ROOT on the path)

# Override to run several suites at once on one Redis without clashing.
TEST_DB = int(os.environ.get("FASTQ_TEST_DB", "9"))
LEDGER_DB = int(os.environ.get("FASTQ_TEST_LEDGER_DB", "10"))
MAIN_REDIS = "redis://127.0.0.1:6379"


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail after timeout
    (fastq.testing.wait_for, with the suite's longer default timeout)."""
    from fastq.testing import wait_for as poll

    return poll(predicate, timeout, interval, message=message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_main_redis() -> None:
    try:
        redis.Redis.from_url(MAIN_REDIS).ping()
    except redis.ConnectionError as exc:  # CI starts it; locally say how
        pytest.exit(f"no redis-server on 127.0.0.1:6379 ({exc}); start one (see .ci/run)", returncode=3)


@pytest.fixture(scope="session", autouse=True)
def _env():
    _check_main_redis()
    os.environ["FASTQ_BROKER_URL"] = f"{MAIN_REDIS}/{TEST_DB}"
    os.environ["FASTQ_TEST_LEDGER"] = f"{MAIN_REDIS}/{LEDGER_DB}"
    yield


@pytest.fixture
def redis_url() -> str:
    """The test broker URL, with its DB and the ledger DB flushed."""
    redis.Redis.from_url(f"{MAIN_REDIS}/{TEST_DB}").flushdb()
    redis.Redis.from_url(f"{MAIN_REDIS}/{LEDGER_DB}").flushdb()
    return f"{MAIN_REDIS}/{TEST_DB}"


@pytest.fixture
def r(redis_url) -> redis.Redis:
    """A client on the test DB."""
    return redis.Redis.from_url(redis_url, **PATIENT)


@pytest.fixture
def ledger(redis_url) -> redis.Redis:
    return redis.Redis.from_url(f"{MAIN_REDIS}/{LEDGER_DB}", **PATIENT)


@pytest.fixture
def app(redis_url):
    """The tests' app (tests.apps.basic), pointed at the test DB."""
    from tests.apps import basic

    basic.app.conf.broker_url = redis_url
    basic.app.conf.task_always_eager = False
    basic.app._reset()
    return basic.app


def client_for(url: str):
    """A redis-py client for any broker URL fastq takes (one server, cluster, sentinel)."""
    from fastq.broker.connect import make_client, parse_url

    return make_client(parse_url(url))


def fastq_command() -> list[str]:
    exe = Path(sys.executable).parent / "fastq"
    return [str(exe)] if exe.exists() else [shutil.which("fastq") or "fastq"]


class WorkerProcess:
    """A `fastq worker` subprocess; its output goes to a log file."""

    def __init__(self, args: list[str], env: dict, name: str) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"fastq-{name}-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*fastq_command(), "worker", *args], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        import psutil

        try:
            return [c.pid for c in psutil.Process(self.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def wait_ready(self, client: redis.Redis, timeout: float = 30.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return client.zscore("fastq:workers", self.name) is not None and b"ready." in self.log_path.read_bytes()

        wait_for(ready, timeout, message=f"worker {self.name} to start")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def kill_all(self) -> None:
        """SIGKILL the worker and its children (a host dying)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def worker(redis_url, request):
    """Start `fastq worker` subprocesses: ``worker("-P", "solo", ...)``.

    Defaults: ``-A tests.apps.basic:app``, a unique ``--hostname``, INFO logs.
    Waits until the worker has registered. Those still running after the test
    are killed; the logs of failed tests are printed."""
    started: list[WorkerProcess] = []
    client = redis.Redis.from_url(redis_url)
    counter = [0]

    def start(*args: str, app: str = "tests.apps.basic:app", env: dict | None = None, wait: bool = True,
              broker: str | None = None) -> WorkerProcess:
        counter[0] += 1
        name = f"w{counter[0]}-{os.getpid()}@test"
        full_env = {**os.environ, "FASTQ_BROKER_URL": broker or redis_url, **(env or {})}
        argv = ["-A", app, "--hostname", name, "--loglevel", "INFO", *args]
        wp = WorkerProcess(argv, full_env, name)
        started.append(wp)
        if wait:
            wp.wait_ready(client_for(broker) if broker else client)
        return wp

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:  # what each process of a worker was doing when the test gave up (SIGUSR1: stacks)
        for wp in started:
            if wp.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(wp.pid, signal.SIGUSR1)
        time.sleep(1.0)
    # Workers still running when the test ends are killed, not warm-stopped: an
    # idle warm stop takes seconds, and warm shutdown has tests of its own.
    for wp in started:
        wp.kill_all()
        wp._log.close()
    if failed:
        for wp in started:
            text = wp.log()
            # every line but the per-task ones, then the tail: a warning from early on
            # (a lost connection, a recovery) is often the clue
            notable = [line for line in text.splitlines()
                       if not re.search(r"INFO/\S+\] Task \S+ (succeeded|received)", line)]
            sys.stderr.write(f"\n----- log of {wp.name}, without per-task lines -----\n"
                             + "\n".join(notable)[-30000:]
                             + f"\n----- log of {wp.name}, the end -----\n{text[-8000:]}\n")


CANVAS = "tests.apps.canvasapp:app"


@pytest.fixture
def capp(redis_url):
    """The canvas tests' app (tests.apps.canvasapp), pointed at the test DB."""
    from tests.apps import canvasapp

    canvasapp.app.conf.broker_url = redis_url
    canvasapp.app.conf.task_always_eager = False
    canvasapp.app._reset()
    return canvasapp


@pytest.fixture
def cworker(worker):
    """One worker with two pool processes running the canvas app."""

    def start(*args: str, **kw):
        return worker("-P", "process", "-c", "2", *args, app=CANVAS, **kw)

    return start


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


class RedisServer:
    """A private redis-server on a free port, which tests may stop and restart."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fastq-redis-")
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--logfile", os.path.join(self.dir, "redis.log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)

        def up():
            try:
                return client.ping()
            except redis.AuthenticationError:  # --requirepass: it answers, so it is up
                return True
            except redis.ConnectionError:
                return False

        wait_for(up, 20, message=f"redis-server on {self.port}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server():
    """Start private redis-servers: ``redis_server("--appendonly", "yes")``."""
    servers: list[RedisServer] = []

    def start(*extra: str) -> RedisServer:
        s = RedisServer(*extra)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
