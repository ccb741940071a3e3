"""crontab and interval schedules: parsing, next runs (month ends, leap days,
daylight-saving changes) and the collapsing of missed runs. Pure computation:
no Redis."""

import datetime as dt
import itertools
import re
from zoneinfo import ZoneInfo

import pytest

from fastq import crontab
from fastq.schedules import schedule, to_schedule

UTC = dt.timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")  # 2024: CET->CEST 03-31 02:00, CEST->CET 10-27 03:00
NEW_YORK = ZoneInfo("America/New_York")  # 2024: 03-10 02:00 -> 03:00, 11-03 02:00 -> 01:00
SANTIAGO = ZoneInfo("America/Santiago")  # 2024-09-08: midnight does not exist (00:00 -> 01:00)


def at(tz, *fields, fold=0):
    return dt.datetime(*fields, tzinfo=tz, fold=fold)


def runs(c, after, tz, n):
    out = []
    for _ in range(n):
        after = c.next_run(after, tz)
        out.append(after)
    return out


# (crontab, after, tz, the next runs as (wall time fields..., utc offset hours))
CASES = [
    # every N minutes, exact boundaries (a run at `after` itself is not "next")
    (crontab(minute="*/15"), at(UTC, 2024, 5, 1, 10, 7), UTC, [(2024, 5, 1, 10, 15, 0), (2024, 5, 1, 10, 30, 0)]),
    (crontab(minute="*/15"), at(UTC, 2024, 5, 1, 10, 15), UTC, [(2024, 5, 1, 10, 30, 0)]),
    (crontab(minute="*/15"), at(UTC, 2024, 5, 1, 10, 14, 59), UTC, [(2024, 5, 1, 10, 15, 0)]),
    # hour and day rollover, year end
    (crontab(minute=59, hour=23, day_of_month=31, month_of_year=12), at(UTC, 2024, 12, 31, 23, 59), UTC,
     [(2025, 12, 31, 23, 59, 0)]),
    (crontab(minute=0, hour=0), at(UTC, 2024, 12, 31, 23, 59, 59), UTC, [(2025, 1, 1, 0, 0, 0)]),
    # month ends: the 31st skips 30-day months; the 30th skips February
    (crontab(minute=0, hour=0, day_of_month=31), at(UTC, 2024, 4, 1), UTC,
     [(2024, 5, 31, 0, 0, 0), (2024, 7, 31, 0, 0, 0), (2024, 8, 31, 0, 0, 0), (2024, 10, 31, 0, 0, 0)]),
    (crontab(minute=0, hour=0, day_of_month=30), at(UTC, 2023, 1, 31), UTC,
     [(2023, 3, 30, 0, 0, 0)]),
    (crontab(minute=0, hour=12, day_of_month="28-31"), at(UTC, 2023, 2, 28, 13), UTC,
     [(2023, 3, 28, 12, 0, 0)]),
    # leap day: only leap years; 2100 is not one
    (crontab(minute=0, hour=0, day_of_month=29, month_of_year=2), at(UTC, 2023, 1, 1), UTC,
     [(2024, 2, 29, 0, 0, 0), (2028, 2, 29, 0, 0, 0)]),
    (crontab(minute=0, hour=0, day_of_month=29, month_of_year="feb"), at(UTC, 2097, 3, 1), UTC,
     [(2104, 2, 29, 0, 0, 0)]),
    # both day fields must match (Celery): Feb 29 that is a Monday; first Monday of the month
    (crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week="mon"), at(UTC, 2024, 3, 1), UTC,
     [(2044, 2, 29, 0, 0, 0)]),
    (crontab(minute=0, hour=9, day_of_month="1-7", day_of_week="monday"), at(UTC, 2024, 6, 4), UTC,
     [(2024, 7, 1, 9, 0, 0), (2024, 8, 5, 9, 0, 0)]),
    # weekday names, ranges and lists; 7 is Sunday too; ranges may wrap the week
    (crontab(minute=30, hour=7, day_of_week="mon-fri"), at(UTC, 2024, 6, 7, 8), UTC,
     [(2024, 6, 10, 7, 30, 0), (2024, 6, 11, 7, 30, 0)]),
    (crontab(minute=0, hour=0, day_of_week=7), at(UTC, 2024, 6, 5), UTC, [(2024, 6, 9, 0, 0, 0)]),
    (crontab(minute=0, hour=0, day_of_week="fri-mon"), at(UTC, 2024, 6, 4), UTC,
     [(2024, 6, 7, 0, 0, 0), (2024, 6, 8, 0, 0, 0), (2024, 6, 9, 0, 0, 0), (2024, 6, 10, 0, 0, 0),
      (2024, 6, 14, 0, 0, 0)]),
    (crontab(minute="0,30", hour="9-10", month_of_year="jan,jul"), at(UTC, 2024, 1, 31, 10, 30), UTC,
     [(2024, 7, 1, 9, 0, 0), (2024, 7, 1, 9, 30, 0), (2024, 7, 1, 10, 0, 0)]),
    (crontab(minute=5, hour="1-23/6"), at(UTC, 2024, 1, 1), UTC,
     [(2024, 1, 1, 1, 5, 0), (2024, 1, 1, 7, 5, 0), (2024, 1, 1, 13, 5, 0), (2024, 1, 1, 19, 5, 0),
      (2024, 1, 2, 1, 5, 0)]),
    (crontab(minute=range(0, 60, 20), hour=[0]), at(UTC, 2024, 1, 1, 0, 40), UTC, [(2024, 1, 2, 0, 0, 0)]),
    # a zone: 07:30 in Berlin is 06:30 UTC in winter, 05:30 in summer
    (crontab(minute=30, hour=7), at(BERLIN, 2024, 3, 30, 12), BERLIN,
     [(2024, 3, 31, 7, 30, 2), (2024, 4, 1, 7, 30, 2)]),
    # --- spring forward: Berlin 2024-03-31 02:00 CET -> 03:00 CEST ---
    # a fixed time in the skipped hour runs once, at the change (not skipped)
    (crontab(minute=30, hour=2), at(BERLIN, 2024, 3, 30, 3), BERLIN,
     [(2024, 3, 31, 3, 0, 2), (2024, 4, 1, 2, 30, 2)]),
    (crontab(minute="*", hour=2), at(BERLIN, 2024, 3, 31, 1, 59), BERLIN,
     [(2024, 3, 31, 3, 0, 2), (2024, 4, 1, 2, 0, 2)]),
    # an every-hour entry keeps real-time rhythm: 01:30 -> 03:30 is one hour
    (crontab(minute=30), at(BERLIN, 2024, 3, 31, 0, 45), BERLIN,
     [(2024, 3, 31, 1, 30, 1), (2024, 3, 31, 3, 30, 2), (2024, 3, 31, 4, 30, 2)]),
    (crontab(minute="*/15"), at(BERLIN, 2024, 3, 31, 1, 40), BERLIN,
     [(2024, 3, 31, 1, 45, 1), (2024, 3, 31, 3, 0, 2), (2024, 3, 31, 3, 15, 2)]),
    # New York: 02:00 daily runs at 03:00 EDT on the change day
    (crontab(minute=0, hour=2), at(NEW_YORK, 2024, 3, 9, 12), NEW_YORK,
     [(2024, 3, 10, 3, 0, -4), (2024, 3, 11, 2, 0, -4)]),
    # a zone whose midnight is skipped: the day is not lost
    (crontab(minute=0, hour=0), at(SANTIAGO, 2024, 9, 7, 12), SANTIAGO,
     [(2024, 9, 8, 1, 0, -3), (2024, 9, 9, 0, 0, -3)]),
    # --- fall back: Berlin 2024-10-27 03:00 CEST -> 02:00 CET ---
    # a fixed time in the repeated hour runs once, on the first pass
    (crontab(minute=30, hour=2), at(BERLIN, 2024, 10, 27, 0), BERLIN,
     [(2024, 10, 27, 2, 30, 2), (2024, 10, 28, 2, 30, 1)]),
    # ... also when asked from inside the second pass
    (crontab(minute=45, hour=2), at(BERLIN, 2024, 10, 27, 2, 40, fold=1), BERLIN, [(2024, 10, 28, 2, 45, 1)]),
    # an every-hour entry runs on both passes: hourly in real time
    (crontab(minute=30), at(BERLIN, 2024, 10, 27, 1, 0), BERLIN,
     [(2024, 10, 27, 1, 30, 2), (2024, 10, 27, 2, 30, 2), (2024, 10, 27, 2, 30, 1), (2024, 10, 27, 3, 30, 1)]),
    (crontab(minute="*/20"), at(BERLIN, 2024, 10, 27, 2, 50), BERLIN,
     [(2024, 10, 27, 2, 0, 1), (2024, 10, 27, 2, 20, 1), (2024, 10, 27, 2, 40, 1), (2024, 10, 27, 3, 0, 1)]),
    # New York 01:00 daily: once on 11-03 (EDT), then EST
    (crontab(minute=0, hour=1), at(NEW_YORK, 2024, 11, 2, 12), NEW_YORK,
     [(2024, 11, 3, 1, 0, -4), (2024, 11, 4, 1, 0, -5)]),
]


@pytest.mark.parametrize(("cron", "after", "tz", "expected"), CASES, ids=[f"{c[0]!r}@{c[1]}" for c in CASES])
def test_next_run_table(cron, after, tz, expected):
    # Given a crontab, a moment and a zone / When asked for its next runs
    got = runs(cron, after, tz, len(expected))
    # Then each is the expected wall time with the expected UTC offset
    want = [(*e[:5], dt.timedelta(hours=e[5])) for e in expected]
    assert [(g.year, g.month, g.day, g.hour, g.minute, g.utcoffset()) for g in got] == want
    assert all(g.second == 0 and g.microsecond == 0 for g in got)


def test_dst_changes_neither_skip_nor_double_daily_runs():
    # Given a daily 02:30 run in Berlin, checked over the whole of 2024
    c = crontab(minute=30, hour=2)
    got = runs(c, at(BERLIN, 2023, 12, 31, 12), BERLIN, 366)
    # Then there is exactly one run per calendar day, every day of the leap year
    days = [g.date() for g in got]
    assert len(set(days)) == 366
    assert days[0] == dt.date(2024, 1, 1) and days[-1] == dt.date(2024, 12, 31)
    # And runs are strictly increasing in real time
    # (timestamps: aware datetimes of one zone compare by wall time)
    assert all(a.timestamp() < b.timestamp() for a, b in itertools.pairwise(got))


def test_hourly_runs_stay_one_hour_apart_across_dst():
    # Given an hourly run, over both Berlin changes
    for start in (at(BERLIN, 2024, 3, 30, 12), at(BERLIN, 2024, 10, 26, 12)):
        got = runs(crontab(minute=0), start, BERLIN, 48)
        # Then consecutive runs are exactly one real hour apart
        gaps = {b.timestamp() - a.timestamp() for a, b in itertools.pairwise(got)}
        assert gaps == {3600.0}


def test_app_timezone_default_is_utc_and_naive_means_utc():
    c = crontab(minute=0, hour=12)
    assert c.next_run(dt.datetime(2024, 1, 1, 11, 59)) == at(UTC, 2024, 1, 1, 12)
    # a crontab may carry its own zone
    c2 = crontab(minute=0, hour=12, tz="Asia/Tokyo")
    assert c2.next_run(dt.datetime(2024, 1, 1, 0, 0)).astimezone(UTC) == at(UTC, 2024, 1, 1, 3)


# --- missed runs collapse -------------------------------------------------------------------

def ms(d):
    return int(d.timestamp() * 1000)


def test_latest_due_is_the_last_run_before_now():
    c = crontab(minute="*/5")
    last = ms(at(UTC, 2024, 1, 1, 0, 0))
    # after a day of downtime only the latest missed run is due
    assert c.latest_due_ms(last, ms(at(UTC, 2024, 1, 2, 0, 7)), UTC) == ms(at(UTC, 2024, 1, 2, 0, 5))
    # nothing due yet
    assert c.latest_due_ms(last, ms(at(UTC, 2024, 1, 1, 0, 4, 59)), UTC) is None
    # exactly on time
    assert c.latest_due_ms(last, ms(at(UTC, 2024, 1, 1, 0, 5)), UTC) == ms(at(UTC, 2024, 1, 1, 0, 5))
    # a monthly run missed over a long downtime
    m = crontab(minute=0, hour=0, day_of_month=1)
    assert m.latest_due_ms(last, ms(at(UTC, 2025, 3, 15)), UTC) == ms(at(UTC, 2025, 3, 1))
    # leap day, years later
    leap = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2)
    assert leap.latest_due_ms(last, ms(at(UTC, 2031, 1, 1)), UTC) == ms(at(UTC, 2028, 2, 29))


def test_interval_schedule_runs_on_a_grid():
    s = schedule(10)
    assert s.next_after_ms(1_000, UTC) == 11_000
    assert s.latest_due_ms(1_000, 10_999, UTC) is None
    assert s.latest_due_ms(1_000, 11_000, UTC) == 11_000
    assert s.latest_due_ms(1_000, 95_000, UTC) == 91_000  # 8 missed runs -> the latest one
    assert schedule(dt.timedelta(minutes=1)).interval_ms == 60_000
    assert to_schedule(2.5) == schedule(2.5)


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"minute": 61}, "crontab minute: 61 is out of range 0-59"),
    ({"minute": -1}, "crontab minute: -1 is out of range 0-59"),
    ({"hour": "24"}, "crontab hour: 24 is out of range 0-23"),
    ({"day_of_week": "funday"}, "crontab day_of_week: 'funday' is not a day name"),
    ({"day_of_month": 0}, "crontab day_of_month: 0 is out of range 1-31"),
    ({"month_of_year": "13"}, "crontab month_of_year: 13 is out of range 1-12"),
    ({"month_of_year": "smarch"}, "crontab month_of_year: 'smarch' is not a month name"),
    ({"minute": "*/0"}, "crontab minute: step '0'"),
    ({"minute": "10-5"}, "crontab minute: range '10-5' runs backwards"),
    ({"minute": "1,,2"}, "crontab minute: '1,,2' is empty or has an empty list item"),
    ({"minute": ""}, "crontab minute"),
    ({"minute": 1.5}, "crontab minute: 1.5 is not a valid value"),
    ({"minute": True}, "crontab minute: True is not a valid value"),
    ({"hour": []}, "crontab hour: empty"),
    ({"day_of_month": 31, "month_of_year": "feb"}, "crontab never matches"),
    ({"tz": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
    # the field is named and the input quoted, also when a range half is empty
    ({"minute": "1.5"}, "crontab minute: '1.5' is not a whole number 0-59"),
    ({"minute": "-5"}, "crontab minute: '-5' is not a whole number 0-59"),
    ({"minute": "1-"}, "crontab minute: '1-' is not a whole number 0-59"),
    ({"hour": "1-x"}, "crontab hour: 'x' in '1-x' is not a whole number 0-23"),
    ({"day_of_week": "8"}, "crontab day_of_week: 8 is out of range 0-7"),
])
def test_invalid_crontab_fails_when_built(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        crontab(**kwargs)


@pytest.mark.parametrize("value", [0, -5, "soon", [1, 2], None, True, float("nan")])
def test_unparseable_schedules(value):
    with pytest.raises(ValueError):
        to_schedule(value)


@pytest.mark.parametrize(("dow", "days"), [
    ("7", {0}), ("7-7", {0}), ("7/2", {0}), ("7-7/2", {0}), ("5-7", {5, 6, 0}), ("6-7", {6, 0}),
    ("7-1", {0, 1}), ("0-7", set(range(7))), ("fri-mon", {5, 6, 0, 1}), ("*/2", {0, 2, 4, 6}),
    ("1/2", {1, 3, 5}), ([7, 1], {0, 1}),
])
def test_day_of_week_seven_is_sunday_also_at_the_start_of_a_range(dow, days):
    assert crontab(day_of_week=dow).day_of_week == days
    if isinstance(dow, str):
        assert crontab.from_string(f"0 0 * * {dow}").day_of_week == days
    # and the next run is on such a day: 2024-06-05 is a Wednesday
    got = crontab(minute=0, hour=0, day_of_week=dow).next_run(dt.datetime(2024, 6, 5), UTC)
    assert (got.weekday() + 1) % 7 in days


def test_cron_string_errors_quote_the_expression():
    with pytest.raises(ValueError, match=re.escape("crontab minute: '1.5' is not a whole number 0-59 "
                                                   "(in cron expression '1.5 * * * *')")):
        crontab.from_string("1.5 * * * *")


def test_cron_strings():
    c = crontab.from_string("30 7 * * mon-fri")
    assert c == crontab(minute=30, hour=7, day_of_week="mon-fri")
    assert to_schedule("*/5 * * * *") == crontab(minute="*/5")
    with pytest.raises(ValueError, match="5 fields"):
        crontab.from_string("* * * *")
    with pytest.raises(ValueError, match="minute: 61"):
        to_schedule("61 * * * *")


# --- reference: brute force over every minute, in the zone ---------------------------------------
#
# An independent model of the documented rules (docs/scheduling.md): step through real time a
# minute at a time and look at the wall clock. An every-hour entry fires at each minute whose wall
# time matches. A fixed-hours entry fires at the first minute whose wall time reaches a matching
# wall time not shown before: a skipped wall time fires at the change, a repeated one on its
# first pass only.

REFERENCE_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]
MINUTE = 60_000


def _transitions(tz, years):
    """UTC ms of the offset changes of ``tz`` in ``years``."""
    out = []
    t = int(dt.datetime(years[0], 1, 1, tzinfo=UTC).timestamp()) * 1000
    end = int(dt.datetime(years[-1] + 1, 1, 1, tzinfo=UTC).timestamp()) * 1000
    off = dt.datetime.fromtimestamp(t / 1000, tz).utcoffset()
    while t < end:
        nxt = t + 3_600_000
        if dt.datetime.fromtimestamp(nxt / 1000, tz).utcoffset() != off:
            lo, hi = t, nxt  # off at lo, changed at hi: bisect to the minute
            while hi - lo > MINUTE:
                mid = (lo + hi) // 2 // MINUTE * MINUTE
                if dt.datetime.fromtimestamp(mid / 1000, tz).utcoffset() == off:
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
            off = dt.datetime.fromtimestamp(nxt / 1000, tz).utcoffset()
        t = nxt
    return out


class _Window:
    """Every minute from ``start_ms`` for ``minutes``: its wall time, and the wall times it
    reaches first (those after the latest wall time shown before it, up to its own)."""

    def __init__(self, tz, start_ms, minutes):
        self.start_ms = start_ms
        self.walls = []
        self.first_reached = []
        latest = None
        for i in range(minutes):
            w = dt.datetime.fromtimestamp((start_ms + i * MINUTE) / 1000, tz).replace(tzinfo=None)
            fresh = []
            if latest is None or w > latest:
                v = w if latest is None else latest + dt.timedelta(minutes=1)
                while v <= w:
                    fresh.append(v)
                    v += dt.timedelta(minutes=1)
                latest = w
            self.walls.append(w)
            self.first_reached.append(fresh)

    def next_fire(self, c, after_ms, horizon_ms):
        def match(w):
            return (w.minute in c.minute and w.hour in c.hour and w.day in c.day_of_month
                    and w.month in c.month_of_year and (w.weekday() + 1) % 7 in c.day_of_week)

        i = max(0, -(-(after_ms + 1 - self.start_ms) // MINUTE))  # first minute > after_ms
        last = (horizon_ms - self.start_ms) // MINUTE
        assert i > 180 and last < len(self.walls), "the window must cover the search"
        every_hour = len(c.hour) == 24  # the documented rule, not the code's flag
        for j in range(i, last + 1):
            if every_hour:
                if match(self.walls[j]):
                    return self.start_ms + j * MINUTE
            elif any(match(w) for w in self.first_reached[j]):
                return self.start_ms + j * MINUTE
        return None


def _random_field(rnd, field):
    low, high = {"minute": (0, 59), "hour": (0, 23), "day_of_week": (0, 7),
                 "day_of_month": (1, 31), "month_of_year": (1, 12)}[field]
    if field == "hour":  # transitions happen between 22:00 and 04:00 in these zones: dwell there
        pick = lambda: rnd.choice([0, 1, 2, 3, 23, 22, rnd.randint(0, 23)])  # noqa: E731
    elif field == "minute":
        pick = lambda: rnd.choice([0, 30, 59, 15, 45, rnd.randint(0, 59)])  # noqa: E731
    else:
        pick = lambda: rnd.randint(low, high)  # noqa: E731
    kind = rnd.choice(["*", "*", "n", "range", "step", "list", "nstep"] if field in ("minute", "hour")
                      else ["*"] * 8 + ["n", "range", "step", "nstep"])
    if kind == "*":
        return "*"
    if kind == "n":
        return str(pick())
    if kind == "range":
        a, b = sorted((pick(), pick())) if field != "day_of_week" else (pick(), pick())
        return f"{a}-{b}"
    if kind == "step":
        return f"*/{rnd.randint(1, 20 if field == 'minute' else 5)}"
    if kind == "nstep":
        return f"{pick()}/{rnd.randint(1, 20 if field == 'minute' else 5)}"
    return ",".join(str(pick()) for _ in range(rnd.randint(2, 4)))


def test_fast_path_matches_minute_by_minute_reference():
    import random

    rnd = random.Random(20261203)
    horizon = 2 * 86_400_000  # look two days ahead of each start
    checked = fired = hourly = 0
    for name in REFERENCE_ZONES:
        tz = ZoneInfo(name)
        for change in _transitions(tz, [2025, 2026]):
            window = _Window(tz, change - 40 * 3_600_000, (40 + 36 + 50) * 60)
            for _ in range(200):
                # starts around the change: whole minutes and odd milliseconds, often right at it
                if rnd.random() < 0.3:
                    after = change + rnd.randint(-90, 90) * MINUTE
                else:
                    after = change + rnd.randint(-36 * 3_600_000, 36 * 3_600_000)
                while True:
                    fields = {f: _random_field(rnd, f) for f in _FIELD_ORDER}
                    try:
                        c = crontab(**fields, tz=name)
                    except ValueError:  # e.g. day 31 of February only
                        continue
                    break
                expected = window.next_fire(c, after, after + horizon)
                got = c.next_after_ms(after, tz)
                where = f"{c!r} after {dt.datetime.fromtimestamp(after / 1000, tz)} ({after} ms)"
                if expected is None:
                    assert got > after + horizon, where
                else:
                    assert got == expected, (where, dt.datetime.fromtimestamp(got / 1000, tz),
                                             dt.datetime.fromtimestamp(expected / 1000, tz))
                    fired += 1
                checked += 1
                hourly += len(c.hour) == 24
    # the comparison must have been about real fire times, of both kinds of entry
    assert checked >= 3000 and fired >= checked // 2 and 100 < hourly < checked - 100, (checked, fired, hourly)


_FIELD_ORDER = ["minute", "hour", "day_of_week", "day_of_month", "month_of_year"]
