"""Start and stop `fastq worker` subprocesses for the benchmarks that need their own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from fastq import FastQ


def fastq_executable() -> str:
    exe = Path(sys.executable).parent / "fastq"
    return str(exe) if exe.exists() else (shutil.which("fastq") or "fastq")


def start_workers(app_spec: str, url: str, n: int, concurrency: int, extra: tuple = (),
                  env: dict | None = None) -> list[subprocess.Popen]:
    """n workers of ``concurrency`` processes each, run from benchmarks/; waits until all registered.
    ``extra``: more ``fastq worker`` arguments (e.g. ``("-Q", "a,b")``); ``env``: more environment."""
    env = {**os.environ, "FASTQ_BROKER_URL": url, **(env or {})}
    prefix = app_spec.split(":")[0]
    procs = [
        subprocess.Popen(
            [fastq_executable(), "worker", "-A", app_spec, "-P", "process", "-c", str(concurrency),
             "-n", f"{prefix}{i}@{socket.gethostname()}", "-l", "WARNING", *extra],
            cwd=Path(__file__).resolve().parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for i in range(n)
    ]
    client = FastQ("probe", broker=url).broker.client  # any URL fastq takes (cluster too)
    deadline = time.time() + 60
    while client.zcard("fastq:workers") < n:
        if time.time() > deadline:
            raise SystemExit("workers did not start")
        time.sleep(0.1)
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    """Warm stop (SIGTERM to each worker's process group), SIGKILL after 30 s."""
    for p in procs:
        try:
            os.killpg(p.pid, 15)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
