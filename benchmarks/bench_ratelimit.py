"""Accuracy of the cluster-wide rate limit.

2 workers x 2 processes run a task limited to --rate tasks/s for --seconds, with
a backlog bigger than the limit allows; every start time is recorded. Reports
the achieved rate over the measured window (after a warm-up), its error against
the limit, and the largest count in any one-second window against limit +
bucket size.

    python benchmarks/bench_ratelimit.py [--rate 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    args = ap.parse_args()

    from fastq.bench import private_redis
    from fastq.ratelimit import capacity_for

    with private_redis() as url:
        env = {**os.environ, "FASTQ_BROKER_URL": url, "RL_RATE": f"{args.rate:g}/s",
               "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        os.environ.update(env)
        import ratelimit_tasks as rt

        rt.app.conf.broker_url = url
        rt.app._reset()
        n = int(args.rate * (args.seconds + args.warmup) * 1.2) + 100
        rt.app.send_many(rt.tick.s() for _ in range(n))
        exe = Path(sys.executable).parent / "fastq"
        workers = [subprocess.Popen([str(exe), "worker", "-A", "ratelimit_tasks:app", "-c", "2", "--prefetch", "50",
                                     "-n", f"rl{i}@bench"], cwd=HERE, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        try:
            time.sleep(args.seconds + args.warmup + 1)
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(30)
        client = rt.app.broker.client
        starts = sorted(float(x) for x in client.lrange("rl:starts", 0, -1))
    t0 = starts[0] + args.warmup
    window = [t for t in starts if t0 <= t < t0 + args.seconds]
    achieved = len(window) / args.seconds
    per_second = [0] * int(args.seconds)
    for t in window:
        per_second[min(int(t - t0), len(per_second) - 1)] += 1
    # sliding one-second windows, not just aligned ones
    worst, j = 0, 0
    for i, t in enumerate(window):
        while window[j] < t - 1.0:
            j += 1
        worst = max(worst, i - j + 1)
    bucket = capacity_for(args.rate)
    print(f"limit            {args.rate:.0f}/s (bucket {bucket:.0f} tokens), 2 workers x 2 processes, {args.seconds:.0f} s")
    print(f"achieved         {achieved:.1f}/s ({(achieved - args.rate) / args.rate * 100:+.2f}% vs the limit)")
    print(f"worst 1 s window {worst} tasks (limit + bucket = {args.rate + bucket:.0f})")
    print(f"aligned seconds  min {min(per_second)}, max {max(per_second)}")


if __name__ == "__main__":
    main()
