"""The execution ledger test tasks write to: a Redis DB outside the broker's keys
(FASTQ_TEST_LEDGER), so tests can count runs without trusting the broker."""

import os

import redis

_client = None


def ledger() -> redis.Redis:
    """A client on the ledger DB, one per process (pool children make their own)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(os.environ.get("FASTQ_TEST_LEDGER", "redis://127.0.0.1:6379/10")))
    return _client[1]
