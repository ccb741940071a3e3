"""``fastq bench -s realistic``: tasks that take time, as real ones do.

No-op throughput says little about a queue whose tasks call an API for 100 ms or
render a report for a second. Each row here sends a workload of sleeping (I/O
bound) or spinning (CPU bound) tasks to ``fastq worker`` subprocesses, either
queued before the workers start or sent to running ones, and prints:

- makespan: first task start to last task end;
- ideal: what a work-conserving scheduler with the same slots would need (the
  greedy list schedule of the same tasks in send order; a CPU-bound task's slots
  are capped by the cores, or by one for threads, which share the GIL);
- ratio: makespan / ideal (1.00 is perfect);
- wait p50 / p99: send (or, queued before start, the first start) to task start,
  and the same percentiles of the ideal schedule.

The workloads are data (``WORKLOADS``, ``ROWS``) so that benchmarks/compare.py
runs the same ones on Celery and Dramatiq.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from . import FastQ, ResultSet
from .exceptions import TimeoutError as ResultTimeout

#: The app the realistic rows' workers run (``fastq worker -A fastq.bench_realistic:app``).
app = FastQ("bench-realistic")


@app.task(name="realistic.sleep")
def sleep_task(seconds: float) -> tuple[float, float]:
    """An I/O-bound task: waits ``seconds``. Returns its (start, end) wall times."""
    t0 = time.time()
    time.sleep(seconds)
    return t0, time.time()


@app.task(name="realistic.cpu")
def cpu_task(seconds: float) -> tuple[float, float]:
    """A CPU-bound task: spins for ``seconds`` of this thread's CPU time."""
    t0 = time.time()
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return t0, time.time()


def _mix(n: int, seed: int = 7) -> list[float]:
    """Heavy-tailed: most tasks 1-10 ms, one in fifty 1-5 s."""
    rnd = random.Random(seed)
    return [rnd.uniform(1.0, 5.0) if rnd.random() < 0.02 else rnd.uniform(0.001, 0.010) for _ in range(n)]


#: name -> (kind, durations in seconds, in send order)
WORKLOADS: dict[str, tuple[str, list[float]]] = {
    "sleep 10ms": ("sleep", [0.010] * 600),
    "sleep 100ms": ("sleep", [0.100] * 120),
    "sleep 1s": ("sleep", [1.0] * 16),
    "cpu 5ms": ("cpu", [0.005] * 300),
    "cpu 50ms": ("cpu", [0.050] * 40),
    "mix 1ms-5s": ("sleep", _mix(400)),
    "long + short": ("sleep", [5.0] + [0.010] * 200),
}

#: (workload, pool, concurrency, when, workers): when is "before" (queued before the
#: workers start) or "running" (sent to running workers).
ROWS: list[tuple[str, str, int, str, int]] = [
    ("sleep 10ms", "thread", 8, "before", 1),
    ("sleep 10ms", "thread", 8, "running", 1),
    ("sleep 10ms", "process", 4, "before", 1),
    ("sleep 10ms", "process", 4, "running", 1),
    ("sleep 100ms", "thread", 8, "before", 1),
    ("sleep 100ms", "thread", 8, "running", 1),
    ("sleep 100ms", "process", 6, "before", 1),
    ("sleep 100ms", "process", 6, "running", 1),
    ("sleep 100ms", "thread", 4, "running", 2),
    ("sleep 1s", "thread", 8, "before", 1),
    ("sleep 1s", "process", 4, "running", 1),
    ("cpu 5ms", "process", 2, "before", 1),
    ("cpu 5ms", "process", 2, "running", 1),
    ("cpu 50ms", "process", 2, "running", 1),
    ("cpu 50ms", "process", 1, "running", 2),
    ("mix 1ms-5s", "thread", 8, "running", 1),
    ("mix 1ms-5s", "process", 4, "running", 1),
    ("mix 1ms-5s", "thread", 4, "running", 2),
    ("long + short", "thread", 4, "before", 1),
    ("long + short", "process", 4, "running", 1),
]


def effective_slots(kind: str, pool: str, concurrency: int, workers: int) -> int:
    """How many tasks of this kind can really progress at once on this machine."""
    slots = concurrency * workers
    if kind == "cpu":
        per_worker = 1 if pool == "thread" else concurrency  # threads share one GIL
        slots = min(per_worker * workers, os.cpu_count() or 1)
    return max(1, slots)


def ideal_schedule(durations: list[float], released: list[float], slots: int) -> list[float]:
    """Start times under a work-conserving FIFO scheduler with ``slots`` slots:
    each task, in send order, starts when it is released and a slot is free."""
    free = [0.0] * slots
    starts = []
    for d, r in zip(durations, released):
        i = min(range(slots), key=free.__getitem__)
        s = max(r, free[i])
        starts.append(s)
        free[i] = s + d
    return starts


def percentile(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))] if v else 0.0


def summarize(durations: list[float], sent: list[float], spans: list[tuple[float, float]], slots: int,
              before: bool) -> dict:
    """Makespan, ideal and waits of one run (all times are wall-clock seconds)."""
    first = min(s for s, _ in spans)
    # Queued before the workers started: waiting for the workers is not the queue's doing.
    released = [max(t, first) if before else t for t in sent]
    origin = min(released)
    ideal_starts = ideal_schedule(durations, [r - origin for r in released], slots)
    ideal = max(s + d for s, d in zip(ideal_starts, durations)) - min(ideal_starts)
    makespan = max(e for _, e in spans) - first
    waits = [s - r for (s, _), r in zip(spans, released)]
    ideal_waits = [s - (r - origin) for s, r in zip(ideal_starts, released)]
    return {"makespan_s": makespan, "ideal_s": ideal, "ratio": makespan / ideal,
            "wait_p50_ms": percentile(waits, 0.5) * 1000, "wait_p99_ms": percentile(waits, 0.99) * 1000,
            "ideal_wait_p50_ms": percentile(ideal_waits, 0.5) * 1000,
            "ideal_wait_p99_ms": percentile(ideal_waits, 0.99) * 1000}


class _Workers:
    """``fastq worker`` subprocesses running this module's app."""

    def __init__(self, url: str, pool: str, concurrency: int, count: int, extra: list[str]) -> None:
        env = {**os.environ, "FASTQ_BROKER_URL": url}
        exe = os.path.join(os.path.dirname(sys.executable), "fastq")
        cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "fastq"]
        self.names = [f"realistic-{os.getpid()}-{i}@bench" for i in range(count)]
        self.procs = [
            subprocess.Popen([*cmd, "worker", "-A", "fastq.bench_realistic:app", "-P", pool, "-c", str(concurrency),
                              "-n", name, "--loglevel", "ERROR", *extra],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            for name in self.names
        ]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _wait_ready(w: _Workers) -> None:
    """Until every worker has registered and a tiny task has run."""
    client, key = app.broker.client, app.broker.keys.workers
    deadline = time.monotonic() + 60
    while not all(client.zscore(key, n) is not None for n in w.names):
        if time.monotonic() > deadline or any(p.poll() is not None for p in w.procs):
            raise RuntimeError("the benchmark's workers did not start")
        time.sleep(0.05)
    sleep_task.delay(0).get(timeout=60)


def _collect(results: list, w: _Workers) -> list[tuple[float, float]]:
    """Every task's (start, end); fails at once if a worker exits."""
    rs = ResultSet(results, app=app)
    deadline = time.monotonic() + 600
    while True:
        try:
            return [tuple(s) for s in rs.get(timeout=1.0)]
        except ResultTimeout:
            dead = [p.returncode for p in w.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"the benchmark's workers stopped (exit codes {dead}) or timed out") from None


def run_row(url: str, row: tuple[str, str, int, str, int], extra: list[str]) -> dict:
    name, pool, concurrency, when, workers = row
    kind, durations = WORKLOADS[name]
    task = sleep_task if kind == "sleep" else cpu_task
    app.conf.broker_url = url
    app._reset()
    w = None
    try:
        if when == "running":
            w = _Workers(url, pool, concurrency, workers, extra)
            _wait_ready(w)
        sent, results = [], []
        for d in durations:  # one delay() each, as producers send them
            sent.append(time.time())
            results.append(task.delay(d))
        if w is None:
            w = _Workers(url, pool, concurrency, workers, extra)
        spans = _collect(results, w)
    finally:
        if w is not None:
            w.stop()
    slots = effective_slots(kind, pool, concurrency, workers)
    return {"scenario": "realistic", "workload": name, "pool": pool, "concurrency": concurrency, "when": when,
            "workers": workers, "tasks": len(durations), "slots": slots,
            **summarize(durations, sent, spans, slots, when == "before")}


def format_table(results: list[dict]) -> str:
    head = (f"{'workload':<14}{'pool':<8}{'-c':>3}{'workers':>8}  {'queued':<8}{'tasks':>6}{'makespan s':>11}"
            f"{'ideal s':>9}{'ratio':>7}{'wait p50 ms':>12}{'p99 ms':>8}{'ideal p99':>10}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['workload']:<14}{r['pool']:<8}{r['concurrency']:>3}{r['workers']:>8}  {r['when']:<8}"
                     f"{r['tasks']:>6}{r['makespan_s']:>11.2f}{r['ideal_s']:>9.2f}{r['ratio']:>7.2f}"
                     f"{r['wait_p50_ms']:>12.1f}{r['wait_p99_ms']:>8.1f}{r['ideal_wait_p99_ms']:>10.1f}")
    return "\n".join(lines)


def run(url: str, extra: list[str], progress=None, rows=None) -> list[dict]:
    results = []
    for row in rows or ROWS:
        results.append(run_row(url, row, extra))
        if progress is not None:
            progress(1)
    return results


__all__ = ["ROWS", "WORKLOADS", "app", "format_table", "run", "summarize"]
