"""The execution ledger test tasks write to: a Redis DB outside the broker's keys
(FASTQ_TEST_LEDGER), so tests can count runs without trusting the broker."""

import os
import threading

import redis

_client = None
_lock = threading.Lock()
# a child forked while a parent thread held the lock starts with a free one
os.register_at_fork(after_in_child=lambda: globals().update(_lock=threading.Lock()))


# redis-py 8 gives up on a reply after 5 s; a loaded 2-core CI machine can
# stall longer than that, and a ledger write that times out makes a task fail
# for a reason the test is not about. The tests' own waits are 30 s and up.
PATIENT = {"socket_timeout": 30, "socket_connect_timeout": 30}


def ledger() -> redis.Redis:
    """A client on the ledger DB, one per process (pool children make their own).

    Made under a lock: two pool threads starting their first tasks at once each
    made a client, and the one replaced was garbage-collected while its thread
    was still opening a connection; redis-py's ``__del__`` then disconnects the
    pool's in-use connections from the other thread, and that thread waited out
    its socket timeout (a task stuck 30 s, 1 run in 10)."""
    global _client
    current = _client
    if current is None or current[0] != os.getpid():
        with _lock:
            current = _client
            if current is None or current[0] != os.getpid():
                url = os.environ.get("FASTQ_TEST_LEDGER", "redis://127.0.0.1:6379/10")
                current = _client = (os.getpid(), redis.Redis.from_url(url, **PATIENT))
    return current[1]
