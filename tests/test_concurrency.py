"""--concurrency N means N tasks running: real task durations, real workers.

What a worker holds but has not started waits for the task in front of it, while
other slots may be idle (worker/holding.py). These tests send tasks of 10 ms to
seconds, queued before the worker starts or sent to a running one, and check that
the slots share them. Bounds are generous (a loaded 2-core machine); each is far
below what a worker that batches slow tasks onto one slot takes.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time

import psutil
import pytest
from tests.apps import basic

from conftest import wait_for

ASYNC_APP = "tests.apps.asyncapp:app"


def spans(ledger, key: str) -> list[tuple]:
    """(item, start, end, pid) of every run recorded under ``key``."""
    return [tuple(json.loads(x)) for x in ledger.lrange(key, 0, -1)]


def wait_spans(ledger, key: str, n: int, timeout: float = 60.0) -> list[tuple]:
    wait_for(lambda: ledger.llen(key) >= n, timeout, message=f"{n} runs of {key}")
    return spans(ledger, key)


def makespan(rows: list[tuple]) -> float:
    return max(r[2] for r in rows) - min(r[1] for r in rows)


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_queued_before_start_runs_on_every_slot(app, worker, ledger, pool):
    # 12 x 0.5 s on 6 slots: ideal 1 s; one slot running them all takes 6 s.
    for i in range(12):
        basic.span.delay("q", i, 0.5)
    worker("-P", pool, "-c", "6")
    rows = wait_spans(ledger, "q", 12)
    assert makespan(rows) < 3.0, rows
    if pool == "process":
        assert len({r[3] for r in rows}) >= 4  # spread over the children


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_sent_to_a_running_worker_keeps_every_slot_busy(app, worker, ledger, pool):
    worker("-P", pool, "-c", "6")
    for i in range(60):  # 60 x 100 ms on 6 slots: ideal 1 s
        basic.span.delay("r", i, 0.1)
    rows = wait_spans(ledger, "r", 60)
    assert makespan(rows) < 3.0


@pytest.mark.parametrize("short", [0.01, 0.001])
def test_a_long_task_does_not_hold_up_short_ones(app, worker, ledger, short):
    """A 5 s task and 200 short ones on 4 slots: the short ones finish while the long
    one runs, whatever the consumer that fetched the long one had taken with it."""
    w = worker("-P", "thread", "-c", "4")
    for i in range(50):  # quick tasks first: consumers batch (and prefetch) them
        basic.span.delay("warm", i, short)
    wait_spans(ledger, "warm", 50)
    basic.span.delay("long", 0, 5.0)
    for i in range(200):
        basic.span.delay("short", i, short)
    rows = wait_spans(ledger, "short", 200)
    (long_run,) = wait_spans(ledger, "long", 1, timeout=30)
    # every short one started well before the long one ended (1.5 s: machine noise)
    assert max(r[1] for r in rows) < long_run[2] - 1.5, (max(r[1] for r in rows), long_run)
    assert ledger.llen("short") == 200  # each ran once
    if short == 0.001:
        assert "waiting behind a task" in w.log() or max(r[2] for r in rows) < long_run[2] - 3


def test_results_of_batch_mates_are_stored_while_a_long_task_runs(app, worker):
    """A solo worker's batches grow 1, 2, 4, 8, 16: the 5 s task (21st) shares a batch
    with quick ones before it, whose results must not wait for it to end."""
    quick = [basic.echo.delay(i) for i in range(20)]
    long = basic.sleep.delay(5.0, "long")
    worker("-P", "solo")
    t0 = time.monotonic()
    assert [r.get(timeout=30) for r in quick] == list(range(20))
    assert not long.ready(), f"the quick results came only after the long task ({time.monotonic() - t0:.1f} s)"
    assert long.get(timeout=30) == "long"


def test_higher_priority_sent_later_starts_before_waiting_lower_ones(app, worker, ledger):
    worker("-P", "thread", "-c", "2")
    for i in range(40):  # 40 x 100 ms on 2 slots: 2 s of work
        basic.span.apply_async(("low", i, 0.1), priority=0)
    wait_for(lambda: ledger.llen("low") >= 4, 30)
    sent = time.time()
    basic.span.apply_async(("high", 0, 0.0), priority=9)
    (high,) = wait_spans(ledger, "high", 1)
    started_after = [r for r in wait_spans(ledger, "low", 40) if r[1] > high[1]]
    # it waited for at most a running task on each slot, not for the low ones held or queued
    assert high[1] - sent < 1.0
    assert len(started_after) >= 20


@pytest.mark.parametrize("args", [("-P", "asyncio", "-c", "6"), ("-P", "process", "-c", "2", "--async-concurrency", "3")])
def test_asyncio_pools_run_as_many_as_their_slots(app, worker, ledger, args):
    for i in range(12):
        basic.span.delay("a", i, 0.5)
    worker(*args)
    rows = wait_spans(ledger, "a", 12)
    assert makespan(rows) < 3.0


def test_solo_runs_one_at_a_time(app, worker, ledger):
    worker("-P", "solo")
    for i in range(4):
        basic.span.delay("s", i, 0.2)
    rows = sorted(wait_spans(ledger, "s", 4), key=lambda r: r[1])
    assert all(a[2] <= b[1] + 0.01 for a, b in itertools.pairwise(rows))  # never two at once


def test_two_workers_share_a_queue_filled_before_they_start(app, worker, ledger):
    for i in range(24):
        basic.span.delay("two", i, 0.5)
    worker("-P", "thread", "-c", "3")
    worker("-P", "thread", "-c", "3")
    rows = wait_spans(ledger, "two", 24)
    assert makespan(rows) < 4.5  # ideal 2 s; one slot each at a time would be 6 s


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            total += next(int(ln.split()[1]) for ln in f if ln.startswith("voluntary_ctxt_switches"))
    return total


def test_a_child_running_one_task_at_a_time_does_not_poll(app, worker):
    """The hold watch sleeps while no consumer holds more than the task it runs:
    a thread waking every 10 ms costs an idle worker CPU and the one-task round
    trip its GIL. Idle, the consumer wakes about once a second (its blocking read)."""
    w = worker("-P", "process", "-c", "1")
    for i in range(50):  # one at a time: batches of one, nothing held behind them
        assert basic.echo.delay(i).get(timeout=30) == i
    (child,) = psutil.Process(w.pid).children()
    before = wakeups(child.pid)
    time.sleep(3.0)
    woke = wakeups(child.pid) - before
    assert woke < 60, f"{woke} wake-ups in 3 s"  # a watch polling every 10 ms: about 300


def stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (state T in /proc)."""
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            states.append(f.read().rsplit(")", 1)[1].split()[0])
    return all(s in ("T", "t") for s in states)


@pytest.mark.fault
def test_a_paused_worker_does_not_run_what_it_lost(app, worker, ledger):
    """Worker A is SIGSTOPped past its lease while B recovers A's messages; after
    SIGCONT, A drops the messages it held but lost instead of running them again.
    Duplicates are only tasks in progress at the pause: running, or finished with
    their acknowledgement not yet sent (acks go out every 10 ms). Without the check,
    A also ran the batches it held after SIGCONT (39 duplicates in one run)."""
    n, lease = 1500, 3
    a = worker("-P", "thread", "-c", "8", "--lease-timeout", str(lease))
    for i in range(0, n, 100):
        basic.app.send_many(basic.span.s("p", j, 0.002) for j in range(i, min(n, i + 100)))
    wait_for(lambda: ledger.llen("p") >= 200, 30)
    os.kill(a.pid, signal.SIGSTOP)
    try:
        # kill() returns before every thread has stopped: a task may still start
        # in between, so "after the pause" is measured from SIGCONT below.
        wait_for(lambda: stopped(a.pid), 10, message="worker A stopped")
        time.sleep(0.5)
        worker("-P", "thread", "-c", "8", "--lease-timeout", str(lease))
        wait_for(lambda: ledger.llen("p") >= n - 200, 60)  # B ran the rest and recovered A's held ones
        time.sleep(lease)
    finally:
        resumed_at = time.time()
        os.kill(a.pid, signal.SIGCONT)
    wait_for(lambda: len({r[0] for r in spans(ledger, "p")}) == n, 60, message="every task ran")
    time.sleep(2)  # A's late runs, if any, would land now
    rows = spans(ledger, "p")
    duplicates = len(rows) - n
    dropped = sum(int(line.split("Dropped ")[1].split()[0]) for line in a.log().splitlines() if "leases lapsed" in line)
    print(f"paused worker: {duplicates} duplicate(s), {dropped} message(s) dropped by the check")
    # A second run is allowed only for what A had started before the pause (running, or
    # finished with its ack not yet sent); nothing A started after SIGCONT ran twice.
    runs: dict = {}
    for item, start, _end, pid in rows:
        runs.setdefault(item, []).append((start, pid))
    late = [(item, r) for item, r in runs.items() if len(r) > 1 and any(pid == a.pid and start > resumed_at
                                                                         for start, pid in r)]
    assert late == [], late
