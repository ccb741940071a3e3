"""Checks of the per-call options a message carries (``Message.options``).

The same checks run twice: at the call (``apply_async``), where a bad value is
the caller's mistake and raises at once, and in the worker for every message,
because a message read from Redis may have been written by anything: there a bad
option dead-letters that one message instead of reaching the consumer loop.
"""

from __future__ import annotations

import math
from typing import Any


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
