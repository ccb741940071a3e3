"""Auto-pipelining (fastq.broker.autopipe): concurrent sends of one process share
writes and round trips. These check the semantics, not the speed (that is
``fastq bench -s producers``): every caller gets its own replies and its own
errors, one caller's order is kept, a broken connection fails only the calls
on it and the next calls reconnect, a forked child never uses its parent's
connection, and a process that only sends exits without warnings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from fastq import FastQ
from fastq._speedups import pack_command
from fastq.exceptions import BrokerError
from fastq.messages import decode_fields
from fastq.testing import wait_for

STREAM = "fastq:{default}:s"  # the default priority's stream


def _in_threads(run, n: int) -> None:
    """``run(t)`` in ``n`` threads at once (t = 0..n-1); returns when all are done."""
    threads = [threading.Thread(target=run, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def _echo(i) -> bytes:
    return pack_command((b"ECHO", b"m%d" % i))


def _app(url: str, **conf) -> FastQ:
    app = FastQ("autopipe", broker=url)
    app.conf.update(conf)

    @app.task(name="ap.noop")
    def noop(i):
        return i

    return app


# --- asyncio ---------------------------------------------------------------------------


def test_concurrent_coroutines_each_get_their_own_replies(redis_url):
    broker = _app(redis_url).broker

    async def main():
        async def one(i):
            # some calls carry several commands, so replies of different sizes interleave
            cmds = [_echo(i)] * (1 + i % 3)
            return i, await broker.execute_packed_async(cmds)

        return await asyncio.gather(*(one(i) for i in range(2000)))

    for i, replies in asyncio.run(main()):
        assert replies == [b"m%d" % i] * (1 + i % 3)


def test_an_error_reply_reaches_only_its_caller(redis_url, r):
    broker = _app(redis_url).broker
    r.set("ap:text", "not a number")

    async def main():
        async def one(i):
            if i % 7 == 0:
                with pytest.raises(Exception, match="not an integer"):
                    await broker.execute_packed_async([pack_command((b"INCR", b"ap:text"))])
                return None
            return await broker.execute_packed_async([_echo(i)])

        return await asyncio.gather(*(one(i) for i in range(500)))

    for i, got in enumerate(asyncio.run(main())):
        assert got == (None if i % 7 == 0 else [b"m%d" % i])


def test_cancelled_callers_do_not_shift_the_replies_of_the_others(redis_url):
    broker = _app(redis_url).broker

    async def main():
        tasks = [asyncio.ensure_future(broker.execute_packed_async([_echo(i)])) for i in range(600)]
        await asyncio.sleep(0)  # all queued, none answered yet
        for t in tasks[::3]:
            t.cancel()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        # and the connection still pairs replies with callers afterwards
        after = await asyncio.gather(*(broker.execute_packed_async([_echo(-i)]) for i in range(100)))
        return out, after

    out, after = asyncio.run(main())
    for i, got in enumerate(out):
        if i % 3 == 0:
            assert isinstance(got, asyncio.CancelledError)
        else:
            assert got == [b"m%d" % i]
    assert after == [[b"m%d" % -i] for i in range(100)]


def test_delay_async_from_many_coroutines_sends_every_message_once_in_each_callers_order(redis_url, r):
    app = _app(redis_url)
    noop = app.tasks["ap.noop"]

    async def caller(c):
        ids = []
        for k in range(20):
            res = await noop.delay_async(c * 1000 + k)
            ids.append(res.id)
        return ids

    async def main():
        return await asyncio.gather(*(caller(c) for c in range(100)))

    per_caller = asyncio.run(main())
    ids_in_stream = [decode_fields(fields).id for _, fields in r.xrange(STREAM)]
    assert len(ids_in_stream) == 2000 == len(set(ids_in_stream))
    position = {tid: n for n, tid in enumerate(ids_in_stream)}
    for ids in per_caller:
        assert [position[t] for t in ids] == sorted(position[t] for t in ids)


def _options(i: int) -> dict:
    return [{"priority": 9}, {"countdown": 60}, {"queue": "other"}][i % 3]


def _check_placement(r, n: int) -> None:
    """Every third send went to the high-priority stream, the delayed set, another queue."""
    assert r.xlen("fastq:{default}:s9") == n // 3
    assert r.zcard("fastq:{default}:delayed") == n // 3
    assert r.xlen("fastq:{other}:s") == n // 3


def test_concurrent_async_sends_keep_their_routing_priority_and_countdown(redis_url, r):
    noop = _app(redis_url).tasks["ap.noop"]

    async def main():
        await asyncio.gather(*(noop.apply_async_async((i,), **_options(i)) for i in range(600)))

    asyncio.run(main())
    _check_placement(r, 600)


def test_concurrent_thread_sends_keep_their_routing_priority_and_countdown(redis_url, r):
    noop = _app(redis_url).tasks["ap.noop"]

    def run(t):
        for k in range(100):
            noop.apply_async((k,), **_options(t * 100 + k))

    _in_threads(run, 6)
    _check_placement(r, 600)


def test_get_async_on_many_results_returns_each_its_own(redis_url, worker):
    app = _app(redis_url)
    worker("-A", "tests.test_autopipe:worker_app", "-P", "thread", "-c", "4", app="tests.test_autopipe:worker_app")
    noop = app.tasks["ap.noop"]
    results = [noop.delay(i) for i in range(300)]

    async def main():
        return await asyncio.gather(*(res.get_async(timeout=60) for res in results))

    assert asyncio.run(main()) == list(range(300))


def test_a_broken_connection_fails_the_calls_on_it_and_the_next_calls_reconnect(redis_server):
    server = redis_server()
    broker = _app(server.url, broker_connection_retries=0).broker

    async def main():
        assert await broker.execute_packed_async([_echo(1)]) == [b"m1"]
        server.kill()
        outcomes = await asyncio.gather(*(broker.execute_packed_async([_echo(i)]) for i in range(50)),
                                        return_exceptions=True)
        assert all(isinstance(o, BrokerError) for o in outcomes), outcomes
        server.start()
        return await asyncio.gather(*(broker.execute_packed_async([_echo(i)]) for i in range(50)))

    assert asyncio.run(main()) == [[b"m%d" % i] for i in range(50)]


def test_a_loop_that_only_sends_shuts_down_without_warnings(redis_url):
    script = textwrap.dedent(f"""
        import asyncio
        from fastq import FastQ
        app = FastQ("quiet", broker={redis_url!r})

        @app.task(name="quiet.noop")
        def noop(i):
            return i

        async def main():
            await asyncio.gather(*(noop.delay_async(i) for i in range(200)))

        asyncio.run(main())
        asyncio.run(main())  # a second loop in the same process: its own connection
        print("done")
    """)
    _runs_cleanly(script)


def test_threads_that_only_send_leave_nothing_behind(redis_url):
    script = textwrap.dedent(f"""
        import threading
        from fastq import FastQ
        app = FastQ("quiet", broker={redis_url!r})

        @app.task(name="quiet.noop")
        def noop(i):
            return i

        threads = [threading.Thread(target=lambda: [noop.delay(i) for i in range(200)]) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert threading.active_count() == 1, threading.enumerate()  # no thread of fastq's
        print("done")
    """)
    _runs_cleanly(script)


def _runs_cleanly(script: str) -> None:
    """The script exits at once, with no warning (ResourceWarning included) and no error."""
    proc = subprocess.run([sys.executable, "-X", "dev", "-W", "error", "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert proc.stderr == ""


# --- threads ---------------------------------------------------------------------------


def test_threads_each_get_their_own_replies(redis_url):
    broker = _app(redis_url).broker
    errors: list = []

    def run(t):
        try:
            for k in range(300):
                i = t * 1000 + k
                cmds = [_echo(i)] * (1 + k % 3)
                assert broker.execute_packed(cmds) == [b"m%d" % i] * (1 + k % 3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    _in_threads(run, 16)
    assert not errors, errors[:3]


def test_threads_share_one_connection(redis_url, r):
    broker = _app(redis_url).broker
    ids: set = set()

    def run():
        for _ in range(50):
            ids.add(broker.execute_packed([pack_command((b"CLIENT", b"ID"))])[0])

    _in_threads(lambda _t: run(), 8)
    assert len(ids) == 1


def test_delay_from_many_threads_sends_every_message_once(redis_url, r):
    app = _app(redis_url)
    noop = app.tasks["ap.noop"]
    got: list = []

    def run(t):
        got.extend(noop.delay(t * 1000 + k).id for k in range(200))

    _in_threads(run, 16)
    assert len(got) == 3200 == len(set(got))
    assert r.xlen(STREAM) == 3200


def test_an_error_reply_reaches_only_its_thread(redis_url, r):
    broker = _app(redis_url).broker
    r.set("ap:text", "not a number")
    failures: list = []

    def run(t):
        for k in range(100):
            if (t + k) % 5 == 0:
                try:
                    broker.execute_packed([pack_command((b"INCR", b"ap:text"))])
                except Exception as exc:  # noqa: BLE001 - counted below
                    failures.append(str(exc))
                else:
                    failures.append("no error")
            else:
                assert broker.execute_packed([_echo(k)]) == [b"m%d" % k]

    _in_threads(run, 8)
    assert len(failures) == 160
    assert all("not an integer" in f for f in failures)


def test_a_broken_connection_fails_the_threads_on_it_and_the_next_calls_reconnect(redis_server):
    server = redis_server()
    broker = _app(server.url, broker_connection_retries=0).broker
    assert broker.execute_packed([_echo(1)]) == [b"m1"]
    server.kill()
    outcomes: list = []

    def run():
        try:
            broker.execute_packed([_echo(2)])
        except BrokerError as exc:
            outcomes.append(exc)

    _in_threads(lambda _t: run(), 8)
    assert len(outcomes) == 8
    server.start()
    assert broker.execute_packed([_echo(3)]) == [b"m3"]


def test_a_thread_waits_for_its_turn_at_most_broker_pool_acquire_timeout(redis_server):
    """Celery's broker_pool_acquire_timeout: how long a send waits behind the others."""
    server = redis_server()
    app = _app(server.url, broker_socket_timeout=30, broker_connection_retries=0)
    broker = app.broker
    assert broker.execute_packed([_echo(1)]) == [b"m1"]
    app.conf.broker_pool_acquire_timeout = 0.5  # set at run time: read when a sender has to wait
    outcomes: dict = {}

    def send(t):
        try:
            outcomes[t] = broker.execute_packed([_echo(t)])
        except BrokerError as exc:
            outcomes[t] = exc

    # Given a paused Redis and one thread's send stuck on the shared connection
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        first = threading.Thread(target=send, args=(10,))
        first.start()
        wait_for(lambda: broker._shared()._busy, 10, message="the first send on the wire")
        # When another thread sends, it gives up after the timeout with a clear error
        t0 = time.monotonic()
        send(11)
        assert isinstance(outcomes[11], BrokerError) and "broker_pool_acquire_timeout" in str(outcomes[11])
        assert time.monotonic() - t0 < 10
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    # ... while the first send completes once Redis is back, and the next sends go through
    first.join(30)
    assert outcomes[10] == [b"m10"]
    assert broker.execute_packed([_echo(12)]) == [b"m12"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_never_uses_its_parents_connection(redis_url):
    broker = _app(redis_url).broker
    client_id = pack_command((b"CLIENT", b"ID"))
    parent_id = broker.execute_packed([client_id])[0]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send, and report the connection it used
        try:
            child_id = broker.execute_packed([client_id])[0]
            ok = all(broker.execute_packed([_echo(i)]) == [b"m%d" % i] for i in range(200))
            os.write(write, b"%d %d" % (child_id, ok))
        finally:
            os._exit(0)
    os.close(write)
    # the parent keeps sending while the child does
    for i in range(200):
        assert broker.execute_packed([_echo(i)]) == [b"m%d" % i]
    os.waitpid(pid, 0)
    child_id, ok = os.read(read, 100).split()
    assert int(child_id) != parent_id and ok == b"1"
    assert broker.execute_packed([client_id])[0] == parent_id  # the parent's is untouched


#: The app the worker of test_get_async_on_many_results_returns_each_its_own runs.
worker_app = _app(os.environ.get("FASTQ_BROKER_URL", "redis://127.0.0.1:6379/0"))
