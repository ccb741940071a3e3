"""fastq: a fast, reliable distributed task queue with Celery's API, on Redis.

Layer: api (the producer side); imports base and broker, never ``fastq.worker`` or the apps.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import exceptions, signals, states
from .app import FastQ, current_app, shared_task
from .canvas import Signature, chain, chord, chunks, group, signature
from .logs import get_task_logger
from .result import AsyncResult, EagerResult, GroupResult, ResultSet
from .schedules import crontab
from .stamping import StampingVisitor
from .task import Task

__all__ = [
    "AsyncResult",
    "EagerResult",
    "FastQ",
    "GroupResult",
    "ResultSet",
    "Signature",
    "StampingVisitor",
    "Task",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "crontab",
    "current_app",
    "exceptions",
    "get_task_logger",
    "group",
    "signals",
    "shared_task",
    "signature",
    "states",
]
