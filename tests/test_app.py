"""The application object: broker and backend URLs, settings, config loading."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import redis

import fastq
from fastq import FastQ
from fastq.exceptions import TimeoutError as FastQTimeout


def _stream_fields(client: redis.Redis, key: str) -> list[dict]:
    return [fields for _id, fields in client.xrange(key)]


# --- broker and backend URLs ---------------------------------------------------------


def test_backend_defaults_to_the_broker_url(redis_url, monkeypatch):
    # Given no FASTQ_RESULT_BACKEND in the environment
    monkeypatch.delenv("FASTQ_RESULT_BACKEND", raising=False)
    # When an app is made with a broker and backend=None
    app = FastQ("proj", broker=redis_url, backend=None)
    # Then the result backend is the broker
    assert app.broker_url == redis_url
    assert app.backend_url == redis_url


def test_broker_url_comes_from_the_environment_when_omitted(monkeypatch):
    # Given FASTQ_BROKER_URL is set and FASTQ_RESULT_BACKEND is not
    monkeypatch.setenv("FASTQ_BROKER_URL", "redis://127.0.0.1:6379/7")
    monkeypatch.delenv("FASTQ_RESULT_BACKEND", raising=False)
    # When an app is made without a broker argument
    app = FastQ("proj")
    # Then both URLs come from FASTQ_BROKER_URL
    assert app.broker_url == "redis://127.0.0.1:6379/7"
    assert app.backend_url == "redis://127.0.0.1:6379/7"


def test_result_backend_comes_from_the_environment_when_omitted(monkeypatch):
    # Given both environment variables are set
    monkeypatch.setenv("FASTQ_BROKER_URL", "redis://127.0.0.1:6379/7")
    monkeypatch.setenv("FASTQ_RESULT_BACKEND", "redis://127.0.0.1:6379/8")
    # When an app is made without arguments
    app = FastQ("proj")
    # Then each URL comes from its variable
    assert app.broker_url == "redis://127.0.0.1:6379/7"
    assert app.backend_url == "redis://127.0.0.1:6379/8"


def test_arguments_win_over_the_environment(monkeypatch):
    # Given both environment variables are set
    monkeypatch.setenv("FASTQ_BROKER_URL", "redis://127.0.0.1:6379/7")
    monkeypatch.setenv("FASTQ_RESULT_BACKEND", "redis://127.0.0.1:6379/8")
    # When an app is made with explicit URLs
    app = FastQ("proj", broker="redis://127.0.0.1:6379/5", backend="redis://127.0.0.1:6379/6")
    # Then the arguments are used
    assert app.broker_url == "redis://127.0.0.1:6379/5"
    assert app.backend_url == "redis://127.0.0.1:6379/6"


def test_app_from_the_environment_runs_tasks_end_to_end(redis_url, worker, monkeypatch):
    # Given a worker, and FASTQ_BROKER_URL pointing at the test broker
    worker("-P", "solo")
    monkeypatch.setenv("FASTQ_BROKER_URL", redis_url)
    monkeypatch.delenv("FASTQ_RESULT_BACKEND", raising=False)
    # When an app made without any URL sends a task by name
    app = FastQ("proj")
    r = app.send_task("tests.add", args=(1, 2), kwargs={})
    # Then the result comes back through the same Redis
    assert r.get(timeout=30) == 3


def test_repr_does_not_show_the_broker_password():
    # Given an app whose broker URL has a password
    app = FastQ("proj", broker="redis://:hunter2-pw@127.0.0.1:6379/3")
    # When it is shown
    text = repr(app)
    # Then the password is masked
    assert "hunter2-pw" not in text
    assert "127.0.0.1:6379" in text


def test_results_are_stored_in_a_separate_result_backend(redis_url, r, worker, redis_server):
    # Given a result backend on another Redis server than the broker, known to
    # both the worker (FASTQ_RESULT_BACKEND) and the producer (backend=...)
    backend = redis_server()
    worker("-P", "solo", env={"FASTQ_RESULT_BACKEND": backend.url})
    app = FastQ("proj", broker=redis_url, backend=backend.url)
    # When a task runs
    res = app.send_task("tests.add", args=(2, 3))
    # Then its result is read back from the backend ...
    try:
        value = res.get(timeout=5)
    except FastQTimeout:
        value = "<no result in the backend>"
    assert value == 5
    # ... and it was stored there, not in the broker
    assert redis.Redis(port=backend.port).exists(f"fastq:r:{res.id}") == 1
    assert r.exists(f"fastq:r:{res.id}") == 0


# --- settings -------------------------------------------------------------------------


def test_settings_can_be_given_as_keyword_arguments():
    # Given / When an app made with settings as keyword arguments
    app = FastQ("proj", result_expires=5, task_default_queue="io")
    # Then they are in app.conf, by attribute and by key
    assert app.conf.result_expires == 5
    assert app.conf["task_default_queue"] == "io"


def test_conf_update_changes_settings_and_behaviour(redis_url, r):
    # Given an app
    app = FastQ("proj", broker=redis_url)
    # When settings are updated
    app.conf.update(result_expires=60, task_default_queue="updated-q")
    # Then they are read back ...
    assert app.conf.result_expires == 60
    assert app.conf.task_default_queue == "updated-q"
    # ... and used: a task without a queue goes to the new default queue
    app.send_task("tests.add", args=(1, 1))
    assert r.xlen("fastq:{updated-q}:s") == 1
    assert not r.exists("fastq:{default}:s")


def test_unknown_setting_attribute_is_an_attribute_error():
    # Given an app
    app = FastQ("proj")
    # When a setting that does not exist is read as an attribute
    # Then it is an AttributeError naming it
    with pytest.raises(AttributeError, match="no_such_setting"):
        _ = app.conf.no_such_setting


def test_config_from_object_with_an_object(redis_url, r):
    # Given a settings class
    class Config:
        broker_url = redis_url
        task_serializer = "json"
        result_expires = 42

    app = FastQ("proj")
    # When the app loads it
    app.config_from_object(Config)
    # Then the settings are used
    assert app.conf.result_expires == 42
    assert app.broker_url == redis_url
    app.send_task("tests.add", args=(1, 1))
    assert list(_stream_fields(r, "fastq:{default}:s")[0]) == [b"j"]


def test_config_from_object_with_a_module_path(redis_url, r, monkeypatch):
    # Given an importable settings module
    mod = types.ModuleType("fastq_core_test_settings")
    mod.broker_url = redis_url
    mod.task_default_queue = "from-module"
    mod.result_expires = 77
    monkeypatch.setitem(sys.modules, "fastq_core_test_settings", mod)
    app = FastQ("proj")
    # When the app loads it by its dotted path
    app.config_from_object("fastq_core_test_settings")
    # Then the settings are used
    assert app.conf.result_expires == 77
    app.send_task("tests.add", args=(1, 1))
    assert r.xlen("fastq:{from-module}:s") == 1


def test_config_from_object_after_use_switches_the_broker(redis_url, r, redis_server):
    # Given an app that has already sent a message to one Redis
    other = redis_server()
    app = FastQ("proj", broker=other.url)
    app.send_task("tests.add", args=(1, 1))
    assert redis.Redis(port=other.port).xlen("fastq:{default}:s") == 1

    class Config:
        broker_url = redis_url

    # When it loads a config naming another broker
    app.config_from_object(Config)
    app.send_task("tests.add", args=(2, 2))
    # Then the next message goes to the new broker
    assert r.xlen("fastq:{default}:s") == 1
    assert redis.Redis(port=other.port).xlen("fastq:{default}:s") == 1


def test_config_from_object_with_a_bad_module_path_fails():
    # Given an app
    app = FastQ("proj")
    # When it loads a module that does not exist
    # Then the import error surfaces
    with pytest.raises(ImportError):
        app.config_from_object("no_such_module_for_fastq_tests")


# --- config_from_object(namespace=) and app.task(base=) ---------------------------------------


def test_config_from_object_with_a_namespace_reads_prefixed_upper_case_names(monkeypatch):
    # Given a settings object as a Django project has them, some for other libraries
    conf = types.SimpleNamespace(FASTQ_TASK_DEFAULT_QUEUE="web", FASTQ_RESULT_EXPIRES=60, DEBUG=True,
                                 CELERY_BROKER_URL="redis://elsewhere", fastq_timezone="lower case is not read")
    monkeypatch.setitem(sys.modules, "projsettings", types.SimpleNamespace(settings=conf))
    app = FastQ("proj")
    # When it is loaded by "module:attribute" with the FASTQ namespace
    app.config_from_object("projsettings:settings", namespace="FASTQ")
    # Then only FASTQ_* names are settings, without the prefix
    assert app.conf.task_default_queue == "web" and app.conf.result_expires == 60
    assert app.conf.timezone == "UTC" and "debug" not in app.conf and "celery_broker_url" not in app.conf


def test_config_from_object_namespace_typos_and_missing_attributes_are_errors(monkeypatch):
    from fastq.exceptions import ImproperlyConfigured

    app = FastQ("proj")
    with pytest.raises(ImproperlyConfigured, match="FASTQ_BROKER_ULR: no fastq setting named 'broker_ulr'"):
        app.config_from_object(types.SimpleNamespace(FASTQ_BROKER_ULR="redis://x"), namespace="FASTQ")
    monkeypatch.setitem(sys.modules, "projsettings", types.ModuleType("projsettings"))
    with pytest.raises(ImproperlyConfigured, match="module 'projsettings' has no attribute 'settings'"):
        app.config_from_object("projsettings:settings")


def test_task_base_class_per_task_and_per_app():
    from fastq.task import Task

    class Audited(Task):
        audited = True

    app = FastQ("proj")
    one = app.task(name="t.one", base=Audited)(lambda: 1)
    plain = app.task(name="t.plain")(lambda: 2)
    assert isinstance(one, Audited) and type(plain) is Task
    app.Task = Audited
    assert isinstance(app.task(name="t.two")(lambda: 3), Audited)
    with pytest.raises(TypeError, match=r"task 't\.bad': base must be a subclass of fastq\.task\.Task"):
        app.task(name="t.bad", base=dict)(lambda: 4)


# --- the current app, shared_task (Celery's names) -------------------------------------


def test_shared_task_is_registered_on_every_app_and_stands_for_the_current_ones(redis_url):
    from fastq import current_app, shared_task

    # Given an app, then a shared task, then a second app
    first = FastQ("first", broker=redis_url)

    @shared_task(name="shared.double")
    def double(x):
        return 2 * x

    second = FastQ("second", broker=redis_url)
    # Then both apps have it, and it stands for the current app's (the one made last)
    assert "shared.double" in first.tasks and "shared.double" in second.tasks
    assert current_app() is second
    assert double.app is second and double(4) == 8
    # ... until another app is named the default
    first.set_default()
    try:
        assert current_app() is first and double.app is first
        # A signature made without an app sends through the current app
        res = fastq.signature("shared.double", args=(3,)).delay()
        assert res.app is first
        assert fastq.group([]).app is None and fastq.group([])._app() is first
    finally:
        fastq.current.set_default(None)


def test_get_task_logger_is_a_module_logger():
    from fastq import get_task_logger

    assert get_task_logger("proj.tasks") is logging.getLogger("proj.tasks")
