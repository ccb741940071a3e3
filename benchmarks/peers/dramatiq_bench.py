"""Dramatiq's side of benchmarks/compare.py: the fastq bench scenarios, run with Dramatiq.

Run it with the peers' interpreter (compare.py does)::

    benchmarks/.peers/venv/bin/python benchmarks/peers/dramatiq_bench.py \
        --broker redis://127.0.0.1:6379/5 --scenario drain --tasks 20000 --processes 1 --json

It prints one JSON object shaped like ``fastq bench --json`` plus a ``config`` string.
The broker URL's DB is flushed before each scenario.

How each scenario uses Dramatiq:

- enqueue: ``noop.send(i)`` in a loop.
- bulk:    ``group(noop.message(i) for i in ...).run()``. Dramatiq documents no bulk or
           pipelined enqueue: ``group.run()`` calls ``broker.enqueue`` (one Lua script
           call, one round trip) per message. It is still the documented way to send many.
- drain:   queue N ``noop`` messages, start ``dramatiq``; Dramatiq's Redis broker keeps
           message ids in the list ``dramatiq:default`` and bodies in the hash
           ``dramatiq:default.msgs``, and deletes a body only when the message is acked,
           which happens after the actor ran. Done = the hash is empty.
- e2e:     ``group(echo.message(i) ...).run()`` then ``get_results(block=True)`` through
           the Results middleware's RedisBackend.
- latency: ``echo.send(i).get_result(block=True)`` against one idle worker process.
- realistic: one row of src/fastq/bench_realistic.py (``--row K``): ``bench.sleep`` /
           ``bench.cpu`` actors, one ``send()`` each, their (start, end) read back with
           ``get_result(block=True)`` through the Results middleware's RedisBackend. One
           ``dramatiq`` command per fastq worker: thread ``-c N`` -> ``--processes 1
           --threads N``, process ``-c N`` -> ``--processes N --threads 1``. Every row runs
           Dramatiq's defaults: prefetch 2 x threads per process (running ones included;
           the throughput scenarios' 200 would let one process hoard a backlog of long
           tasks) and ``--worker-timeout`` 1000 ms. Why not prefetch = threads, which
           Dramatiq's author suggests in dramatiq#392 to hold no message that cannot run at
           once (the analogue of Celery's prefetch 1 + acks_late): a consumer whose prefetch
           is full fetches nothing and then sleeps with exponential backoff (up to the
           worker timeout), so with prefetch = threads a finished task's thread often waits
           for that sleep. Measured here on sleep 100ms rows: makespan 1.4-1.6x the ideal
           against 1.03-1.05x with the default, and a worse wait p99 on "long + short".

Worker: ``dramatiq dramatiq_tasks --processes P --threads 8`` (8 is Dramatiq's default
and measured as good as 2-32 for no-op actors; BENCH_DRAMATIQ_THREADS overrides) with the
documented environment variable ``dramatiq_queue_prefetch=200``. Why: the Redis consumer
fetches a new batch only when fewer than `prefetch` messages are outstanding, and
otherwise sleeps at least 5 ms; with the default prefetch (2 x threads = 16) a worker
spends much of a drain asleep, and 200 roughly doubled its throughput here. Everything
else is default; note that an idle consumer backs off exponentially from 5 ms up to
``dramatiq_worker_timeout`` (1 s) between polls, which is what shapes its latency figure.
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

QUEUE_KEY = "dramatiq:default"
MSGS_KEY = "dramatiq:default.msgs"
DEFAULT_THREADS = 8
DEFAULT_PREFETCH = 200
#: Results are waited for this long at most (ms, Dramatiq's unit).
RESULT_TIMEOUT_MS = 600_000


def worker_command(processes: int, threads: int) -> list[str]:
    """The ``dramatiq`` command line users run."""
    return [sys.executable, "-m", "dramatiq", "dramatiq_tasks", "--processes", str(processes),
            "--threads", str(threads)]


def config_string(threads: int, prefetch: int) -> str:
    """What compare.py prints in its config footnote."""
    import redis

    hiredis = "hiredis" if getattr(redis.utils, "HIREDIS_AVAILABLE", False) else "pure-Python parser"
    return (f"dramatiq --processes P --threads {threads}, default middleware + Results(RedisBackend), "
            f"dramatiq_queue_prefetch={prefetch}, worker_timeout 1000 ms (default), "
            f"redis-py {redis.__version__} ({hiredis}); bulk = group(...).run() (no pipelined enqueue exists)")


REALISTIC_CONFIG = ("realistic rows: one `dramatiq dramatiq_tasks` per worker, `--processes 1 --threads N` "
                    "(thread) or `--processes N --threads 1` (process), Dramatiq's default prefetch (2 x threads "
                    "per process) and worker_timeout (1000 ms), default middleware + Results(RedisBackend), "
                    "(start, end) via get_result(block=True)")


def realistic_command(pool: str, concurrency: int) -> tuple[list[str], int]:
    """The ``dramatiq`` command for one worker of a realistic row, and its processes."""
    processes, threads = (1, concurrency) if pool == "thread" else (concurrency, 1)
    return worker_command(processes, threads), processes


def send_bulk(actor, n: int):
    """Send n messages the documented many-at-once way: a group."""
    from dramatiq import group

    return group(actor.message(i) for i in range(n)).run()


# --- scenarios --------------------------------------------------------------------


def run_enqueue(url: str, n: int) -> dict:
    from dramatiq_tasks import noop

    flush(url)
    dt = timed(lambda: [noop.send(i) for i in range(n)])
    return {"scenario": "enqueue", "tasks": n, "seconds": dt, "rate": n / dt}


def run_bulk(url: str, n: int) -> dict:
    from dramatiq_tasks import noop

    flush(url)
    mem0 = used_memory(url)
    dt = timed(lambda: send_bulk(noop, n))
    per_msg = (used_memory(url) - mem0) / n
    return {"scenario": "bulk", "tasks": n, "seconds": dt, "rate": n / dt, "bytes_per_message": per_msg}


def run_drain(url: str, n: int, processes: int, threads: int) -> dict:
    from dramatiq_tasks import noop

    flush(url)
    send_bulk(noop, n)
    r = client(url)
    assert r.llen(QUEUE_KEY) == n, "the queue does not hold the N messages"

    def backlog() -> tuple[int, int]:
        pipe = r.pipeline(transaction=False)
        pipe.llen(QUEUE_KEY).hlen(MSGS_KEY)
        waiting, unacked = pipe.execute()
        return waiting, unacked - waiting

    with Workers([worker_command(processes, threads)], worker_env(url)) as w:
        fields = watch_drain(w, n, backlog, timeout=max(120.0, n / 50))
    return {"scenario": "drain", "processes": processes, **fields}


def wait_ready(url: str, processes: int) -> None:
    """Every worker process has booted, then one task round trip works
    (the same warm-up fastq bench does)."""
    from dramatiq_tasks import BOOT_KEY, echo

    r = client(url)
    wait_until(lambda: int(r.get(BOOT_KEY) or 0) >= processes, 60, "dramatiq worker processes")
    echo.send(-1).get_result(block=True, timeout=60_000)


def run_e2e(url: str, n: int, processes: int, threads: int) -> dict:
    from dramatiq_tasks import echo

    flush(url)
    with Workers([worker_command(processes, threads)], worker_env(url)) as w:
        wait_ready(url, processes)
        t0 = time.perf_counter()
        values = list(send_bulk(echo, n).get_results(block=True, timeout=RESULT_TIMEOUT_MS))
        dt = time.perf_counter() - t0
        assert values == list(range(n)), "e2e results are wrong"
        rss = w.rss_mb()
    return {"scenario": "e2e", "processes": processes, "tasks": n, "seconds": dt, "rate": n / dt,
            "worker_rss_mb": rss}


def run_latency(url: str, n: int, threads: int) -> dict:
    from dramatiq_tasks import echo

    flush(url)
    with Workers([worker_command(1, threads)], worker_env(url)):
        wait_ready(url, 1)
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            echo.send(i).get_result(block=True, timeout=30_000)
            samples.append(time.perf_counter() - t0)
    return {"scenario": "latency", **latency_stats(samples)}


def run_realistic(url: str, row: tuple) -> dict:
    from dramatiq.results import ResultTimeout
    from dramatiq_tasks import cpu_task, sleep_task

    flush(url)
    _, pool, concurrency, _, count = row
    cmd, processes = realistic_command(pool, concurrency)
    env = worker_env(url)
    env.pop("dramatiq_queue_prefetch", None)  # Dramatiq's default (see the module docstring)
    workers = Workers([cmd] * count, env)

    def send(kind: str, seconds: float):
        return (sleep_task if kind == "sleep" else cpu_task).send(seconds)

    def result(message, timeout: float):
        try:
            return message.get_result(block=True, timeout=int(timeout * 1000))
        except ResultTimeout:
            return None

    return run_realistic_row(row, workers, lambda: wait_ready(url, processes * count), send, result)


def main() -> None:
    args = parse_args("dramatiq")
    threads = int(os.environ.get("BENCH_DRAMATIQ_THREADS", str(DEFAULT_THREADS)))
    # Read by dramatiq.worker at import time in the worker processes, which inherit it.
    os.environ.setdefault("dramatiq_queue_prefetch", str(DEFAULT_PREFETCH))
    # dramatiq_tasks reads the URL at import time, in this process and in the workers.
    os.environ["BENCH_BROKER_URL"] = args.broker
    import dramatiq

    results = []
    for sc in args.scenarios:
        if sc == "realistic":
            for row in realistic_rows(args.row):
                log(f"dramatiq realistic {row}")
                results.append(run_realistic(args.broker, row))
            continue
        n = args.tasks or DEFAULT_TASKS[sc]
        if sc == "drain":
            for p in args.procs:
                log(f"dramatiq drain {n} x {p} proc")
                results.append(run_drain(args.broker, n, p, threads))
            continue
        log(f"dramatiq {sc} {n}")
        if sc == "enqueue":
            results.append(run_enqueue(args.broker, n))
        elif sc == "bulk":
            results.append(run_bulk(args.broker, n))
        elif sc == "e2e":
            results.append(run_e2e(args.broker, n, max(args.procs), threads))
        else:
            results.append(run_latency(args.broker, n, threads))
    flush(args.broker)
    config = (REALISTIC_CONFIG if args.scenarios == ["realistic"]
              else config_string(threads, int(os.environ["dramatiq_queue_prefetch"])))
    emit("dramatiq", dramatiq.__version__, args.broker, config, results)


if __name__ == "__main__":
    main()
