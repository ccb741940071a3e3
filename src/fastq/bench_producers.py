"""``fastq bench -s producers``: sends from many callers at once, as web apps make them.

A task is most often sent by a request handler: many at once, as coroutines on one
event loop (FastAPI, aiohttp, Django's async views) or as threads (gunicorn's
gthread workers, Django). Each row sends no-op tasks (no worker runs) in one
shape and reports tasks/s and the wait of each call (from the call to its
return: the latency a handler sees):

- ``1 caller``: ``delay()`` in a loop, one at a time;
- ``asyncio C``: C coroutines on one loop, each awaiting ``delay_async()`` in turn;
- ``threads C``: C threads, each calling ``delay()`` in turn;
- ``asyncio 1000, 60 s`` (ask for it with ``--rows sustained``): 1,000 coroutines
  sending for a minute, with the process's RSS after the first tenth of the run
  and at its end: memory must stay flat.

Standard library only, and nothing from fastq: ``benchmarks/compare.py``'s peer
runners load this file by path and run the same shapes with their own send
calls (an object with ``delay`` and/or ``delay_async``).

Layer: apps; may import any layer.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import threading
import time

#: (shape, concurrency) of the default rows.
ROWS = [("1 caller", 1), ("asyncio", 10), ("asyncio", 100), ("asyncio", 1000),
        ("threads", 4), ("threads", 16), ("threads", 64)]
#: Tasks per row unless -n says otherwise.
DEFAULT_TASKS = 50_000
SUSTAINED_SECONDS = 60.0


def pick(spec: str) -> list[tuple]:
    """``--rows`` for this scenario: row numbers (1-based) or text in a row's name; ``sustained`` adds the memory row."""
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "sustained":
            out.append(("sustained", 1000))
            continue
        if part.isdigit() and 1 <= int(part) <= len(ROWS):
            out.append(ROWS[int(part) - 1])
            continue
        # a row's whole name picks that row ("asyncio 10" is not "asyncio 100"), else a part of names
        found = [row for row in ROWS if part == label(row)] or [row for row in ROWS if part in label(row)]
        if not found:
            raise ValueError(f"no producers row matches {part!r} (rows: {', '.join(label(r) for r in ROWS)}, sustained)")
        out.extend(found)
    return out


def label(row: tuple, seconds: float | None = None) -> str:
    shape, conc = row
    if shape == "sustained":
        return f"asyncio {conc}, {seconds or SUSTAINED_SECONDS:.0f} s"
    return shape if shape == "1 caller" else f"{shape} {conc}"


def run_row(task, row: tuple, n: int) -> dict:
    """Send ``n`` tasks (``row``'s shape); the row's figures."""
    shape, conc = row
    waits: list[float] = []
    if shape == "1 caller":
        t0 = time.perf_counter()
        _send_sync(task, n, waits)
        dt = time.perf_counter() - t0
    elif shape == "threads":
        per = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]
        lists: list[list[float]] = [[] for _ in range(conc)]
        threads = [threading.Thread(target=_send_sync, args=(task, k, lists[i])) for i, k in enumerate(per)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        waits = [w for lst in lists for w in lst]
    else:
        dt = asyncio.run(_send_async(task, n, conc, waits))
    return _figures(row, n, dt, waits)


def run_sustained(task, conc: int, seconds: float) -> dict:
    """``conc`` coroutines sending for ``seconds``; RSS after a tenth of it and at the end."""
    waits: list[float] = []
    marks: dict[str, float] = {}

    async def main() -> tuple[int, float]:
        stop = time.perf_counter() + seconds
        sent = [0]

        async def one() -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                await task.delay_async(0)
                if len(waits) < 200_000:
                    waits.append(time.perf_counter() - t)
                sent[0] += 1

        async def watch() -> None:
            await asyncio.sleep(seconds / 10)
            marks["early"] = rss_mb()

        t0 = time.perf_counter()
        await asyncio.gather(watch(), *(one() for _ in range(conc)))
        marks["end"] = rss_mb()
        return sent[0], time.perf_counter() - t0

    n, dt = asyncio.run(main())
    out = _figures(("sustained", conc), n, dt, waits)
    out.update(label=label(("sustained", conc), seconds), rss_early_mb=marks["early"], rss_end_mb=marks["end"])
    return out


def rss_mb() -> float:
    """This process's resident memory now (Linux's /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def supports(task, row: tuple) -> bool:
    """Whether ``task`` (a sender) has the API the row's shape needs."""
    return hasattr(task, "delay_async") if row[0] in ("asyncio", "sustained") else hasattr(task, "delay")


def _send_sync(task, n: int, waits: list) -> None:
    clock, delay, add = time.perf_counter, task.delay, waits.append
    for i in range(n):
        t = clock()
        delay(i)
        add(clock() - t)


async def _send_async(task, n: int, conc: int, waits: list) -> float:
    clock, add = time.perf_counter, waits.append

    async def one(k: int) -> None:
        delay = task.delay_async
        for i in range(k):
            t = clock()
            await delay(i)
            add(clock() - t)

    per = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]
    await task.delay_async(-1)  # connect first: the row measures sending, not connecting
    t0 = clock()
    await asyncio.gather(*(one(k) for k in per))
    return clock() - t0


def _figures(row: tuple, n: int, dt: float, waits: list[float]) -> dict:
    waits.sort()
    return {"scenario": "producers", "label": label(row), "shape": row[0], "concurrency": row[1], "tasks": n,
            "seconds": dt, "rate": n / dt,
            "p50_ms": statistics.median(waits) * 1e3 if waits else None,
            "p99_ms": waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1e3 if waits else None}


def format_table(results: list[dict]) -> str:
    head = f"{'producers':<22}{'tasks':>9}{'seconds':>9}{'tasks/s':>11}{'p50 ms':>9}{'p99 ms':>9}  other"
    lines = [head, "-" * len(head)]
    for r in results:
        other = ""
        if "rss_end_mb" in r:
            other = f"RSS {r['rss_early_mb']:.1f} -> {r['rss_end_mb']:.1f} MB"
        lines.append(f"{r['label']:<22}{r['tasks']:>9}{r['seconds']:>9.2f}{r['rate']:>11,.0f}"
                     f"{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}  {other}")
    return "\n".join(lines)
