"""The app for delayed-task and beat tests (``-A tests.apps.beatapp:app``).

``FASTQ_TEST_BEAT`` picks the schedule, so one module serves the good and the
broken configurations (a broken one must fail when beat starts, naming the
entry). Tasks record into the ledger DB (``FASTQ_TEST_LEDGER``), outside the
broker's keys.
"""

import os
import time

from tests.apps.ledger import ledger

from fastq import FastQ, crontab

app = FastQ("beattests")
app.conf.worker_lease_timeout = float(os.environ.get("FASTQ_TEST_LEASE", "30"))
app.conf.timezone = os.environ.get("FASTQ_TEST_TZ", "UTC")



@app.task(name="beat.stamp", bind=True, ignore_result=True)
def stamp(self, key, item):
    """Record when ``item`` started (``key``) and how often it ran (``key:count``)."""
    pipe = ledger().pipeline()
    pipe.hset(key, item, repr(time.time()))
    pipe.hincrby(f"{key}:count", item, 1)
    pipe.execute()


@app.task(name="beat.retry_stamp", bind=True, max_retries=1, ignore_result=True)
def retry_stamp(self, key, countdown):
    """Record each try's start; the first try asks to be retried after ``countdown``."""
    ledger().rpush(key, repr(time.time()))
    if self.request.retries == 0:
        raise self.retry(countdown=countdown)


@app.task(name="beat.tick", bind=True, ignore_result=True)
def tick(self, key="ticks"):
    """A periodic run: count runs per due time (from the headers beat sets)."""
    due = (self.request.headers or {}).get("fastq-beat-due", "none")
    ledger().hincrby(key, str(due), 1)


@app.task(name="beat.report", ignore_result=True)
def report():
    return None


SCHEDULES = {
    "every-second": {"tick": {"task": "beat.tick", "schedule": 1.0, "args": ("ticks",)}},
    "listing": {
        "every-10s": {"task": "beat.tick", "schedule": 10.0, "args": ("ticks",)},
        "weekday-mornings": {
            "task": "beat.report",
            "schedule": crontab(minute=30, hour=7, day_of_week="mon-fri"),
            "kwargs": {},
            "options": {"queue": "reports"},
        },
    },
    "bad-minute": {"broken-minute": {"task": "beat.tick", "schedule": "61 * * * *"}},
    "bad-dow": {"broken-dow": {"task": "beat.tick", "schedule": "0 7 * * funday"}},
    "unknown-task": {"ghost": {"task": "beat.no_such_task", "schedule": 5.0}},
    "bad-schedule": {"weird": {"task": "beat.tick", "schedule": [1, 2]}},
}

app.conf.beat_schedule = dict(SCHEDULES[os.environ.get("FASTQ_TEST_BEAT", "every-second")])
if os.environ.get("FASTQ_TEST_BEAT") == "listing":
    app.add_periodic_task(60.0, tick.s("minutes"), name="every-minute")
