"""The execution ledger test tasks write to: a Redis DB outside the broker's keys
(FASTQ_TEST_LEDGER), so tests can count runs without trusting the broker."""

import os

import redis

_client = None


# redis-py 8 gives up on a reply after 5 s; a loaded 2-core CI machine can
# stall longer than that, and a ledger write that times out makes a task fail
# for a reason the test is not about. The tests' own waits are 30 s and up.
PATIENT = {"socket_timeout": 30, "socket_connect_timeout": 30}


def ledger() -> redis.Redis:
    """A client on the ledger DB, one per process (pool children make their own)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        url = os.environ.get("FASTQ_TEST_LEDGER", "redis://127.0.0.1:6379/10")
        _client = (os.getpid(), redis.Redis.from_url(url, **PATIENT))
    return _client[1]
