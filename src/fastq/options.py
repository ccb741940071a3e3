"""Checks of the per-call options a message carries (``Message.options``).

The same checks run twice: at the call (``apply_async``), where a bad value is
the caller's mistake and raises at once, and in the worker for every message,
because a message read from Redis may have been written by anything: there a bad
option dead-letters that one message instead of reaching the consumer loop.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable
from typing import Any

from .exceptions import ImproperlyConfigured


def _seconds(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: option -> (check, what it must be)
_CHECKS = {
    "time_limit": (_seconds, "a number of seconds >= 0"),
    "soft_time_limit": (_seconds, "a number of seconds >= 0"),
    "ignore_result": (lambda v: isinstance(v, (bool, int)), "True or False"),
    "max_retries": (lambda v: v is None or (_int(v) and v >= 0), "None or an integer >= 0"),
    "group_id": (lambda v: isinstance(v, str), "a string"),
    "group_index": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "reply_to": (lambda v: isinstance(v, str), "a string"),
}
# Workflow options (link, chain, chord, ...) are built by fastq's canvas, not typed
# by callers; a malformed one fails its message in the worker's per-message guard.


def option_error(name: str, value: Any) -> str | None:
    """What is wrong with one option's value, or None when it is fine (or not one we check)."""
    check = _CHECKS.get(name)
    if check is None or value is None or check[0](value):
        return None
    return f"{name} must be {check[1]}, not {value!r:.100}"


def options_error(options: Any) -> str | None:
    """What is wrong with a message's options (None, or a dict of checked values)."""
    if options is None:
        return None
    if not isinstance(options, dict):
        return f"options must be a dict, not {type(options).__name__}"
    for name, value in options.items():
        err = option_error(name, value)
        if err is not None:
            return err
    return None


def check_option(name: str, value: Any) -> None:
    """Raise a one-line TypeError/ValueError naming the option when ``value`` is bad."""
    err = option_error(name, value)
    if err is not None:
        bad_type = name in ("ignore_result", "group_id", "reply_to") or not isinstance(
            value, (int, float)) or isinstance(value, bool)
        raise (TypeError if bad_type else ValueError)(err)


# --- option names: one list per kind --------------------------------------------------------

#: ``@app.task(...)`` options and their defaults.
TASK_OPTIONS: dict[str, Any] = {
    "name": None,
    "bind": False,
    "queue": None,
    "priority": None,
    "ignore_result": None,
    "acks_late": None,
    "track_started": None,
    "max_retries": 3,
    "default_retry_delay": 180,
    "autoretry_for": (),
    "dont_autoretry_for": (),
    "retry_backoff": False,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "rate_limit": None,
    "rate_limit_scope": None,
    "time_limit": None,
    "soft_time_limit": None,
    "expires": None,
    "serializer": None,
    "send_error_emails": None,
    "typed": False,
    "typing": True,
    "pydantic": False,
    "unique": False,
    "unique_for": None,
    "base": None,
}

#: apply_async options the producer acts on (routing, timing, identity).
SEND_OPTIONS = ("task_id", "eta", "countdown", "expires", "priority", "queue", "parent_id", "root_id", "retries",
                 "headers", "serializer", "tenant_key", "group_key")

#: apply_async options Celery users pass for monitoring (argsrepr/kwargsrepr: how to show
#: the arguments; app_id: the sending app), carried in the message's headers.
REPR_OPTIONS = ("argsrepr", "kwargsrepr", "app_id")

#: apply_async options the worker acts on; carried in ``Message.options``.
WORKER_OPTIONS = (
    "ignore_result", "link", "link_error", "time_limit", "soft_time_limit",
    "group_id", "group_index", "chord", "max_retries", "reply_to", "chain",
)  # fmt: skip


#: apply_async options of unique and debounced sends (fastq.unique): a single send only.
SPECIAL_OPTIONS = frozenset({"unique_key", "unique_for", "debounce_key"})


# --- rates and times --------------------------------------------------------------------------

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_PER = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(rate: Any, where: str) -> float | None:
    """``"100/s"``, ``"10/m"``, ``"5/h"`` or a number (per second) -> tokens per second."""
    if rate is None:
        return None
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        if rate <= 0:
            raise ImproperlyConfigured(f"{where}: rate_limit must be positive, not {rate!r}")
        return float(rate)
    m = _RATE.match(rate) if isinstance(rate, str) else None
    if not m or float(m.group(1)) <= 0:
        raise ImproperlyConfigured(f"{where}: rate_limit {rate!r} is not like '100/s', '10/m' or '5/h'")
    return float(m.group(1)) / _PER[m.group(2)]


class Countdown(float):
    """A due time given as a delay. As a float it is the due time on this host's
    clock (what messages record as ``eta``); ``delay`` is the delay in seconds,
    which is what goes to Redis."""

    delay: float

    def __new__(cls, now: float, delay: float) -> Countdown:
        self = super().__new__(cls, now + delay)
        self.delay = delay
        return self


def due_time(eta, countdown, t: float) -> float | None:
    if countdown is not None:
        if not isinstance(countdown, (int, float)) or isinstance(countdown, bool):
            raise TypeError(f"countdown must be a number of seconds, not {type(countdown).__name__}")
        if not math.isfinite(countdown):
            raise ValueError(f"countdown must be a finite number of seconds, not {countdown!r}")
        # A delay: Redis adds it to its own clock (broker/due.py), whatever this host's says.
        return Countdown(t, countdown) if countdown > 0 else None
    if eta is None:
        return None
    if isinstance(eta, dt.datetime):
        if eta.tzinfo is None:  # naive datetimes are UTC
            eta = eta.replace(tzinfo=dt.timezone.utc)
        # An absolute time, compared with Redis's clock when promoted: one that this
        # host thinks is past may not be on Redis's clock (a past one runs at once).
        return eta.timestamp()
    raise TypeError(f"eta must be a datetime, not {type(eta).__name__}")


def expiry_time(expires, t: float) -> float:
    if isinstance(expires, (int, float)):
        return t + expires
    if isinstance(expires, dt.timedelta):
        return t + expires.total_seconds()
    if isinstance(expires, dt.datetime):
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.timezone.utc)
        return expires.timestamp()
    raise TypeError(f"expires must be seconds, a timedelta or a datetime, not {type(expires).__name__}")


def unknown_options(names: Iterable[str]) -> TypeError:
    """The error for apply_async options that cannot be used where they were given."""
    special = sorted(SPECIAL_OPTIONS.intersection(names))
    if special:
        return TypeError(f"{', '.join(special)}: only for a single send (delay, apply_async, send_task, "
                         f"send_many), not inside a workflow (chain, group, chord, callbacks) or a schedule")
    return TypeError(f"unknown apply_async option(s): {', '.join(sorted(names))}")
