"""Drain one sharded queue with 1, 2 and 3 Redis Cluster masters.

    python benchmarks/bench_scale.py                    # 300,000 tasks, 12 shards, 1 worker x 2 processes
    python benchmarks/bench_scale.py -n 100000 --workers 2 --concurrency 1

For each setting (one plain redis-server as the baseline, unsharded and sharded,
then clusters of 1, 2 and 3 masters, each started privately on loopback), the queue ``default`` is
sharded over ``--shards`` shards (spread over the masters by their hash tags),
N no-op tasks are sent in bulk, and ``fastq worker`` processes drain them. The
table gives the enqueue and drain rates, the drain rate relative to one master,
and the CPU the Redis servers and the worker processes used while draining, as
a share of one core: it shows which side is the bottleneck.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import psutil
from _workers import start_workers, stop_workers

from fastq import FastQ
from fastq.bench import private_cluster, private_redis

app = FastQ("bench_scale")
app.conf.task_ignore_result = True
app.conf.queue_shards = json.loads(os.environ.get("BENCH_SHARDS", "null"))


@app.task(name="scale.noop", ignore_result=True)
def noop(i):
    return None


def redis_pids(url: str) -> list[psutil.Process]:
    ports = {int(hp.rsplit(":", 1)[1]) for hp in url.split("://", 1)[1].split("/", 1)[0].split(",")}
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if "redis-server" in (p.info["name"] or "") and any(str(port) in " ".join(cmd) for port in ports):
            out.append(p)
    if not out:  # redis-server rewrites its title to "redis-server 127.0.0.1:port"
        for p in psutil.process_iter(["name"]):
            with contextlib.suppress(psutil.Error):
                if p.info["name"] and p.info["name"].startswith("redis-server") and any(
                        f":{port}" in " ".join(p.cmdline()) for port in ports):
                    out.append(p)
    return out


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
            for c in p.children(recursive=True):
                ct = c.cpu_times()
                total += ct.user + ct.system
    return total


def run_setting(label: str, url: str, n: int, shards: dict | None, workers: int, concurrency: int) -> dict:
    app.conf.broker_url = url
    app.conf.queue_shards = shards
    app._reset()
    app.broker.purge("default")
    t0 = time.perf_counter()
    for i in range(0, n, 10_000):
        app.send_many(noop.s(j) for j in range(i, min(n, i + 10_000)))
    enqueue = n / (time.perf_counter() - t0)
    servers = redis_pids(url)
    procs = start_workers("bench_scale:app", url, workers, concurrency, ("--without-events",),
                          env={"BENCH_SHARDS": json.dumps(shards)})
    tree = [psutil.Process(p.pid) for p in procs]
    try:
        r0, w0, t1 = [cpu_seconds([x]) for x in servers], cpu_seconds(tree), time.perf_counter()
        while True:
            s = app.broker.queue_stats("default")
            if s["waiting"] + s["in_flight"] == 0:
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - t1
        r1, w1 = [cpu_seconds([x]) for x in servers], cpu_seconds(tree)
    finally:
        stop_workers(procs)
    return {"setting": label, "tasks": n, "enqueue": enqueue, "seconds": elapsed, "rate": n / elapsed,
            "redis_cpu": (sum(r1) - sum(r0)) / elapsed, "worker_cpu": (w1 - w0) / elapsed,
            "busiest": max(b - a for a, b in zip(r0, r1)) / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--tasks", type=int, default=300_000)
    ap.add_argument("--shards", type=int, default=12)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--masters", default="1,2,3", help="comma-separated cluster sizes to run")
    args = ap.parse_args()
    shards = {"default": args.shards}
    rows = []
    with private_redis() as url:
        rows.append(run_setting("one server, unsharded", url, args.tasks, None, args.workers, args.concurrency))
        rows.append(run_setting(f"one server, {args.shards} shards", url, args.tasks, shards, args.workers,
                                args.concurrency))
    for m in (int(x) for x in args.masters.split(",")):
        with private_cluster(m) as url:
            rows.append(run_setting(f"cluster, {m} master{'s' if m > 1 else ''}", url, args.tasks, shards,
                                    args.workers, args.concurrency))
    base = next((r["rate"] for r in rows if r["setting"].startswith("cluster, 1 ")), rows[0]["rate"])
    print(f"\n{args.tasks:,} no-op tasks, queue 'default' in {args.shards} shards (clusters), "
          f"{args.workers} worker(s) x {args.concurrency} processes, {os.cpu_count()} cores\n")
    print(f"{'setting':<24}{'enqueue/s':>12}{'drain s':>9}{'drain/s':>11}{'vs 1 master':>13}"
          f"{'redis CPU':>11}{'busiest':>9}{'worker CPU':>12}")
    for r in rows:
        print(f"{r['setting']:<24}{r['enqueue']:>12,.0f}{r['seconds']:>9.2f}{r['rate']:>11,.0f}"
              f"{r['rate'] / base:>12.2f}x{r['redis_cpu']:>10.0%}{r['busiest']:>9.0%}{r['worker_cpu']:>12.0%}")
    print("\nCPU columns: CPU seconds used while draining / wall seconds (100% = one core busy);")
    print("redis CPU is all servers together, busiest the busiest one; worker CPU all worker processes.")


if __name__ == "__main__":
    main()
