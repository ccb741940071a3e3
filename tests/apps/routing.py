"""App for the rate-limit, routing and priority tests (``-A tests.apps.routing:app``)."""

import os
import time

from tests.apps.ledger import ledger

from fastq import FastQ

app = FastQ("routing")
app.conf.task_routes = [
    {"routing.mail.*": {"queue": "mail"}, "routing.math.add": "math"},
    lambda name, args, kwargs, options: "callable-q" if name == "routing.dynamic" and args and args[0] == "special" else None,
]
app.conf.queue_rate_limits = {"slowq": "4/s"}



def _log(key, item):
    ledger().rpush(key, f"{item}|{time.time():.6f}|{os.getpid()}")


@app.task(name="routing.log", ignore_result=True)
def log(key, item):
    _log(key, item)


@app.task(name="routing.limited", ignore_result=True, rate_limit="5/s")
def limited(key, item):
    _log(key, item)


@app.task(name="routing.limited_worker", ignore_result=True, rate_limit="5/s", rate_limit_scope="worker")
def limited_worker(key, item):
    _log(key, item)


@app.task(name="routing.slow_limited", ignore_result=True, rate_limit="2/s")
def slow_limited(key, item):
    _log(key, item)


@app.task(name="routing.mail.send", ignore_result=True)
def mail_send(key, item):
    _log(key, item)


@app.task(name="routing.math.add")
def add(x, y):
    return x + y


@app.task(name="routing.dynamic")
def dynamic(kind):
    return kind


@app.task(name="routing.progress", bind=True)
def progress(self, key):
    """Reports progress, then waits for the test to say go (a ledger key)."""
    self.update_state(state="PROGRESS", meta={"done": 40, "total": 100})
    deadline = time.time() + 30
    while not ledger().exists(key) and time.time() < deadline:
        time.sleep(0.02)
    return "finished"
