"""fastq.testing: the opt-in pytest plugin, run on a user's test files by pytester
(in a pytest subprocess, against the real Redis), and its helpers used directly."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import free_port
from fastq import FastQ
from fastq.exceptions import TimeoutError as FastQTimeout
from fastq.testing import WorkerThread, eager, queue_pending, start_worker, wait_for, wait_for_drain

pytest_plugins = ["pytester"]

USER_TASKS = '''
import os
from fastq import FastQ

app = FastQ("userproj")
SEEN = []

@app.task(name="user.add")
def add(x, y):
    SEEN.append((x, y))
    return x + y

@app.task(name="user.fail")
def fail(why):
    raise KeyError(why)

@app.task(name="user.flaky", bind=True, max_retries=3)
def flaky(self):
    if self.request.retries < 2:
        raise self.retry(countdown=0)
    return self.request.retries

@app.task(name="user.slow")
def slow(seconds):
    import time
    time.sleep(seconds)
    return "done"
'''

USER_CONFTEST = '''
import os
import pytest

pytest_plugins = ["fastq.testing"]

@pytest.fixture
def fastq_app():
    from usertasks import app
    app.conf.broker_url = os.environ["FASTQ_BROKER_URL"]
    app._reset()
    return app
'''


def _user_project(pytester, tests: str, conftest: str = USER_CONFTEST) -> None:
    pytester.makepyfile(usertasks=USER_TASKS)
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_user=tests)


def test_a_users_tests_run_their_tasks_on_an_in_process_worker(redis_url, r, pytester):
    # Given a user's project that opts in to the plugin and overrides fastq_app
    _user_project(pytester, '''
import pytest
from fastq.testing import wait_for, wait_for_drain
from usertasks import SEEN, add, fail, flaky, slow

def test_result(fastq_worker):
    r = add.delay(2, 3)
    assert wait_for(r, timeout=30) == 5
    # the task ran in this process: the test sees what it did
    assert (2, 3) in SEEN

def test_failure_is_raised_as_its_own_type(fastq_worker):
    with pytest.raises(KeyError):
        wait_for(fail.delay("nope"), timeout=30)

def test_retries_go_through_redis(fastq_worker):
    assert flaky.delay().get(timeout=30) == 2

def test_drain(fastq_app, fastq_worker):
    results = [add.delay(i, i) for i in range(50)]
    wait_for_drain(fastq_app, timeout=30)
    assert all(r.ready() for r in results)

@pytest.fixture
def fastq_worker_parameters():
    return {"queues": ["default", "slow"], "concurrency": 2}

def test_parameters(fastq_worker):
    assert fastq_worker.queues == ["default", "slow"]
    assert slow.apply_async((0.1,), queue="slow").get(timeout=30) == "done"
''')
    # When pytest runs them (a separate process, as a user's run would be)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    # Then they pass, and every worker deregistered when its test ended
    result.assert_outcomes(passed=5)
    assert r.zcard("fastq:workers") == 0
    assert len(r.keys("fastq:r:*")) >= 50  # the results really went through Redis


def test_eager_mode_needs_no_worker(pytester):
    _user_project(pytester, '''
import pytest
from fastq.testing import eager
from usertasks import add, app, fail

def test_fixture(fastq_eager):
    assert fastq_eager.conf.task_always_eager
    assert add.delay(1, 2).get() == 3

def test_fixture_propagates(fastq_eager):
    with pytest.raises(KeyError):
        fail.delay("x")

def test_context_manager_restores_the_settings():
    app.conf.task_always_eager = False
    with eager(app, propagate=False):
        r = fail.delay("x")
        assert r.state == "FAILURE" and isinstance(r.result, KeyError)
    assert app.conf.task_always_eager is False and app.conf.task_eager_propagates is False
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_the_plugin_is_opt_in(pytester):
    # Given a project that does not list fastq.testing in pytest_plugins
    _user_project(pytester, '''
def test_needs_the_plugin(fastq_worker):
    pass
''', conftest="")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    # Then its fixtures are unknown (installing fastq loads nothing into pytest)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'fastq_worker' not found*"])
    # And -p fastq.testing turns it on from the command line
    pytester.makeconftest(USER_CONFTEST.replace('pytest_plugins = ["fastq.testing"]', ""))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "fastq.testing")
    result.assert_outcomes(passed=1)


def test_default_app_from_fastq_config(pytester, redis_url):
    # Without an override, fastq_app is a fresh app built from fastq_config
    pytester.makeconftest('''
import pytest
pytest_plugins = ["fastq.testing"]

@pytest.fixture
def fastq_config():
    return {"task_default_queue": "tests"}
''')
    pytester.makepyfile(test_default='''
def test_default_app(fastq_app):
    mul = fastq_app.task(name="t.mul")(lambda x, y: x * y)
    from fastq.testing import start_worker
    with start_worker(fastq_app) as w:
        assert w.queues == ["tests"]
        assert mul.delay(6, 7).get(timeout=30) == 42
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


# --- the helpers, used directly --------------------------------------------------------


@pytest.fixture
def local_app(redis_url):
    app = FastQ("testing-helpers", broker=redis_url)
    app.task(name="h.add")(lambda x, y: x + y)

    @app.task(name="h.sleep")
    def sleep(seconds):
        time.sleep(seconds)
        return seconds

    return app


def test_wait_for_a_result_a_condition_and_bad_input(local_app):
    # Nobody runs the task: waiting for it times out, naming it
    r = local_app.send_task("h.add", (1, 2))
    with pytest.raises(FastQTimeout, match=r.id):
        wait_for(r, timeout=0.3)
    # A condition is polled and its value returned
    box = []
    threading.Timer(0.2, box.append, ("x",)).start()
    assert wait_for(lambda: box, timeout=10) == ["x"]
    with pytest.raises(FastQTimeout, match="the flag"):
        wait_for(lambda: False, timeout=0.2, message="the flag")
    with pytest.raises(TypeError, match="result or a callable, not int"):
        wait_for(42)


def test_wait_for_drain_reports_what_is_left(local_app):
    local_app.send_task("h.add", (1, 2))
    local_app.send_task("h.add", (1, 2), countdown=60)
    assert queue_pending(local_app) == {"default": 2}
    assert queue_pending(local_app, delayed=False) == {"default": 1}
    with pytest.raises(FastQTimeout, match="default: 2 message"):
        wait_for_drain(local_app, timeout=0.3)
    with start_worker(local_app):
        wait_for_drain(local_app, timeout=30, delayed=False)
    assert queue_pending(local_app) == {"default": 1}  # the one due in a minute


def test_stop_is_warm_and_the_worker_deregisters(local_app, r):
    w = WorkerThread(local_app, concurrency=1).start()
    assert r.zscore("fastq:workers", w.hostname) is not None
    slow = local_app.send_task("h.sleep", (1.0,))
    wait_for(lambda: w.worker.pool.counters()["active"] == 1, timeout=30, message="the task to start")
    w.stop()
    # the running task finished before stop() returned
    assert slow.get(timeout=1) == 1.0
    assert r.zscore("fastq:workers", w.hostname) is None
    assert not any(t.name.startswith("fastq-testing-worker") for t in threading.enumerate())


def test_worker_bad_input(local_app):
    with pytest.raises(ValueError, match="block_timeout must be a positive number"):
        WorkerThread(local_app, block_timeout=0)
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        WorkerThread(local_app, concurrency=-1)
    # An unreachable broker fails at start, naming it, instead of retrying in a thread
    down = FastQ("down", broker=f"redis://127.0.0.1:{free_port()}/0", broker_connection_retries=0)
    down.task(name="d.x")(lambda: 1)
    with pytest.raises(RuntimeError, match=r"cannot reach the broker at redis://127\.0\.0\.1:\d+/0"):
        WorkerThread(down).start()
    w = WorkerThread(local_app).start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            w.start()
    finally:
        w.stop()


def test_eager_restores_settings_after_an_error(local_app):
    local_app.conf.task_eager_propagates = False
    with pytest.raises(ZeroDivisionError), eager(local_app):
        assert local_app.conf.task_always_eager and local_app.conf.task_eager_propagates
        1 / 0  # noqa: B018
    assert (local_app.conf.task_always_eager, local_app.conf.task_eager_propagates) == (False, False)
