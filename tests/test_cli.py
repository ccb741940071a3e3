"""The `fastq` command line: --version, result, queues, purge, status, dlq, bad arguments."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import fastq
import fastq._speedups
from conftest import LEDGER_DB, ROOT, fastq_command, wait_for

APP = "tests.apps.basic:app"




def fastq_cli(*args: str, input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:  # noqa: A002
    """Run ``fastq <args>`` against the test broker (FASTQ_BROKER_URL)."""
    return subprocess.run([*fastq_command(), *args], cwd=ROOT, env={**os.environ, **(env or {})}, input=input,
                          capture_output=True, text=True, timeout=60)


# --- --version -----------------------------------------------------------------------------


def test_version_prints_the_version_and_the_core_in_use():
    # Given / When `fastq --version`
    out = fastq_cli("--version")
    # Then it prints the version and which core is used
    assert out.returncode == 0
    assert f"fastq {fastq.__version__}" in out.stdout
    expected = "compiled core" if fastq._speedups.COMPILED else "pure-Python core"
    assert expected in out.stdout


def test_version_with_extensions_disabled_says_pure_python():
    # Given FASTQ_NO_EXTENSIONS=1
    # When `fastq --version` runs
    out = fastq_cli("--version", env={"FASTQ_NO_EXTENSIONS": "1"})
    # Then it reports the pure-Python core
    assert out.returncode == 0
    assert "pure-Python core" in out.stdout


# --- result ---------------------------------------------------------------------------------


def test_result_of_a_successful_task(app, worker):
    # Given a finished task
    worker("-P", "solo")
    res = app.tasks["tests.add"].delay(2, 2)
    assert res.get(timeout=30) == 4
    # When `fastq result ID` runs (with -A before or after the command)
    before = fastq_cli("-A", APP, "result", res.id)
    after = fastq_cli("result", "-A", APP, res.id)
    # Then both print the state and the value
    for out in (before, after):
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["SUCCESS", "4"]


def test_result_of_a_failed_task_shows_the_exception_and_traceback(app, worker):
    # Given a failed task
    worker("-P", "solo")
    res = app.tasks["tests.fail"].delay("cli boom")
    res.get(timeout=30, propagate=False)
    # When `fastq result ID` runs
    out = fastq_cli("-A", APP, "result", res.id)
    # Then it prints FAILURE, the exception and the traceback
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "FAILURE"
    assert lines[1] == "ValueError: cli boom"
    assert "Traceback (most recent call last):" in out.stdout


def test_result_of_an_unknown_id_says_so_and_exits_1(redis_url):
    # Given an id no task ever had
    # When `fastq result ID` runs
    out = fastq_cli("-A", APP, "result", "no-such-task-id")
    # Then the state is still PENDING, and one line says no such task is known (exit 1)
    assert out.returncode == 1, out.stderr
    assert out.stdout.strip() == "PENDING"
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no task with id 'no-such-task-id' is known" in lines[0], out.stderr


def test_result_of_a_queued_or_dead_lettered_task_says_where_it_is(app, worker, r):
    # Given a task waiting in a queue no worker reads
    waiting = app.tasks["tests.add"].apply_async((1, 2), queue="nobody")
    # When `fastq result ID` runs
    out = fastq_cli("-A", APP, "result", waiting.id)
    # Then it is PENDING, known, and where it waits is said
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["PENDING", "waiting in queue nobody"]
    # Given a task dead-lettered when its worker was lost (no result is stored then)
    lost = worker("-P", "solo", "--lease-timeout", "1", "--max-deliveries", "1", "-Q", "slow")
    held = app.tasks["tests.sleep"].apply_async((600,), queue="slow")
    wait_for(lambda: r.xpending("fastq:{slow}:s", "fastq")["pending"] == 1, 30, message="the task to be held")
    lost.kill_all()
    worker("-P", "solo", "--lease-timeout", "1", "--max-deliveries", "1", "-Q", "slow")
    wait_for(lambda: r.xlen("fastq:{slow}:dlq") == 1, 60, 0.2, message="the dead letter")
    out = fastq_cli("-A", APP, "result", held.id)
    # Then it says so, and how to requeue it
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "PENDING"
    assert "dead-lettered on slow: max_deliveries" in out.stdout and f"fastq dlq requeue {held.id}" in out.stdout


def test_result_json_is_an_object_with_named_fields(app, worker):
    # Given a finished task and an unknown id
    worker("-P", "solo")
    res = app.tasks["tests.add"].delay(20, 22)
    assert res.get(timeout=30) == 42
    # When `fastq result --json` runs for both
    done = fastq_cli("-A", APP, "result", "--json", res.id)
    unknown = fastq_cli("-A", APP, "result", "--json", "no-such-task-id")
    # Then each prints one JSON object with the state (and the value) by name
    assert done.returncode == 0 and unknown.returncode == 1
    assert json.loads(unknown.stdout) == {"state": "PENDING", "known": False}
    stored = json.loads(done.stdout)
    assert isinstance(stored, dict), f"not an object: {done.stdout!r}"
    assert stored["state"] == "SUCCESS"
    assert stored["result"] == 42


# --- queues and purge -------------------------------------------------------------------------


def _queue_rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.strip()}


def test_queues_shows_waiting_in_flight_delayed_and_dead(app, redis_url):
    # Given three waiting messages and a delayed one on "default", one on "io"
    add = app.tasks["tests.add"]
    for i in range(3):
        add.delay(i, i)
    add.apply_async((1, 1), countdown=600)
    add.apply_async((1, 1), queue="io")
    # When `fastq queues` runs
    out = fastq_cli("-A", APP, "queues")
    # Then it shows a row per queue with its counts
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[:6] == ["queue", "waiting", "in", "flight", "delayed", "dead"]
    rows = _queue_rows(out.stdout)
    assert rows["default"][:4] == ["3", "0", "1", "0"]
    assert rows["io"][:4] == ["1", "0", "0", "0"]
    # ... and the same as JSON
    data = json.loads(fastq_cli("-A", APP, "queues", "--json").stdout)
    by_name = {row["queue"]: row for row in data}
    counts = {k: by_name["default"][k] for k in ("queue", "waiting", "in_flight", "delayed", "dead")}
    assert counts == {"queue": "default", "waiting": 3, "in_flight": 0, "delayed": 1, "dead": 0}


def test_queues_counts_messages_in_flight(app, worker):
    # Given a worker running a task
    from tests.apps import extra

    worker("-P", "solo", app="tests.apps.extra:app")
    key = "cli-inflight"
    res = extra.block.delay(key)
    wait_for(lambda: extra.is_running(key), 30, message="the task to run")
    # When `fastq queues` runs
    out = fastq_cli("-A", APP, "queues")
    # Then the message is counted in flight, not waiting
    assert _queue_rows(out.stdout)["default"][:2] == ["0", "1"]
    extra.release(key)
    assert res.get(timeout=30) == "released"


def test_purge_with_force_deletes_waiting_and_delayed_messages(app, r):
    # Given waiting and delayed messages on "default" and one on "io"
    add = app.tasks["tests.add"]
    for i in range(3):
        add.delay(i, i)
    add.apply_async((1, 1), countdown=600)
    add.apply_async((1, 1), queue="io")
    # When `fastq purge -f` runs
    out = fastq_cli("-A", APP, "purge", "-f")
    # Then the default queue's messages are gone, and the others' are not
    assert out.returncode == 0, out.stderr
    assert "Purged 4 message(s)." in out.stdout
    stats = app.broker.queue_stats("default")
    assert (stats["waiting"], stats["delayed"]) == (0, 0)
    assert app.broker.queue_stats("io")["waiting"] == 1
    # ... and -Q purges the named queues
    out = fastq_cli("-A", APP, "purge", "-f", "-Q", "io")
    assert "Purged 1 message(s)." in out.stdout
    assert app.broker.queue_stats("io")["waiting"] == 0


def test_purge_without_force_asks_first(app):
    # Given two waiting messages
    add = app.tasks["tests.add"]
    add.delay(1, 1)
    add.delay(2, 2)
    # When `fastq purge` is answered "n"
    out = fastq_cli("-A", APP, "purge", input="n\n")
    # Then nothing is deleted
    assert out.returncode == 1
    assert app.broker.queue_stats("default")["waiting"] == 2
    # When it is answered "y"
    out = fastq_cli("-A", APP, "purge", input="y\n")
    # Then they are deleted
    assert out.returncode == 0
    assert "Purged 2 message(s)." in out.stdout
    assert app.broker.queue_stats("default")["waiting"] == 0


# --- status ----------------------------------------------------------------------------------


def test_status_lists_workers_online(redis_url, worker):
    # Given no worker
    # When `fastq status` runs
    out = fastq_cli("-A", APP, "status")
    # Then nobody is online
    assert out.returncode == 0, out.stderr
    assert "0 node(s) online." in out.stdout
    # Given two workers
    w1 = worker("-P", "solo")
    w2 = worker("-P", "solo")
    # When `fastq status` runs
    out = fastq_cli("-A", APP, "status")
    # Then both are listed
    assert f"{w1.name}: OK" in out.stdout
    assert f"{w2.name}: OK" in out.stdout
    assert "2 node(s) online." in out.stdout
    # When one stops, it is no longer listed
    assert w1.stop() == 0
    out = fastq_cli("-A", APP, "status")
    assert w1.name not in out.stdout
    assert "1 node(s) online." in out.stdout


def test_broker_option_works_before_and_after_the_command(app, worker, redis_url):
    # Given a worker on the test database, and FASTQ_BROKER_URL pointing at an empty one
    w = worker("-P", "solo")
    empty = redis_url.rsplit("/", 1)[0] + f"/{LEDGER_DB}"
    env = {"FASTQ_BROKER_URL": empty}
    # When `fastq status` gets -b before or after the command (as -A)
    before = fastq_cli("-b", redis_url, "-A", APP, "status", env=env)
    after = fastq_cli("status", "-A", APP, "-b", redis_url, env=env)
    plain = fastq_cli("status", "-A", APP, env=env)
    # Then both use the given broker
    for out in (before, after):
        assert out.returncode == 0, out.stderr
        assert f"{w.name}: OK" in out.stdout and "1 node(s) online." in out.stdout
    assert "0 node(s) online." in plain.stdout


# --- dlq --------------------------------------------------------------------------------------


def _dead_letter_two(app, worker, r):
    """Dead-letter two messages (unknown tasks, with arguments) and stop the worker; return
    (entry ids, task ids, the worker's log)."""
    from fastq.exceptions import NotRegistered

    w = worker("-P", "solo")
    results = [app.send_task("tests.nope_one", args=(1, "two"), kwargs={"k": [3]}), app.send_task("tests.nope_two")]
    for res in results:
        with pytest.raises(NotRegistered):
            res.get(timeout=30)
    wait_for(lambda: r.xlen("fastq:{default}:dlq") == 2, 10, message="two dead letters")
    assert w.stop() == 0
    return [i.decode() for i, _ in r.xrange("fastq:{default}:dlq")], [res.id for res in results], w.log()


def test_dlq_list_shows_which_task_died_why_and_when(app, worker, r):
    # Given two dead letters
    ids, task_ids, _ = _dead_letter_two(app, worker, r)
    # When `fastq dlq list` runs
    out = fastq_cli("-A", APP, "dlq", "list")
    # Then each line names the task (name, id, arguments), the reason, the deliveries and when
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    first = next(line for line in lines if task_ids[0] in line)
    assert f"tests.nope_one[{task_ids[0]}] (1, 'two', k=[3])" in first, first
    assert "default" in first and "unknown_task: task 'tests.nope_one' is not registered" in first
    assert "deliveries: 0" in first and f"entry {ids[0]}" in first
    day = __import__("datetime").datetime.fromtimestamp(int(ids[0].split("-")[0]) / 1000).strftime("%Y-%m-%d %H:%M")
    assert first.startswith(day), first
    assert any(f"tests.nope_two[{task_ids[1]}] ()" in line for line in lines)
    assert "2 dead letter(s)." in out.stdout
    # ... and as JSON, decoded (no bytes repr)
    rows = json.loads(fastq_cli("-A", APP, "dlq", "list", "--json").stdout)
    assert [row["id"] for row in rows] == ids
    assert rows[0]["task_id"] == task_ids[0] and rows[0]["task"] == "tests.nope_one"
    assert rows[0]["args"] == [1, "two"] and rows[0]["kwargs"] == {"k": [3]}
    assert rows[0]["reason"] == "unknown_task" and rows[0]["deliveries"] == 0
    assert abs(rows[0]["dead_lettered_at"] - int(ids[0].split("-")[0]) / 1000) < 0.001
    assert "payload" not in rows[0] and "b'" not in json.dumps(rows)


def test_worker_log_names_the_dead_lettered_task(app, worker, r):
    # Given / When a worker dead-letters a message of an unknown task
    _, task_ids, log = _dead_letter_two(app, worker, r)
    # Then its log line names the task and its id
    assert f"Dead-lettered task tests.nope_one[{task_ids[0]}]" in log, log


def test_worker_log_names_tasks_dead_lettered_for_deliveries(app, worker, r):
    # Given workers that dead-letter a message on its first lost delivery
    # When a pool process dies running a task (the parent hands it back)
    w = worker("-P", "process", "-c", "1", "--max-deliveries", "1")
    crash = app.tasks["tests.exit_process"].delay()
    wait_for(lambda: f"Dead-lettered task tests.exit_process[{crash.id}]" in w.log(), 30, 0.2,
             "the pool's dead-letter line")
    # ... and when a whole worker is killed running a task (another worker's reaper recovers it)
    lost = worker("-P", "solo", "--lease-timeout", "1", "--max-deliveries", "1", "-Q", "slow")
    held = app.tasks["tests.sleep"].apply_async((600,), queue="slow")
    wait_for(lambda: r.xpending("fastq:{slow}:s", "fastq")["pending"] == 1, 30, message="the task to be held")
    lost.kill_all()
    reaper = worker("-P", "solo", "--lease-timeout", "1", "--max-deliveries", "1", "-Q", "slow")
    # Then each log line names the task and its id
    wait_for(lambda: f"Dead-lettered task tests.sleep[{held.id}]" in reaper.log(), 60, 0.2,
             "the reaper's dead-letter line")
    assert "max_deliveries" in reaper.log()


def test_dlq_requeue_moves_dead_letters_back_to_the_queue(app, worker, r):
    # Given two dead letters
    ids, _, _ = _dead_letter_two(app, worker, r)
    # When one is requeued by entry id
    out = fastq_cli("-A", APP, "dlq", "requeue", "-Q", "default", ids[0])
    # Then it is back in the queue
    assert out.returncode == 0, out.stderr
    assert "Requeued 1 message(s)." in out.stdout
    assert r.xlen("fastq:{default}:dlq") == 1
    assert r.xlen("fastq:{default}:s") == 1
    # When the rest are requeued with --all
    out = fastq_cli("-A", APP, "dlq", "requeue", "--all")
    # Then the dead-letter stream is empty and both wait in the queue
    assert "Requeued 1 message(s)." in out.stdout
    assert r.xlen("fastq:{default}:dlq") == 0
    assert app.broker.queue_stats("default")["waiting"] == 2


def test_dlq_requeue_and_purge_take_task_ids(app, worker, r):
    # Given two dead letters
    ids, task_ids, _ = _dead_letter_two(app, worker, r)
    # When the second is requeued by its task id (without -Q)
    out = fastq_cli("-A", APP, "dlq", "requeue", task_ids[1])
    # Then that one is back in the queue, the other still dead
    assert out.returncode == 0, out.stderr
    assert "Requeued 1 message(s)." in out.stdout
    assert [i.decode() for i, _ in r.xrange("fastq:{default}:dlq")] == [ids[0]]
    assert app.broker.queue_stats("default")["waiting"] == 1
    # When the first is purged by its task id
    out = fastq_cli("-A", APP, "dlq", "purge", "-f", task_ids[0])
    # Then only it is deleted: the requeued message still waits
    assert out.returncode == 0, out.stderr
    assert "Deleted 1 dead letter(s)." in out.stdout
    assert r.xlen("fastq:{default}:dlq") == 0
    assert app.broker.queue_stats("default")["waiting"] == 1


@pytest.mark.parametrize("command", ["requeue", "purge"])
def test_dlq_unknown_id_is_a_one_line_error_and_changes_nothing(app, worker, r, command):
    # Given two dead letters
    ids, _, _ = _dead_letter_two(app, worker, r)
    # When requeue or purge is given a known id and one nobody knows (a task id, an entry id, garbage)
    for bad in ("no-such-task-id", "1-1", "x" * 300):
        force = ["-f"] if command == "purge" else []
        out = fastq_cli("-A", APP, "dlq", command, *force, ids[0], bad)
        # Then it fails with one line naming the unknown id, and touches nothing
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and bad in lines[0] and "no dead letter" in lines[0], out.stderr
        assert [i.decode() for i, _ in r.xrange("fastq:{default}:dlq")] == ids


def test_dlq_purge_deletes_dead_letters(app, worker, r):
    # Given two dead letters
    _dead_letter_two(app, worker, r)
    # When `fastq dlq purge -f` runs
    out = fastq_cli("-A", APP, "dlq", "purge", "-f")
    # Then they are gone
    assert out.returncode == 0, out.stderr
    assert "Deleted 2 dead letter(s)." in out.stdout
    assert r.xlen("fastq:{default}:dlq") == 0
    assert "0 dead letter(s)." in fastq_cli("-A", APP, "dlq", "list").stdout


def test_dlq_requeue_needs_ids_or_all(redis_url):
    # Given / When `fastq dlq requeue` without ids or --all
    out = fastq_cli("-A", APP, "dlq", "requeue")
    # Then it is a usage error
    assert out.returncode == 2
    assert "--all" in out.stderr


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["no-such-command"],
    ["--no-such-option"],
    ["worker", "-A", APP, "--concurrency", "0"],
    ["worker", "-A", APP, "--concurrency", "many"],
    ["worker", "-A", APP, "--pool", "gevent"],
    ["worker", "-A", APP, "--prefetch", "0"],
    ["worker", "-A", APP, "--loglevel", "LOUD"],
    ["worker", "-A", APP, "--no-such-option"],
    ["worker"],
    ["worker", "-A", "no_such_module_for_fastq"],
    ["worker", "-A", "tests.apps.basic:no_such_attribute"],
    ["result"],
], ids=lambda a: " ".join(a))
def test_bad_arguments_are_a_usage_error(redis_url, args):
    # Given / When fastq runs with bad arguments
    out = fastq_cli(*args)
    # Then click reports a usage error (exit code 2) without a traceback
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Error" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("queues", ["bad queue", "a,{b}"])
def test_invalid_queue_name_is_a_usage_error(redis_url, queues):
    # Given / When a worker is started with an invalid queue name
    out = fastq_cli("worker", "-A", APP, "-P", "solo", "-Q", queues)
    # Then it is a usage error naming the problem, not a traceback
    assert out.returncode == 2, out.stdout + out.stderr
    assert "invalid queue name" in out.stderr
    assert "Traceback" not in out.stderr
