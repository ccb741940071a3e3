"""Exceptions raised by fastq.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import traceback


class FastQError(Exception):
    """Base class of fastq's own errors."""


class ImproperlyConfigured(FastQError):
    """A setting, task option or CLI argument is invalid."""


class NotRegistered(FastQError, KeyError):
    """The task name is not registered in this app."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "task not registered"


class TimeoutError(FastQError, TimeoutError):  # noqa: A001 - Celery's name
    """``AsyncResult.get(timeout=...)`` ran out of time."""


class BrokerError(FastQError, ConnectionError):
    """Redis could not be reached (retryable: the message was not sent)."""


class BrokerAuthError(BrokerError):
    """Redis refused fastq's credentials (wrong user or password in the URL, or an
    ACL that denies the user). Not an outage: retrying does not help."""


class BrokerOutOfMemory(BrokerError):
    """Redis refused a write because it is at its ``maxmemory`` (policy
    ``noeviction``): nothing was written; retry once memory is freed."""


class MessageTooLarge(FastQError, ValueError):
    """The encoded message is larger than ``max_message_size``."""


class TaskError(FastQError):
    """A task failed with an exception that cannot be rebuilt here.

    ``exc_type`` and ``exc_module`` name the original exception.
    """

    def __init__(self, message: str = "", exc_type: str = "", exc_module: str = "") -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.exc_module = exc_module

    def __str__(self) -> str:
        name = f"{self.exc_module}.{self.exc_type}" if self.exc_module else self.exc_type
        msg = self.args[0] if self.args else ""
        return f"{name}: {msg}" if name else msg


class Retry(FastQError):
    """Raised by ``Task.retry()``: the task will run again."""

    def __init__(self, message: str = "", exc: BaseException | None = None, when: float | None = None,
                 args: list | None = None, kwargs: dict | None = None) -> None:
        super().__init__(message)
        self.exc = exc
        self.when = when
        self.retry_args = args  #: the next try's arguments (None: this try's)
        self.retry_kwargs = kwargs


class MaxRetriesExceededError(FastQError):
    """``retry()`` was called after the last allowed try, without ``exc``."""


class Ignore(FastQError):
    """Raised by a task to end without a state: the worker acks its message and
    stores nothing, and its callbacks, errbacks and chain do not run (Celery's ``Ignore``)."""


class Replaced(Ignore):
    """Raised by ``Task.replace(sig)`` in a worker: the task ends and ``sig`` takes its
    place (its id, callbacks, errbacks, chain and chord), sent with the task's ack."""

    def __init__(self, sig) -> None:
        super().__init__("replaced by a new task")
        self.sig = sig


class Reject(FastQError):
    """Raised by a task to send its message to the dead-letter queue."""

    def __init__(self, reason: str = "", requeue: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.requeue = requeue


class SoftTimeLimitExceeded(FastQError):
    """Raised inside a task when its soft time limit passes."""


class TimeLimitExceeded(FastQError):
    """The task ran past its hard time limit and was stopped."""


class WorkerLostError(FastQError):
    """The process running the task died."""


class ChordError(FastQError):
    """A chord's header task failed: what its body's new-style errbacks get
    (Celery's name and message: ``Dependency <id> raised <error>``)."""


class TaskRevokedError(FastQError):
    """The task was revoked (or expired) and did not run."""


class ValidationError(FastQError, TypeError, ValueError):
    """The arguments of a typed task (``@app.task(typed=True)``) do not match
    its annotations: raised when it is sent, or stored as the FAILURE of a
    message that reached a worker with arguments it cannot convert.

    ``task`` names the task and ``field`` the argument (None when the call
    itself does not fit the signature, e.g. a missing argument)."""

    def __init__(self, message: str = "", task: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.task = task
        self.field = field


def format_exception(exc: BaseException) -> str:
    """The traceback of ``exc`` as text (what a failed task's result and the logs carry)."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
