"""`fastq bench`: runs against a private redis-server, and bad input gets a one-line error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
