"""Per-tenant fairness: one tenant's flood against another tenant's handful.

Tenant A sends 50,000 short tasks, then tenant B sends 100. On a plain queue B's
tasks wait behind A's whole backlog; on a fair queue (``fair_tenants``) the
workers serve the groups round-robin, so B's tasks finish long before A's
backlog drains. Both runs use the same workers in the same run:

    python benchmarks/bench_fairness.py            # 50,000 + 100 tasks of 1 ms, 1 worker x 4 processes
    python benchmarks/bench_fairness.py -n 200000 --task-ms 0 --workers 2 -c 2   # no-op tasks

Reports, per mode: B's completion (last B task finished minus B's first send),
how many of A's tasks were still waiting or running when B's last one finished,
and A's drain time (first A send until the queue is empty) with A's throughput.
It starts a private redis-server (``--url`` to use another) and ``fastq worker``
processes running this module's app.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import redis
from _workers import start_workers, stop_workers

from fastq import FastQ
from fastq.bench import private_redis

app = FastQ("bench_fairness")
app.conf.task_ignore_result = True
app.conf.task_queues = {"fair": {"fair_tenants": True}}  # fair_window: the default (1000)

B_DONE = "bench:fair:b"  # list of B's finish times

_local: dict = {"pid": None}


def _client() -> redis.Redis:
    if _local["pid"] != os.getpid():
        _local.update(pid=os.getpid(), client=redis.Redis.from_url(os.environ["FASTQ_BROKER_URL"]))
    return _local["client"]


@app.task(name="bench.fair.tick")
def tick(tenant: str, ms: float = 0.0) -> None:
    if ms:
        time.sleep(ms / 1000)
    if tenant == "B":
        _client().rpush(B_DONE, repr(time.time()))


def run_mode(queue: str, n: int, m: int, ms: float, client: redis.Redis) -> dict:
    client.delete(B_DONE)
    fair = queue in app.broker.fair
    a_opts = {"queue": queue, **({"tenant_key": "A"} if fair else {})}
    b_opts = {"queue": queue, **({"tenant_key": "B"} if fair else {})}
    t_a = time.time()
    app.send_many(tick.s("A", ms).set(**a_opts) for _ in range(n))
    t_b = time.time()
    for _ in range(m):
        tick.apply_async(("B", ms), **b_opts)
    a_left_at_b = None
    while True:
        stats = app.broker.queue_stats(queue)
        left = stats["waiting"] + stats["in_flight"]
        if a_left_at_b is None and client.llen(B_DONE) >= m:
            a_left_at_b = left  # all of B's are done: what is left is A's
        if left == 0 and a_left_at_b is not None:
            break
        time.sleep(0.005)
    t_end = time.time()
    b_times = [float(x) for x in client.lrange(B_DONE, 0, -1)]
    return {"mode": "fair_tenants" if fair else "plain", "b_done": max(b_times) - t_b, "a_left": a_left_at_b,
            "a_drain": t_end - t_a, "rate": (n + m) / (t_end - t_a), "send": t_b - t_a}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50_000, help="tenant A's tasks (default 50,000)")
    ap.add_argument("-m", type=int, default=100, help="tenant B's tasks (default 100)")
    ap.add_argument("--task-ms", type=float, default=1.0, help="each task sleeps this long (default 1; 0: no-op)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("-c", "--concurrency", type=int, default=4)
    ap.add_argument("--url", help="Redis URL (default: a private redis-server)")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(private_redis())
        os.environ["FASTQ_BROKER_URL"] = url
        app.conf.broker_url = url
        app._reset()
        client = redis.Redis.from_url(url)
        procs = start_workers("bench_fairness:app", url, args.workers, args.concurrency, ("-Q", "plain,fair"))
        try:
            rows = [run_mode(q, args.n, args.m, args.task_ms, client) for q in ("plain", "fair")]
        finally:
            stop_workers(procs)
    task = f"{args.task_ms:g} ms sleep" if args.task_ms else "no-op"
    print(f"A sends {args.n:,}, then B sends {args.m:,} ({task} tasks); "
          f"{args.workers} worker(s) x {args.concurrency} processes, same run")
    print(f"{'mode':<13}{'B done after':>14}{'A left then':>13}{'A drain':>10}{'tasks/s':>10}")
    for r in rows:
        print(f"{r['mode']:<13}{r['b_done']:>13.3f}s{r['a_left']:>13,}{r['a_drain']:>9.2f}s{r['rate']:>10,.0f}")


if __name__ == "__main__":
    main()
