"""The wire format: msgpack by default, JSON on request, never pickle;
arguments that cannot be serialized are refused at the call site."""

from __future__ import annotations

import json
import pickle

import msgspec
import pytest

from conftest import wait_for
from fastq import FastQ
from fastq.exceptions import ImproperlyConfigured

DEFAULT_STREAM = "fastq:{default}:s"




def _entries(r, key=DEFAULT_STREAM) -> list[dict]:
    return [fields for _id, fields in r.xrange(key)]


def test_messages_are_msgpack_by_default(app, r):
    # Given the tests' app with default settings
    # When a task is sent
    res = app.tasks["tests.add"].delay(2, 3)
    # Then the stream entry carries a msgpack payload in field "p"
    (fields,) = _entries(r)
    assert list(fields) == [b"p"]
    envelope = msgspec.msgpack.decode(fields[b"p"])
    assert envelope[0] == res.id
    assert envelope[1] == "tests.add"
    assert envelope[2] == [2, 3]
    assert envelope[3] == {}


def test_json_serializer_is_selectable(redis_url, r):
    # Given an app with task_serializer="json"
    producer = FastQ("tests", broker=redis_url, task_serializer="json")
    # When a task is sent
    res = producer.send_task("tests.add", args=(2, 3), kwargs={})
    # Then the stream entry carries a JSON payload in field "j"
    (fields,) = _entries(r)
    assert list(fields) == [b"j"]
    envelope = json.loads(fields[b"j"])
    assert envelope[0] == res.id
    assert envelope[1:4] == ["tests.add", [2, 3], {}]


def test_json_serializer_selected_with_conf_update(redis_url, r):
    # Given a new app switched to JSON with conf.update
    producer = FastQ("tests", broker=redis_url)
    producer.conf.update(task_serializer="json")
    # When a task is sent
    producer.send_task("tests.add", args=(1, 1))
    # Then it is JSON
    assert list(_entries(r)[0]) == [b"j"]


def test_worker_runs_json_and_msgpack_messages_from_one_queue(app, redis_url, worker):
    # Given one msgpack and one JSON message in the default queue
    json_producer = FastQ("tests", broker=redis_url, task_serializer="json")
    a = app.tasks["tests.echo"].delay({"k": [1, 2.5, None, True, "x"]})
    b = json_producer.send_task("tests.echo", args=({"k": [1, 2.5, None, True, "x"]},))
    c = json_producer.send_task("tests.add", kwargs={"x": 5, "y": 6})
    # When a worker runs them
    worker("-P", "solo")
    # Then both formats run and give the same values
    assert a.get(timeout=30) == {"k": [1, 2.5, None, True, "x"]}
    assert b.get(timeout=30) == {"k": [1, 2.5, None, True, "x"]}
    assert c.get(timeout=30) == 11


def test_pickle_is_never_accepted_as_serializer(redis_url, r):
    # Given an app configured for pickle
    producer = FastQ("tests", broker=redis_url, task_serializer="pickle")
    # When it sends a task
    # Then it refuses clearly, and nothing is sent
    with pytest.raises(ImproperlyConfigured, match="pickle"):
        producer.send_task("tests.add", args=(1, 1))
    assert r.dbsize() == 0


def test_worker_never_unpickles_a_message(app, worker, r):
    # Given a pickled message in the queue (as if sent by something else)
    payload = pickle.dumps(["id-1", "tests.add", [1, 2], {}])
    r.xadd(DEFAULT_STREAM, {"p": payload})
    r.xadd(DEFAULT_STREAM, {"pickle": payload})
    # When a worker reads it
    worker("-P", "solo")
    # Then both land in the dead-letter queue as undecodable, never run
    def dead():
        return r.xrange("fastq:{default}:dlq")
    entries = wait_for(lambda: len(dead()) == 2 and dead(), 30, message="dead letters")
    assert {f[b"reason"] for _id, f in entries} == {b"undecodable"}
    assert r.exists("fastq:r:id-1") == 0


def test_unserializable_positional_argument_is_a_type_error_naming_it(app, r):
    # Given the tests' app
    add = app.tasks["tests.add"]
    # When a task is called with an argument msgpack cannot carry
    # Then TypeError names the task, the argument and its type; nothing is sent
    with pytest.raises(TypeError) as info:
        add.delay(1, object())
    text = str(info.value)
    assert "tests.add" in text
    assert "argument 1" in text
    assert "object" in text
    assert r.dbsize() == 0


def test_unserializable_keyword_argument_is_a_type_error_naming_it(app, r):
    # Given the tests' app
    echo = app.tasks["tests.echo"]
    # When a keyword argument cannot be serialized
    # Then TypeError names the task and the keyword
    with pytest.raises(TypeError) as info:
        echo.apply_async(kwargs={"value": object()})
    assert "tests.echo" in str(info.value)
    assert "'value'" in str(info.value)
    assert r.dbsize() == 0


def test_unserializable_argument_with_json_is_a_type_error_too(redis_url, r):
    # Given a JSON app
    producer = FastQ("tests", broker=redis_url, task_serializer="json")
    # When send_task gets an argument JSON cannot carry
    # Then TypeError names the task and the argument
    with pytest.raises(TypeError) as info:
        producer.send_task("tests.echo", args=(object(),))
    assert "tests.echo" in str(info.value)
    assert "argument 0" in str(info.value)
    assert r.dbsize() == 0


def test_tuples_come_back_as_lists(app, worker):
    # Given a worker
    worker("-P", "solo")
    # When a tuple and nested data go through a task
    res = app.tasks["tests.echo"].delay((1, (2, "three"), {"four": 4.0}))
    # Then plain data comes back, tuples as lists
    assert res.get(timeout=30) == [1, [2, "three"], {"four": 4.0}]
