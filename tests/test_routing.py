"""Rate limits that hold across the cluster; routing; priorities; fair queues.

Timing checks here are lower bounds (a limit can only make things slower, and a
loaded machine only slower still), or orderings, never tight upper bounds.
"""

from __future__ import annotations

import redis
from tests.apps import routing

from conftest import wait_for
from fastq.broker.keys import Keys


def _entries(ledger: redis.Redis, key: str) -> list[tuple[str, float, int]]:
    out = []
    for raw in ledger.lrange(key, 0, -1):
        item, ts, pid = raw.decode().split("|")
        out.append((item, float(ts), int(pid)))
    return out


def _app(redis_url):
    routing.app.conf.broker_url = redis_url
    routing.app._reset()
    return routing.app


def _stream_len(r, queue: str, priority: int = 0) -> int:
    return r.xlen(Keys().queue(queue).stream(priority))


# --- routing --------------------------------------------------------------------------


def test_routes_by_pattern_name_and_callable(redis_url, r):
    app = _app(redis_url)
    # When tasks are sent with routes by glob, by exact name and by a callable
    app.tasks["routing.mail.send"].delay("k", 1)
    app.tasks["routing.math.add"].delay(1, 2)
    app.tasks["routing.dynamic"].delay("special")
    app.tasks["routing.dynamic"].delay("plain")
    # Then each message is in the queue its route names (the rest in the default)
    assert _stream_len(r, "mail") == 1
    assert _stream_len(r, "math") == 1
    assert _stream_len(r, "callable-q") == 1
    assert _stream_len(r, "default") == 1


def test_apply_async_queue_overrides_routes(redis_url, r):
    app = _app(redis_url)
    app.tasks["routing.mail.send"].apply_async(("k", 1), queue="urgent")
    assert _stream_len(r, "urgent") == 1
    assert _stream_len(r, "mail") == 0


def test_worker_consumes_only_its_queues(redis_url, worker, ledger):
    app = _app(redis_url)
    # Given tasks waiting in two queues
    app.tasks["routing.log"].apply_async(("ran", "a"), queue="qa")
    app.tasks["routing.log"].apply_async(("ran", "b"), queue="qb")
    # When a worker consumes -Q qa only
    worker("-P", "solo", "-Q", "qa", app="tests.apps.routing:app")
    wait_for(lambda: ledger.llen("ran") >= 1, 20, message="qa task")
    # Then qb's task still waits
    app.broker.ensure_queue("qb")
    assert [e[0] for e in _entries(ledger, "ran")] == ["a"]
    assert app.broker.queue_stats("qb")["waiting"] == 1


def test_exclude_queues_consumes_the_others(redis_url, worker, ledger):
    app = _app(redis_url)
    for q in ("xa", "xb", "xc"):
        app.tasks["routing.log"].apply_async(("ran", q), queue=q)
    # When a worker consumes every known queue except xb
    worker("-P", "solo", "-X", "xb", app="tests.apps.routing:app")
    wait_for(lambda: ledger.llen("ran") >= 2, 20, message="xa and xc")
    assert sorted(e[0] for e in _entries(ledger, "ran")) == ["xa", "xc"]
    app.broker.ensure_queue("xb")
    assert app.broker.queue_stats("xb")["waiting"] == 1


# --- priorities and fairness --------------------------------------------------------------


def test_priorities_order_a_backlog(redis_url, worker, ledger):
    app = _app(redis_url)
    task = app.tasks["routing.log"]
    # Given a backlog sent in mixed priority order
    sent = [(i, p) for i, p in enumerate([0, 5, 9, 0, 5, 9, 1, 1, 7])]
    for i, p in sent:
        task.apply_async(("order", f"{p}:{i}"), priority=p)
    # When one worker fetching one message at a time drains it
    worker("-P", "solo", "--prefetch", "1", app="tests.apps.routing:app")
    wait_for(lambda: ledger.llen("order") == len(sent), 30, message="backlog drained")
    order = [e[0] for e in _entries(ledger, "order")]
    # Then higher priorities ran first, and FIFO within one priority
    expected = [f"{p}:{i}" for i, p in sorted(sent, key=lambda x: (-x[1], x[0]))]
    assert order == expected


def test_weighted_queues_share_a_worker_in_proportion(redis_url, worker, ledger):
    app = _app(redis_url)
    task = app.tasks["routing.log"]
    # Given two busy queues
    app.send_many(task.s("w", "a").set(queue="wa") for _ in range(400))
    app.send_many(task.s("w", "b").set(queue="wb") for _ in range(400))
    # When one worker serves them with weights 3:1
    worker("-P", "solo", "--prefetch", "10", "-Q", "wa:3,wb:1", app="tests.apps.routing:app")
    wait_for(lambda: ledger.llen("w") >= 400, 60, message="400 tasks")
    first = [e[0] for e in _entries(ledger, "w")[:400]]
    a, b = first.count("a"), first.count("b")
    # Then both were served (no starvation), about 3 a's for each b
    assert b > 0
    assert 2.0 <= a / b <= 4.5, (a, b)


# --- rate limits --------------------------------------------------------------------------


def _duration(entries) -> float:
    ts = sorted(e[1] for e in entries)
    return ts[-1] - ts[0]


def test_rate_limit_holds_across_workers(redis_url, worker, ledger):
    app = _app(redis_url)
    # Given two workers of two processes each, and a task limited to 5/s
    for _ in range(2):
        worker("-c", "2", "--prefetch", "10", app="tests.apps.routing:app")
    n = 30
    app.send_many(app.tasks["routing.limited"].s("lim", i) for i in range(n))
    wait_for(lambda: ledger.llen("lim") >= n, 60, message="limited tasks")
    entries = _entries(ledger, "lim")
    # Then together they ran no faster than the limit (burst: one bucket of 1 token)
    assert len({e[0] for e in entries}) == n
    assert _duration(entries) >= (n - 2) / 5 * 0.9, _duration(entries)
    assert len({e[2] for e in entries}) >= 2  # and more than one process did the work


def test_worker_scope_limits_each_worker_on_its_own(redis_url, worker, ledger):
    app = _app(redis_url)
    # Given two workers and a task limited to 5/s per worker
    for _ in range(2):
        worker("-P", "solo", "--prefetch", "5", app="tests.apps.routing:app")
    n = 40
    app.send_many(app.tasks["routing.limited_worker"].s("wl", i) for i in range(n))
    wait_for(lambda: ledger.llen("wl") >= n, 60, message="tasks")
    entries = _entries(ledger, "wl")
    # Then each worker process kept to about 5/s on its own
    for pid in {e[2] for e in entries}:
        mine = [e for e in entries if e[2] == pid]
        if len(mine) >= 6:
            assert _duration(mine) >= (len(mine) - 2) / 5 * 0.9


def test_limited_task_does_not_hold_up_others(redis_url, worker, ledger):
    app = _app(redis_url)
    # Given a backlog of a task limited to 2/s, then one unlimited task behind it
    app.send_many(app.tasks["routing.slow_limited"].s("mix", f"slow{i}") for i in range(20))
    app.tasks["routing.log"].delay("mix", "fast")
    # When one worker runs them
    worker("-P", "solo", "--prefetch", "5", app="tests.apps.routing:app")
    wait_for(lambda: b"fast" in b"".join(ledger.lrange("mix", 0, -1)), 30, message="the unlimited task")
    # Then the unlimited task ran while most of the limited backlog still waited
    done_slow = sum(1 for e in _entries(ledger, "mix") if e[0].startswith("slow"))
    assert done_slow < 15, done_slow
    # And nothing is lost: the limited ones all run in the end
    wait_for(lambda: ledger.llen("mix") >= 21, 60, message="the whole backlog")


def test_queue_rate_limit(redis_url, worker, ledger):
    app = _app(redis_url)
    # Given queue "slowq" limited to 4/s
    app.send_many(app.tasks["routing.log"].s("q", i).set(queue="slowq") for i in range(14))
    worker("-c", "2", "-Q", "slowq", app="tests.apps.routing:app")
    wait_for(lambda: ledger.llen("q") >= 14, 60, message="queue tasks")
    assert _duration(_entries(ledger, "q")) >= (14 - 2) / 4 * 0.9


def test_rate_limit_changed_at_run_time(redis_url, worker, ledger):
    from fastq.ratelimit import set_rate_limit

    app = _app(redis_url)
    worker("-P", "solo", app="tests.apps.routing:app")
    # When an unlimited task is limited to 3/s for the whole cluster at run time
    set_rate_limit(app, "routing.log", "3/s")
    import time

    time.sleep(1.5)  # consumers read overrides once a second
    app.send_many(app.tasks["routing.log"].s("rt", i) for i in range(10))
    wait_for(lambda: ledger.llen("rt") >= 10, 60, message="tasks")
    # Then it ran at no more than the new limit
    assert _duration(_entries(ledger, "rt")) >= (10 - 2) / 3 * 0.9
    set_rate_limit(app, "routing.log", None)


def test_progress_is_visible_while_the_task_runs(redis_url, worker, ledger):
    app = _app(redis_url)
    worker("-P", "solo", app="tests.apps.routing:app")
    r = app.tasks["routing.progress"].delay("go")
    wait_for(lambda: r.state == "PROGRESS", 30, message="PROGRESS state")
    assert r.info == {"done": 40, "total": 100}
    assert not r.ready()
    ledger.set("go", 1)
    assert r.get(timeout=30) == "finished"
    assert r.state == "SUCCESS"
