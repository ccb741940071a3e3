"""Schedules for periodic tasks: ``schedule`` (every N seconds) and ``crontab``.

Both answer two questions in epoch milliseconds, which is all beat needs:

- ``next_after_ms(after_ms, tz)``: the first run strictly after ``after_ms``;
- ``latest_due_ms(last_ms, now_ms, tz)``: the latest run in ``(last_ms, now_ms]``,
  or None. Beat sends only that one, so runs missed during downtime are sent
  once, not once per missed interval.

Crontab fields are matched against the wall clock of a time zone
(``app.conf.timezone``, default UTC). Daylight-saving rules, so that a change
neither skips nor doubles a run (close to Vixie/Debian cron, which decides by
whether the minute or hour field *starts with* ``*``; docs/scheduling.md lists
where the two differ):

- An entry for fixed hours (``hour`` is not ``*``) runs once per matching wall
  time, *the first moment the clock shows that time or later*: in the repeated
  hour of a fall-back change it runs on the first pass only; a time inside the
  skipped hour of a spring-forward change runs at the change (``02:30`` runs at
  ``03:00``).
- An every-hour entry (``hour="*"``: ``minute="*/15"``, ``minute=30``) keeps its
  rhythm in real time: it runs on both passes of a repeated hour, and wall
  times that do not exist are simply not there (``01:30 -> 03:30`` is one hour).

``day_of_month`` and ``day_of_week`` must *both* match, as in Celery (classic
cron runs when either does); ``day_of_month="1-7", day_of_week="mon"`` is the
first Monday of the month.

Layer: base; imports only other base modules.
"""

from __future__ import annotations

import calendar
import datetime as dt
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["BaseSchedule", "crontab", "schedule", "to_schedule", "zone"]

UTC = dt.timezone.utc
_MINUTE_MS = 60_000
#: Larger than any daylight-saving or zone change in the tz database (2 h).
_MAX_SHIFT = dt.timedelta(hours=3)


def zone(name: str | dt.tzinfo | None) -> dt.tzinfo:
    """A tzinfo for a zone name (``"Europe/Berlin"``), a tzinfo, or None (UTC)."""
    if name is None:
        return UTC
    if isinstance(name, dt.tzinfo):
        return name
    if not isinstance(name, str):
        raise ValueError(f"timezone must be a zone name like 'Europe/Berlin', not {name!r}")
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}: {exc}") from None


class BaseSchedule:
    """What beat needs from a schedule (all times in epoch milliseconds)."""

    def next_after_ms(self, after_ms: int, tz: dt.tzinfo = UTC) -> int:
        """The first run strictly after ``after_ms``."""
        raise NotImplementedError

    def latest_due_ms(self, last_ms: int, now_ms: int, tz: dt.tzinfo = UTC) -> int | None:
        """The latest run in ``(last_ms, now_ms]``, or None when none is due."""
        raise NotImplementedError

    def next_run(self, after: dt.datetime, tz: str | dt.tzinfo | None = None) -> dt.datetime:
        """The first run strictly after ``after`` (naive means UTC), as an aware
        datetime in ``tz`` (default: the schedule's own zone, else UTC)."""
        zi = zone(tz if tz is not None else getattr(self, "tz", None))
        if after.tzinfo is None:
            after = after.replace(tzinfo=UTC)
        ms = self.next_after_ms(_to_ms(after), zi)
        return dt.datetime.fromtimestamp(ms / 1000, zi)


class schedule(BaseSchedule):  # noqa: N801 - Celery's name
    """Every ``run_every`` (seconds or a timedelta), on a grid that starts at the
    entry's first sighting, so runs do not drift and every beat agrees on them."""

    def __init__(self, run_every: float | dt.timedelta) -> None:
        if isinstance(run_every, dt.timedelta):
            seconds = run_every.total_seconds()
        elif isinstance(run_every, (int, float)) and not isinstance(run_every, bool):
            seconds = float(run_every)
        else:
            raise ValueError(f"an interval must be seconds or a timedelta, not {run_every!r}")
        if not seconds >= 0.001:  # also rejects NaN
            raise ValueError(f"an interval must be at least 1 ms, not {seconds!r} s")
        self.seconds = seconds
        self.interval_ms = round(seconds * 1000)

    @property
    def run_every(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.seconds)

    def next_after_ms(self, after_ms: int, tz: dt.tzinfo = UTC) -> int:
        return after_ms + self.interval_ms

    def latest_due_ms(self, last_ms: int, now_ms: int, tz: dt.tzinfo = UTC) -> int | None:
        if now_ms < last_ms + self.interval_ms:
            return None
        return last_ms + (now_ms - last_ms) // self.interval_ms * self.interval_ms

    def __eq__(self, other: object) -> bool:
        return isinstance(other, schedule) and other.interval_ms == self.interval_ms

    def __hash__(self) -> int:
        return hash(("schedule", self.interval_ms))

    def __repr__(self) -> str:
        return f"<schedule: every {self.seconds:g}s>"


# --- crontab ---------------------------------------------------------------------------

_DAY_NAMES = {name.lower(): i for i, name in enumerate(
    ["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_DAY_NAMES.update({name.lower(): i for i, name in enumerate(
    ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"])})
_MONTH_NAMES = {calendar.month_abbr[i].lower(): i for i in range(1, 13)}
_MONTH_NAMES.update({calendar.month_name[i].lower(): i for i in range(1, 13)})

#: field -> (low, high, names). day_of_week also takes 7 for Sunday (see _parse_part).
_FIELDS = {
    "minute": (0, 59, None),
    "hour": (0, 23, None),
    "day_of_week": (0, 6, _DAY_NAMES),
    "day_of_month": (1, 31, None),
    "month_of_year": (1, 12, _MONTH_NAMES),
}


def _value(field: str, text: str, part: str) -> int:
    """One number or name of a field; ``part`` (the list item it came from) is
    quoted in errors, so ``-5`` or ``1-`` do not produce empty quotes."""
    low, high, names = _FIELDS[field]
    if field == "day_of_week":
        high = 7
    t = text.strip().lower()
    if names and t in names:
        return names[t]
    if not t.isdigit():
        what = ("a day name or " if field == "day_of_week" else "a month name or " if names else "") + \
            f"a whole number {low}-{high}"
        where = f"{text!r} in {part!r}" if text.strip() and text != part else repr(part)
        raise ValueError(f"crontab {field}: {where} is not {what}")
    n = int(t)
    # 7 stays 7 (cron's other Sunday) until the range is built: "7-7" and "7/2" start on Sunday
    if not low <= n <= high:
        raise ValueError(f"crontab {field}: {n} is out of range {low}-{high}")
    return n


def _parse_field(field: str, spec: Any) -> frozenset[int]:
    """The set of values a field matches: ``*``, ``5``, ``1-5``, ``*/15``,
    ``1-30/5``, ``5/15``, names (``mon-fri``, ``jan``), lists of these, or ints."""
    low, high, _ = _FIELDS[field]
    if isinstance(spec, bool):
        raise ValueError(f"crontab {field}: {spec!r} is not a valid value")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"crontab {field}: {spec} is out of range {low}-{high}")
        return frozenset(_parse_part(field, str(spec)))
    if isinstance(spec, str):
        parts = spec.replace(" ", "").split(",")
        if not spec.strip() or any(not p for p in parts):
            raise ValueError(f"crontab {field}: {spec!r} is empty or has an empty list item")
        out: set[int] = set()
        for part in parts:
            out |= _parse_part(field, part)
        return frozenset(out)
    if isinstance(spec, Iterable):
        out = set()
        for item in spec:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise ValueError(f"crontab {field}: {item!r} is not a valid value")
            out |= _parse_field(field, item)
        if not out:
            raise ValueError(f"crontab {field}: empty")
        return frozenset(out)
    raise ValueError(f"crontab {field}: {spec!r} is not a valid value")


def _parse_part(field: str, part: str) -> set[int]:
    low, high, _ = _FIELDS[field]
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) < 1:
            raise ValueError(f"crontab {field}: step {step_text!r} in {part!r} is not a positive number")
        step = int(step_text)
    if base == "*":
        start, end = low, high
    elif "-" in base:
        a, _, b = base.partition("-")
        start, end = _value(field, a, part), _value(field, b, part)
        if end < start:
            if field != "day_of_week":
                raise ValueError(f"crontab {field}: range {part!r} runs backwards")
            end += 7  # "fri-mon" wraps around the week
    else:
        start = _value(field, base, part)
        # "5/15" means from 5 to the end, every 15 (as in Vixie cron); "7/2" is Sunday alone
        end = max(start, high) if slash else start
    values = range(start, end + 1, step)
    if field == "day_of_week":
        return {v % 7 for v in values}  # 7 (and 8.. of a wrapped range) back to 0..6
    return set(values)


def _describe(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, int):
        return str(spec)
    return ",".join(str(v) for v in spec)


class crontab(BaseSchedule):  # noqa: N801 - Celery's name
    """Run at the wall-clock times that match every field, Celery's way:
    ``crontab(minute=30, hour=7, day_of_week="mon-fri")``.

    Each field takes an int, a string in cron syntax (``"*"``, ``"*/15"``,
    ``"1-5"``, ``"0,30"``, ``"mon-fri"``, ``"jan-mar"``) or an iterable of
    ints. ``tz`` (optional, not in Celery) overrides ``app.conf.timezone``.
    Invalid fields raise ValueError here, naming the field.
    """

    def __init__(self, minute: Any = "*", hour: Any = "*", day_of_week: Any = "*", day_of_month: Any = "*",
                 month_of_year: Any = "*", tz: str | dt.tzinfo | None = None) -> None:
        self._specs = {"minute": minute, "hour": hour, "day_of_week": day_of_week,
                       "day_of_month": day_of_month, "month_of_year": month_of_year}
        self.minute = _parse_field("minute", minute)
        self.hour = _parse_field("hour", hour)
        self.day_of_week = _parse_field("day_of_week", day_of_week)
        self.day_of_month = _parse_field("day_of_month", day_of_month)
        self.month_of_year = _parse_field("month_of_year", month_of_year)
        self.tz = tz
        if tz is not None:
            zone(tz)  # fail now on an unknown zone
        self._minutes = sorted(self.minute)
        self._hours = sorted(self.hour)
        self._months = sorted(self.month_of_year)
        #: Every hour matches: the entry keeps a real-time rhythm across DST changes.
        self.hourly = len(self.hour) == 24
        # A day-of-month no chosen month has (31 in February) never matches.
        if not any(d <= (29 if m == 2 else calendar.monthrange(2001, m)[1])
                   for m in self.month_of_year for d in self.day_of_month):
            raise ValueError(f"crontab never matches: no chosen month has day {_describe(day_of_month)}")

    @classmethod
    def from_string(cls, expr: str, tz: str | dt.tzinfo | None = None) -> crontab:
        """``crontab.from_string("30 7 * * mon-fri")``: the five classic fields
        (minute hour day-of-month month day-of-week)."""
        fields = expr.split() if isinstance(expr, str) else []
        if len(fields) != 5:
            raise ValueError(f"a cron expression has 5 fields (minute hour day month weekday), not {expr!r}")
        m, h, dom, mon, dow = fields
        try:
            return cls(minute=m, hour=h, day_of_week=dow, day_of_month=dom, month_of_year=mon, tz=tz)
        except ValueError as exc:
            raise ValueError(f"{exc} (in cron expression {expr!r})") from None

    # --- matching wall times -------------------------------------------------------------

    def _day_ok(self, y: int, m: int, d: int) -> bool:
        # Python: Monday=0; cron: Sunday=0
        return d in self.day_of_month and (dt.date(y, m, d).weekday() + 1) % 7 in self.day_of_week

    def _next_wall(self, w: dt.datetime) -> dt.datetime:
        """The first matching naive wall time at or after ``w`` (whole minutes)."""
        y, mo, d, h, mi = w.year, w.month, w.day, w.hour, w.minute
        limit = y + 500  # Feb 29 on a given weekday recurs within 40 years
        while y <= limit:
            if mo not in self.month_of_year:
                i = bisect_left(self._months, mo)
                if i == len(self._months):
                    y, mo = y + 1, self._months[0]
                else:
                    mo = self._months[i]
                d, h, mi = 1, 0, 0
                continue
            if d > calendar.monthrange(y, mo)[1]:
                y, mo = (y + 1, 1) if mo == 12 else (y, mo + 1)
                d, h, mi = 1, 0, 0
                continue
            if not self._day_ok(y, mo, d):
                d, h, mi = d + 1, 0, 0
                continue
            if h not in self.hour:
                i = bisect_left(self._hours, h)
                if i == len(self._hours):
                    d, h, mi = d + 1, 0, 0
                    continue
                h, mi = self._hours[i], 0
            i = bisect_left(self._minutes, mi)
            if i == len(self._minutes):
                h, mi = h + 1, 0
                if h == 24:
                    d, h = d + 1, 0
                continue
            return dt.datetime(y, mo, d, h, self._minutes[i])
        raise ValueError(f"{self!r} has no run within 500 years of {w}")  # pragma: no cover

    # --- wall times -> instants ----------------------------------------------------------

    def _runs_of(self, w: dt.datetime, tz: dt.tzinfo) -> tuple[int, list[int]]:
        """(first instant the clock shows ``w`` or later, the instants of ``w``'s runs)."""
        a = _to_ms(w.replace(tzinfo=tz, fold=0))
        b = _to_ms(w.replace(tzinfo=tz, fold=1))
        if a == b:  # the usual case: one instant
            return a, [a]
        lo, hi = min(a, b), max(a, b)
        if _wall(lo, tz) == w:  # repeated (fall back): the clock shows w twice
            return lo, ([lo, hi] if self.hourly else [lo])
        # skipped (spring forward): find the change, the first instant past w
        while hi - lo > 1000:
            mid = (lo + hi) // 2 // 1000 * 1000
            if mid <= lo:
                break
            if _wall(mid, tz) > w:
                hi = mid
            else:
                lo = mid
        return hi, ([] if self.hourly else [hi])

    def next_after_ms(self, after_ms: int, tz: dt.tzinfo = UTC) -> int:
        tz = zone(self.tz) if self.tz is not None else tz
        local = dt.datetime.fromtimestamp(after_ms / 1000, tz)
        w = local.replace(tzinfo=None, second=0, microsecond=0, fold=0)
        if self.hourly:
            # a wall time before ours may come round again after a fall-back change
            shift = local.utcoffset() - dt.datetime.fromtimestamp(after_ms / 1000 + 10800, tz).utcoffset()
            if shift > dt.timedelta(0):
                w -= min(shift, _MAX_SHIFT)
        best = None
        for _ in range(100_000):
            w = self._next_wall(w)
            first, runs = self._runs_of(w, tz)
            # first-instants grow with w, so nothing later can beat `best`
            if best is not None and first >= best:
                return best
            for t in runs:
                if t > after_ms and (best is None or t < best):
                    best = t
            w += dt.timedelta(minutes=1)
        raise ValueError(f"{self!r}: no run found after {after_ms}")  # pragma: no cover

    def latest_due_ms(self, last_ms: int, now_ms: int, tz: dt.tzinfo = UTC) -> int | None:
        d = self.next_after_ms(last_ms, tz)
        if d > now_ms:
            return None
        # Start the walk close to now, so a long downtime costs few steps.
        for back_ms in (3_600_000, 86_400_000, 32 * 86_400_000, 367 * 86_400_000):
            start = now_ms - back_ms
            if start <= last_ms:
                break
            c = self.next_after_ms(start, tz)
            if c <= now_ms:
                d = c
                break
        while True:
            n = self.next_after_ms(d, tz)
            if n > now_ms:
                return d
            d = n

    # --- identity ----------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and (
            self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year, self.tz
        ) == (other.minute, other.hour, other.day_of_week, other.day_of_month, other.month_of_year, other.tz)

    def __hash__(self) -> int:
        return hash((self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year))

    def __repr__(self) -> str:
        s = self._specs
        text = " ".join(_describe(s[f]) for f in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week"))
        return f"<crontab: {text} (m h dom mon dow){f' {self.tz}' if self.tz else ''}>"


def to_schedule(value: Any) -> BaseSchedule:
    """A schedule from what ``beat_schedule`` accepts: seconds, a timedelta, a
    ``crontab``/``schedule``, or a five-field cron string. Raises ValueError."""
    if isinstance(value, BaseSchedule):
        return value
    if isinstance(value, str):
        return crontab.from_string(value)
    if isinstance(value, (int, float, dt.timedelta)) and not isinstance(value, bool):
        return schedule(value)
    raise ValueError(
        f"a schedule must be seconds, a timedelta, a crontab() or a cron string, not {type(value).__name__} {value!r}"
    )


def _to_ms(d: dt.datetime) -> int:
    # exact integer arithmetic: float timestamps are a few ulps off for ms
    delta = d - dt.datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _wall(ms: int, tz: dt.tzinfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz).replace(tzinfo=None, fold=0)
