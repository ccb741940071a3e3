"""`fastq bench`: runs against a private redis-server, never touches data it does not own,
and bad input gets a one-line error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, fastq_command, free_port


def _bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*fastq_command(), "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_bench_runs_against_a_private_redis_and_prints_json():
    env = {k: v for k, v in os.environ.items() if k != "FASTQ_BROKER_URL"}
    out = subprocess.run([*fastq_command(), "bench", "-s", "enqueue", "-s", "drain", "-s", "latency", "-n", "400",
                          "-p", "1", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["tool"] == "fastq"
    by = {r["scenario"]: r for r in report["results"]}
    assert by["enqueue"]["tasks"] == 400 and by["enqueue"]["rate"] > 0
    assert by["drain"]["processes"] == 1 and by["drain"]["rate"] > 0
    assert 0 < by["latency"]["p50_ms"] <= by["latency"]["p99_ms"]


def test_bench_producers_sends_from_each_shape(app, r, redis_url):
    # Given some of the producers scenario's shapes, on the test Redis under the bench's own prefix
    out = _bench("-s", "producers", "--rows", "1 caller,asyncio 10,threads 4", "-n", "300", "--json",
                 "--broker", redis_url)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["results"]
    # Then each shape sent every task, and says how fast and how long each call waited
    assert [(x["shape"], x["concurrency"]) for x in rows] == [("1 caller", 1), ("asyncio", 10), ("threads", 4)]
    for x in rows:
        assert x["tasks"] == 300 and x["rate"] > 0 and 0 < x["p50_ms"] <= x["p99_ms"]
    # ... and left nothing behind
    assert r.keys("fastq-bench-*") == []
    # A row that does not exist is a one-line error
    bad = _bench("-s", "producers", "--rows", "carrier pigeons", "--broker", redis_url)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no producers row matches" in bad.stderr


def test_unreachable_broker_is_a_one_line_error():
    out = _bench("-s", "enqueue", "--broker", f"redis://127.0.0.1:{free_port()}/0")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unreachable" in lines[0], out.stderr


def test_no_redis_server_on_path_says_what_to_do(tmp_path: Path):
    # PATH holds only the interpreter's bin directory (fastq itself), not redis-server
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("fastq",):
        src = Path(fastq_command()[0])
        (bindir / name).symlink_to(src)
    (bindir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "FASTQ_BROKER_URL"}
    env["PATH"] = str(bindir)
    assert shutil.which("redis-server", path=env["PATH"]) is None
    out = subprocess.run([str(bindir / "fastq"), "bench", "-s", "enqueue"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "no redis-server on PATH" in out.stderr and "--broker" in out.stderr


def test_nonsense_flags_are_usage_errors():
    assert _bench("--scenario", "warp").returncode == 2
    assert _bench("--processes", "two").returncode == 2
    assert _bench("--tasks", "-5").returncode == 2


def _snapshot(r) -> dict:
    """Every key of the database with its type and serialized value."""
    return {k: (r.type(k), r.dump(k)) for k in r.keys("*")}


def _fill_with_app_data(app, r) -> dict:
    """Waiting and delayed tasks of an app, and keys of something else entirely."""
    app.tasks["tests.add"].delay(1, 2)
    app.tasks["tests.add"].apply_async((3, 4), countdown=3600)
    app.tasks["tests.add"].apply_async((5, 6), queue="other")
    r.set("unrelated:string", "keep me")
    r.hset("unrelated:hash", mapping={"a": 1})
    r.rpush("unrelated:list", 1, 2, 3)
    before = _snapshot(r)
    assert r.xlen("fastq:{default}:s") == 1 and r.zcard("fastq:{default}:delayed") == 1
    return before


@pytest.mark.timeout(600)
def test_bench_with_broker_keeps_every_key_it_does_not_own(app, r, redis_url):
    # Given a database that holds an app's waiting and delayed tasks and unrelated keys
    before = _fill_with_app_data(app, r)

    # When each scenario runs against it with --broker (small counts)
    for scenario, n in (("enqueue", "300"), ("bulk", "300"), ("drain", "300"), ("e2e", "200"),
                        ("latency", "50"), ("memory", "300")):
        out = _bench("--broker", redis_url, "-s", scenario, "-n", n, "-p", "1", "--json")
        assert out.returncode == 0, (scenario, out.stderr)
        report = json.loads(out.stdout)
        assert report["results"][0]["scenario"] == scenario

        # Then every key is still there, unchanged, and the run left none of its own
        assert _snapshot(r) == before, scenario


def test_bench_ignores_fastq_broker_url(app, r, redis_url):
    # Given FASTQ_BROKER_URL pointing at a database with an app's tasks (as docs tell users to export)
    before = _fill_with_app_data(app, r)

    # When bench runs without --broker
    out = _bench("-s", "enqueue", "-s", "drain", "-n", "200", "-p", "1", "--json", env={"FASTQ_BROKER_URL": redis_url})

    # Then it measured a private redis-server, and that database is untouched
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["broker"] != redis_url
    assert _snapshot(r) == before


def test_bench_says_why_its_worker_exited(redis_url):
    # Given a worker argument that makes the benchmark's worker exit at once
    out = _bench("--broker", redis_url, "-s", "drain", "-n", "100", "-p", "1", "--worker-arg=--autoscale=oops")

    # Then bench fails with the worker's own error, not a bare "exited early"
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "exited early" in out.stderr and "--autoscale" in out.stderr, out.stderr
