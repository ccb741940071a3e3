"""Due times of delayed messages (countdowns, ETAs, retries), on Redis's clock.

Hosts' clocks differ. A countdown is a delay, so it is sent as one ("+5000": five
seconds from now) and the script that files the message adds it to the Redis
server's ``TIME``; promote.lua compares with the same clock. A producer whose
clock is a minute off then runs nothing early or late. An ``eta`` is an absolute
time and is sent as one (epoch ms): it is honoured as given, against Redis's clock.

Layer: broker; imports base modules and ``fastq.broker``, never the API, the worker or the apps.
"""

from __future__ import annotations

import math

from .._speedups import pack_command
from ..options import Countdown
from .scripts import SCRIPTS


def due_arg(due: float) -> bytes:
    """The due time as the delay scripts take it: ``+<ms>`` from Redis's now, or epoch ``<ms>``."""
    if isinstance(due, Countdown):
        return b"+%d" % max(0, math.ceil(due.delay * 1000))
    return b"%d" % math.ceil(due * 1000)


def delay_command(delayed_key: str, items: list[tuple[float, bytes]]) -> bytes:
    """delay.lua, packed: file (due, member) pairs in a delayed set."""
    args = [a for due, member in items for a in (due_arg(due), member)]
    return pack_command((b"EVALSHA", SCRIPTS.delay.sha_bytes, 1, delayed_key, *args))
