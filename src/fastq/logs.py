"""Log formats for ``fastq worker`` and ``fastq beat`` (``--log-format text|json``).

JSON lines carry the worker's hostname and, for lines about a task, the task's
name, id, state and runtime: from the fields the worker passes in ``extra=``
(its "Task ... succeeded/raised/retry/revoked" lines) or, for a line logged by
the task's own code, from the running task's request.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import json
import logging
import socket

from ._speedups import current_request

#: Record attributes copied into JSON lines when present.
TASK_FIELDS = ("task_name", "task_id", "state", "runtime")

_hostname: str | None = None


def get_task_logger(name: str) -> logging.Logger:
    """Celery's ``get_task_logger``: the logger for a tasks module. What a task logs
    while it runs carries its name and id in JSON logs (``JsonFormatter``), as every
    line logged during a task does."""
    return logging.getLogger(name)


def set_hostname(hostname: str) -> None:
    """The name JSON lines carry (the worker's ``--hostname``)."""
    global _hostname
    _hostname = hostname


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, process, hostname, message,
    task_name, task_id, state, runtime (when known) and exc (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": record.created, "level": record.levelname, "logger": record.name,
               "process": record.processName, "hostname": _hostname or socket.gethostname(),
               "message": record.getMessage()}
        for field in TASK_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                out[field] = value
        if "task_id" not in out:
            req = current_request.get()
            if req is not None:  # a line logged by the task itself
                out["task_name"], out["task_id"] = req.task, req.id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # structured facts of a line (the worker's banner)
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def text_formatter() -> logging.Formatter:
    return logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")


__all__ = ["JsonFormatter", "set_hostname", "text_formatter"]
