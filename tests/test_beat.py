"""fastq beat: validation at start, --list, leader election, exactly-once runs,
failover, missed runs, and beat embedded in workers. Real Redis, real
`fastq beat` / `fastq worker` processes (each in its own session, killed at
the end)."""

import datetime as dt
import itertools
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis
from tests.conftest import ROOT, fastq_command, wait_for

from fastq.beat import HEADER_DUE, HEADER_ENTRY, Beat
from fastq.exceptions import ImproperlyConfigured
from fastq.schedules import crontab

APP = "tests.apps.beatapp:app"
STREAM = "fastq:{default}:s"
LOCK = "fastq:beat:leader"
STATE = "fastq:{default}:beat:tick"


class BeatProcess:
    """A `fastq beat` subprocess in its own session; output in a log file."""

    def __init__(self, args: list[str], env: dict, name: str) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"fastq-beat-{name}-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*fastq_command(), "beat", *args], cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the process group (a host dying)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def beat(redis_url, request):
    """Start `fastq beat` subprocesses: ``beat("--lease", "3")``."""
    started: list[BeatProcess] = []

    def start(*args: str, env: dict | None = None) -> BeatProcess:
        full_env = {**os.environ, "FASTQ_BROKER_URL": redis_url, **(env or {})}
        bp = BeatProcess(["-A", APP, "--loglevel", "INFO", *args], full_env, f"b{len(started) + 1}")
        started.append(bp)
        return bp

    yield start
    for bp in started:
        bp.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        import sys

        for bp in started:
            sys.stderr.write(f"\n----- log of beat {bp.name} -----\n{bp.log()[-10000:]}\n")


@pytest.fixture
def bapp(redis_url, monkeypatch):
    """tests.apps.beatapp's app on the test DB; tests may replace its schedule."""
    from tests.apps import beatapp

    beatapp.app.conf.broker_url = redis_url
    beatapp.app._reset()
    monkeypatch.setitem(beatapp.app.conf, "beat_schedule", dict(beatapp.app.conf.beat_schedule))
    return beatapp.app


def sent_runs(r: redis.Redis, app, stream: str = STREAM) -> list[tuple[str, int]]:
    """(entry, due ms) of every periodic message in a stream, in order sent."""
    out = []
    for _, fields in r.xrange(stream):
        _, payload = next(iter(fields.items()))
        msg = app.serializer.decode_message(payload)
        out.append((msg.headers[HEADER_ENTRY], int(msg.headers[HEADER_DUE])))
    return out


def leader_pid(r: redis.Redis) -> int | None:
    v = r.get(LOCK)
    return int(v.decode().rsplit(":", 2)[1]) if v else None


# --- bad input: fails at start, naming the entry --------------------------------------------

@pytest.mark.parametrize(("scenario", "message"), [
    ("bad-minute", "beat_schedule entry 'broken-minute': invalid schedule: crontab minute: 61 is out of range"),
    ("bad-dow", "beat_schedule entry 'broken-dow': invalid schedule: crontab day_of_week: 'funday'"),
    ("unknown-task", "beat_schedule entry 'ghost': unknown task 'beat.no_such_task'"),
    ("bad-schedule", "beat_schedule entry 'weird': invalid schedule: a schedule must be seconds"),
])
def test_bad_schedule_fails_when_beat_starts(redis_url, r, scenario, message):
    # Given a schedule with one broken entry / When beat starts
    env = {**os.environ, "FASTQ_BROKER_URL": redis_url, "FASTQ_TEST_BEAT": scenario}
    proc = subprocess.run([*fastq_command(), "beat", "-A", APP], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    # Then it exits at once with an error naming the entry, and sends nothing
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert r.get(LOCK) is None and r.xlen(STREAM) == 0


def test_bad_entries_are_rejected_in_process(bapp):
    cases = {
        "no-task": ({"schedule": 5}, "'task' must be a task name"),
        "no-schedule": ({"task": "beat.tick"}, "has no 'schedule'"),
        "extra": ({"task": "beat.tick", "schedule": 5, "shedule": 1}, "unknown key(s) shedule"),
        "args": ({"task": "beat.tick", "schedule": 5, "args": "ab"}, "'args' must be a list or tuple"),
        "option": ({"task": "beat.tick", "schedule": 5, "options": {"qeue": "x"}}, "unknown apply_async option"),
        "countdown": ({"task": "beat.tick", "schedule": 5, "options": {"countdown": 3}}, "'countdown' makes no sense"),
        "priority": ({"task": "beat.tick", "schedule": 5, "options": {"priority": 11}}, "priority must be"),
        "unserializable": ({"task": "beat.tick", "schedule": 5, "args": (object(),)}, "cannot be serialized"),
        "negative": ({"task": "beat.tick", "schedule": -1}, "at least 1 ms"),
        "cron": ({"task": "beat.tick", "schedule": "* * *"}, "5 fields"),
    }
    for name, (entry, message) in cases.items():
        bapp.conf.beat_schedule = {name: entry}
        with pytest.raises(ImproperlyConfigured, match=f"^beat_schedule entry '{name}': .*{_re(message)}"):
            Beat(bapp)
    bapp.conf.beat_schedule = {}
    bapp.conf.timezone = "Nowhere/Special"
    try:
        with pytest.raises(ImproperlyConfigured, match="timezone"):
            Beat(bapp)
    finally:
        bapp.conf.timezone = "UTC"


def _re(s: str) -> str:
    import re

    return re.escape(s)


# --- listing -----------------------------------------------------------------------------------

def test_beat_list_prints_each_entry_with_its_next_run(redis_url):
    env = {**os.environ, "FASTQ_BROKER_URL": redis_url, "FASTQ_TEST_BEAT": "listing"}
    before = dt.datetime.now(dt.timezone.utc)
    proc = subprocess.run([*fastq_command(), "beat", "-A", APP, "--list"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    # the crontab entry's next run is the next weekday 07:30 UTC
    nxt = crontab(minute=30, hour=7, day_of_week="mon-fri").next_run(before, "UTC")
    assert nxt.strftime("%Y-%m-%d %H:%M:%S") in lines["weekday-mornings"]
    assert "reports" in lines["weekday-mornings"] and "cron 30 7 * * mon-fri" in lines["weekday-mornings"]
    # the interval entries run one interval after they are first seen
    assert "every 10s" in lines["every-10s"]
    assert "every 60s" in lines["every-minute"]  # from app.add_periodic_task
    assert "3 entries; times in UTC; leader: none" in proc.stdout


# --- leadership and exactly-once -----------------------------------------------------------------

def test_two_beats_for_20s_send_each_run_exactly_once(bapp, beat, worker, r, ledger):
    # Given a worker and two beat processes on a 1-second schedule
    worker("-P", "solo", app=APP)
    b1, b2 = beat(), beat()
    started = time.time()
    # When they run for 20 s
    holders = set()
    while time.time() < started + 20:
        holders.add(r.get(LOCK))
        time.sleep(0.25)
    b1.stop()
    b2.stop()
    # Then one of them led all along (the other took over only when it stopped)
    holders.discard(None)
    assert len(holders) == 1, holders
    # And each run was sent and ran once, one second apart, with no gap
    # (the worker deletes what it acks, so the runs are counted in its ledger)
    state = r.hgetall(STATE)
    last = int(state[b"due"])
    wait_for(lambda: str(last).encode() in ledger.hgetall("ticks"), 20, message="the last tick to run")
    time.sleep(0.5)
    ticks = {int(k): int(v) for k, v in ledger.hgetall("ticks").items()}
    assert set(ticks.values()) == {1}, "a run was sent twice"
    dues = sorted(ticks)
    assert len(dues) >= 15, f"only {len(dues)} runs in 20 s"
    assert {b - a for a, b in itertools.pairwise(dues)} == {1000}
    assert started * 1000 < dues[0] < started * 1000 + 6000
    # And the schedule state is in Redis
    assert last == dues[-1] and state[b"id"] and state[b"sent"]


def test_leader_killed_standby_continues_without_gap_or_duplicate(bapp, beat, r):
    lease = 3.0
    # Given two beats with a 3 s lease on a 1-second schedule
    beat("--lease", str(lease))
    beat("--lease", str(lease))
    wait_for(lambda: len(sent_runs(r, bapp)) >= 3, 30, message="3 runs")
    # When the leader's host dies
    pid = leader_pid(r)
    os.killpg(pid, signal.SIGKILL)
    killed_at = time.time()
    # Then the standby takes over within the lease
    wait_for(lambda: leader_pid(r) not in (None, pid), lease + 5, message="the standby to lead")
    takeover = time.time() - killed_at
    # And keeps sending
    wait_for(lambda: sent_runs(r, bapp)[-1][1] > (killed_at + lease + 2) * 1000, 30, message="runs after failover")
    # When the new leader stops cleanly and a third beat stands by
    b3 = beat("--lease", str(lease))
    time.sleep(1.0)
    second = leader_pid(r)
    os.kill(second, signal.SIGTERM)
    stopped_at = time.time()
    # Then the third leads at once (the lock is handed back), not after the lease
    wait_for(lambda: leader_pid(r) == b3.pid, lease, message="the third beat to lead")
    handover = time.time() - stopped_at
    wait_for(lambda: sent_runs(r, bapp)[-1][1] > (stopped_at + 2) * 1000, 30, message="runs after handover")
    dues = [d for _, d in sent_runs(r, bapp)]
    # No run was sent twice, and no gap is longer than the lease (with 1 s of scheduling slack)
    assert len(dues) == len(set(dues)), "a run was sent twice"
    gaps = [b - a for a, b in itertools.pairwise(dues)]
    assert all(g > 0 for g in gaps)
    assert max(gaps) <= (lease + 1.5) * 1000, f"gap of {max(gaps)} ms (takeover {takeover:.2f}s)"
    assert takeover <= lease + 1.5
    assert handover < lease


def test_missed_runs_after_downtime_are_sent_once(bapp, beat, r):
    # Given a beat that ran a 1-second schedule, then was down for 4 s
    b1 = beat()
    wait_for(lambda: len(sent_runs(r, bapp)) >= 2, 30, message="2 runs")
    b1.stop()
    before_gap = sent_runs(r, bapp)[-1][1]
    time.sleep(4)
    # When a beat starts again
    beat()
    wait_for(lambda: len(sent_runs(r, bapp)) >= 5, 30, message="runs after restart")
    dues = [d for _, d in sent_runs(r, bapp)]
    # Then the missed runs were sent as one (the latest), then the schedule went on
    assert len(dues) == len(set(dues))
    after = [d for d in dues if d > before_gap]
    assert after[0] - before_gap >= 3000, "missed runs were sent one by one"
    assert {b - a for a, b in itertools.pairwise(after)} == {1000}
    # And the run grid kept its phase (state from Redis, not from the restart time)
    assert {d % 1000 for d in dues} == {dues[0] % 1000}


def test_worker_with_beat_on_two_workers(bapp, worker, r, ledger):
    # Given two workers that each embed beat (process pool: beat in the parent)
    w1 = worker("-P", "process", "-c", "1", "--beat", app=APP)
    w2 = worker("-P", "solo", "--beat", app=APP)
    # When they run for a while
    wait_for(lambda: len(ledger.hgetall("ticks")) >= 5, 30, message="5 ticks")
    w1.stop()
    w2.stop()
    # Then one led at a time, and every run ran once, one second apart
    assert sum("is now the leader" in w.log() for w in (w1, w2)) >= 1
    last = int(r.hget(STATE, "due"))
    ticks = {int(k): int(v) for k, v in ledger.hgetall("ticks").items()}
    assert set(ticks.values()) == {1}, "a run was sent twice"
    dues = sorted(ticks)
    assert dues[-1] <= last and len(dues) >= 5
    assert {b - a for a, b in itertools.pairwise(dues)} == {1000}


# --- in process, with explicit times ---------------------------------------------------------

def _ms(*fields) -> int:
    return int(dt.datetime(*fields, tzinfo=dt.timezone.utc).timestamp() * 1000)


def test_tick_collapses_missed_runs_and_refuses_duplicates(bapp, r):
    # Given a crontab entry and an interval entry, and two beats that both think they lead
    bapp.conf.beat_schedule = {
        "five": {"task": "beat.tick", "schedule": crontab(minute="*/5"), "args": ("five",)},
        "tenth": {"task": "beat.tick", "schedule": 10.0, "args": ("tenth",)},
    }
    a, b = Beat(bapp), Beat(bapp)
    for x in (a, b):
        x.is_leader, x._valid_until = True, time.monotonic() + 3600
    t0 = _ms(2024, 1, 1, 0, 2)
    a.tick(t0)  # first sighting anchors both entries at t0
    assert sent_runs(r, bapp) == []
    # When both tick at the first due times
    a.tick(t0 + 10_000)
    b.tick(t0 + 10_000)
    assert sent_runs(r, bapp) == [("tenth", t0 + 10_000)]
    a.tick(_ms(2024, 1, 1, 0, 5))
    b.tick(_ms(2024, 1, 1, 0, 5))
    # Then each run was sent once
    runs = sent_runs(r, bapp)
    assert runs.count(("five", _ms(2024, 1, 1, 0, 5))) == 1
    assert len(runs) == len(set(runs))
    # When an hour passes unseen
    n = len(runs)
    b.tick(_ms(2024, 1, 1, 1, 7, 30))
    a.tick(_ms(2024, 1, 1, 1, 7, 30))
    # Then each entry sends only its latest missed run
    new = sent_runs(r, bapp)[n:]
    assert sorted(new) == sorted([("five", _ms(2024, 1, 1, 1, 5)), ("tenth", t0 + 3930_000)])
    # And the next ones follow the schedule
    assert a._next["five"] == _ms(2024, 1, 1, 1, 10) and a._next["tenth"] == t0 + 3940_000
    assert int(r.hget("fastq:{default}:beat:five", "due")) == _ms(2024, 1, 1, 1, 5)


def test_add_periodic_task(bapp):
    bapp.conf.beat_schedule = {}
    tick = bapp.tasks["beat.tick"]
    # named, with options
    assert bapp.add_periodic_task(crontab(minute=0), tick.s("hourly"), name="hourly", queue="reports") == "hourly"
    # unnamed: named by the signature, as in Celery
    assert bapp.add_periodic_task(60.0, tick.s("m")) == "beat.tick('m')"
    sched = bapp.conf.beat_schedule
    assert sched["hourly"] == {"task": "beat.tick", "schedule": crontab(minute=0), "args": ("hourly",),
                               "kwargs": {}, "options": {"queue": "reports"}}
    entries = {e.name: e for e in Beat(bapp).entries}
    assert entries["hourly"].queue == "reports" and entries["beat.tick('m')"].schedule.seconds == 60
    assert bapp.broker.keys.beat_state("reports", "hourly") == "fastq:{reports}:beat:hourly"
    with pytest.raises(TypeError, match="signature"):
        bapp.add_periodic_task(60.0, "beat.tick")
