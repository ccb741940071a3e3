"""``app.conf``: the app's settings, with Celery's names where Celery has one."""

from __future__ import annotations

import copy
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
    # durability: a send returns once this many replicas have the message (WAIT)
    "broker_wait_replicas": 0,
    "broker_wait_timeout": 1.0,  # seconds WAIT may take before the send raises BrokerError
    "broker_retry_on_auth_failure": False,  # a worker keeps retrying refused credentials (else exits)
    # scale-out: {"default": 8} spreads a hot queue over 8 shards (see docs/scaling.md)
    "queue_shards": None,
    # messages
    "task_serializer": "msgpack",  # or "json"; never pickle
    "max_message_size": 16 * 1024 * 1024,
    "task_default_queue": "default",
    "task_default_priority": 0,
    "task_routes": None,
    "task_queues": None,  # {"reports": {"fair_groups": True, "group_concurrency": 2, ...}}: docs/fairness.md
    # tasks
    "task_always_eager": False,
    "task_eager_propagates": False,
    "task_ignore_result": False,
    "task_track_started": False,
    "task_acks_late": True,  # at-least-once: ack after the task finished
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_annotations": None,
    "rate_limit_scope": "cluster",  # or "worker": each worker process limits on its own (Celery's way)
    "queue_rate_limits": None,  # {"mail": "50/s"}
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
    "worker_allow_eviction": False,  # start even if Redis may evict keys (maxmemory-policy allkeys-*)
    "worker_max_tasks_per_child": None,  # replace a pool process after this many tasks
    "worker_max_memory_per_child": None,  # KiB: replace a pool process above this resident memory
    "worker_revoke_expires": 10800,  # seconds a revoke is remembered (Redis and workers)
    "worker_metrics_port": None,  # `fastq worker --metrics-port`: serve Prometheus metrics
    "worker_metrics_address": "127.0.0.1",
    "result_extended": False,  # also store args, kwargs, queue, parent/root id with the result
    # monitoring: e-mail on task failure (fastq.mail)
    "task_send_error_emails": False,  # per task: @app.task(send_error_emails=True)
    "error_email_to": None,  # ["ops@example.com"]
    "error_email_from": "fastq@localhost",
    "error_email_smtp_url": "smtp://127.0.0.1:25",  # smtp://, smtps://, smtp+starttls://; user:password@ allowed
    "error_email_interval": 300,  # seconds: at most one e-mail per task name per interval
    "error_email_timeout": 10.0,  # seconds for the SMTP conversation
    "error_email_redact": None,  # callable(task_name, args, kwargs) -> (args, kwargs)
    # scheduling
    "timezone": "UTC",
    "beat_schedule": {},
    "beat_lease": 10.0,  # seconds: a standby beat takes over this long after the leader stops
}


class Settings(dict):
    """A dict with attribute access: ``app.conf.result_expires``."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        # Deep copies: a default dict (beat_schedule) must not be shared between apps.
        super().__init__({k: copy.deepcopy(v) for k, v in DEFAULTS.items()})
        if values:
            self.update(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no setting named {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def from_object(self, obj: Any, namespace: str | None = None) -> None:
        """Load settings from an object, a module path (``"proj.settings"``) or a
        ``"module:attribute"`` path (``"django.conf:settings"``), as
        ``app.config_from_object`` does.

        Without a namespace the lower-case public attributes are settings. With
        one (``namespace="FASTQ"``) only upper-case ``FASTQ_*`` attributes are, the
        prefix dropped and the rest lower-cased (``FASTQ_BROKER_URL`` ->
        ``broker_url``): the namespace is fastq's, so an unknown name there is a
        typo and raises ImproperlyConfigured."""
        if isinstance(obj, str):
            obj = _import_object(obj)
        prefix = f"{namespace.upper().rstrip('_')}_" if namespace else None
        for attr in dir(obj):
            if prefix is None:
                if not attr.islower() or attr.startswith("_"):
                    continue
                name = attr
            else:
                if not attr.startswith(prefix) or not attr.isupper():
                    continue
                name = attr[len(prefix):].lower()
                if name not in DEFAULTS:
                    from .exceptions import ImproperlyConfigured

                    raise ImproperlyConfigured(f"{attr}: no fastq setting named {name!r} (settings in the "
                                               f"{namespace} namespace are FASTQ's, listed in fastq.settings.DEFAULTS)")
            value = getattr(obj, attr)
            if not callable(value) or name in ("task_routes", "error_email_redact"):
                self[name] = value


def _import_object(path: str) -> Any:
    """``"pkg.module"`` -> the module; ``"pkg.module:attr"`` -> its attribute."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        from .exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"config_from_object({path!r}): module {module_name!r} has no attribute {attr!r}") from None
