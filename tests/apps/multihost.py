"""The app of the multi-host tests (tests/test_multihost.py), and their producer.

Workers run it with ``-A tests.apps.multihost:app`` inside network namespaces;
the broker comes from FASTQ_BROKER_URL and the execution ledger from
FASTQ_TEST_LEDGER (a DB of the same Redis host: a host cut off from Redis is
cut off from the ledger too).

As a script it is the producer: ``python -m tests.apps.multihost KEY N`` sends
``multihost.record(KEY, i)`` for i in 0..N-1 and prints ``sent N``.
"""

import sys
import time

from tests.apps.ledger import ledger

from fastq import FastQ

app = FastQ("multihost")


@app.task(name="multihost.record", bind=True, ignore_result=True)
def record(self, key, item, seconds=0.0):
    """Count one run of ``item`` in the ledger hash ``key``, and one run by this
    worker in ``<key>:by``."""
    if seconds:
        time.sleep(seconds)
    pipe = ledger().pipeline(transaction=False)
    pipe.hincrby(key, item, 1)
    pipe.hincrby(f"{key}:by", self.request.hostname, 1)
    pipe.execute()


def produce(key: str, n: int, seconds: float = 0.0) -> int:
    task = app.tasks["multihost.record"]
    sent = 0
    for i in range(0, n, 500):
        sent += len(app.send_many([task.s(key, j, seconds) for j in range(i, min(i + 500, n))]))
    return sent


if __name__ == "__main__":
    key, n = sys.argv[1], int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    print(f"sent {produce(key, n, seconds)}", flush=True)
