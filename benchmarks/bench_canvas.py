"""Workflows at scale: a 10,000-task group and a 10,000-task chord, end to end.

    python benchmarks/bench_canvas.py                    # n=10,000, 3 rounds, 1 worker x 2 processes
    python benchmarks/bench_canvas.py -n 100000 --rounds 1 --concurrency 4

Each round times, in seconds from the first ``apply_async()`` call until the
producer holds every value:

- group: ``group(add.s(i, i) for i in range(n)).apply_async().get()``
  (n messages sent in pipelined bulk batches, n results read back in batches);
- chord: ``chord(add.s(i, i) for i in range(n))(tsum.s()).get()``: the body
  runs once, sent by the worker whose header task completed the chord's
  counter (chord_done.lua), with the list of n results.

The send time (``apply_async()`` alone) is reported too. It starts a private
redis-server (``--url`` to use another) and ``fastq worker`` processes that run
this module's app.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import redis
from _workers import start_workers, stop_workers

from fastq import FastQ, chord, group
from fastq.bench import private_redis

app = FastQ("bench_canvas")


@app.task(name="bench.add")
def add(x, y):
    return x + y


@app.task(name="bench.tsum")
def tsum(values):
    return sum(values)


# --- the driver ----------------------------------------------------------------------------


def run_group(n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    res = group(add.s(i, i) for i in range(n)).apply_async()
    sent = time.perf_counter() - t0
    values = res.get(timeout=600)
    total = time.perf_counter() - t0
    assert values == [2 * i for i in range(n)], "wrong group result"
    return sent, total


def run_chord(n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    res = chord(add.s(i, i) for i in range(n))(tsum.s())
    sent = time.perf_counter() - t0
    value = res.get(timeout=600)
    total = time.perf_counter() - t0
    assert value == n * (n - 1), f"wrong chord result {value}"
    return sent, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10_000, help="tasks in the group and in the chord header")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="worker processes (each a process pool)")
    ap.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    ap.add_argument("--url", help="use this Redis (its DB is flushed) instead of a private redis-server")
    args = ap.parse_args()

    stack = contextlib.ExitStack()  # a private redis-server unless --url is given
    url = args.url or stack.enter_context(private_redis())
    redis.Redis.from_url(url).flushdb()
    app.conf.broker_url = url
    app._reset()
    procs = start_workers("bench_canvas:app", url, args.workers, args.concurrency)
    try:
        print(f"bench_canvas: n={args.n:,}, {args.workers} worker(s) x {args.concurrency} processes, "
              f"{os.cpu_count()} CPUs, {args.rounds} round(s)")
        run_group(min(args.n, 1000))  # warm up: connections, scripts, imports
        for name, fn in (("group", run_group), ("chord", run_chord)):
            sends, totals = [], []
            for _ in range(args.rounds):
                sent, total = fn(args.n)
                sends.append(sent)
                totals.append(total)
            print(f"{name:5} {args.n:>7,} tasks: end to end median {statistics.median(totals):.2f} s "
                  f"(best {min(totals):.2f} s, {args.n / min(totals):,.0f} tasks/s); "
                  f"apply_async() {statistics.median(sends):.2f} s")
    finally:
        stop_workers(procs)
        stack.close()


if __name__ == "__main__":
    main()
