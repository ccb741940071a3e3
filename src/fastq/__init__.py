"""fastq: a fast, reliable distributed task queue with Celery's API, on Redis."""

from __future__ import annotations

__version__ = "0.1.0"

from . import exceptions, signals, states  # noqa: E402
from .app import FastQ  # noqa: E402
from .canvas import Signature, signature  # noqa: E402
from .result import AsyncResult, EagerResult, ResultSet  # noqa: E402
from .task import Task  # noqa: E402

__all__ = [
    "AsyncResult",
    "EagerResult",
    "FastQ",
    "ResultSet",
    "Signature",
    "Task",
    "__version__",
    "exceptions",
    "signals",
    "signature",
    "states",
]
