"""Typed tasks: arguments checked at the call site, converted at the worker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from tests.apps import typedapp
from tests.apps.typedapp import Order, Point

from fastq import FastQ
from fastq.canvas import chain
from fastq.exceptions import FastQError, ImproperlyConfigured, ValidationError

APP = "tests.apps.typedapp:app"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tapp(redis_url):
    app = typedapp.app
    app.conf.broker_url = redis_url
    app.conf.task_always_eager = False
    app.conf.task_serializer = "msgpack"
    app._reset()
    yield app
    app.conf.task_serializer = "msgpack"
    app._reset()


def _sent(r: redis.Redis) -> int:
    """Messages anywhere in the test DB's queues (streams and delayed sets)."""
    n = 0
    for key in r.keys("fastq:{*"):
        kind = r.type(key)
        n += r.xlen(key) if kind == b"stream" else r.zcard(key) if kind == b"zset" else 0
    return n


# --- the call site -------------------------------------------------------------------------------


def test_wrong_type_is_refused_before_redis(tapp, r):
    with pytest.raises(ValidationError) as info:
        typedapp.add.delay("1", 2)
    err = info.value
    assert isinstance(err, FastQError) and isinstance(err, TypeError) and isinstance(err, ValueError)
    assert "typed.add" in str(err) and "'x'" in str(err) and "Expected `int`, got `str`" in str(err)
    assert err.task == "typed.add" and err.field == "x"
    with pytest.raises(ValidationError, match=r"argument 'p': Expected `int`, got `str` - at `p.x`"):
        typedapp.move.delay({"x": "nope"}, 1)
    assert _sent(r) == 0


@pytest.mark.parametrize(("args", "kwargs", "words"), [
    ((1,), {}, "missing a required argument: 'y'"),
    ((1, 2, 3), {}, "too many positional arguments"),
    ((1, 2), {"z": 3}, "unexpected keyword argument 'z'"),
])
def test_call_that_does_not_fit_the_signature(tapp, r, args, kwargs, words):
    with pytest.raises(ValidationError, match=words) as info:
        typedapp.add.apply_async(args, kwargs)
    assert info.value.field is None and "typed.add" in str(info.value)
    assert _sent(r) == 0


def test_signatures_and_bulk_sends_are_checked(tapp, r):
    with pytest.raises(ValidationError, match="'y'"):
        typedapp.add.s(1, "2").apply_async()
    with pytest.raises(ValidationError, match="'x'"):
        tapp.send_task("typed.add", ["a", 1])
    with pytest.raises(ValidationError, match="'x'"):
        typedapp.add.map_async([(1, 2), ("x", 3)])
    with pytest.raises(ValidationError, match="'y'"):
        chain(typedapp.add.s(1, None), typedapp.add.s(1)).apply_async()  # the first step's args are final
    assert _sent(r) == 0


class Opaque:
    """A class msgspec knows nothing about."""


def test_registration_refuses_annotations_msgspec_cannot_convert():
    app = FastQ("typed-bad")

    def f(a: int, b: Opaque) -> None: ...

    with pytest.raises(ImproperlyConfigured, match=r"task 'bad.f'.*argument 'b'"):
        app.task(name="bad.f", typed=True)(f)

    def g(a: NoSuchType) -> None: ...  # noqa: F821 - the point of the test

    with pytest.raises(ImproperlyConfigured, match=r"task 'bad.g'.*cannot be resolved"):
        app.task(name="bad.g", typed=True)(g)
    assert "bad.f" not in app.tasks and "bad.g" not in app.tasks


def test_typed_tasks_take_the_slow_path_plain_ones_keep_the_fast_one(tapp):
    assert typedapp.plain._fast and not typedapp.plain._special
    assert not typedapp.add._fast and typedapp.add._special
    assert tapp._special_tasks >= {"typed.add", "uniq.report"} and "typed.plain" not in tapp._special_tasks


def test_eager_calls_convert_too(tapp):
    tapp.conf.task_always_eager = True
    try:
        assert typedapp.move.delay({"x": 1, "y": 2}, 3).get() == Point(4, 2)
        with pytest.raises(ValidationError, match="'dx'"):
            typedapp.move.delay(Point(1), "3")
    finally:
        tapp.conf.task_always_eager = False
    assert typedapp.move.apply(({"x": 1},), {"dx": 1}).get() == Point(2, 0)
    assert typedapp.add(1, 2) == 3  # a plain local call is the function itself


# --- the worker ------------------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_worker_converts_to_the_annotated_types(tapp, worker, serializer):
    tapp.conf.task_serializer = serializer
    tapp._reset()
    worker("-P", "solo", app=APP, env={"FASTQ_TEST_SERIALIZER": serializer})
    ident = uuid.uuid4()
    when = dt.datetime(2024, 5, 17, 12, 30, tzinfo=dt.timezone.utc)
    order = Order(uuid.uuid4(), Decimal("12.50"), when, ["a"])
    r = typedapp.describe.delay({"x": 1}, order, when, ident, 1, 2.5, color="red")
    out = r.get(timeout=30)
    assert out == {
        "p": ["Point", 1, 0],
        "order": ["Order", "UUID", "Decimal", "12.50", "datetime", ["a"]],
        "when": ["datetime", when.isoformat()],
        "ident": ["UUID", str(ident)],
        "extra": ["float", "float"],
        "labels": {"color": "red"},
    }
    # the result comes back as the annotated return type
    moved = typedapp.move.delay(Point(1, 2), 3).get(timeout=30)
    assert moved == Point(4, 2) and dataclasses.is_dataclass(moved)
    # bind=True: the request is there, the argument converted
    rid = typedapp.who.delay(7)
    assert rid.get(timeout=30) == [rid.id, 7, "int"]


@pytest.mark.parametrize("pool", [["-P", "solo"], ["-P", "process", "-c", "2"]])
def test_bad_message_at_the_worker_fails_that_task_only(tapp, worker, redis_url, ledger, pool):
    w = worker(*pool, app=APP)
    # A producer that does not know the tasks sends by name with wrong types.
    other = FastQ("other", broker=redis_url)
    bad = other.send_task("typed.retrying", ["not a number"])
    missing = other.send_task("typed.add", [1])
    with pytest.raises(ValidationError, match=r"typed.retrying.*argument 'n'.*Expected `int`, got `str`"):
        bad.get(timeout=30)
    with pytest.raises(ValidationError, match="missing a required argument: 'y'"):
        missing.get(timeout=30)
    assert bad.state == "FAILURE" and bad.retries == 0  # autoretry_for=(Exception,) does not apply
    assert ledger.hgetall("retrying") == {}  # the function never ran
    # the worker is alive and serves the next message
    assert other.send_task("typed.add", [1, 2]).get(timeout=30) == 3
    assert typedapp.retrying.delay(5).get(timeout=30) == 5
    assert w.proc.poll() is None
    assert "ValidationError" in w.log()


def test_chain_step_with_bad_arguments_fails_the_chain(tapp, worker):
    worker("-P", "solo", app=APP)
    # plain returns a string; the typed step after it wants an int: caught when the worker sends the step
    res = chain(typedapp.plain.s("a", "b"), typedapp.add.s(1)).apply_async()
    with pytest.raises(ValidationError, match=r"typed\.add"):
        res.get(timeout=30)
    ok = chain(typedapp.add.s(1, 2), typedapp.add.s(10)).apply_async()
    assert ok.get(timeout=30) == 13


# --- editors and mypy ---------------------------------------------------------------------------------


def _mypy() -> list[str]:
    exe = Path(sys.executable).parent / "mypy"
    return [str(exe)] if exe.exists() else [shutil.which("mypy") or "mypy"]


def test_mypy_checks_delay_against_the_task_signature(tmp_path):
    """tests/typing/example.py: lines marked ``# E: <text>`` must be reported, nothing else."""
    example = ROOT / "tests" / "typing" / "example.py"
    expected = {}
    for n, line in enumerate(example.read_text().splitlines(), 1):
        m = re.search(r"\S  # E: (.+)$", line)
        if m:
            expected[n] = m.group(1).strip()
    assert len(expected) >= 3
    # fastq as installed (py.typed ships with it), as a user's editor sees it
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    proc = subprocess.run(
        [*_mypy(), "--follow-imports=silent", "--no-error-summary", "--hide-error-context", "--show-error-codes",
         "--cache-dir", str(tmp_path / "cache"), str(example)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    errors: dict[int, list[str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^.*example\.py:(\d+): error: (.*)$", line)
        if m:
            errors.setdefault(int(m.group(1)), []).append(m.group(2))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert set(errors) == set(expected), proc.stdout
    for n, words in expected.items():
        assert any(words in e for e in errors[n]), (n, words, errors[n])


def test_pydantic_models_in_and_out_as_in_celery(tapp, worker):
    """@app.task(pydantic=True): a model or a dict in, the model's dict out."""
    from tests.apps.typedapp import AddParams, pyd_add

    worker("-P", "solo", app=APP)
    # When the caller passes a dict, a model, a model by keyword, or a model in a signature
    sent = [pyd_add.delay({"x": 1, "y": 2}), pyd_add.delay(AddParams(x=2, y=3)),
            pyd_add.apply_async(kwargs={"data": AddParams(x=3, y=4), "scale": 10}),
            pyd_add.s(AddParams(x=4, y=5)).delay(), chain(pyd_add.s({"x": 1, "y": 1})).apply_async()]
    # Then the task got a model each time, and its result is the returned model's dict
    assert [r.get(timeout=30) for r in sent] == [{"result": 3}, {"result": 5}, {"result": 70}, {"result": 9},
                                                 {"result": 2}]
    # A dict that does not validate fails that task (pydantic's ValidationError, rebuilt or not)
    bad = pyd_add.delay({"x": "not a number", "y": 1})
    with pytest.raises(Exception, match="x"):
        bad.get(timeout=30)
    assert bad.state == "FAILURE"
    # Eagerly, and called directly, the same conversions apply
    assert pyd_add.apply(({"x": 5, "y": 5},)).get() == {"result": 10}
    assert pyd_add({"x": 1, "y": 1}) == {"result": 2}


def test_pydantic_is_refused_on_typed_and_async_tasks():
    app = FastQ("pyd-bad")
    with pytest.raises(ImproperlyConfigured, match="pydantic=True"):
        app.task(typed=True, pydantic=True)(lambda x: x)

    async def coro(x):
        return x

    with pytest.raises(ImproperlyConfigured, match="pydantic=True"):
        app.task(pydantic=True)(coro)
