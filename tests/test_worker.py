"""`fastq worker` subprocesses: start-up, pools, shutdown, bad input, broker behaviour."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import msgspec
import pytest
import redis
from tests.apps import extra

from conftest import ROOT, fastq_command, free_port, wait_for
from fastq import FastQ, states
from fastq.exceptions import NotRegistered, TaskError

EXTRA = "tests.apps.extra:app"
STREAM = "fastq:{default}:s"
DLQ = "fastq:{default}:dlq"
BASIC_TASKS = ["tests.add", "tests.echo", "tests.fail", "tests.noop", "tests.sleep", "tests.started", "tests.who"]




def _pending(r: redis.Redis, stream: str = STREAM) -> int:
    try:
        return r.xpending(stream, "fastq")["pending"]
    except redis.ResponseError:  # no group yet
        return 0


def _dead_letters(r: redis.Redis, key: str = DLQ) -> list[dict]:
    return [fields for _id, fields in r.xrange(key)]


def _alive(w) -> bool:
    return w.proc.poll() is None


@contextlib.contextmanager
def fastq_process(*args: str, env: dict | None = None):
    """Run ``fastq <args>`` with its output in a log file; stopped afterwards."""
    fd, path = tempfile.mkstemp(prefix="fastq-cli-", suffix=".log")
    log = os.fdopen(fd, "wb")
    proc = subprocess.Popen([*fastq_command(), *args], cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, Path(path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


# --- start-up --------------------------------------------------------------------------------


def test_banner_shows_broker_queues_pool_concurrency_and_tasks(redis_url, worker):
    # Given / When a worker started with explicit options
    w = worker("-P", "thread", "--concurrency", "3", "-Q", "alpha,beta", "--prefetch", "7")
    log = w.log()
    # Then its banner shows each of them and the registered tasks
    assert "fastq 0.1.0" in log
    assert w.name in log
    assert f"broker:      {redis_url}" in log
    assert "queues:      alpha, beta" in log
    assert "thread (concurrency 3)" in log
    assert "prefetch 7" in log
    for name in BASIC_TASKS:
        assert f"  . {name}\n" in log


def test_banner_and_logs_never_show_the_broker_password(redis_server, worker):
    # Given a Redis that needs a password, and a broker URL carrying it
    # (set after start: the fixture's readiness ping cannot authenticate)
    password = "pw-" + uuid.uuid4().hex
    server = redis_server()
    redis.Redis(port=server.port).config_set("requirepass", password)
    url = f"redis://:{password}@127.0.0.1:{server.port}/0"
    # When a worker starts on it and runs a task
    w = worker("-P", "solo", broker=url)
    res = FastQ("tests", broker=url).send_task("tests.add", args=(1, 1))
    assert res.get(timeout=30) == 2
    # Then the log shows where the broker is, but never the password
    log = w.log()
    assert f"127.0.0.1:{server.port}" in log
    assert ":********@" in log
    assert password not in log


def test_worker_registers_under_its_hostname(app, r):
    # Given / When a worker started with -n NAME
    name = f"custom-{uuid.uuid4().hex[:8]}@example"
    with fastq_process("worker", "-A", "tests.apps.basic:app", "-P", "solo", "-n", name) as (proc, log):
        # Then it is known by that name
        def registered():
            assert proc.poll() is None, log.read_text()
            return r.zscore("fastq:workers", name) is not None

        wait_for(registered, 30, message="the worker")
        assert name in log.read_text()
        assert app.tasks["tests.who"].delay().get(timeout=30)["hostname"] == name


def test_app_given_as_a_module_finds_its_app_attribute(app, worker):
    # Given / When a worker is started with -A <module> (no attribute)
    w = worker("-P", "solo", app="tests.apps.basic")
    # Then it found the module's `app` and runs its tasks
    assert "  . tests.add" in w.log()
    assert app.tasks["tests.add"].delay(3, 3).get(timeout=30) == 6


def test_celery_style_app_option_before_the_command(app, r):
    # Given `fastq -A tests.apps.basic:app worker ...` (Celery's order)
    name = f"celery-form-{uuid.uuid4().hex[:8]}@test"
    with fastq_process("-A", "tests.apps.basic:app", "worker", "-P", "solo", "--hostname", name,
                       "--loglevel", "INFO") as (proc, log):
        # When it has started
        def ready():
            assert proc.poll() is None, log.read_text()
            return r.zscore("fastq:workers", name) is not None and "ready." in log.read_text()

        wait_for(ready, 30, message="the worker")
        # Then it runs tasks
        assert app.tasks["tests.add"].delay(4, 4).get(timeout=30) == 8
        # ... and stops cleanly on SIGTERM
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_one_log_line_per_successful_task(app, worker):
    # Given a worker logging at INFO
    w = worker("-P", "solo")
    # When a task succeeds
    res = app.tasks["tests.add"].delay(1, 2)
    assert res.get(timeout=30) == 3
    # Then exactly one INFO line names the task, its id, its runtime and the outcome
    wait_for(lambda: res.id in w.log(), 10, message="the task's log line")
    lines = [line for line in w.log().splitlines() if res.id in line]
    assert len(lines) == 1
    line = lines[0]
    assert "INFO" in line
    assert "tests.add" in line
    assert "succeeded" in line
    assert re.search(r"\d+\.\d+\s*s", line)


def test_one_log_line_per_failed_task_names_runtime_and_outcome(app, worker):
    # Given a worker logging at INFO
    w = worker("-P", "solo")
    # When a task fails
    res = app.tasks["tests.fail"].delay("logged failure")
    res.get(timeout=30, propagate=False)
    # Then one log line names the task, its id, the outcome and the runtime
    wait_for(lambda: res.id in w.log(), 10, message="the task's log line")
    lines = [line for line in w.log().splitlines() if res.id in line]
    assert len(lines) == 1
    line = lines[0]
    assert "tests.fail" in line
    assert "ValueError" in line
    assert re.search(r"\d+\.\d+\s*s", line), f"no runtime in {line!r}"


def test_loglevel_warning_hides_task_lines(app, worker):
    # Given a worker logging at WARNING
    w = worker("-P", "solo", "--loglevel", "WARNING")
    # When a task succeeds
    res = app.tasks["tests.add"].delay(1, 2)
    assert res.get(timeout=30) == 3
    # Then no line is logged for it
    assert res.id not in w.log()


# --- pools --------------------------------------------------------------------------------------


def test_process_pool_runs_n_child_processes(app, worker):
    # Given / When a process pool of 2
    w = worker("-P", "process", "--concurrency", "2")
    # Then the worker has two child processes
    children = wait_for(lambda: len(w.children()) == 2 and w.children(), 30, message="two children")
    # ... and tasks run in them, not in the parent
    pids = {app.tasks["tests.who"].delay().get(timeout=30)["pid"] for _ in range(4)}
    assert pids <= set(children)
    assert w.pid not in pids


def test_process_pool_runs_tasks_concurrently(app, worker):
    # Given a process pool of 2
    w = worker("-P", "process", "--concurrency", "2", app=EXTRA)
    wait_for(lambda: len(w.children()) == 2, 30, message="two children")
    k1, k2 = f"c1-{uuid.uuid4()}", f"c2-{uuid.uuid4()}"
    # When a second task is sent while the first is running
    a = extra.block.delay(k1)
    wait_for(lambda: extra.is_running(k1), 30, message="the first task")
    b = extra.block.delay(k2)
    # Then both run at the same time, in different children
    wait_for(lambda: extra.is_running(k2), 30, message="the second task")
    pids = {int(extra.ledger().get(f"{k}:running")) for k in (k1, k2)}
    assert len(pids) == 2 and pids <= set(w.children())
    extra.release(k1)
    extra.release(k2)
    assert a.get(timeout=30) == b.get(timeout=30) == "released"


def test_thread_pool_runs_tasks_concurrently(app, worker):
    # Given a thread pool of 3
    worker("-P", "thread", "--concurrency", "3", app=EXTRA)
    keys = [f"t{i}-{uuid.uuid4()}" for i in range(3)]
    results = []
    # When each task is sent once the previous one is running
    for k in keys:
        results.append(extra.block.delay(k))
        wait_for(lambda k=k: extra.is_running(k), 30, message=f"task {k}")
    # Then all three run at once, and finish when released
    for k in keys:
        extra.release(k)
    assert [res.get(timeout=30) for res in results] == ["released"] * 3


def test_parent_restarts_a_child_that_dies(app, worker):
    # Given a process pool of 2
    w = worker("-P", "process", "--concurrency", "2")
    before = wait_for(lambda: len(w.children()) == 2 and w.children(), 30, message="two children")
    victim = before[0]
    # When one child is killed
    os.kill(victim, signal.SIGKILL)
    # Then a new child takes its place
    after = wait_for(lambda: (c := w.children()) and len(c) == 2 and victim not in c and c, 30,
                     message="a replacement child")
    assert len(set(after) - set(before)) == 1
    assert "died with signal SIGKILL" in w.log()
    # ... and tasks still run
    results = [app.tasks["tests.add"].delay(i, i) for i in range(10)]
    assert [res.get(timeout=30) for res in results] == [2 * i for i in range(10)]
    assert _alive(w)


# --- shutdown ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("pool", "sig"), [("solo", signal.SIGTERM), ("process", signal.SIGINT),
                                           ("asyncio", signal.SIGTERM)])
def test_warm_shutdown_finishes_the_running_task_and_exits_0(app, worker, r, pool, sig):
    # Given a worker running a task, with another message waiting behind it
    w = worker("-P", pool, "--concurrency", "1", app=EXTRA)
    key = f"warm-{uuid.uuid4()}"
    running = extra.block.delay(key)
    wait_for(lambda: extra.is_running(key), 30, message="the task to run")
    waiting = app.tasks["tests.add"].delay(1, 1)
    # When the worker gets one shutdown signal
    w.signal(sig)
    wait_for(lambda: "warm shutdown" in w.log(), 20, message="the warm shutdown line")
    # Then it waits for the running task ...
    assert _alive(w)
    extra.release(key)
    # ... which finishes, and the worker exits with 0
    assert w.proc.wait(30) == 0
    assert running.get(timeout=10) == "released"
    # ... leaving the unstarted message queued, not lost
    assert waiting.state == states.PENDING
    assert r.xlen(STREAM) + r.xlen("fastq:{default}:ret") == 1
    assert r.zscore("fastq:workers", w.name) is None


def test_warm_shutdown_of_an_idle_worker_exits_0(worker):
    # Given an idle worker
    w = worker("-P", "solo")
    # When it gets SIGTERM
    w.signal(signal.SIGTERM)
    # Then it exits with 0
    assert w.proc.wait(30) == 0


@pytest.mark.parametrize("pool", ["solo", "process", "asyncio"])
def test_second_signal_exits_now_without_losing_the_message(app, worker, r, pool):
    # Given a worker running a task that does not finish by itself
    w = worker("-P", pool, "--concurrency", "1", app=EXTRA)
    key = f"cold-{uuid.uuid4()}"
    res = extra.block.delay(key, 120)
    wait_for(lambda: extra.is_running(key), 30, message="the task to run")
    # When it gets two shutdown signals
    w.signal(signal.SIGTERM)
    wait_for(lambda: "warm shutdown" in w.log(), 20, message="the warm shutdown line")
    w.signal(signal.SIGTERM)
    # Then it exits at once, without finishing the task
    w.proc.wait(30)
    assert not res.ready()
    # ... and the message is still recorded in Redis (in flight or handed back)
    stats = app.broker.queue_stats("default")
    assert stats["waiting"] + stats["in_flight"] == 1


# --- messages in flight and acknowledgement ---------------------------------------------------


def test_running_message_stays_in_flight_until_acked_after_the_task(app, worker, r):
    # Given a worker
    w = worker("-P", "solo", app=EXTRA)
    key = f"inflight-{uuid.uuid4()}"
    # When it runs a task (acks_late by default)
    res = extra.block.delay(key)
    wait_for(lambda: extra.is_running(key), 30, message="the task to run")
    # Then the message is in the group's pending list, held by this worker
    summary = r.xpending(STREAM, "fastq")
    assert summary["pending"] == 1
    assert next(c["name"].decode() for c in summary["consumers"]).startswith(w.name)
    assert app.broker.queue_stats("default")["in_flight"] == 1
    # ... until the task has finished
    extra.release(key)
    assert res.get(timeout=30) == "released"
    wait_for(lambda: _pending(r) == 0, 10, message="the ack")
    assert r.xlen(STREAM) == 0


def test_acks_late_false_acks_before_running(app, worker, r):
    # Given a worker and a task declared with acks_late=False
    worker("-P", "solo", app=EXTRA)
    key = f"early-{uuid.uuid4()}"
    # When it runs
    res = extra.block_early.delay(key)
    wait_for(lambda: extra.is_running(key), 30, message="the task to run")
    # Then its message was acknowledged before it finished
    wait_for(lambda: _pending(r) == 0 and r.xlen(STREAM) == 0, 10, message="the early ack")
    assert not res.ready()
    extra.release(key)
    assert res.get(timeout=30) == "released"


def test_early_ack_task_runs_once(app, worker, ledger, r):
    # Given a worker
    worker("-P", "solo")
    key = f"early-ack-{uuid.uuid4()}"
    # When the acks_late=False task of the basic app runs
    assert app.tasks["tests.early_ack"].delay(key).get(timeout=30) == "ok"
    # Then it ran once and left nothing in flight
    assert ledger.hget(key, "runs") == b"1"
    wait_for(lambda: _pending(r) == 0 and r.xlen(STREAM) == 0, 10, message="the queue to be empty")


# --- queues and keys ---------------------------------------------------------------------------


def test_worker_consumes_only_its_queues(app, worker, r):
    # Given messages on three queues
    add = app.tasks["tests.add"]
    on_q1 = add.apply_async((1, 1), queue="q1")
    on_q2 = add.apply_async((2, 2), queue="q2")
    on_default = add.delay(3, 3)
    # When a worker consumes -Q q1,q2
    worker("-P", "solo", "-Q", "q1,q2")
    # Then it runs the messages of both, and leaves the default queue alone
    assert on_q1.get(timeout=30) == 2
    assert on_q2.get(timeout=30) == 4
    assert on_default.state == states.PENDING
    assert r.xlen(STREAM) == 1


def test_every_key_is_under_the_prefix_and_queue_keys_share_a_hash_tag(app, worker, r):
    # Given a worker on two queues that has done some of everything
    worker("-P", "solo", "-Q", "default,io")
    add = app.tasks["tests.add"]
    add.apply_async((1, 1), countdown=600)  # delayed
    add.apply_async((1, 1), queue="io", priority=5).get(timeout=30)
    with pytest.raises(NotRegistered):
        app.send_task("tests.no_such_task").get(timeout=30)  # dead-lettered
    add.delay(1, 1).get(timeout=30)
    # When the keys are listed
    keys = [k.decode() for k in r.scan_iter("*")]
    # Then every key is under "fastq:", and every key of a queue is "fastq:{<queue>}:..."
    assert keys
    assert all(k.startswith("fastq:") for k in keys), keys
    queue_keys = [k for k in keys if "{" in k]
    assert {"fastq:{default}:delayed", "fastq:{default}:dlq", "fastq:{default}:s", "fastq:{io}:s5"} <= set(queue_keys)
    for k in queue_keys:
        assert re.fullmatch(r"fastq:\{(default|io)\}:[a-z0-9]+", k), k
    assert not [k for k in keys if "default" in k and "{default}" not in k]


# --- bad input: clear errors, nothing lost, the worker never crashes -----------------------------

POOLS = [pytest.param(("-P", "solo"), id="solo"), pytest.param(("-P", "process", "-c", "1"), id="process"),
         pytest.param(("-P", "asyncio", "-c", "10"), id="asyncio"),
         pytest.param(("-P", "process", "-c", "1", "--async-concurrency", "10"), id="process-async")]


@pytest.mark.parametrize("pool", POOLS)
def test_unknown_task_fails_and_is_dead_lettered(app, worker, r, pool):
    # Given a worker
    w = worker(*pool)
    # When a task name nobody registered is sent
    res = app.send_task("tests.no_such_task", args=(1, 2))
    # Then the task FAILS with a clear reason ...
    with pytest.raises(NotRegistered, match=r"tests\.no_such_task.*not registered"):
        res.get(timeout=30)
    assert res.state == states.FAILURE
    # ... and the message is kept in the dead-letter stream, with the reason
    (dead,) = _dead_letters(r)
    assert dead[b"reason"] == b"unknown_task"
    assert b"tests.no_such_task" in dead[b"error"]
    assert msgspec.msgpack.decode(dead[b"p"])[0] == res.id
    # ... and the worker goes on
    assert app.tasks["tests.add"].delay(1, 1).get(timeout=30) == 2
    assert _alive(w)


@pytest.mark.parametrize("pool", POOLS)
def test_undecodable_message_is_dead_lettered_and_the_batch_goes_on(app, worker, r, pool):
    # Given a queue holding good messages around undecodable ones
    add = app.tasks["tests.add"]
    garbage = b"\xc1\xff\x00 not msgpack at all \x00\xfe"
    wrong_shape = msgspec.msgpack.encode({"not": "a message"})
    before = [add.delay(i, 1) for i in range(3)]
    r.xadd(STREAM, {"p": garbage})
    r.xadd(STREAM, {"p": wrong_shape})
    after = [add.delay(i, 2) for i in range(3)]
    # When a worker reads them (one batch: all were queued before it started)
    w = worker(*pool)
    # Then the good ones run
    assert [res.get(timeout=30) for res in before] == [1, 2, 3]
    assert [res.get(timeout=30) for res in after] == [2, 3, 4]
    # ... and the bad ones are in the dead-letter stream with their raw bytes
    dead = wait_for(lambda: len(_dead_letters(r)) == 2 and _dead_letters(r), 10, message="two dead letters")
    assert [d[b"reason"] for d in dead] == [b"undecodable", b"undecodable"]
    assert [d[b"p"] for d in dead] == [garbage, wrong_shape]
    assert all(d[b"error"] for d in dead)
    assert _pending(r) == 0
    assert _alive(w)


@pytest.mark.parametrize("pool", POOLS)
def test_wrong_arguments_fail_with_type_error(app, worker, pool):
    # Given a worker
    w = worker(*pool)
    add = app.tasks["tests.add"]
    # When a task gets too few, too many or unknown arguments (sent by name from a
    # client that does not have the task: where it is registered, the send is refused)
    client = FastQ("client", broker=app.conf.broker_url)
    bad = [client.send_task("tests.add", (1,)), client.send_task("tests.add", (1, 2, 3)),
           client.send_task("tests.add", kwargs={"x": 1, "z": 2})]
    with pytest.raises(TypeError, match="missing a required argument"):
        add.delay(1)
    # Then each fails with TypeError
    for res in bad:
        with pytest.raises(TypeError):
            res.get(timeout=30)
        assert res.state == states.FAILURE
    # ... and the worker goes on
    assert add.delay(1, 1).get(timeout=30) == 2
    assert _alive(w)


@pytest.mark.parametrize("pool", POOLS)
def test_a_task_raising_anything_fails_and_the_worker_goes_on(app, worker, pool):
    # Given a worker
    w = worker(*pool, app=EXTRA)
    if "process" in pool:
        wait_for(lambda: len(w.children()) == 1, 30, message="the pool child")
    children = w.children()
    raising = [("tests.fail", ValueError), ("tests.system_exit", SystemExit),
               ("tests.keyboard_interrupt", KeyboardInterrupt), ("extra.base_exception", BaseException)]
    # When tasks raise anything (even SystemExit or KeyboardInterrupt)
    sent = [(app.send_task(name), exc_type) for name, exc_type in raising]
    # Then each task is a FAILURE carrying its exception; one that is not an
    # Exception comes back as a TaskError naming it (re-raising SystemExit or
    # KeyboardInterrupt would end a caller that catches Exception)
    for res, exc_type in sent:
        exc = res.get(timeout=30, propagate=False)
        assert res.state == states.FAILURE
        if issubclass(exc_type, Exception):
            assert type(exc) is exc_type
        else:
            assert isinstance(exc, TaskError) and exc.exc_type == exc_type.__name__, exc
            with pytest.raises(TaskError, match=exc_type.__name__):
                res.get(timeout=30)
        assert exc_type.__name__ in res.traceback
    # ... and the worker (and its pool children) go on
    assert app.tasks["tests.add"].delay(2, 2).get(timeout=30) == 4
    assert _alive(w)
    assert w.children() == children
    assert "died" not in w.log()


@pytest.mark.parametrize("pool", POOLS)
def test_unserializable_result_fails_with_a_clear_reason(app, worker, pool):
    # Given a worker
    w = worker(*pool, app=EXTRA)
    # When tasks return values that cannot be serialized
    sent = [app.send_task("tests.unserializable"), app.send_task("extra.generator_result")]
    # Then each task is a FAILURE saying so
    for res in sent:
        with pytest.raises(TypeError, match="cannot be serialized"):
            res.get(timeout=30)
        assert res.state == states.FAILURE
    # ... and the worker goes on
    assert app.tasks["tests.add"].delay(2, 2).get(timeout=30) == 4
    assert _alive(w)


def test_failure_of_a_custom_exception_is_a_task_error_at_the_producer(app, worker):
    # Given a worker
    worker("-P", "solo", app=EXTRA)
    # When a task raises an exception class the producer cannot import
    res = extra.private_error.delay()
    # Then the producer gets TaskError naming it
    with pytest.raises(TaskError, match="PrivateError"):
        res.get(timeout=30)


# --- broker unreachable ---------------------------------------------------------------------------


def test_unreachable_broker_at_start_logs_one_line_and_retries(app, worker):
    # Given a broker URL with nothing listening
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    # When a worker starts on it
    w = worker("-P", "solo", broker=url, wait=False)
    # Then it says so in one line per attempt, retrying, without a traceback
    wait_for(lambda: w.log().count("Cannot connect") >= 2, 30, message="two 'Cannot connect' lines")
    log = w.log()
    assert "Traceback" not in log
    for line in log.splitlines():
        if "Cannot connect" in line:
            assert f"127.0.0.1:{port}" in line and "again" in line
    assert _alive(w)
    # When Redis appears on that port
    tmp = tempfile.mkdtemp(prefix="fastq-late-redis-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
                               "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)

        def registered():
            try:
                return client.zscore("fastq:workers", w.name) is not None
            except redis.ConnectionError:
                return False

        # Then the worker connects and runs tasks
        wait_for(registered, 45, message="the worker to connect")
        assert FastQ("tests", broker=url).send_task("tests.add", args=(5, 5)).get(timeout=30) == 10
        assert "Traceback" not in w.log()
    finally:
        w.stop()
        server.kill()
        server.wait(10)


def test_two_live_workers_cannot_share_a_name(app, worker, r):
    # Given a live worker named "twin@test"
    worker("-P", "solo", "--hostname", "twin@test", wait=False)
    wait_for(lambda: r.get("fastq:worker:twin@test"), 30, message="twin@test's heartbeat")
    # When a second worker claims the same name
    out = subprocess.run([*fastq_command(), "worker", "-A", "tests.apps.basic:app", "-P", "solo", "--hostname", "twin@test"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    # Then it refuses to start with one line, before printing any banner
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already named 'twin@test'" in lines[0], out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("pool", ["thread", "process", "asyncio"])
def test_sigusr1_writes_every_threads_stack_and_the_worker_runs_on(app, worker, pool):
    # Given a running worker (for the process pool: its children too, one process group)
    w = worker("-P", pool, "-c", "2")
    if pool == "process":
        wait_for(lambda: len(w.children()) >= 2, 30, message="the pool's children")
    # When it gets SIGUSR1, as Celery's worker does for the same purpose
    os.killpg(w.pid, signal.SIGUSR1)
    # Then every process writes its threads' stacks to the log ...
    expected = 3 if pool == "process" else 1
    wait_for(lambda: w.log().count("Current thread") >= expected, 30, message="the stacks in the log")
    assert "Thread 0x" in w.log() and 'File "' in w.log()
    # ... and runs on: a task still runs, and no process died of the signal
    assert app.tasks["tests.add"].delay(2, 3).get(timeout=30) == 5
    assert w.proc.poll() is None
    if pool == "process":
        assert len(w.children()) >= 2
