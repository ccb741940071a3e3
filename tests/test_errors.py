"""Bad input gets one clear line: every `fastq` subcommand against an unreachable
Redis, a refused password, a missing optional extra and malformed settings exits
non-zero with one line and no traceback; settings typos name the closest known
setting; the dashboard refuses a dead broker and answers 503/400 in JSON."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import click
import pytest

from conftest import ROOT, fastq_command, free_port, wait_for
from fastq import FastQ
from fastq.cli import main
from fastq.exceptions import ImproperlyConfigured

APP = "tests.apps.basic:app"

#: Every subcommand, with arguments that make it talk to the broker. A command
#: added to the CLI without an entry here fails test_every_subcommand_is_walked.
COMMANDS: dict[str, list[str]] = {
    "status": ["status"],
    "queues": ["queues", "--interval", "0"],
    "purge": ["purge", "-f"],
    "events": ["events"],
    "result": ["result", "some-task-id"],
    "beat": ["beat"],
    "beat --list": ["beat", "--list"],
    "worker": ["worker", "-P", "solo"],
    "dashboard": ["dashboard", "--port", "0"],
    "dlq list": ["dlq", "list"],
    "dlq requeue": ["dlq", "requeue", "--all"],
    "dlq purge": ["dlq", "purge", "-f"],
    **{f"inspect {c}": ["inspect", c] for c in
       ("active", "reserved", "scheduled", "registered", "stats", "revoked", "active_queues", "ping",
        "clock", "conf", "report")},
    "inspect query_task": ["inspect", "query_task", "some-task-id"],
    "control ping": ["control", "ping"],
    "control shutdown": ["control", "shutdown"],
    "control pool_grow": ["control", "pool_grow", "1"],
    "control pool_shrink": ["control", "pool_shrink", "1"],
    "control add_consumer": ["control", "add_consumer", "extra"],
    "control cancel_consumer": ["control", "cancel_consumer", "extra"],
    "control revoke": ["control", "revoke", "some-task-id"],
    "control revoke_by_stamped_headers": ["control", "revoke_by_stamped_headers", "monitoring_id=42"],
    "control rate_limit": ["control", "rate_limit", "tests.add", "1/s"],
}
NOT_APP_COMMANDS = {"bench"}  # takes --broker itself; walked separately below


def _walk(group: click.Group, prefix: str = "") -> set[str]:
    names = set()
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            names |= _walk(cmd, f"{prefix}{name} ")
        else:
            names.add(f"{prefix}{name}")
    return names


def test_every_subcommand_is_walked():
    listed = {k.split(" --")[0] for k in COMMANDS} | NOT_APP_COMMANDS
    assert _walk(main) == listed


def run(args: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*fastq_command(), *args], cwd=ROOT, env={**os.environ, **(env or {})},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


RETRYING = "Trying again in"  # worker and beat wait broker_startup_wait for an unreachable Redis, one line a try


def assert_one_line(out: subprocess.CompletedProcess, *expected: str, what: str = "", retries: bool = False) -> str:
    text = (out.stdout + out.stderr).strip()
    assert out.returncode not in (0, None), (what, out.returncode, text)
    if retries and what.split()[0] in ("worker", "beat"):
        tries = [ln for ln in text.splitlines() if RETRYING in ln]
        assert tries and all("Cannot connect to redis://127.0.0.1:" in ln for ln in tries), (what, text)
        text = "\n".join(ln for ln in text.splitlines() if RETRYING not in ln)
    assert "Traceback" not in text and len(text.splitlines()) == 1, (what, text)
    for e in expected:
        assert e in text, (what, e, text)
    return text


def walk(prefix: list[str], expected: tuple[str, ...], env: dict | None = None, forbidden: str | None = None,
         commands: dict[str, list[str]] = COMMANDS, retries: bool = False) -> None:
    """Run every command (three at a time: each is a fresh interpreter) and check each one's output."""
    def one(item):
        name, args = item
        return name, run([*prefix, *args], env)

    with ThreadPoolExecutor(3) as pool:
        for name, out in pool.map(one, commands.items()):
            text = assert_one_line(out, *expected, what=name, retries=retries)
            if forbidden:
                assert forbidden not in text, (name, text)


# --- broker problems: every subcommand ------------------------------------------------------------


def test_every_subcommand_with_an_unreachable_redis(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    # worker and beat wait for Redis at start (1.5 s here, 30 s by default), saying so once a try, then give up
    (tmp_path / "patient.py").write_text("from tests.apps.basic import app\napp.conf.broker_startup_wait = 1.5\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    walk(["-A", "patient:app", "-b", url], ("Error: Redis at", "is unreachable", "Connection refused"), env=env,
         retries=True)
    out = run(["bench", "--broker", url, "-s", "enqueue", "-n", "10"])
    assert_one_line(out, "is unreachable", what="bench")


def test_every_subcommand_with_a_wrong_or_missing_password(redis_server):
    server = redis_server("--requirepass", "right-password")
    wrong = f"redis://:not-the-password@127.0.0.1:{server.port}/0"
    # the password is never echoed, the message says what to fix
    walk(["-A", APP, "-b", wrong], ("refused the login", "check the password", ":********@"), forbidden="not-the-password")
    out = run(["bench", "--broker", wrong, "-s", "enqueue", "-n", "10"])
    assert "not-the-password" not in assert_one_line(out, "refused the login", what="bench")
    # no password at all: the same, for a few commands
    walk(["-A", APP, "-b", server.url], ("refused the login", "Authentication required"),
         commands={k: COMMANDS[k] for k in ("status", "worker", "beat", "dlq list", "control revoke")})


# --- missing optional extras ----------------------------------------------------------------------


@pytest.fixture
def without(tmp_path):
    """An environment in which importing the given top-level modules fails as if
    they were not installed (a package of that name earlier on the path raises
    ModuleNotFoundError); the installed ones are left alone."""
    def env(*modules: str) -> dict:
        for m in modules:
            (tmp_path / m).mkdir(exist_ok=True)
            (tmp_path / m / "__init__.py").write_text(
                f"raise ModuleNotFoundError(\"No module named '{m}'\", name={m!r})\n")
        return {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}

    return env


def test_missing_extras_give_one_line_before_any_banner(redis_url, without):
    env = without("prometheus_client", "uvicorn", "starlette")
    out = run(["-A", APP, "worker", "-P", "solo", "--metrics-port", str(free_port())], env)
    assert_one_line(out, "prometheus_client", "pip install 'fastq[metrics]'")
    out = run(["-A", APP, "dashboard", "--port", "0"], env)
    assert_one_line(out, "pip install 'fastq[dashboard]'")


# --- malformed settings: every subcommand, at start-up --------------------------------------------


@pytest.fixture
def bad_apps(tmp_path):
    """Apps whose settings are wrong in three ways: a typo in the constructor, a
    value of the wrong type in a config module, a route that is not a route."""
    (tmp_path / "typo_app.py").write_text("from fastq import FastQ\napp = FastQ('t', task_acks_lat=True)\n")
    (tmp_path / "typed_conf.py").write_text("task_routes = 5\n")
    (tmp_path / "typed_app.py").write_text(
        "from fastq import FastQ\napp = FastQ('t')\napp.config_from_object('typed_conf')\n")
    (tmp_path / "route_app.py").write_text(
        "from fastq import FastQ\napp = FastQ('t', task_routes={'tests.add': 5})\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


@pytest.mark.parametrize(("spec", "expected"), [
    ("typo_app:app", ("no fastq setting named 'task_acks_lat'", "did you mean 'task_acks_late'?")),
    ("typed_app:app", ("setting task_routes must be a dict", "not int 5")),
    ("route_app:app", ("task_routes['tests.add']", "a route must be a queue name")),
])
def test_every_subcommand_with_malformed_settings(redis_url, bad_apps, spec, expected):
    walk(["-A", spec], expected, env=bad_apps)


# --- settings: names, Celery names, types, per source ---------------------------------------------


@pytest.mark.parametrize(("settings", "message"), [
    ({"task_acks_lat": True}, "no fastq setting named 'task_acks_lat'; did you mean 'task_acks_late'?"),
    ({"BROKER_URL": "redis://x"}, "BROKER_URL is Celery 3's name; fastq's setting is 'broker_url'"),
    ({"worker_prefetch_multiplier": 4}, "'worker_prefetch_multiplier' is a Celery setting fastq does not have: "
                                        "fastq's is worker_prefetch"),
    ({"task_routes": 5}, "setting task_routes must be a dict, a list of routers"),
    ({"worker_prefetch": 0}, "setting worker_prefetch must be a whole number >= 1, not int 0"),
    ({"task_always_eager": "yes"}, "setting task_always_eager must be True or False, not str 'yes'"),
    ({"worker_lease_timeout": -1}, "setting worker_lease_timeout must be a number > 0"),
    ({"task_protocol": 1}, "setting task_protocol must be 2 (fastq has no protocol 1), not int 1"),
])
def test_settings_in_code_are_errors_at_call_time(settings, message):
    # the constructor, conf.update() and attribute assignment all check
    with pytest.raises(ImproperlyConfigured, match="^" + _re(message)):
        FastQ("proj", **settings)
    app = FastQ("proj")
    with pytest.raises(ImproperlyConfigured, match="^" + _re(message)):
        app.conf.update(settings)
    (name, value), = settings.items()
    with pytest.raises(ImproperlyConfigured, match="^" + _re(message)):
        setattr(app.conf, name, value)
    assert name not in app.conf or app.conf[name] != value


def test_a_config_module_warns_about_unknown_names_and_refuses_celery3_names(caplog):
    conf = types.ModuleType("proj.celeryconfig")
    conf.os = os  # modules, helpers and other upper-case constants are not settings
    conf.helper = lambda: 1
    conf.DEBUG = True
    conf.worker_prefetch_multiplier = 4
    conf.task_acks_lat = False
    conf.result_expires = 60
    app = FastQ("proj")
    with caplog.at_level(logging.WARNING, logger="fastq.settings"):
        app.config_from_object(conf)
    assert app.conf.result_expires == 60 and app.conf.task_acks_late is True
    warned = [r.getMessage() for r in caplog.records]
    assert any("worker_prefetch_multiplier" in w and "worker_prefetch:" in w for w in warned), warned
    assert any("'task_acks_lat'" in w and "did you mean 'task_acks_late'?" in w for w in warned), warned
    assert not any("helper" in w or "'os'" in w or "DEBUG" in w for w in warned), warned
    # ignoring BROKER_URL would silently use another broker
    conf.BROKER_URL = "redis://elsewhere:6379/1"
    with pytest.raises(ImproperlyConfigured, match="BROKER_URL is Celery 3's name; fastq's setting is 'broker_url'"):
        app.config_from_object(conf)
    # and a wrong type in a module is an error naming the setting
    del conf.BROKER_URL
    conf.task_routes = 5
    with pytest.raises(ImproperlyConfigured, match="setting task_routes must be"):
        app.config_from_object(conf)


def test_every_setting_has_a_type_check():
    from fastq.settings import _CHECKS, DEFAULTS

    assert set(_CHECKS) == set(DEFAULTS)
    for name, default in DEFAULTS.items():  # and the defaults pass their own checks
        assert _CHECKS[name](default) is None, name


def test_check_config_builds_what_settings_describe():
    for settings, message in [
        ({"task_routes": {"a": 5}}, "task_routes['a']"),
        ({"timezone": "Mars/Olympus"}, "timezone: unknown timezone 'Mars/Olympus'"),
        ({"queue_shards": {"default": 0}}, "queue_shards['default']"),
        ({"queue_rate_limits": {"mail": "fast"}}, "queue_rate_limits['mail']"),
        ({"rate_limit_scope": "galaxy"}, "rate_limit_scope must be"),
        ({"task_serializer": "pickle"}, "pickle"),
    ]:
        app = FastQ("proj", **settings)
        with pytest.raises(ImproperlyConfigured, match=_re(message)):
            app.check_config()


def _re(s: str) -> str:
    import re

    return re.escape(s)


# --- the dashboard --------------------------------------------------------------------------------


def _get(base: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(base + path, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_dashboard_answers_503_when_redis_goes_away_and_400_for_bad_parameters(redis_server):
    pytest.importorskip("uvicorn")
    server = redis_server()
    port = free_port()
    proc = subprocess.Popen([*fastq_command(), "-A", APP, "-b", server.url, "dashboard", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert proc.poll() is None, "the dashboard exited"
            try:
                return _get(base, "/api/queues")[0] == 200
            except OSError:
                return False

        wait_for(up, 30, 0.1, message="the dashboard")
        for path, name in [("/api/tasks?limit=ten", "limit"), ("/api/stats?minutes=1.5", "minutes"),
                           ("/api/queues/default/dlq?limit=x", "limit")]:
            status, body = _get(base, path)
            assert status == 400 and name in body["error"], (path, status, body)
        assert _get(base, "/api/tasks?limit=5")[0] == 200
        server.kill()
        status, body = _get(base, "/api/queues")
        assert status == 503 and "is unreachable" in body["error"], (status, body)
        assert _get(base, "/api/queues/default/dlq")[0] == 503
    finally:
        proc.terminate()
        proc.wait(15)


def test_pythonpath_shim_really_blocks(without):
    # the 'missing extra' environment above must hide the module, or that test proves nothing
    out = subprocess.run([sys.executable, "-c", "import prometheus_client"], env={**os.environ, **without("prometheus_client")},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "No module named 'prometheus_client'" in out.stderr
