"""An app whose worker reports failures to Sentry (fastq.contrib.sentry), through a
transport that appends each event, as JSON, to the ledger list ``sentry`` instead
of sending it anywhere. FASTQ_TEST_SENTRY_PII=1 sets send_default_pii."""

import json
import os

import sentry_sdk
from sentry_sdk.transport import Transport
from tests.apps.ledger import ledger

from fastq import FastQ
from fastq.contrib.sentry import FastQIntegration
from fastq.exceptions import Reject


class LedgerTransport(Transport):
    def capture_envelope(self, envelope):
        event = envelope.get_event()
        if event is not None:
            ledger().rpush("sentry", json.dumps(event, default=str))


sentry_sdk.init(dsn="https://public@sentry.invalid/1", transport=LedgerTransport,
                send_default_pii=os.environ.get("FASTQ_TEST_SENTRY_PII") == "1",
                integrations=[FastQIntegration()], default_integrations=False)

app = FastQ("sentry")


class PaymentDeclined(Exception):
    pass


@app.task(name="sentry.charge")
def charge(card, amount=0):
    raise PaymentDeclined(f"card declined for {amount}")


@app.task(name="sentry.ok")
def ok():
    return "fine"


@app.task(name="sentry.flaky", bind=True, max_retries=1, default_retry_delay=0)
def flaky(self):
    if self.request.retries == 0:
        raise self.retry(exc=ValueError("first try fails"))
    return "second try"


@app.task(name="sentry.reject")
def reject():
    raise Reject("not for me")
