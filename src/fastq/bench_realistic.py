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

This module is data and arithmetic only (the standard library, no fastq):
``fastq bench`` (bench.py) runs the rows on fastq, and benchmarks/compare.py
loads this file by path to run the same rows on Celery and Dramatiq.

Layer: apps; may import any layer.
"""

from __future__ import annotations

import os
import random
import time


def _mix(n: int, seed: int = 7) -> list[float]:
    """Heavy-tailed: most tasks 1-10 ms, one in fifty 1-5 s."""
    rnd = random.Random(seed)
    return [rnd.uniform(1.0, 5.0) if rnd.random() < 0.02 else rnd.uniform(0.001, 0.010) for _ in range(n)]


#: name -> (kind, durations in seconds, in send order); kind "sleep" (I/O bound) or "cpu"
WORKLOADS: dict[str, tuple[str, list[float]]] = {
    "sleep 10ms": ("sleep", [0.010] * 600),
    "sleep 100ms": ("sleep", [0.100] * 120),
    "sleep 1s": ("sleep", [1.0] * 16),
    "cpu 5ms": ("cpu", [0.005] * 300),
    "cpu 50ms": ("cpu", [0.050] * 40),
    "mix 1ms-5s": ("sleep", _mix(400)),
    "long + short": ("sleep", [5.0] + [0.010] * 200),
}

#: (workload, pool, concurrency, when, workers): pool "thread" or "process"; when
#: "before" (queued before the workers start) or "running" (sent to running workers).
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


def pick(spec: str) -> list[tuple[str, str, int, str, int]]:
    """Rows named by ``spec``: comma-separated row numbers (0-based) or text found
    in a row's workload name ("sleep 100ms,5"). ValueError names what matched nothing."""
    picked: list[tuple[str, str, int, str, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        found = [ROWS[int(part)]] if part.isdigit() and int(part) < len(ROWS) else [r for r in ROWS if part in r[0]]
        if not found:
            raise ValueError(f"{part!r} is neither a row number below {len(ROWS)} nor in a workload name "
                             f"({', '.join(WORKLOADS)})")
        picked.extend(r for r in found if r not in picked)
    return picked


def spin(seconds: float) -> None:
    """A CPU-bound task's body: spin for ``seconds`` of this thread's CPU time."""

    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


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


def summarize(row: tuple, sent: list[float], spans: list[tuple[float, float]]) -> dict:
    """One row's figures from each task's send time and (start, end) wall times."""
    name, pool, concurrency, when, workers = row
    kind, durations = WORKLOADS[name]
    slots = effective_slots(kind, pool, concurrency, workers)
    first = min(s for s, _ in spans)
    # Queued before the workers started: waiting for the workers is not the queue's doing.
    released = [max(t, first) if when == "before" else t for t in sent]
    origin = min(released)
    ideal_starts = ideal_schedule(durations, [r - origin for r in released], slots)
    ideal = max(s + d for s, d in zip(ideal_starts, durations)) - min(ideal_starts)
    makespan = max(e for _, e in spans) - first
    waits = [s - r for (s, _), r in zip(spans, released)]
    ideal_waits = [s - (r - origin) for s, r in zip(ideal_starts, released)]
    return {"scenario": "realistic", "workload": name, "pool": pool, "concurrency": concurrency, "when": when,
            "workers": workers, "tasks": len(durations), "slots": slots,
            "makespan_s": makespan, "ideal_s": ideal, "ratio": makespan / ideal,
            "wait_p50_ms": percentile(waits, 0.5) * 1000, "wait_p99_ms": percentile(waits, 0.99) * 1000,
            "ideal_wait_p50_ms": percentile(ideal_waits, 0.5) * 1000,
            "ideal_wait_p99_ms": percentile(ideal_waits, 0.99) * 1000}


def format_table(results: list[dict]) -> str:
    head = (f"{'workload':<14}{'pool':<8}{'-c':>3}{'workers':>8}  {'queued':<8}{'tasks':>6}{'makespan s':>11}"
            f"{'ideal s':>9}{'ratio':>7}{'wait p50 ms':>12}{'p99 ms':>8}{'ideal p99':>10}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['workload']:<14}{r['pool']:<8}{r['concurrency']:>3}{r['workers']:>8}  {r['when']:<8}"
                     f"{r['tasks']:>6}{r['makespan_s']:>11.2f}{r['ideal_s']:>9.2f}{r['ratio']:>7.2f}"
                     f"{r['wait_p50_ms']:>12.1f}{r['wait_p99_ms']:>8.1f}{r['ideal_wait_p99_ms']:>10.1f}")
    return "\n".join(lines)


__all__ = ["ROWS", "WORKLOADS", "effective_slots", "format_table", "ideal_schedule", "pick", "spin", "summarize"]
