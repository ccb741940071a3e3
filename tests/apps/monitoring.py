"""The app of the monitoring tests (control, dashboard, metrics, failure e-mail).

Failure e-mail is configured from the environment the tests give the worker:
FASTQ_TEST_SMTP_URL (unset: no e-mail), FASTQ_TEST_MAIL_INTERVAL, FASTQ_TEST_MAIL_TIMEOUT.
Results are extended (arguments kept), so the dashboard shows them.
"""

import os
import time

from fastq import FastQ
from fastq.exceptions import Reject

app = FastQ("monitoring")
app.conf.result_extended = True
if os.environ.get("FASTQ_TEST_SMTP_URL"):
    app.conf.error_email_to = ["ops@example.com", "dev@example.com"]
    app.conf.error_email_from = "fastq@example.com"
    app.conf.error_email_smtp_url = os.environ["FASTQ_TEST_SMTP_URL"]
    app.conf.error_email_interval = float(os.environ.get("FASTQ_TEST_MAIL_INTERVAL", "300"))
    app.conf.error_email_timeout = float(os.environ.get("FASTQ_TEST_MAIL_TIMEOUT", "10"))


def _redact(task_name, args, kwargs):
    """Hide passwords from failure e-mails."""
    return args, {k: ("***" if "password" in k else v) for k, v in kwargs.items()}


app.conf.error_email_redact = _redact


@app.task(name="mon.add")
def add(x, y):
    return x + y


@app.task(name="mon.sleep")
def sleep(seconds, value=None):
    time.sleep(seconds)
    return value


@app.task(name="mon.fail", send_error_emails=True)
def fail(message="boom", **kwargs):
    raise ValueError(message)


@app.task(name="mon.fail_quietly", send_error_emails=False)
def fail_quietly():
    raise RuntimeError("no e-mail for this one")


@app.task(name="mon.reject")
def reject():
    raise Reject("not for me")


@app.task(name="mon.parent", bind=True)
def parent(self, n):
    return [add.delay(i, i).id for i in range(n)]


@app.task(name="mon.progress", bind=True)
def progress(self, key, meta=None):
    """Reports progress, then waits (at most 30 s) for the test to say go: a ledger key."""
    from tests.apps.ledger import ledger

    self.update_state(state="PROGRESS", meta={"done": 3, "total": 10} if meta is None else meta)
    deadline = time.time() + 30
    while not ledger().exists(key) and time.time() < deadline:
        time.sleep(0.02)
    return "finished"
