"""Celery's side of benchmarks/compare.py: the fastq bench scenarios, run with Celery.

Run it with the peers' interpreter (compare.py does)::

    benchmarks/.peers/venv/bin/python benchmarks/peers/celery_bench.py \
        --broker redis://127.0.0.1:6379/5 --scenario drain --tasks 20000 --processes 1 --json

It prints one JSON object shaped like ``fastq bench --json`` plus a ``config`` string.
The broker URL's DB is flushed before each scenario.

How each scenario uses Celery (the documented way; see celery_tasks.py for settings):

- enqueue: ``noop.delay(i)`` in a loop.
- bulk:    ``group(noop.s(i) for i in ...).apply_async()``: Celery's documented way to send
           many tasks at once. On Redis it publishes them one LPUSH at a time over one
           producer connection (kombu has no pipelined publish).
- drain:   queue N ``noop`` messages, start ``celery worker``; done when the queue list
           (``celery``) is empty and kombu's unacked hash (``unacked``) is empty. With the
           default early ack, a message leaves ``unacked`` just before its task runs; the
           task is a no-op, so it has run microseconds later.
- e2e:     ``group(echo.s(i) ...).apply_async().get()`` (results over Redis pub/sub).
- latency: ``echo.delay(i).get()`` against one idle worker.
- realistic: one row of src/fastq/bench_realistic.py (``--row K``): ``bench.sleep`` /
           ``bench.cpu`` tasks, one ``delay()`` each, their (start, end) read back with
           ``AsyncResult.get()`` from the Redis result backend. Pools: thread -> ``-P threads
           -c N``, process -> ``-P prefork -c N``; one ``celery worker`` per fastq worker.
           One configuration for every row, from Celery's "Optimizing" guide for long tasks
           ("Prefetch limits", "Reserve one task at a time"): ``task_acks_late=True``,
           ``--prefetch-multiplier 1`` and ``-O fair``, so that a worker holds no more tasks
           than it has slots and nothing waits behind a long task on a busy slot.
"""

from __future__ import annotations

import os
import sys
import time

from _common import (
    DEFAULT_TASKS,
    Workers,
    client,
    emit,
    flush,
    latency_stats,
    log,
    parse_args,
    realistic_rows,
    run_realistic_row,
    timed,
    used_memory,
    wait_until,
    watch_drain,
    worker_env,
)

#: kombu's Redis transport: the default queue's list and its unacked-message hash.
QUEUE_KEY = "celery"
UNACKED_KEY = "unacked"
#: Bulk sends are split so that one group's signatures and results stay a bounded size.
CHUNK = 10_000


def worker_commands(processes: int, pool: str, prefetch: int) -> list[list[str]]:
    """``celery worker`` command lines giving `processes` task-executing processes.

    solo: one worker instance per process (each executes tasks in its own main process,
    no pool IPC). prefork: one instance with `processes` pool children, ``-O fair`` off
    (the "default" strategy hands short tasks to children without waiting)."""
    base = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "--prefetch-multiplier", str(prefetch)]
    if pool == "solo":
        return [[*base, "--pool", "solo", "-n", f"bench{i}@%h"] for i in range(processes)]
    return [[*base, "--pool", "prefork", "-c", str(processes), "-O", "default", "-n", "bench0@%h"]]


def config_string(pool: str, prefetch: int) -> str:
    """What compare.py prints in its config footnote."""
    import kombu
    import redis

    hiredis = "hiredis" if getattr(redis.utils, "HIREDIS_AVAILABLE", False) else "pure-Python parser"
    pool_desc = "one --pool solo worker per process" if pool == "solo" else "--pool prefork -c P -O default"
    return (f"{pool_desc}, --prefetch-multiplier {prefetch}, --without-gossip --without-mingle "
            f"--without-heartbeat, early ack (default), rate limits disabled, json serializer, "
            f"kombu {kombu.__version__}, redis-py {redis.__version__} ({hiredis}); bulk = group(...).apply_async(), "
            f"which also subscribes to every task's result channel, even for ignore_result tasks")


#: Every realistic row's worker settings (see the module docstring).
REALISTIC_POOLS = {"thread": "threads", "process": "prefork"}
REALISTIC_CONFIG = ("realistic rows: one `celery worker` per worker, `-P threads -c N` (thread) or "
                    "`-P prefork -c N` (process), `-O fair --prefetch-multiplier 1` with task_acks_late=True "
                    "(Celery's Optimizing guide for long tasks), --without-gossip --without-mingle "
                    "--without-heartbeat; (start, end) via AsyncResult.get() from the Redis result backend")


def realistic_commands(pool: str, concurrency: int, workers: int) -> list[list[str]]:
    base = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "--prefetch-multiplier", "1",
            "-O", "fair", "-P", REALISTIC_POOLS[pool], "-c", str(concurrency)]
    return [[*base, "-n", f"bench{i}@%h"] for i in range(workers)]


# --- scenarios --------------------------------------------------------------------


def send_bulk(task, n: int) -> list:
    """Send n tasks with group().apply_async() in chunks; returns the GroupResults."""
    from celery import group

    return [group(task.s(j) for j in range(i, min(n, i + CHUNK))).apply_async() for i in range(0, n, CHUNK)]


def run_enqueue(url: str, n: int) -> dict:
    from celery_tasks import noop

    flush(url)
    dt = timed(lambda: [noop.delay(i) for i in range(n)])
    return {"scenario": "enqueue", "tasks": n, "seconds": dt, "rate": n / dt}


def run_bulk(url: str, n: int) -> dict:
    from celery_tasks import noop

    flush(url)
    mem0 = used_memory(url)
    dt = timed(lambda: send_bulk(noop, n))
    per_msg = (used_memory(url) - mem0) / n
    return {"scenario": "bulk", "tasks": n, "seconds": dt, "rate": n / dt, "bytes_per_message": per_msg}


def run_drain(url: str, n: int, processes: int, pool: str, prefetch: int) -> dict:
    from celery_tasks import noop

    flush(url)
    send_bulk(noop, n)
    r = client(url)
    assert r.llen(QUEUE_KEY) == n, "the queue does not hold the N messages"

    def backlog() -> tuple[int, int]:
        pipe = r.pipeline(transaction=False)
        pipe.llen(QUEUE_KEY).hlen(UNACKED_KEY)
        waiting, unacked = pipe.execute()
        return waiting, unacked

    with Workers(worker_commands(processes, pool, prefetch), worker_env(url)) as w:
        fields = watch_drain(w, n, backlog, timeout=max(120.0, n / 50))
    return {"scenario": "drain", "processes": processes, **fields}


def wait_ready(instances: int) -> None:
    """Every worker instance answers a control ping, then one task round trip works
    (the same warm-up fastq bench does)."""
    from celery_tasks import app, echo

    wait_until(lambda: len(app.control.ping(timeout=0.5) or []) >= instances, 60, "celery workers")
    echo.delay(-1).get(timeout=60)


def run_e2e(url: str, n: int, processes: int, pool: str, prefetch: int) -> dict:
    from celery_tasks import echo

    flush(url)
    cmds = worker_commands(processes, pool, prefetch)
    with Workers(cmds, worker_env(url)) as w:
        wait_ready(len(cmds))
        t0 = time.perf_counter()
        values = [v for res in send_bulk(echo, n) for v in res.get(timeout=600)]
        dt = time.perf_counter() - t0
        assert values == list(range(n)), "e2e results are wrong"
        rss = w.rss_mb()
    return {"scenario": "e2e", "processes": processes, "tasks": n, "seconds": dt, "rate": n / dt,
            "worker_rss_mb": rss}


def run_latency(url: str, n: int, pool: str, prefetch: int) -> dict:
    from celery_tasks import echo

    flush(url)
    cmds = worker_commands(1, pool, prefetch)
    with Workers(cmds, worker_env(url)):
        wait_ready(len(cmds))
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            echo.delay(i).get(timeout=30)
            samples.append(time.perf_counter() - t0)
    return {"scenario": "latency", **latency_stats(samples)}


def run_realistic(url: str, row: tuple) -> dict:
    from celery.exceptions import TimeoutError as ResultTimeout
    from celery_tasks import cpu_task, sleep_task

    flush(url)
    _, pool, concurrency, _, count = row
    env = {**worker_env(url), "BENCH_CELERY_PREFETCH": "1", "BENCH_CELERY_ACKS_LATE": "1"}
    workers = Workers(realistic_commands(pool, concurrency, count), env)

    def send(kind: str, seconds: float):
        return (sleep_task if kind == "sleep" else cpu_task).delay(seconds)

    def result(handle, timeout: float):
        try:
            return handle.get(timeout=timeout)
        except ResultTimeout:
            return None

    return run_realistic_row(row, workers, lambda: wait_ready(count), send, result)


def main() -> None:
    args = parse_args("celery")
    pool = os.environ.get("BENCH_CELERY_POOL", "solo")
    prefetch = int(os.environ.get("BENCH_CELERY_PREFETCH", "64"))
    # celery_tasks reads these at import time, in this process and in the workers.
    os.environ["BENCH_BROKER_URL"] = args.broker
    os.environ["BENCH_CELERY_PREFETCH"] = str(prefetch)
    import celery

    results = []
    for sc in args.scenarios:
        if sc == "realistic":
            for row in realistic_rows(args.row):
                log(f"celery realistic {row}")
                results.append(run_realistic(args.broker, row))
            continue
        n = args.tasks or DEFAULT_TASKS[sc]
        if sc == "drain":
            for p in args.procs:
                log(f"celery drain {n} x {p} proc")
                results.append(run_drain(args.broker, n, p, pool, prefetch))
            continue
        log(f"celery {sc} {n}")
        if sc == "enqueue":
            results.append(run_enqueue(args.broker, n))
        elif sc == "bulk":
            results.append(run_bulk(args.broker, n))
        elif sc == "e2e":
            results.append(run_e2e(args.broker, n, max(args.procs), pool, prefetch))
        else:
            results.append(run_latency(args.broker, n, pool, prefetch))
    flush(args.broker)
    config = REALISTIC_CONFIG if args.scenarios == ["realistic"] else config_string(pool, prefetch)
    emit("celery", celery.__version__, args.broker, config, results)


if __name__ == "__main__":
    main()
