"""``app.conf``: the app's settings, with Celery's names where Celery has one.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import importlib
import logging
import types
from collections.abc import Callable
from typing import Any

from .exceptions import ImproperlyConfigured

log = logging.getLogger("fastq.settings")

#: Every setting fastq reads, with its default.
DEFAULTS: dict[str, Any] = {
    # broker and backend
    "broker_url": None,  # FASTQ_BROKER_URL, else redis://127.0.0.1:6379/0
    "result_backend": None,  # FASTQ_RESULT_BACKEND, else the broker URL
    "key_prefix": "fastq:",
    "broker_connection_retries": 3,  # producer retries before BrokerError
    "broker_connection_timeout": 5.0,  # seconds to connect
    "broker_socket_timeout": 10.0,  # seconds to wait for a reply
    # seconds `fastq worker` and `fastq beat` wait for an unreachable Redis at start, then exit 1
    "broker_startup_wait": 30.0,
    # durability: a send returns once this many replicas have the message (WAIT)
    "broker_wait_replicas": 0,
    "broker_wait_timeout": 1.0,  # seconds WAIT may take before the send raises BrokerError
    "broker_retry_on_auth_failure": False,  # a worker keeps retrying refused credentials (else exits)
    # Celery's: seconds a thread's send may wait for its turn on the process's shared
    # connection behind other senders, then BrokerError; None: no bound
    "broker_pool_acquire_timeout": None,
    # scale-out: {"default": 8} spreads a hot queue over 8 shards (see docs/scaling.md)
    "queue_shards": None,
    # messages
    "task_serializer": "msgpack",  # or "json"; never pickle
    # Celery's message protocol version: fastq's messages carry what protocol 2's do
    # (headers, chain, root/parent ids); 1, the Celery 3 format, is not spoken
    "task_protocol": 2,
    "max_message_size": 16 * 1024 * 1024,
    "task_default_queue": "default",
    "task_default_priority": 0,
    "task_routes": None,
    "task_queues": None,  # {"reports": {"fair_tenants": True, "tenant_concurrency": 2, ...}}: docs/fairness.md
    # tasks
    "task_always_eager": False,
    # Celery's: chord.link_error() also links the errback to every header task
    "task_allow_error_cb_on_chord_header": False,
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
    "worker_prefetch": 100,  # the most messages per fetch round trip (a consumer fetches fewer for slow tasks)
    # seconds an unstarted message may wait in a consumer behind a running task before
    # it is handed back to the queue for a free slot (here or on another worker)
    "worker_hold_time": 0.02,
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


#: Celery settings fastq has under another name (or not at all): the name -> what to tell the user.
#: Celery 3's upper-case names map one to one to fastq's lower-case ones.
_CELERY3 = {
    "BROKER_URL": "broker_url", "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_TASK_SERIALIZER": "task_serializer", "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates", "CELERY_IGNORE_RESULT": "task_ignore_result",
    "CELERY_TRACK_STARTED": "task_track_started", "CELERY_ACKS_LATE": "task_acks_late",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit", "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERY_ANNOTATIONS": "task_annotations", "CELERY_ROUTES": "task_routes", "CELERY_QUEUES": "task_queues",
    "CELERY_DEFAULT_QUEUE": "task_default_queue", "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERYD_CONCURRENCY": "worker_concurrency", "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_MAX_MEMORY_PER_CHILD": "worker_max_memory_per_child", "CELERY_SEND_EVENTS": "worker_send_task_events",
    "CELERY_TIMEZONE": "timezone", "CELERYBEAT_SCHEDULE": "beat_schedule",
    "CELERY_SEND_TASK_ERROR_EMAILS": "task_send_error_emails", "ADMINS": "error_email_to",
    "SERVER_EMAIL": "error_email_from",
}
_PREFETCH = "fastq's is worker_prefetch: the most messages per fetch, not a multiplier (fetches adapt to task length)"
_CELERY = {
    "worker_prefetch_multiplier": _PREFETCH,
    "CELERYD_PREFETCH_MULTIPLIER": _PREFETCH,
    "result_serializer": "fastq stores results with task_serializer",
    "accept_content": "fastq accepts msgpack and json only (task_serializer), never pickle",
    "task_create_missing_queues": "fastq creates queues when first used",
    "enable_utc": "fastq always schedules in timezone (default UTC)",
    "broker_transport_options": "use broker_connection_timeout, broker_socket_timeout and the broker URL",
    "task_default_rate_limit": "use task_annotations={'*': {'rate_limit': ...}} or queue_rate_limits",
    "worker_hijack_root_logger": "the fastq CLI sets up logging (-l, --log-format)",
    "task_reject_on_worker_lost": "fastq redelivers a lost worker's messages after worker_lease_timeout",
    "broker_connection_retry_on_startup": "fastq's worker and beat wait broker_startup_wait seconds at start",
    "task_default_exchange": "fastq has no exchanges: use task_default_queue and task_routes",
    "result_backend_transport_options": "use the result_backend URL",
}


def unknown_setting(name: str) -> str:
    """The message for a setting fastq does not have: the closest known name,
    or what a Celery name is called in fastq."""
    if name in _CELERY3:
        return f"{name} is Celery 3's name; fastq's setting is {_CELERY3[name]!r}"
    if name in _CELERY:
        return f"{name!r} is a Celery setting fastq does not have: {_CELERY[name]}"
    close = difflib.get_close_matches(name.lower(), DEFAULTS, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else " (fastq.settings.DEFAULTS lists the settings)"
    return f"no fastq setting named {name!r}{hint}"


_Number = (int, float)


def _number(minimum: float = 0, none: bool = False, integer: bool = False, strict: bool = False) -> Callable:
    kinds = int if integer else _Number

    def check(v: Any) -> str | None:
        if v is None and none:
            return None
        if isinstance(v, bool) or not isinstance(v, kinds) or v < minimum or (strict and v == minimum):
            what = "a whole number" if integer else "a number"
            bound = f"> {minimum}" if strict else f">= {minimum}"
            return f"must be {what} {bound}{' or None' if none else ''}"
        return None

    return check


def _kinds(*allowed: type, what: str) -> Callable:
    def check(v: Any) -> str | None:
        return None if isinstance(v, allowed) else f"must be {what}"

    return check


def _is_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be True or False"


def _routes(v: Any) -> str | None:
    if v is None or isinstance(v, (dict, list, tuple, str)) or callable(v):
        return None
    return "must be a dict, a list of routers, a 'module.router' path or a callable"


def _optional_callable(v: Any) -> str | None:
    return None if v is None or callable(v) else "must be a callable or None"


_OPT_STR = _kinds(str, type(None), what="a string or None")
_STR = _kinds(str, what="a string")
_OPT_DICT = _kinds(dict, type(None), what="a dict or None")

#: The type of each setting, checked when it is set (the parsers that use a
#: setting check its contents: queue names, rates, routes, zones).
_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "broker_url": _OPT_STR, "result_backend": _OPT_STR, "key_prefix": _STR,
    "broker_connection_retries": _number(integer=True), "broker_connection_timeout": _number(strict=True),
    "broker_socket_timeout": _number(strict=True), "broker_wait_replicas": _number(integer=True),
    "broker_startup_wait": _number(), "broker_pool_acquire_timeout": _number(none=True, strict=True),
    "broker_wait_timeout": _number(strict=True), "queue_shards": _OPT_DICT, "task_serializer": _STR,
    "task_protocol": lambda v: None if v == 2 and not isinstance(v, bool) else "must be 2 (fastq has no protocol 1)",
    "max_message_size": _number(1, integer=True), "task_default_queue": _STR,
    "task_default_priority": _number(integer=True), "task_routes": _routes, "task_queues": _OPT_DICT,
    "task_allow_error_cb_on_chord_header": _is_bool,
    "task_always_eager": _is_bool, "task_eager_propagates": _is_bool, "task_ignore_result": _is_bool,
    "task_track_started": _is_bool, "task_acks_late": _is_bool,
    "task_time_limit": _number(none=True, strict=True), "task_soft_time_limit": _number(none=True, strict=True),
    "task_annotations": _OPT_DICT, "rate_limit_scope": _STR, "queue_rate_limits": _OPT_DICT,
    "result_expires": _number(1), "worker_concurrency": _number(1, none=True, integer=True),
    "worker_prefetch": _number(1, integer=True), "worker_hold_time": _number(strict=True),
    "worker_ack_flush_interval": _number(),
    "worker_lease_timeout": _number(strict=True), "worker_max_deliveries": _number(1, integer=True),
    "worker_block_timeout": _number(strict=True), "worker_promote_interval": _number(strict=True),
    "worker_send_task_events": _is_bool, "worker_allow_eviction": _is_bool,
    "broker_retry_on_auth_failure": _is_bool, "worker_max_tasks_per_child": _number(1, none=True, integer=True),
    "worker_max_memory_per_child": _number(1, none=True, integer=True), "worker_revoke_expires": _number(strict=True),
    "worker_metrics_port": _number(none=True, integer=True), "worker_metrics_address": _STR,
    "result_extended": _is_bool, "task_send_error_emails": _is_bool,
    "error_email_to": _kinds(str, list, tuple, type(None), what="an address, a list of addresses or None"),
    "error_email_from": _STR, "error_email_smtp_url": _STR, "error_email_interval": _number(),
    "error_email_timeout": _number(strict=True), "error_email_redact": _optional_callable,
    "timezone": _kinds(str, dt.tzinfo, type(None), what="a zone name like 'Europe/Berlin'"),
    "beat_schedule": _kinds(dict, what="a dict of entry name -> entry"), "beat_lease": _number(strict=True),
}


def check_setting(name: str, value: Any) -> None:
    """Raise ImproperlyConfigured, naming the setting, for an unknown name or a value of the wrong type."""
    if name not in DEFAULTS:
        raise ImproperlyConfigured(unknown_setting(name))
    check = _CHECKS.get(name)  # test_errors checks that every setting has one
    problem = check(value) if check else None
    if problem:
        raise ImproperlyConfigured(f"setting {name} {problem}, not {type(value).__name__} {value!r}")


#: Settings a task reads when declared; changing one later re-applies it to every task.
TASK_DEFAULT_SETTINGS = frozenset({"task_annotations", "task_ignore_result", "task_acks_late", "task_track_started",
                                   "task_time_limit", "task_soft_time_limit"})


class Settings(dict):
    """A dict with attribute access: ``app.conf.result_expires``.

    Setting a name fastq does not have, or a value of the wrong type, raises
    ImproperlyConfigured at once (in ``FastQ(...)``, ``conf.update()``,
    ``conf.x = ...``): such a name in code is a mistake. A config module is
    read more leniently, see ``from_object``.
    """

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        # Deep copies: a default dict (beat_schedule) must not be shared between apps.
        super().__init__({k: copy.deepcopy(v) for k, v in DEFAULTS.items()})
        if values:
            self.update(values)

    def __setitem__(self, name: str, value: Any) -> None:
        check_setting(name, value)
        super().__setitem__(name, value)
        if name in TASK_DEFAULT_SETTINGS:
            hook = self.__dict__.get("on_task_defaults")
            if hook is not None:  # the app's tasks take the new defaults (declared before it changed)
                hook()

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def setdefault(self, name: str, value: Any = None) -> Any:  # type: ignore[override]
        if name not in self:
            self[name] = value
        return self[name]

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
        typo and raises ImproperlyConfigured.

        A module also holds other things (imports, helpers, constants), so an
        unknown lower-case name in it is logged as a warning (naming the closest
        setting) and ignored; a Celery 3 upper-case name (``BROKER_URL``) is an
        error, since ignoring it would silently use another broker. Values of the
        wrong type raise ImproperlyConfigured naming the setting."""
        if isinstance(obj, str):
            obj = _import_object(obj)
        prefix = f"{namespace.upper().rstrip('_')}_" if namespace else None
        for attr in dir(obj):
            value = getattr(obj, attr)
            if prefix is None:
                if attr.startswith("_") or isinstance(value, types.ModuleType):
                    continue
                if attr.isupper() and (attr in _CELERY3 or attr in _CELERY):
                    # ignoring BROKER_URL would send tasks to another broker: refuse it
                    raise ImproperlyConfigured(f"{_where(obj)}: {unknown_setting(attr)}")
                if not attr.islower():
                    continue
                name = attr
                if name not in DEFAULTS:
                    if not callable(value):  # helpers a module defines are not settings
                        log.warning("%s: ignored: %s", _where(obj), unknown_setting(name))
                    continue
            else:
                if not attr.startswith(prefix) or not attr.isupper():
                    continue
                name = attr[len(prefix):].lower()
                if name not in DEFAULTS:
                    raise ImproperlyConfigured(f"{attr}: {unknown_setting(name)} (settings in the {namespace} "
                                               f"namespace are fastq's, listed in fastq.settings.DEFAULTS)")
            if not callable(value) or name in ("task_routes", "error_email_redact"):
                self[name] = value


def _where(obj: Any) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__


def _import_object(path: str) -> Any:
    """``"pkg.module"`` -> the module; ``"pkg.module:attr"`` -> its attribute."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImproperlyConfigured(f"config_from_object({path!r}): module {module_name!r} has no attribute {attr!r}") from None
