"""Workers on separate hosts: every host is a network namespace with its own
address on one switched LAN (tests/netns.py ``Network``), Redis runs on one
host, workers on two or three others (each with a hostname of its own, so the
default worker name ``fastq@<hostname>`` differs per host), and the producer and
``fastq status`` on yet another. The execution ledger is DB 1 of the same Redis
(tests/apps/multihost.py), so a host cut off from Redis cannot write to it either.

Checked: the work is shared across hosts and every task runs exactly once;
``fastq status`` lists every worker host; a host SIGKILLed or cut off mid-drain
loses nothing (the other hosts take over its leased tasks once the lease lapses;
duplicates are counted and printed, delivery is at least once); two live
workers cannot share a name, on different hosts or on one.

Needs root and ``ip`` (CI runs as root); elsewhere the tests skip, in CI they fail.
Run: FASTQ_TEST_DB=11 FASTQ_TEST_LEDGER_DB=14 python -m pytest tests/test_multihost.py -s
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import pytest
import redis

from conftest import ROOT, fastq_command, wait_for

pytestmark = [pytest.mark.multihost, pytest.mark.fault]

APP = "tests.apps.multihost:app"
BASE = "fastq:{default}"
# every stream of the queue, in the order fetch.lua serves them (returned p, priority p, p = 9 .. 0)
STREAMS = [s for p in range(9, -1, -1) for s in (f"{BASE}:ret{p or ''}", f"{BASE}:s{p or ''}")]
CONSUMER_GROUP = "fastq"


class Lan:
    """A LAN with Redis on host ``redis``; ``host()``, ``worker()``, ``produce()`` and
    ``status()`` add the rest. Everything goes away in ``close()``."""

    def __init__(self) -> None:
        from tests.netns import HostRedis, Network

        self.workers: list = []
        self.redis = None
        self.net = Network()
        try:
            self.redis = HostRedis(self.net.add_host("redis"))
            self.broker = redis.Redis.from_url(self.redis.url(0))
            self.ledger = redis.Redis.from_url(self.redis.url(1))

            def up():
                if self.redis.proc.poll() is not None:
                    raise AssertionError(f"redis-server on the redis host exited with {self.redis.proc.returncode}")
                try:
                    return self.broker.ping()
                except redis.ConnectionError:
                    return False

            wait_for(up, 20, message="redis-server on the redis host")
        except BaseException:
            self.close()
            raise
        self.env = {**os.environ, "FASTQ_BROKER_URL": self.redis.url(0), "FASTQ_TEST_LEDGER": self.redis.url(1)}

    def host(self, name: str):
        return self.net.add_host(name)

    def worker(self, host, *args: str, name: str | None = None, wait: bool = True, pidns: bool = False):
        """``fastq worker`` on ``host``, whose hostname is the host's name. Without
        ``--hostname`` in ``args`` the worker names itself: ``name`` is the name the
        test expects it to register (default ``fastq@<host>``)."""
        from tests.netns import HostWorker

        if name is None:
            name = args[args.index("--hostname") + 1] if "--hostname" in args else f"fastq@{host.name}"
        w = HostWorker(host, list(args), self.env, name, uts=host.name, app=APP, pidns=pidns)
        self.workers.append(w)
        if wait:
            w.wait_ready(self.broker, 60)
        return w

    def produce(self, host, key: str, n: int, seconds: float = 0.0) -> None:
        """Run the producer script on ``host``: it sends ``n`` tasks and exits."""
        out = host.run([sys.executable, "-m", "tests.apps.multihost", key, str(n), str(seconds)], cwd=ROOT,
                       env=self.env, timeout=120)
        assert out.returncode == 0 and f"sent {n}" in out.stdout, f"producer failed:\n{out.stdout}\n{out.stderr}"

    def status(self, host) -> list[str]:
        """``fastq status`` run on ``host``: the names of the workers it lists as online."""
        out = host.run([*fastq_command(), "status", "-A", APP], cwd=ROOT, env=self.env, timeout=60)
        assert out.returncode == 0, f"fastq status failed:\n{out.stdout}\n{out.stderr}"
        return sorted(line[: -len(": OK")] for line in out.stdout.splitlines() if line.endswith(": OK"))

    def close(self, failed: bool = False) -> None:
        for w in self.workers:
            w.kill_all()
            w._log.close()
            if failed:
                sys.stderr.write(f"\n----- log of {w.name} on {w.host.name} -----\n{w.log()[-20000:]}\n")
            else:
                w.log_path.unlink(missing_ok=True)
        if self.redis is not None:
            self.redis.stop()
        self.net.close()


@pytest.fixture
def lan(request):
    from tests.netns import netns_available

    why = netns_available() or (None if shutil.which("unshare") else "no `unshare` command")
    if why:
        if os.environ.get("CI"):  # CI runs as root with iproute2: never let this hide
            pytest.fail(f"network namespaces unavailable in CI: {why}")
        pytest.skip(why)
    made = Lan()
    try:
        yield made
    finally:
        rep = getattr(request.node, "rep_call", None)
        made.close(failed=rep is not None and rep.failed)


def queue_state(client: redis.Redis) -> dict:
    pipe = client.pipeline(transaction=False)
    for s in STREAMS:
        pipe.xlen(s)
    for s in STREAMS:
        pipe.xpending(s, CONSUMER_GROUP)
    replies = pipe.execute(raise_on_error=False)
    n = len(STREAMS)
    return {"entries": sum(r for r in replies[:n] if isinstance(r, int)),
            "pending": sum(r["pending"] for r in replies[n:] if isinstance(r, dict))}


def drained(client: redis.Redis) -> bool:
    s = queue_state(client)
    return s["entries"] == 0 and s["pending"] == 0


def pending_of(client: redis.Redis, worker_name: str) -> int:
    """Entries leased to the consumers of worker ``worker_name`` (named ``<worker>/...``)."""
    n = 0
    for s in STREAMS:
        try:
            n += sum(c["pending"] for c in client.xinfo_consumers(s, CONSUMER_GROUP)
                     if c["name"].decode().startswith(worker_name + "/"))
        except redis.ResponseError:  # no such stream (yet)
            pass
    return n


def account(ledger: redis.Redis, key: str, n: int) -> tuple[list[int], int, dict[str, int]]:
    """(lost items, extra executions, runs per worker name) from the ledger."""
    counts = {k.decode(): int(v) for k, v in ledger.hgetall(key).items()}
    lost = [i for i in range(n) if counts.get(str(i), 0) == 0]
    extra = sum(c - 1 for c in counts.values() if c > 1)
    by = {k.decode(): int(v) for k, v in ledger.hgetall(f"{key}:by").items()}
    return lost, extra, by


def result(**figures) -> None:
    print("\nMULTIHOST-RESULT " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


# --- 1. work shared across hosts -------------------------------------------------------------


@pytest.mark.timeout(240)
def test_work_is_shared_across_hosts(lan):
    # Given Redis on one host and a worker on each of three more, named by default
    # after their hosts' hostnames (no --hostname)
    n = 3000
    hosts = [lan.host(f"host{i}") for i in (1, 2, 3)]
    producer = lan.host("producer")
    workers = [lan.worker(h, "-c", "2", wait=False) for h in hosts]
    for w in workers:
        w.wait_ready(lan.broker, 60)
    names = sorted(w.name for w in workers)
    assert names == ["fastq@host1", "fastq@host2", "fastq@host3"]

    # When a producer on a fifth host sends 3000 tasks
    t0 = time.monotonic()
    lan.produce(producer, "shared", n)

    # Then every task runs exactly once, and every host ran some of them
    wait_for(lambda: lan.ledger.hlen("shared") >= n, 120, 0.1,
             f"every task to run ({lan.ledger.hlen('shared')}/{n}, {queue_state(lan.broker)})")
    drain_s = time.monotonic() - t0
    wait_for(lambda: drained(lan.broker), 30, 0.1, f"an empty queue and pending list ({queue_state(lan.broker)})")
    lost, extra, by = account(lan.ledger, "shared", n)
    result(scenario="shared", tasks=n, hosts=len(hosts), lost=len(lost), duplicates=extra,
           per_host=",".join(f"{k}:{v}" for k, v in sorted(by.items())), drain_s=f"{drain_s:.1f}")
    assert lost == [] and extra == 0
    assert sorted(by) == names and all(v > 0 for v in by.values()), by
    assert sum(by.values()) == n

    # ... and `fastq status`, run on the producer's host, lists every worker host
    assert lan.status(producer) == names
    assert all(w.proc.poll() is None for w in workers)


# --- 2. stopping a host mid-drain loses nothing ------------------------------------------------


@pytest.mark.parametrize("how", ["sigkill", "link-down"])
@pytest.mark.timeout(240)
def test_stopping_a_host_loses_nothing(lan, how):
    # Given three worker hosts with a 3 s lease and 3000 tasks of ~5 ms
    n, lease = 3000, 3
    hosts = [lan.host(f"host{i}") for i in (1, 2, 3)]
    producer = lan.host("producer")
    workers = [lan.worker(h, "-c", "2", "--lease-timeout", str(lease), wait=False) for h in hosts]
    for w in workers:
        w.wait_ready(lan.broker, 60)
    victim, survivors = workers[0], workers[1:]
    lan.produce(producer, "stop", n, 0.005)

    # When, with some of the work done and tasks leased to host1, host1 stops:
    # its worker's whole process tree is SIGKILLed, or its link goes down
    wait_for(lambda: lan.ledger.hlen("stop") >= n // 5 and pending_of(lan.broker, victim.name) > 0, 120, 0.01,
             f"a fifth of the drain with tasks leased to host1 ({lan.ledger.hlen('stop')}/{n})")
    if how == "sigkill":
        victim.kill_all()
    else:
        lan.net.cut(victim.host)
    stopped_at = time.monotonic()
    done_at_stop = lan.ledger.hlen("stop")
    held = pending_of(lan.broker, victim.name)

    # Then the other hosts run everything, host1's leased tasks included once
    # its lease has lapsed, and the queue ends empty
    wait_for(lambda: lan.ledger.hlen("stop") >= n, 120, 0.1,
             f"every task to run ({lan.ledger.hlen('stop')}/{n}, {queue_state(lan.broker)}, "
             f"host1 holds {pending_of(lan.broker, victim.name)})")
    finish_s = time.monotonic() - stopped_at
    wait_for(lambda: drained(lan.broker), 60, 0.1, f"an empty queue and pending list ({queue_state(lan.broker)})")
    lost, extra, by = account(lan.ledger, "stop", n)
    result(scenario=how, tasks=n, lease_s=lease, done_at_stop=done_at_stop, held_by_stopped_host=held,
           lost=len(lost), duplicates=extra, per_host=",".join(f"{k}:{v}" for k, v in sorted(by.items())),
           finish_after_stop_s=f"{finish_s:.1f}")
    assert lost == []
    assert held > 0, "host1 held no leased task when it stopped"
    assert pending_of(lan.broker, victim.name) == 0
    assert all(w.proc.poll() is None for w in survivors)
    if how == "link-down":
        assert victim.proc.poll() is None  # alive but unreachable: nobody waited for it

    # ... and `fastq status` soon lists only the hosts still reachable
    wait_for(lambda: lan.status(producer) == sorted(w.name for w in survivors), 30, 0.5,
             f"fastq status to drop {victim.name}")


# --- 3. worker names across hosts --------------------------------------------------------------


@pytest.mark.timeout(180)
def test_worker_names_are_unique_across_hosts(lan):
    # Given a worker on host1 named "shared@cluster" explicitly
    h1, h2 = lan.host("host1"), lan.host("host2")
    first = lan.worker(h1, "-P", "solo", "--hostname", "shared@cluster")

    # When a worker on host2 claims the same name
    second = lan.worker(h2, "-P", "solo", "--hostname", "shared@cluster", wait=False)

    # Then it exits non-zero with a clear error naming the taken name; the first runs on
    code = second.proc.wait(60)
    log = second.log()
    assert code == 2, log  # a usage error
    assert "another live worker is already named 'shared@cluster'" in log, log
    assert "--hostname" in log and "Traceback" not in log, log
    assert first.proc.poll() is None

    # And workers left to name themselves on the two hosts get two different
    # default names, after each host's hostname
    a = lan.worker(h1, "-P", "solo", name="fastq@host1")
    b = lan.worker(h2, "-P", "solo", name="fastq@host2")
    assert lan.status(h2) == ["fastq@host1", "fastq@host2", "shared@cluster"]

    # And a second default-named worker on host1 takes the next default name there
    again = lan.worker(h1, "-P", "solo", name="fastq-2@host1")
    assert "fastq@host1 is held by a live worker" in again.log(), again.log()
    assert all(w.proc.poll() is None for w in (first, a, again, b))


@pytest.mark.timeout(180)
def test_same_name_is_refused_when_the_workers_share_a_pid(lan):
    # Given a worker named "web@cluster" that is pid 1 of its host (as in a container)
    h1, h2 = lan.host("host1"), lan.host("host2")
    first = lan.worker(h1, "-P", "solo", "--hostname", "web@cluster", pidns=True)
    assert b'"pid": 1,' in lan.broker.get("fastq:worker:web@cluster")

    # When a worker on another host, pid 1 there too, claims the same name
    second = lan.worker(h2, "-P", "solo", "--hostname", "web@cluster", pidns=True, wait=False)

    # Then it still refuses: the same pid on another host is another worker
    code = second.proc.wait(60)
    assert code == 2, second.log()
    assert "another live worker is already named 'web@cluster'" in second.log(), second.log()
    assert first.proc.poll() is None
