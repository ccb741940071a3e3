"""Shared plumbing for the peer benchmark runners (Celery, Dramatiq).

This module runs inside the peers' virtual environment (benchmarks/.peers/venv), so it
imports nothing from fastq: only the standard library and redis-py, which both peers
depend on. It gives the runners the same command line, the same timing rules and the
same JSON shape as ``fastq bench --json``, so benchmarks/compare.py treats all three alike.

Timing rules, identical for every system (they mirror src/fastq/bench.py):

- enqueue: wall time of N ``delay()``/``send()`` calls, one at a time.
- bulk:    wall time of the system's documented bulk path for N messages, building the
           messages included.
- drain:   N no-op messages are queued first; the worker subprocess is started; the
           broker's keys are polled every 2 ms. ``startup_s`` = worker start -> first
           message taken off the queue; ``seconds`` = that moment -> queue empty and
           nothing in flight (every message acknowledged).
- e2e:     workers started and warmed up (one round trip), then wall time of bulk send
           of N echo tasks + collecting every result.
- latency: one idle worker process, ``delay()`` then ``get()`` in a row; p50/p99.
- realistic: one row of ``fastq bench -s realistic`` (src/fastq/bench_realistic.py, loaded
           by path: the same workloads, rows and arithmetic as fastq's): every task sent with
           one ``delay()``/``send()``, its send time taken just before; the tasks return their
           (start, end) wall times; ``summarize`` makes the row's figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = ("enqueue", "bulk", "drain", "e2e", "latency")
#: Run only when asked for by name ("all" does not include them).
EXTRA_SCENARIOS = ("realistic",)
#: fastq's realistic workloads: data and arithmetic only, standard library only, so the
#: peers load the very same file instead of keeping a copy of the workloads.
REALISTIC_PATH = os.path.join(HERE, os.pardir, os.pardir, "src", "fastq", "bench_realistic.py")
#: The peers' defaults: smaller than fastq's where a peer would take minutes (see compare.py).
DEFAULT_TASKS = {"enqueue": 20_000, "bulk": 20_000, "drain": 20_000, "e2e": 10_000, "latency": 2_000}
#: How often the drain poller samples the broker's keys. Small enough that the error
#: (at most one interval at each end) is far below the measured seconds; large enough
#: that the poller's own Redis commands are negligible load.
POLL_INTERVAL = 0.002


# --- command line -------------------------------------------------------------------


def parse_args(tool: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The same options as ``fastq bench`` (the subset compare.py uses)."""
    p = argparse.ArgumentParser(prog=f"{tool}_bench", description=f"{tool} side of benchmarks/compare.py")
    p.add_argument("--broker", default=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5"),
                   help="Redis URL used as broker and result backend; its DB is FLUSHED.")
    p.add_argument("--scenario", "-s", action="append", choices=[*SCENARIOS, *EXTRA_SCENARIOS, "all"],
                   help="Scenario to run (repeatable; default: all, which leaves out realistic).")
    p.add_argument("--row", type=int, action="append",
                   help="realistic: index into bench_realistic.ROWS (repeatable; default: every row).")
    p.add_argument("--tasks", "-n", type=int, help="Tasks per scenario (default: per scenario).")
    p.add_argument("--processes", "-p", default="1,2",
                   help="Worker processes for drain (comma-separated); e2e uses the largest.")
    p.add_argument("--json", action="store_true", help="Print JSON (the only output format).")
    args = p.parse_args(argv)
    picked = args.scenario or ["all"]
    args.scenarios = list(SCENARIOS) if "all" in picked else list(dict.fromkeys(picked))
    args.procs = sorted({int(x) for x in args.processes.split(",")})
    return args


def emit(tool: str, version: str, broker: str, config: str, results: list[dict]) -> None:
    """Print the one JSON object compare.py reads (same shape as ``fastq bench --json``)."""
    print(json.dumps({"tool": tool, "version": version, "compiled": False, "broker": broker,
                      "config": config, "results": results}), flush=True)


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays one JSON object."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def load_realistic():
    """src/fastq/bench_realistic.py as a module, loaded by path (fastq is not installed here)."""
    spec = importlib.util.spec_from_file_location("bench_realistic", os.path.normpath(REALISTIC_PATH))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- Redis --------------------------------------------------------------------------


def client(url: str) -> redis.Redis:
    """A plain client on the benchmark DB, for polling and flushing only."""
    return redis.Redis.from_url(url)


def flush(url: str) -> None:
    """Empty the benchmark DB so every scenario starts from the same state.

    Only the DB named in the URL is flushed (compare.py defaults to DB 5)."""
    client(url).flushdb()


def used_memory(url: str) -> int:
    """Redis' used_memory, to report bytes per queued message like fastq bench does."""
    return int(client(url).info("memory")["used_memory"])


# --- worker subprocesses ------------------------------------------------------------


@dataclass
class Workers:
    """Worker subprocesses started from this (the peers') interpreter, in their own
    session so that stopping them also stops their pool children."""

    commands: list[list[str]]
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    started: float = 0.0

    def start(self) -> Workers:
        self.started = time.perf_counter()
        for cmd in self.commands:
            self.procs.append(subprocess.Popen(cmd, cwd=HERE, env=self.env, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL, start_new_session=True))
        return self

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"benchmark worker exited early (code {p.returncode}): {p.args}")

    def rss_mb(self) -> float:
        """Resident memory of the workers and all their descendants (from /proc)."""
        return sum(tree_rss(p.pid) for p in self.procs) / 2**20

    def stop(self) -> None:
        """Warm shutdown (SIGTERM to each worker's process group), then SIGKILL."""
        for p in self.procs:
            if p.poll() is None:
                _killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                _killpg(p.pid, signal.SIGKILL)
                p.wait()

    def __enter__(self) -> Workers:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def worker_env(url: str) -> dict[str, str]:
    """The environment the task modules read their broker URL from."""
    return {**os.environ, "BENCH_BROKER_URL": url, "PYTHONPATH": HERE}


def tree_rss(pid: int) -> int:
    """RSS in bytes of pid and every descendant; psutil is not in the peers' venv."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


# --- measurements -------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of fn()."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def watch_drain(workers: Workers, n: int, backlog: Callable[[], tuple[int, int]], timeout: float) -> dict:
    """Poll the broker until the N queued messages are all processed.

    ``backlog()`` returns (messages still waiting in the queue, messages taken but not yet
    acknowledged). The first poll where waiting < n marks the first fetch; the first poll
    where both are 0 marks the end. Returns the drain fields of the result."""
    first = end = None
    deadline = time.perf_counter() + timeout
    while True:
        waiting, in_flight = backlog()
        now = time.perf_counter()
        if first is None and (waiting < n or in_flight > 0):
            first = now
        if waiting == 0 and in_flight == 0:
            end = now
            break
        workers.check_alive()
        if now > deadline:
            raise RuntimeError(f"drain not finished after {timeout:.0f}s ({waiting} waiting, {in_flight} in flight)")
        time.sleep(POLL_INTERVAL)
    first = first or end
    return {"tasks": n, "seconds": end - first, "rate": n / max(end - first, 1e-9),
            "startup_s": first - workers.started, "worker_rss_mb": workers.rss_mb()}


def latency_stats(samples: list[float]) -> dict:
    """p50/p99/max in ms, with the same percentile rule as fastq bench."""
    s = sorted(samples)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return {"samples": len(s), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": s[-1] * 1000}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll predicate() every 20 ms; raise after timeout."""
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def run_realistic_row(row: tuple, workers: Workers, wait_ready: Callable[[], None],
                      send: Callable[[str, float], object],
                      result: Callable[[object, float], tuple[float, float] | None]) -> dict:
    """One realistic row, the way src/fastq/bench.py's run_realistic runs it for fastq.

    "before": every task is sent, then the workers start; "running": the workers start,
    ``wait_ready()`` returns once every one of them is consuming, then the tasks are sent
    one at a time. ``send(kind, seconds)`` sends one task and returns a handle;
    ``result(handle, timeout)`` returns its (start, end), or None if not there within
    ``timeout`` seconds (the runner then checks that the workers are still alive)."""
    realistic = load_realistic()
    name, pool, concurrency, when, count = row
    kind, durations = realistic.WORKLOADS[name]
    slots = realistic.effective_slots(kind, pool, concurrency, count)
    # Generous: four times the ideal schedule's work per slot, plus start-up.
    deadline = time.perf_counter() + 120 + 4 * sum(durations) / slots
    sent, handles = [], []
    try:
        if when == "running":
            workers.start()
            wait_ready()
        for d in durations:
            sent.append(time.time())
            handles.append(send(kind, d))
        if when == "before":
            workers.start()
        spans = []
        for h in handles:
            while (span := result(h, 1.0)) is None:
                workers.check_alive()
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"realistic {name}: {len(spans)} of {len(handles)} results in time")
            spans.append(tuple(span))
    finally:
        workers.stop()
    return realistic.summarize(row, sent, spans)


def realistic_rows(picked: list[int] | None) -> list[tuple]:
    """The rows asked for with --row (indices into ROWS), or every row."""
    rows = load_realistic().ROWS
    return [rows[i] for i in picked] if picked else list(rows)
