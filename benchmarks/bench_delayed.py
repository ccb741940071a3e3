"""Delayed tasks at scale: schedule 1,000,000 tasks spread over a minute.

    python benchmarks/bench_delayed.py                 # 1,000,000 over 60 s
    python benchmarks/bench_delayed.py -n 100000 --window 10 --workers 2

Reports:

- idle: lateness (start time minus due time) of tasks due one at a time on
  idle workers: the "starts within 50 ms of its due time at p99" figure;
- enqueue rate of the million delayed tasks (pipelined ``send_many``);
- Redis memory per delayed task (``used_memory`` before and after);
- that a million waiting delayed tasks do not slow workers: immediate-task
  throughput and the promote script's cost with an empty and a full delayed set;
- lateness p50/p99/max of the million start times once they fall due, which on
  a small machine is bounded by how fast the workers can run 16,700 tasks/s.

It starts a private redis-server (``--url`` to use another) and ``fastq worker``
processes running this module's app. Each task measures its own lateness
(``time.time() - request.eta``) into a per-process histogram that a thread
flushes to Redis; the report merges them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import subprocess
import threading
import time

import redis
from _workers import start_workers, stop_workers

from fastq import FastQ
from fastq.bench import private_redis

app = FastQ("bench_delayed")
app.conf.task_ignore_result = True

HIST = "bench:lat:"  # + phase: hash of lateness ms bucket -> count

_local: dict = {"pid": None}


def _histogram() -> dict:
    """This process's histogram; a thread flushes it every 0.1 s."""
    if _local["pid"] != os.getpid():
        _local.update(pid=os.getpid(), hist={}, lock=threading.Lock(),
                      client=redis.Redis.from_url(os.environ["FASTQ_BROKER_URL"]))
        threading.Thread(target=_flusher, daemon=True, name="bench-flush").start()
    return _local["hist"]


def _flusher() -> None:
    while True:
        time.sleep(0.1)
        with _local["lock"]:
            hist, _local["hist"] = _local["hist"], {}
        if hist:
            pipe = _local["client"].pipeline(transaction=False)
            for (phase, bucket), n in hist.items():
                pipe.hincrby(HIST + phase, bucket, n)
            pipe.execute()


@app.task(name="bench.lat", bind=True, ignore_result=True)
def lat(self, phase):
    """Count this run in ``phase``'s histogram of lateness (ms past the due time)."""
    eta = self.request.eta
    key = (phase, int((time.time() - eta) * 1000 // 1) if eta else 0)
    _histogram()
    with _local["lock"]:
        h = _local["hist"]
        h[key] = h.get(key, 0) + 1


# --- the driver ----------------------------------------------------------------------------


def histogram(client: redis.Redis, phase: str) -> dict[int, int]:
    return {int(k): int(v) for k, v in client.hgetall(HIST + phase).items()}


def percentile(hist: dict[int, int], q: float) -> int:
    total = sum(hist.values())
    rank = q * total
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        if seen >= rank:
            return k
    return max(hist)


def summary(hist: dict[int, int]) -> str:
    if not hist:
        return "no samples"
    n = sum(hist.values())
    return (f"n={n:,}  p50={percentile(hist, 0.5)} ms  p99={percentile(hist, 0.99)} ms  "
            f"p99.9={percentile(hist, 0.999)} ms  max={max(hist)} ms  min={min(hist)} ms")


def wait_count(client: redis.Redis, phase: str, n: int, timeout: float, poll: float = 0.2) -> None:
    deadline = time.time() + timeout
    while sum(histogram(client, phase).values()) < n:
        if time.time() > deadline:
            print(f"  ! only {sum(histogram(client, phase).values()):,} of {n:,} ran within {timeout:.0f}s")
            return
        time.sleep(poll)


def send_batched(sigs, batch: int = 10_000) -> None:
    chunk = []
    for s in sigs:
        chunk.append(s)
        if len(chunk) >= batch:
            app.send_many(chunk)
            chunk = []
    if chunk:
        app.send_many(chunk)


def promote_cost_us(client: redis.Redis, rounds: int = 2000) -> float:
    """Mean round-trip of promote.lua on the default queue when nothing is due."""
    from fastq.broker.scripts import SCRIPTS

    qk = app.broker.keys.queue("default")
    keys = [qk.delayed, *qk.streams]
    SCRIPTS.promote(client, keys, [1000])
    t = time.perf_counter()
    for _ in range(rounds):
        SCRIPTS.promote(client, keys, [1000])
    return (time.perf_counter() - t) / rounds * 1e6


def throughput(client: redis.Redis, phase: str, n: int) -> float:
    """Immediate tasks/s through the running workers (sent, then drained)."""
    t = time.perf_counter()
    send_batched(lat.s(phase) for _ in range(n))
    wait_count(client, phase, n, 300, poll=0.02)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--tasks", type=int, default=1_000_000, help="delayed tasks (default 1,000,000)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds their due times spread over (default 60)")
    ap.add_argument("--lead", type=float, default=0.0,
                    help="seconds from the start of enqueueing to the first due time (default: measured enqueue "
                         "time + 15 s)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("-c", "--concurrency", type=int, default=2, help="pool children per worker (default 2)")
    ap.add_argument("--idle-tasks", type=int, default=2000, help="tasks for the idle lateness phase (default 2000)")
    ap.add_argument("--idle-window", type=float, default=20.0, help="seconds the idle phase spreads over")
    ap.add_argument("--throughput-tasks", type=int, default=50_000, help="immediate tasks per throughput check")
    ap.add_argument("--url", help="Redis URL (default: a private redis-server; its DB is flushed)")
    args = ap.parse_args()

    stack = contextlib.ExitStack()  # a private redis-server unless --url is given
    url = args.url or stack.enter_context(private_redis())
    os.environ["FASTQ_BROKER_URL"] = url
    app.conf.broker_url = url
    app._reset()
    client = redis.Redis.from_url(url)
    client.flushdb()
    procs: list[subprocess.Popen] = []
    try:
        print(f"fastq delayed-task benchmark: {args.tasks:,} tasks over {args.window:g}s, "
              f"{args.workers} worker(s) x {args.concurrency} processes, {os.cpu_count()} CPUs, "
              f"redis {client.info('server')['redis_version']}")
        procs = start_workers("bench_delayed:app", url, args.workers, args.concurrency)
        time.sleep(1.0)

        # 1. idle workers: one due task at a time
        n_idle = args.idle_tasks
        t0 = time.time() + 1.0
        send_batched(lat.s("idle").set(eta=_utc(t0 + args.idle_window * i / n_idle)) for i in range(n_idle))
        wait_count(client, "idle", n_idle, args.idle_window + 30)
        print(f"idle lateness ({n_idle:,} tasks over {args.idle_window:g}s): {summary(histogram(client, 'idle'))}")

        # 2. workers' speed with an empty delayed set
        tp_empty = throughput(client, "tp-empty", args.throughput_tasks)
        cost_empty = promote_cost_us(client)

        # 3. enqueue the million
        mem0 = client.info("memory")["used_memory"]
        lead = args.lead or (args.tasks / 40_000 + 15)  # a first guess; reported below
        start = time.time() + lead
        n, w = args.tasks, args.window
        t = time.perf_counter()
        send_batched(lat.s("million").set(eta=_utc(start + w * i / n)) for i in range(n))
        enqueue_s = time.perf_counter() - t
        mem1 = client.info("memory")["used_memory"]
        delayed = client.zcard(app.broker.keys.queue("default").delayed)
        print(f"enqueue: {n:,} delayed tasks in {enqueue_s:.1f}s = {n / enqueue_s:,.0f} tasks/s "
              f"(one producer thread, pipelined send_many)")
        print(f"redis memory: {(mem1 - mem0) / 1e6:,.1f} MB for {delayed:,} delayed tasks = "
              f"{(mem1 - mem0) / max(delayed, 1):.0f} bytes per task")

        # 4. the same checks with a million waiting
        if time.time() < start - 5:
            tp_full = throughput(client, "tp-full", args.throughput_tasks)
            cost_full = promote_cost_us(client)
            print(f"workers with 0 vs {delayed:,} delayed waiting: {tp_empty:,.0f} vs {tp_full:,.0f} "
                  f"immediate tasks/s; promote.lua round trip {cost_empty:.0f} vs {cost_full:.0f} us")
        else:
            print("  (no time left before the window for the full-set throughput check; raise --lead)")
        if time.time() > start:
            print(f"  ! enqueueing ran {time.time() - start:.1f}s into the window; raise --lead")

        # 5. the window
        while time.time() < start + w:
            time.sleep(0.5)
        wait_count(client, "million", n, 600)
        drained = time.time() - start
        print(f"million lateness: {summary(histogram(client, 'million'))}")
        print(f"  all {n:,} ran within {drained:.1f}s of the first due time ({w:g}s window; "
              f"{n / w:,.0f} tasks/s due)")
    finally:
        stop_workers(procs)
        stack.close()


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


if __name__ == "__main__":
    main()
