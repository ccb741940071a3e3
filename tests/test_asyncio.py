"""Coroutine tasks: the asyncio pool, event loops in process-pool children,
async tasks in the sync pools, delay_async/get_async, eager mode, and the
worker features (limits, retries, revokes, rate limits, acks) for coroutines.

Workers are real `fastq worker` subprocesses running tests.apps.asyncapp."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest
from tests.apps import asyncapp

from conftest import wait_for
from fastq import states
from fastq.events import unpack_entry
from fastq.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from fastq.exceptions import TimeoutError as FastQTimeout

APP = "tests.apps.asyncapp:app"
STREAM = "fastq:{default}:s"


@pytest.fixture
def aapp(redis_url):
    """The asyncio test app on the test DB."""
    app = asyncapp.app
    app.conf.broker_url = redis_url
    app.conf.task_always_eager = False
    app._reset()
    return app


def _key() -> str:
    return f"k-{uuid.uuid4()}"


def _pending(r) -> int:
    try:
        return r.xpending(STREAM, "fastq")["pending"]
    except Exception:  # noqa: BLE001 - no group yet
        return 0


# --- concurrency -------------------------------------------------------------------------


def test_asyncio_pool_runs_hundreds_of_coroutines_at_once(aapp, worker):
    # Given an asyncio worker with 200 slots
    worker("-P", "asyncio", "-c", "200", app=APP)
    # When 200 tasks that each await asyncio.sleep(1) are sent
    t0 = time.monotonic()
    results = aapp.send_many(asyncapp.sleep.s(1, i) for i in range(200))
    # Then they all finish, far sooner than one after another (200 s)
    assert [r.get(timeout=180) for r in results] == list(range(200))
    assert time.monotonic() - t0 < 60


def test_process_pool_children_each_run_an_event_loop(aapp, worker):
    # Given a process pool of 2 children, each running 50 coroutines at once
    w = worker("-P", "process", "-c", "2", "--async-concurrency", "50", app=APP)
    wait_for(lambda: len(w.children()) == 2, 30, message="two pool children")
    assert "async concurrency 50" in w.log()
    # When 100 one-second sleeps are sent
    t0 = time.monotonic()
    results = aapp.send_many(asyncapp.sleep.s(1, i) for i in range(100))
    # Then they finish far sooner than one after another per child (50 s)
    assert [r.get(timeout=180) for r in results] == list(range(100))
    assert time.monotonic() - t0 < 40
    # ... and coroutine tasks see their request like sync ones
    info = asyncapp.who.delay().get(timeout=30)
    assert info["pid"] in w.children()
    assert info["hostname"] == w.name and info["queue"] == "default"


def test_sync_tasks_run_in_threads_and_do_not_block_the_loop(aapp, worker):
    # Given an asyncio worker
    worker("-P", "asyncio", "-c", "20", app=APP)
    # When a sync task that blocks for 8 s is sent before coroutine and sync tasks
    blocker = asyncapp.sync_sleep.delay(8, "woke")
    wait_for(lambda: _pending_started(aapp), 30, message="the blocking task to start")
    quick = [asyncapp.add.delay(i, 1) for i in range(10)] + [asyncapp.sync_add.delay(i, 2) for i in range(10)]
    # Then the others finish while it still blocks its thread
    assert [r.get(timeout=30) for r in quick] == [i + 1 for i in range(10)] + [i + 2 for i in range(10)]
    assert not blocker.ready()
    # ... and it finishes too
    assert blocker.get(timeout=30) == "woke"


def _pending_started(app) -> bool:
    return app.broker.queue_stats("default")["in_flight"] >= 1


# --- time limits -------------------------------------------------------------------------


def test_soft_time_limit_cancels_the_coroutine(aapp, worker, ledger):
    # Given an asyncio worker
    w = worker("-P", "asyncio", "-c", "10", app=APP)
    # When a coroutine sleeps past its soft time limit (1 s)
    key = _key()
    res = asyncapp.soft.delay(key)
    # Then it fails with SoftTimeLimitExceeded ...
    with pytest.raises(SoftTimeLimitExceeded):
        res.get(timeout=30)
    assert res.state == states.FAILURE
    # ... after CancelledError was raised inside it (its except and finally blocks ran)
    assert ledger.hgetall(key) == {b"cancelled": b"1", b"finally": b"1"}
    # When one catches the cancellation and returns, it succeeds (as a sync task
    # that catches SoftTimeLimitExceeded does)
    key2 = _key()
    assert asyncapp.soft.delay(key2, swallow=True).get(timeout=30) == "cleaned up"
    assert ledger.hget(key2, "cancelled") == b"1"
    # When the limit comes with the call
    with pytest.raises(SoftTimeLimitExceeded):
        asyncapp.sleep.apply_async((60,), soft_time_limit=0.5).get(timeout=30)
    # ... and the worker goes on
    assert asyncapp.add.delay(1, 1).get(timeout=30) == 2
    assert w.proc.poll() is None


def test_hard_time_limit_fails_a_coroutine_that_ignores_cancellation(aapp, worker, ledger):
    # Given an asyncio worker
    w = worker("-P", "asyncio", "-c", "10", app=APP)
    # When a coroutine passes its hard limit and swallows the cancellation
    key = _key()
    res = asyncapp.hard.delay(key)
    # Then the task fails with TimeLimitExceeded all the same
    with pytest.raises(TimeLimitExceeded):
        res.get(timeout=30)
    assert ledger.hget(key, "cancelled") == b"1"
    wait_for(lambda: _pending(aapp.broker.client) == 0, 30, message="the message acked")
    assert w.proc.poll() is None


def test_soft_time_limit_of_a_sync_task_in_the_asyncio_pool(aapp, worker, ledger):
    # Given an asyncio worker: sync tasks run in threads
    worker("-P", "asyncio", "-c", "10", app=APP)
    # When a sync task sleeps past its soft limit
    key = _key()
    with pytest.raises(SoftTimeLimitExceeded):
        asyncapp.sync_soft.delay(key).get(timeout=30)
    # Then SoftTimeLimitExceeded was raised inside it
    assert ledger.hget(key, "soft") == b"1"


# --- retries, acks, revokes, rate limits, events -------------------------------------------


@pytest.mark.parametrize("pool", [("-P", "asyncio", "-c", "10"), ("-P", "process", "-c", "1", "--async-concurrency", "10")],
                         ids=["asyncio", "process-async"])
def test_retry_and_autoretry_of_coroutine_tasks(aapp, worker, ledger, pool):
    # Given an event loop worker
    worker(*pool, app=APP)
    # When a coroutine asks for a retry twice, then succeeds
    key = _key()
    res = asyncapp.flaky.delay(key, 2)
    # Then it succeeds on the third try
    assert res.get(timeout=30) == 3
    assert res.retries == 2
    # When one raises an autoretry exception every time (max_retries=2)
    key2 = _key()
    res2 = asyncapp.autoretry.delay(key2)
    # Then it ran three times and failed with that exception
    with pytest.raises(OSError, match="always"):
        res2.get(timeout=30)
    assert ledger.hget(key2, "tries") == b"3"


def test_acks_late_false_and_track_started_for_coroutines(aapp, worker, r):
    # Given an asyncio worker
    worker("-P", "asyncio", "-c", "10", app=APP)
    # When a coroutine with acks_late=False runs
    assert asyncapp.early.delay("x").get(timeout=30) == "x"
    # ... and one with track_started
    res = asyncapp.started.delay(2)
    # Then STARTED is seen while it runs, SUCCESS after
    wait_for(lambda: res.state == states.STARTED, 30, message="STARTED")
    assert res.get(timeout=30) == "done"
    wait_for(lambda: _pending(r) == 0, 30, message="both acked")


def test_revoke_and_revoke_with_terminate_of_coroutines(aapp, worker):
    # Given an asyncio worker
    worker("-P", "asyncio", "-c", "10", app=APP)
    # When a task is revoked before it runs
    res = asyncapp.add.apply_async((1, 2), countdown=3)
    aapp.control.revoke(res.id)
    # Then it is not run
    wait_for(lambda: res.state == states.REVOKED, 30, message="REVOKED")
    # When a running coroutine is revoked with terminate=True
    running = asyncapp.started.delay(60)
    wait_for(lambda: running.state == states.STARTED, 30, message="STARTED")
    # (inspect lists it as active, with the other running coroutines)
    others = [asyncapp.sleep.delay(60) for _ in range(2)]
    wait_for(lambda: {t["id"] for ts in aapp.control.inspect(timeout=2).active().values() for t in ts}
             >= {running.id, *(o.id for o in others)}, 30, message="inspect().active() to list the coroutines")
    aapp.control.revoke(running.id, terminate=True)
    # Then it is cancelled and ends REVOKED, long before it would have finished
    wait_for(lambda: running.state == states.REVOKED, 30, message="terminated task REVOKED")
    assert asyncapp.add.delay(2, 2).get(timeout=30) == 4
    assert not any(o.ready() for o in others)


def test_pool_grow_and_shrink_change_the_coroutines_at_once(aapp, worker):
    # Given an asyncio worker with 2 slots, both busy
    w = worker("-P", "asyncio", "-c", "2", app=APP)
    busy = [asyncapp.sleep.delay(60) for _ in range(2)]
    wait_for(lambda: aapp.broker.queue_stats("default")["in_flight"] == 2, 30, message="2 running")
    waiting = asyncapp.add.delay(1, 1)
    # When the pool grows by 3
    (reply,) = aapp.control.pool_grow(3, reply=True, timeout=5)
    assert reply[w.name] == {"ok": "pool will grow to 5"}
    # Then the waiting task runs at once
    assert waiting.get(timeout=30) == 2
    stats = aapp.control.inspect(timeout=2).stats()[w.name]
    assert stats["pool"]["max-concurrency"] == 5 and stats["active"] == 2
    # ... and shrinking never goes below one
    (reply,) = aapp.control.pool_shrink(10, reply=True, timeout=5)
    assert reply[w.name] == {"ok": "pool will shrink to 1"}
    assert not any(b.ready() for b in busy)


def test_rate_limit_applies_to_coroutines(aapp, worker, ledger):
    # Given an asyncio worker and a coroutine limited to 5/s
    worker("-P", "asyncio", "-c", "50", app=APP)
    key = _key()
    # When 15 are sent at once
    t0 = time.monotonic()
    results = aapp.send_many(asyncapp.rated.s(key, str(i)) for i in range(15))
    # Then all run once, spread out at the limited rate (at least ~2 s for 15 at 5/s)
    assert sorted(int(x) for x in (r.get(timeout=60) for r in results)) == list(range(15))
    assert time.monotonic() - t0 >= 1.5
    assert all(v == b"1" for v in ledger.hgetall(key).values())


def test_events_are_published_for_coroutines(aapp, worker, r):
    # Given an asyncio worker
    worker("-P", "asyncio", "-c", "10", app=APP)
    # When a coroutine succeeds and one fails
    ok = asyncapp.add.delay(1, 1)
    bad = asyncapp.fail.delay()
    assert ok.get(timeout=30) == 2
    bad.get(timeout=30, propagate=False)

    # Then task-succeeded and task-failed events name them
    def events():
        return [e for _id, fields in r.xrange("fastq:events") for e in unpack_entry(fields)]

    wait_for(lambda: {(e["type"], e.get("uuid")) for e in events()} >= {("task-succeeded", ok.id),
                                                                          ("task-failed", bad.id)},
             30, message="the task events")


def test_workflows_of_coroutine_and_sync_tasks(aapp, worker):
    # Given an asyncio worker
    from fastq import chain, chord, group

    worker("-P", "asyncio", "-c", "20", app=APP)
    # Then chains, groups and chords of coroutine and sync tasks work as for sync tasks
    assert chain(asyncapp.add.s(1, 1), asyncapp.sync_add.s(2), asyncapp.add.s(3)).apply_async().get(timeout=30) == 7
    assert group(asyncapp.add.s(i, i) for i in range(5)).apply_async().get(timeout=30) == [0, 2, 4, 6, 8]
    total = chord((asyncapp.sleep.s(0.2, i) for i in range(10)), asyncapp.sum_of.s()).apply_async()
    assert total.get(timeout=30) == 45
    # ... and map, starmap and chunks of a coroutine task
    assert asyncapp.add.starmap([(1, 2), (3, 4)]).apply_async().get(timeout=30) == [3, 7]
    assert asyncapp.sum_of.map([[1, 2], [3]]).apply_async().get(timeout=30) == [3, 3]
    assert asyncapp.add.chunks(zip(range(5), range(5)), 2).apply_async().get(timeout=30) == [[0, 2], [4, 6], [8]]


# --- producers in async code ---------------------------------------------------------------


def test_delay_async_and_get_async_from_an_event_loop(aapp, worker):
    # Given an asyncio worker
    worker("-P", "asyncio", "-c", "10", app=APP)

    async def main():
        import fastq.aio

        try:
            # When tasks are sent and awaited from a coroutine
            r1 = await asyncapp.add.delay_async(2, 2)
            r2 = await asyncapp.sync_add.apply_async_async((3, 4), countdown=0.5)
            r3 = await aapp.send_task_async("aio.add", (5, 5))
            failing = await asyncapp.fail.delay_async("nope")
            values = [await r.get_async(timeout=30) for r in (r1, r2, r3)]
            with pytest.raises(ValueError, match="nope"):
                await failing.get_async(timeout=30)
            state = await r1.state_async()
            # ... and a task sent from inside a coroutine task (delay_async there too)
            child_id = await (await asyncapp.spawn.delay_async(7)).get_async(timeout=30)
            child = await aapp.AsyncResult(child_id).get_async(timeout=30)
            return values, state, child
        finally:
            await fastq.aio.aclose()

    # Then the values come back
    assert asyncio.run(main()) == ([4, 7, 10], states.SUCCESS, 8)


def test_get_async_waits_without_blocking_the_loop(aapp):
    # Given a task nobody will run (no worker on its queue)
    async def main():
        import fastq.aio

        res = await asyncapp.add.apply_async_async((1, 1), queue="nobody-here")
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        t0 = time.monotonic()
        # When its result is awaited with a timeout
        try:
            with pytest.raises(FastQTimeout):
                await res.get_async(timeout=1.5)
        finally:
            ticker.cancel()
            await fastq.aio.aclose()
        return ticks, time.monotonic() - t0

    ticks, waited = asyncio.run(main())
    # Then it times out after about that long, while other coroutines kept running
    assert waited >= 1.4
    assert ticks >= 5


def test_get_async_of_many_results(aapp, worker):
    worker("-P", "asyncio", "-c", "10", app=APP)

    async def main():
        import fastq.aio

        try:
            group = aapp.send_many(asyncapp.add.s(i, i) for i in range(5))
            from fastq.result import ResultSet

            return await ResultSet(group, app=aapp).get_async(timeout=30)
        finally:
            await fastq.aio.aclose()

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]


# --- eager mode and direct calls ---------------------------------------------------------------


def test_eager_mode_runs_coroutine_tasks_to_completion(aapp, ledger):
    # Given eager mode
    aapp.conf.task_always_eager = True
    try:
        # Then delay() runs a coroutine task to completion
        assert asyncapp.add.delay(1, 2).get() == 3
        assert asyncapp.flaky.delay(_key(), 1).get() == 2  # retries run at once
        with pytest.raises(SoftTimeLimitExceeded):
            asyncapp.soft.delay(_key()).get()

        async def main():
            # ... and from a running loop too: delay_async awaits it on this loop,
            # delay() runs it on a helper thread's loop
            r = await asyncapp.add.delay_async(2, 3)
            s = asyncapp.add.delay(3, 3)
            t = await asyncapp.sync_add.delay_async(1, 1)
            return await r.get_async(), s.get(), await t.get_async()

        assert asyncio.run(main()) == (5, 6, 2)
    finally:
        aapp.conf.task_always_eager = False
    # A direct call returns the coroutine, as calling the function does
    coro = asyncapp.add(4, 4)
    assert asyncio.iscoroutine(coro)
    assert asyncio.run(coro) == 8


# --- reliability -------------------------------------------------------------------------------


def test_sigkilled_asyncio_worker_loses_nothing(aapp, worker, ledger, r):
    # Given an asyncio worker with a 2 s lease running 30 coroutines of 6 s each
    a = worker("-P", "asyncio", "-c", "50", "--lease-timeout", "2", app=APP)
    key = _key()
    aapp.send_many(asyncapp.record.s(key, str(i), 6) for i in range(30))
    wait_for(lambda: _pending(r) == 30, 30, message="all 30 in flight")
    # When the worker is SIGKILLed mid-run
    a.kill_all()
    assert ledger.hlen(key) == 0
    # Then a second worker gets every message back (lease + reaper) and runs it
    worker("-P", "asyncio", "-c", "50", "--lease-timeout", "2", app=APP)
    wait_for(lambda: ledger.hlen(key) == 30, 60, message="all 30 tasks to run")
    wait_for(lambda: _pending(r) == 0, 30, message="all acked")
    assert r.xlen("fastq:{default}:dlq") == 0


@pytest.mark.fault
def test_a_coroutine_that_kills_its_process_is_dead_lettered_alone(aapp, worker, ledger, r):
    # Given one process child running up to 10 coroutines at once
    w = worker("-P", "process", "-c", "1", "--async-concurrency", "10", app=APP)
    key = _key()
    # When a task that kills its process runs alongside 9 good ones, again and again
    aapp.send_many([asyncapp.record.s(key, str(i), 1.0) for i in range(4)] + [asyncapp.crash.s(key)]
                   + [asyncapp.record.s(key, str(i), 1.0) for i in range(4, 9)])
    # Then it is dead-lettered after worker_max_deliveries (5) deaths of its process
    wait_for(lambda: r.xlen("fastq:{default}:dlq") == 1, 120, message="the crashing task dead-lettered")
    dead = r.xrange("fastq:{default}:dlq")[0][1]
    assert dead[b"reason"] == b"max_deliveries" and int(dead[b"dc"]) == 5
    assert int(ledger.hget(key, "crash")) == 5
    # And every good task ran to the end and none was dead-lettered with it: after two
    # deaths, the messages that were in flight at both run one at a time, so later
    # deaths blame only it
    wait_for(lambda: all(ledger.hget(key, str(i)) for i in range(9)), 60, message="the 9 good tasks")
    wait_for(lambda: _pending(r) == 0, 30, message="nothing held")
    assert r.xlen("fastq:{default}:dlq") == 1
    assert w.log().count("died with exit code 3") == 5
    assert w.proc.poll() is None  # the worker itself lives on


def test_warm_shutdown_finishes_running_coroutines(aapp, worker, r):
    # Given an asyncio worker running 5 coroutines of 3 s
    w = worker("-P", "asyncio", "-c", "10", app=APP)
    results = [asyncapp.sleep.delay(3, i) for i in range(5)]
    inspect = aapp.control.inspect([w.name], timeout=2)
    wait_for(lambda: len(inspect.active().get(w.name) or []) == 5, 30, 0.1, message="all 5 running")
    waiting = None
    # When it gets SIGTERM
    w.signal(signal.SIGTERM)
    wait_for(lambda: "warm shutdown" in w.log(), 20, message="the warm shutdown line")
    waiting = asyncapp.add.delay(1, 1)
    # Then the running ones finish and it exits 0, leaving the new message queued
    assert w.proc.wait(30) == 0
    assert [res.get(timeout=10) for res in results] == list(range(5))
    assert waiting.state == states.PENDING
    wait_for(lambda: _pending(r) == 0, 30, message="nothing held")


# --- coroutine tasks in the sync pools; bad input ------------------------------------------------


@pytest.mark.parametrize("pool", [("-P", "solo"), ("-P", "thread", "-c", "2"), ("-P", "process", "-c", "1")],
                         ids=["solo", "thread", "process"])
def test_sync_pools_run_coroutine_tasks_with_asyncio_run(aapp, worker, ledger, pool):
    # Given a worker whose pool has no event loop
    w = worker(*pool, app=APP)
    # Then it says at start-up how it runs coroutine tasks
    assert "run one at a time" in w.log() and "aio.add" in w.log()
    # ... and runs them, with their request and their soft limit
    assert asyncapp.add.delay(2, 3).get(timeout=30) == 5
    assert asyncapp.who.delay().get(timeout=30)["hostname"] == w.name
    key = _key()
    with pytest.raises(SoftTimeLimitExceeded):
        asyncapp.soft.delay(key).get(timeout=30)
    assert ledger.hget(key, "cancelled") == b"1"
    assert asyncapp.sync_add.delay(1, 1).get(timeout=30) == 2


@pytest.mark.parametrize(("args", "message"), [
    (("--async-concurrency", "0"), "'--async-concurrency': 0 is not in the range x>=1"),
    (("--async-concurrency", "-3"), "'--async-concurrency': -3 is not in the range x>=1"),
    (("-P", "thread", "--async-concurrency", "5"), "--async-concurrency runs an event loop in each child of the process pool"),
    (("-P", "asyncio", "--async-concurrency", "5"), "not the asyncio pool; for one process use -P asyncio -c N"),
    (("-P", "asyncio", "-c", "0"), "'-c' / '--concurrency': 0 is not in the range x>=1"),
])
def test_bad_concurrency_options_are_clear_cli_errors(aapp, worker, args, message):
    w = worker(*args, app=APP, wait=False)
    assert w.proc.wait(30) == 2
    assert message in w.log()


@pytest.mark.timeout(300)
def test_redis_restart_mid_run_loses_nothing(aapp, worker, ledger, redis_server, redis_url):
    # Given a private Redis (AOF, fsync always) and an asyncio worker running 2,000 coroutines
    server = redis_server("--appendonly", "yes", "--appendfsync", "always")
    aapp.conf.broker_url = server.url
    aapp._reset()
    try:
        broker = __import__("redis").Redis.from_url(server.url)
        w = worker("-P", "asyncio", "-c", "100", "--lease-timeout", "5", app=APP, broker=server.url)
        n, key = 2000, _key()
        aapp.send_many(asyncapp.record.s(key, str(i), 0.2) for i in range(n))
        # When Redis is SIGKILLed with some done, and restarted 1 s later
        wait_for(lambda: ledger.hlen(key) >= n // 4, 120, message="a quarter done")
        server.kill()
        time.sleep(1)
        server.start()
        # Then the worker reconnects and every task runs
        wait_for(lambda: ledger.hlen(key) >= n, 180, 0.1, message=f"all tasks to run ({ledger.hlen(key)}/{n})")
        wait_for(lambda: _pending(broker) == 0 and broker.xlen(STREAM) == 0, 60, message="all acked")
        assert broker.xlen("fastq:{default}:dlq") == 0
        assert w.proc.poll() is None
        assert "Reconnected" in w.log()
    finally:
        aapp.conf.broker_url = redis_url
        aapp._reset()


def test_max_tasks_per_child_recycles_event_loop_children(aapp, worker):
    # Given a process pool child running an event loop, replaced after 10 tasks
    worker("-P", "process", "-c", "1", "--async-concurrency", "5", "--max-tasks-per-child", "10", app=APP)
    # When 30 tasks run
    results = [asyncapp.who.delay() for _ in range(30)]
    pids = {r.get(timeout=60)["pid"] for r in results}
    # Then all succeed, in at least 3 successive children
    assert len(pids) >= 3
