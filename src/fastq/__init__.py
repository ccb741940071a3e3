"""fastq: a fast, reliable distributed task queue with Celery's API, on Redis."""

from __future__ import annotations

__version__ = "0.1.0"

from . import exceptions, signals, states
from .app import FastQ
from .canvas import Signature, signature
from .result import AsyncResult, EagerResult, ResultSet
from .schedules import crontab
from .task import Task

__all__ = [
    "AsyncResult",
    "EagerResult",
    "FastQ",
    "ResultSet",
    "Signature",
    "Task",
    "__version__",
    "crontab",
    "exceptions",
    "signals",
    "signature",
    "states",
]
