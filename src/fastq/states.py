"""Task states, with Celery's names and meanings.

Layer: base; imports only other base modules.
"""

PENDING = "PENDING"  #: unknown id, or not started yet
RECEIVED = "RECEIVED"  #: taken by a worker
STARTED = "STARTED"  #: running (recorded only with ``task_track_started``)
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
RETRY = "RETRY"  #: failed, another try is scheduled
REVOKED = "REVOKED"

#: States after which a task never changes again.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
#: Ready states that carry an exception.
EXCEPTION_STATES = frozenset({FAILURE, RETRY, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY})
ALL_STATES = READY_STATES | UNREADY_STATES
