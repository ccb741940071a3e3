"""Tasks: the decorator, names, ways of calling, bound tasks and their request."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
import pytest
from tests.apps import extra

import fastq.exceptions
from conftest import wait_for
from fastq import AsyncResult, EagerResult, FastQ, ResultSet, Task, states
from fastq.exceptions import ImproperlyConfigured
from fastq.messages import decode_fields

EXTRA = "tests.apps.extra:app"




def module_level_function(x):
    return x


# --- the decorator and names ------------------------------------------------------------


def test_task_name_defaults_to_module_and_qualname():
    # Given an app
    app = FastQ("proj")

    # When functions are registered without a name
    @app.task
    def top(x):
        return x

    class Holder:
        @staticmethod
        def method():
            return 1

    t_method = app.task(Holder.method)
    t_module = app.task(module_level_function)
    # Then each is named module.qualname
    assert top.name == f"{__name__}.test_task_name_defaults_to_module_and_qualname.<locals>.top"
    assert t_method.name == f"{__name__}.test_task_name_defaults_to_module_and_qualname.<locals>.Holder.method"
    assert t_module.name == f"{__name__}.module_level_function"
    assert extra.plain_add.name == "tests.apps.extra.plain_add"
    # ... and is registered under that name
    assert app.tasks[t_module.name] is t_module


def test_task_decorator_with_options():
    # Given / When the Core issue's example task (tests.apps.extra.fetch)
    t = extra.fetch
    # Then its options are kept and it is registered under its name
    assert isinstance(t, Task)
    assert t.name == "proj.fetch"
    assert t.queue == "io"
    assert t.bind is True
    assert t.ignore_result is False
    assert extra.app.tasks["proj.fetch"] is t


def test_bare_decorator_returns_a_registered_task():
    # Given an app
    app = FastQ("proj")

    # When a function is decorated with @app.task (no parentheses)
    @app.task
    def mul(x, y):
        return x * y

    # Then the result is a Task that keeps the function's name and is registered
    assert isinstance(mul, Task)
    assert mul.__name__ == "mul"
    assert app.tasks[mul.name] is mul


def test_unknown_task_option_is_a_type_error():
    # Given an app
    app = FastQ("proj")
    # When a task is declared with an option that does not exist
    # Then the decorator raises TypeError naming it
    with pytest.raises(TypeError, match="no_such_option"):

        @app.task(name="proj.bad", no_such_option=1)
        def bad():
            pass


# --- calling ------------------------------------------------------------------------------


def test_plain_call_runs_locally_without_redis(app, r):
    # Given the tests' app and an empty Redis DB
    add = app.tasks["tests.add"]
    # When the task is called like a function
    value = add(2, 2)
    # Then it runs here and sends nothing
    assert value == 4
    assert r.dbsize() == 0


def test_delay_returns_an_async_result_that_a_worker_fills(app, worker):
    # Given a worker
    worker("-P", "solo")
    # When a task is sent with delay()
    res = app.tasks["tests.add"].delay(2, 2)
    # Then the handle is an AsyncResult with a UUID id, and the value arrives
    assert isinstance(res, AsyncResult)
    uuid.UUID(res.id)
    assert res.get(timeout=30) == 4


def test_apply_async_with_args_kwargs_and_default_options(app, worker):
    # Given a worker
    worker("-P", "solo")
    # When apply_async gets positional args, kwargs and every option as None
    res = app.tasks["tests.add"].apply_async(args=(2,), kwargs={"y": 2}, task_id=None, queue=None, priority=None,
                                             expires=None)
    # Then the task runs with both
    assert res.get(timeout=30) == 4


def test_apply_async_with_a_task_id(app, worker, r):
    # Given a worker and a chosen id
    worker("-P", "solo")
    task_id = f"my-id-{uuid.uuid4()}"
    # When the task is sent with that id
    res = app.tasks["tests.add"].apply_async((1, 1), task_id=task_id)
    # Then the result is stored under it
    assert res.id == task_id
    assert res.get(timeout=30) == 2
    assert r.exists(f"fastq:r:{task_id}") == 1


def test_apply_async_with_a_queue(app, worker, r):
    # Given a message sent to queue "io" (no worker consumes it yet)
    res = app.tasks["tests.add"].apply_async((3, 4), queue="io")
    # Then it waits in io's stream, not in the default queue
    assert r.xlen("fastq:{io}:s") == 1
    assert not r.exists("fastq:{default}:s")
    # When a worker consumes "io"
    worker("-P", "solo", "-Q", "io")
    # Then it runs
    assert res.get(timeout=30) == 7


def test_apply_async_with_a_priority(app, r):
    # Given the tests' app
    add = app.tasks["tests.add"]
    # When messages are sent with priorities
    add.apply_async((1, 1), priority=7)
    add.apply_async((1, 1), priority=0)
    # Then each lands in its priority's stream of the queue
    assert r.xlen("fastq:{default}:s7") == 1
    assert r.xlen("fastq:{default}:s") == 1


def test_apply_async_with_an_invalid_priority_is_refused(app, r):
    # Given the tests' app
    add = app.tasks["tests.add"]
    # When a priority outside 0..9 is given
    # Then it is refused and nothing is sent
    with pytest.raises(ImproperlyConfigured, match="priority"):
        add.apply_async((1, 1), priority=10)
    assert r.dbsize() == 0


def test_apply_async_with_expires_puts_the_expiry_in_the_message(app, r):
    # Given the tests' app
    before = dt.datetime.now(dt.timezone.utc).timestamp()
    # When a message is sent with expires=60 seconds
    app.tasks["tests.add"].apply_async((1, 1), expires=60)
    # Then the message carries an absolute expiry about a minute away
    (_, fields), = r.xrange("fastq:{default}:s")
    envelope = msgspec.msgpack.decode(fields[b"p"])
    assert before + 50 < envelope[6] < before + 120


def test_apply_async_unknown_option_is_a_type_error(app, r):
    # Given the tests' app
    # When apply_async gets an option it does not know
    # Then it raises TypeError and sends nothing
    with pytest.raises(TypeError, match="bogus_option"):
        app.tasks["tests.add"].apply_async((1, 1), bogus_option=True)
    assert r.dbsize() == 0


def test_send_task_by_name(app, worker):
    # Given a worker
    worker("-P", "solo")
    # When a task is sent by name
    res = app.send_task("tests.add", args=(1, 2), kwargs={})
    # Then it runs
    assert isinstance(res, AsyncResult)
    assert res.get(timeout=30) == 3


def test_task_with_a_queue_option_is_routed_there(app, worker, r):
    # Given the example task declared with queue="io"
    res = extra.fetch.delay("http://example.invalid/")
    assert r.xlen("fastq:{io}:s") == 1
    # When a worker consumes "io"
    w = worker("-P", "solo", "-Q", "io", app=EXTRA)
    # Then it runs there, and its request knows the queue and the worker
    out = res.get(timeout=30)
    assert out["url"] == "http://example.invalid/"
    assert out["queue"] == "io"
    assert out["hostname"] == w.name
    assert out["id"] == res.id


# --- local runs: apply() and task_always_eager ----------------------------------------------


def test_apply_returns_an_eager_result(app, r):
    # Given the tests' app
    add = app.tasks["tests.add"]
    # When the task is applied locally
    res = add.apply((2, 2))
    # Then an EagerResult with the AsyncResult interface describes the run
    assert isinstance(res, EagerResult)
    uuid.UUID(res.id)
    assert res.get() == 4
    assert res.get(timeout=1, propagate=True) == 4
    assert res.state == "SUCCESS"
    assert res.ready() and res.successful() and not res.failed()
    assert res.result == 4
    assert res.traceback is None
    assert isinstance(res.date_done, dt.datetime) and res.date_done.tzinfo is not None
    assert res.runtime is not None and res.runtime >= 0
    res.forget()
    # ... and nothing went through Redis
    assert r.dbsize() == 0


def test_apply_of_a_failing_task(app):
    # Given a task that raises ValueError
    fail = app.tasks["tests.fail"]
    # When it is applied locally
    res = fail.apply(("bad input",))
    # Then the EagerResult is a FAILURE carrying the exception and traceback
    assert res.state == "FAILURE"
    assert res.failed() and res.ready() and not res.successful()
    assert isinstance(res.result, ValueError)
    assert "ValueError: bad input" in res.traceback
    with pytest.raises(ValueError, match="bad input"):
        res.get()
    exc = res.get(propagate=False)
    assert isinstance(exc, ValueError) and str(exc) == "bad input"


def test_apply_with_kwargs_and_task_id(app):
    # Given the tests' app
    # When apply gets kwargs and an id
    res = app.tasks["tests.add"].apply((1,), {"y": 5}, task_id="eager-id-1")
    # Then both are used
    assert res.id == "eager-id-1"
    assert res.get() == 6


def test_task_always_eager_runs_delay_and_apply_async_locally(app, r):
    # Given task_always_eager is on
    app.conf.task_always_eager = True
    try:
        add = app.tasks["tests.add"]
        # When tasks are sent
        a = add.delay(2, 2)
        b = add.apply_async(args=(3,), kwargs={"y": 4})
        c = app.send_task("tests.add", args=(5, 5))
        # Then they ran here and now
        assert isinstance(a, EagerResult) and a.get() == 4
        assert isinstance(b, EagerResult) and b.get() == 7
        assert isinstance(c, EagerResult) and c.get() == 10
        assert r.dbsize() == 0
    finally:
        app.conf.task_always_eager = False


def test_apply_retries_at_once_counts_the_tries_and_may_propagate(redis_url):
    # Given a task that asks for a retry once, then fails with an autoretried error
    app = FastQ("eager-retries", broker=redis_url)
    tries = []

    @app.task(bind=True, autoretry_for=(KeyError,), max_retries=2)
    def shaky(self):
        tries.append(self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=60)  # eager mode does not wait
        raise KeyError("gone")

    # When it is applied locally
    res = shaky.apply()
    # Then every try ran at once, each seeing its retry count, until max_retries
    assert tries == [0, 1, 2]
    assert res.state == "FAILURE" and isinstance(res.result, KeyError) and res.retries == 2
    # And with task_eager_propagates the last error reaches the caller
    app.conf.task_eager_propagates = True
    tries.clear()
    with pytest.raises(KeyError, match="gone"):
        shaky.apply()
    assert tries == [0, 1, 2]


def test_delay_async_in_eager_mode_propagates_the_callers_cancellation(redis_url):
    import asyncio

    # Given an eager app with a coroutine task that takes a while
    app = FastQ("eager-cancel", broker=redis_url, task_always_eager=True)
    started = []

    @app.task
    async def slow():
        started.append(1)
        await asyncio.sleep(30)

    # When the caller stops waiting
    async def caller():
        await asyncio.wait_for(slow.delay_async(), 0.2)

    # Then the caller sees its own timeout, not a FAILURE result, and the task ran once
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(caller())
    assert started == [1]


# --- bound tasks ----------------------------------------------------------------------------


def test_bound_task_request_in_a_worker(app, worker):
    # Given a worker with a known hostname
    w = worker("-P", "solo")
    # When a bound task reports its request
    res = app.tasks["tests.who"].delay()
    info = res.get(timeout=30)
    # Then it saw its id, retries and the worker's hostname
    assert info["id"] == res.id
    assert info["retries"] == 0
    assert info["hostname"] == w.name


def test_bound_task_request_retries_count_up(app, worker):
    # Given a worker running the extra tasks
    w = worker("-P", "solo", app=EXTRA)
    # When a bound task retries once, then reports its request
    res = extra.retry_once.delay()
    info = res.get(timeout=30)
    # Then the second try has the same id and retries == 1
    assert info == {"id": res.id, "retries": 1, "hostname": w.name}
    assert res.retries == 1


def test_bound_task_request_when_applied_locally(app):
    # Given a bound task
    who = app.tasks["tests.who"]
    # When it is applied locally with an id
    info = who.apply(task_id="local-1").get()
    # Then its request has that id and no retries
    assert info["id"] == "local-1"
    assert info["retries"] == 0


def test_bound_task_called_directly_has_an_empty_request(app):
    # Given a bound task
    who = app.tasks["tests.who"]
    # When it is called like a function
    info = who()
    # Then the request exists but has no id
    assert info["id"] is None
    assert info["retries"] == 0


# --- options and methods Celery users call (the Celery-compatibility issue) -------------------


def test_argsrepr_kwargsrepr_and_app_id_travel_in_the_headers(app, r):
    # Given Celery's monitoring options on a call
    res = app.tasks["tests.add"].apply_async((1, 2), argsrepr="(1, <secret>)", kwargsrepr="{}", app_id="web")
    # Then the message carries them as headers
    (fields,) = [f for _id, f in r.xrange("fastq:{default}:s")]
    msg = decode_fields(fields)
    assert msg.id == res.id
    assert msg.headers == {"argsrepr": "(1, <secret>)", "kwargsrepr": "{}", "app_id": "web"}
    # ... and a value that is not text is refused at the call
    with pytest.raises(TypeError, match="argsrepr must be a string"):
        app.tasks["tests.add"].apply_async((1, 2), argsrepr=("1", "2"))


def test_soft_time_limit_above_time_limit_is_refused_at_the_call(app):
    # At the call, with Celery's words (its users and tests match on them) ...
    with pytest.raises(ValueError, match="soft_time_limit must be less than or equal to time_limit"):
        app.tasks["tests.add"].apply_async((1, 1), time_limit=1, soft_time_limit=5)

    # ... and for a task declared so (accepted where declared, as in Celery: refused when sent)
    @app.task(name="tests.limits_reversed", time_limit=1, soft_time_limit=2)
    def reversed_limits():
        return None

    for send in (reversed_limits.delay, lambda: reversed_limits.apply_async(countdown=1)):
        with pytest.raises(ValueError, match="soft_time_limit must be less than or equal to time_limit"):
            send()
    # ... unless the call sets limits that fit
    assert reversed_limits.apply_async(soft_time_limit=1).id


def test_async_result_revoke_revokes_the_task(app, worker):
    # Given a task revoked through its AsyncResult before a worker sees it
    res = app.tasks["tests.add"].apply_async((1, 1), countdown=1)
    res.revoke()
    assert app.broker.is_revoked(res.id)
    # Then the worker stores REVOKED instead of running it
    worker("-P", "solo")
    wait_for(lambda: res.state == states.REVOKED, 30, message="REVOKED")


def test_result_set_add_update_discard_remove(app):
    a, b, c = (app.AsyncResult(f"id-{i}") for i in range(3))
    rs = ResultSet([a], app=app)
    rs.add(a)
    rs.add(b)
    assert rs.results == [a, b]
    rs.update([b, c])
    assert rs.results == [a, b, c]
    rs.discard(app.AsyncResult("id-9"))
    rs.remove(b)
    assert rs.results == [a, c]
    with pytest.raises(KeyError):
        rs.remove(b)


@pytest.mark.parametrize("eager", [False, True])
def test_request_delivery_info_and_time_limits_as_celery_has_them(app, worker, eager):
    # Given bound tasks that report their request, run by a worker (thread pool: the
    # compiled fast path and the executor both build requests) or eagerly
    app = extra.app
    app.conf.task_always_eager = eager
    if not eager:
        worker("-P", "thread", "-c", "2", app=EXTRA)
    info, declared = extra.request_info, extra.declared_limits
    try:
        # Then delivery_info has Celery's keys (the queue as routing key, priority 0-9)
        got = info.apply_async(priority=7).get(timeout=30)
        if not eager:
            assert got["delivery_info"] == {"exchange": "", "routing_key": "default", "priority": 7,
                                            "redelivered": False}
        # ... time limits are None when nothing sets them, the call's when it does,
        assert (got["time_limit"], got["soft_time_limit"]) == (None, None)
        got = info.apply_async(time_limit=30, soft_time_limit=20).get(timeout=30)
        assert (got["time_limit"], got["soft_time_limit"]) == (30, 20)
        # ... else the task's, which a call overrides
        got = declared.delay().get(timeout=30)
        assert (got["time_limit"], got["soft_time_limit"]) == (60, 45)
        got = declared.apply_async(time_limit=10, soft_time_limit=5).get(timeout=30)
        assert (got["time_limit"], got["soft_time_limit"]) == (10, 5)
    finally:
        app.conf.task_always_eager = False


def test_arguments_that_do_not_fit_raise_typeerror_when_sent(redis_url):
    """Celery's typing=True: the call is checked when sent, as calling the function would."""
    app = FastQ("argcheck", broker=redis_url)

    @app.task
    def add(x, y, *, scale=1):
        return (x + y) * scale

    @app.task(bind=True)
    def bound(self, x):
        return x

    @app.task(typing=False)
    def unchecked(x, y):
        return x + y

    @app.task
    def anything(*args, **kwargs):
        return args

    # Arguments that fit are sent
    assert add.delay(1, 2).id and add.delay(1, y=2, scale=3).id and bound.delay(1).id
    assert anything.delay(1, 2, 3, z=4).id and add.s(1).delay(2).id
    # Too few, too many or unknown arguments raise TypeError at the call, naming the task
    for call in (lambda: add.delay(1), lambda: add.delay(1, 2, 3), lambda: add.delay(1, 2, wrong=5),
                 lambda: add.apply_async((1,)), lambda: bound.delay(), lambda: add.s(1).delay(),
                 lambda: add.s(1, 2, 3).apply_async()):
        with pytest.raises(TypeError, match=r"add\(\)|bound\(\)"):
            call()
    # ... nothing was sent for them; typing=False sends whatever it is given (the worker fails it)
    assert app.broker.queue_totals(["default"])["default"][1] == 5
    assert unchecked.delay(1).id


def test_serializer_options_are_checked_not_ignored(redis_url):
    """Celery's serializer=: json and msgpack are accepted (messages take the app's
    serializer, both safe); pickle and anything else is refused where it is written."""
    app = FastQ("ser", broker=redis_url)

    @app.task(serializer="json")
    def echo(x):
        return x

    assert echo.apply_async((1,), serializer="msgpack").id
    with pytest.raises(ValueError, match="pickle is never supported"):
        echo.apply_async((1,), serializer="pickle")
    with pytest.raises(ImproperlyConfigured, match="pickle is never supported"):
        app.task(serializer="pickle")(lambda: None)
    # A result lifetime of 0 (Celery: never expire) would delete every result at once: refused
    with pytest.raises(ImproperlyConfigured, match="result_expires"):
        app.conf.result_expires = 0


def test_settings_a_task_reads_apply_when_changed_after_it_was_declared(redis_url):
    """Celery reads task defaults lazily: a config set after @app.task still applies."""
    app = FastQ("late", broker=redis_url)

    @app.task(name="late.call_api", rate_limit="100/s")
    def call_api(url):
        return url

    @app.task(name="late.other")
    def other():
        return None

    assert call_api.rate_limit == "100/s" and not other.ignore_result
    # When annotations (one task, and '*' for all: they override, as Celery's do) and a
    # default are set afterwards
    app.conf.task_annotations = {"late.call_api": {"rate_limit": "50/s"}, "*": {"max_retries": 7}}
    app.conf.task_ignore_result = True
    # Then the tasks declared before take them
    assert call_api.rate_limit == "50/s"
    assert call_api.max_retries == other.max_retries == 7
    assert call_api.ignore_result and other.ignore_result
    assert app.tasks["late.call_api"] is call_api
    # A bad annotation fails where it is set, naming the task
    with pytest.raises(ImproperlyConfigured, match=r"late\.other"):
        app.conf.task_annotations = {"late.other": {"priority": 42}}


def test_celerys_handler_methods_of_a_base_class_are_called(app, worker, ledger):
    """on_success / on_retry / on_failure / after_return / before_start of a base class."""
    worker("-A", EXTRA, "-P", "solo")
    handled = extra.handled
    assert handled.delay("ok", "ok").get(timeout=30) == "ok"
    with pytest.raises(ValueError, match="handled boom"):
        handled.delay("bad", "fail").get(timeout=30)
    assert handled.delay("again", "retry").get(timeout=30) == "retry"
    assert ledger.lrange("handlers:ok", 0, -1) == [b"before_start True", b"on_success ok", b"after_return SUCCESS"]
    assert ledger.lrange("handlers:bad", 0, -1) == [b"before_start True", b"on_failure ValueError True",
                                                    b"after_return FAILURE"]
    assert ledger.lrange("handlers:again", 0, -1) == [
        b"before_start True", b"on_retry KeyError", b"after_return RETRY",
        b"before_start True", b"on_success retry", b"after_return SUCCESS"]
    # Plain tasks keep the fast path; a task with handlers takes the full one
    assert app.tasks["tests.add"]._fast and not handled._fast


def test_class_based_tasks_registered_with_register_task(app, worker, ledger):
    """Celery's class-based tasks: options as class attributes, run(self, ...)."""
    from fastq import Task

    t = extra.auto_retry_class_task
    assert (t.name, t.max_retries, t.default_retry_delay, t.bind) == ("extra.auto_retry_class_task", 1, 0.05, True)
    worker("-A", EXTRA, "-P", "solo")
    # Sent, it runs in the worker, retried once by autoretry_for
    assert t.delay("class-runs").get(timeout=30) == 1
    assert ledger.get("class-runs") == b"2"

    class NotYet(Task):
        def run(self, x):
            return x

    # Unregistered, it says how to register; a class without run() is refused
    with pytest.raises(fastq.exceptions.NotRegistered, match="register_task"):
        NotYet().delay(1)

    class NoRun(Task):
        pass

    with pytest.raises(TypeError, match="defines run"):
        app.register_task(NoRun)


@pytest.mark.parametrize("eager", [False, True])
def test_retry_with_new_arguments_merges_them_as_celery_does(app, worker, eager):
    app = extra.app
    app.conf.task_always_eager = eager
    if not eager:
        worker("-P", "solo", app=EXTRA)
    try:
        # Given a task called with keywords that retries with new positional arguments
        got = extra.retry_with.apply_async(kwargs={"foo": 1, "bar": 2, "label": "kept"}).get(timeout=30)
        # Then the next try has the new ones and keeps the keyword they do not fill
        assert got == [2, 3, "kept", 1, eager]
        # ... and called positionally, retrying with a keyword replaces that argument only
        assert extra.retry_with.apply_async((1, 2), {"how": "kwargs"}).get(timeout=30) == [2, 2, None, 1, eager]
    finally:
        app.conf.task_always_eager = False
    # Arguments of the wrong kind are refused in the task, naming the option
    with pytest.raises(TypeError, match=r"retry\(args=...\) takes a list"):
        extra.retry_with._retry_arguments(fastq.task._EMPTY_REQUEST, "ab", None)


def test_reject_with_requeue_sends_the_message_back_then_dead_letters_a_loop(app, worker, r):
    app = extra.app
    w = worker("-P", "thread", "-c", "2", "--max-deliveries", "3", app=EXTRA)
    # Given a task that rejects with requeue on its first delivery
    # Then its message comes back, marked redelivered, and the second run succeeds
    assert extra.reject_once.delay().get(timeout=30) == "second pass"
    # ... and one that always rejects is dead-lettered after worker_max_deliveries requeues
    res = extra.reject_once.delay(always=True)
    with pytest.raises(fastq.exceptions.Reject):
        res.get(timeout=30)
    wait_for(lambda: any(e.get("reason") == "rejected" and res.id.encode() in e["payload"]
                         for e in app.broker.dlq_list("default")), 30, message="the dead letter")
    assert w.log().count(f"{res.id}] rejected and requeued") == 3
