"""``app.conf``: the app's settings, with Celery's names where Celery has one."""

from __future__ import annotations

import importlib
from typing import Any

#: Every setting fastq reads, with its default.
DEFAULTS: dict[str, Any] = {
    # broker and backend
    "broker_url": None,  # FASTQ_BROKER_URL, else redis://127.0.0.1:6379/0
    "result_backend": None,  # FASTQ_RESULT_BACKEND, else the broker URL
    "key_prefix": "fastq:",
    "broker_connection_retries": 3,  # producer retries before BrokerError
    "broker_connection_timeout": 5.0,  # seconds to connect
    "broker_socket_timeout": 10.0,  # seconds to wait for a reply
    # messages
    "task_serializer": "msgpack",  # or "json"; never pickle
    "max_message_size": 16 * 1024 * 1024,
    "task_default_queue": "default",
    "task_default_priority": 0,
    "task_routes": None,
    # tasks
    "task_always_eager": False,
    "task_eager_propagates": False,
    "task_ignore_result": False,
    "task_track_started": False,
    "task_acks_late": True,  # at-least-once: ack after the task finished
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_annotations": None,
    "result_expires": 86400,
    # worker
    "worker_concurrency": None,  # CPU count
    "worker_prefetch": 100,  # messages per fetch round trip
    "worker_ack_flush_interval": 0.01,  # seconds: flush acks mid-batch after this
    "worker_lease_timeout": 30.0,  # seconds: a silent worker's messages are recovered after this
    "worker_max_deliveries": 5,  # deliveries without finishing before dead-lettering
    "worker_block_timeout": 1.0,  # seconds an idle consumer waits per blocking read
    "worker_promote_interval": 0.02,  # seconds between delayed-set checks
    "worker_send_task_events": True,
    # scheduling
    "timezone": "UTC",
    "beat_schedule": {},
}


class Settings(dict):
    """A dict with attribute access: ``app.conf.result_expires``."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        super().__init__(DEFAULTS)
        if values:
            self.update(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no setting named {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def from_object(self, obj: Any) -> None:
        """Load the lower-case public attributes of an object or a module path
        (``"proj.settings"``), as ``app.config_from_object`` does."""
        if isinstance(obj, str):
            obj = importlib.import_module(obj)
        for name in dir(obj):
            if name.islower() and not name.startswith("_"):
                value = getattr(obj, name)
                if not callable(value) or name in ("task_routes",):
                    self[name] = value
