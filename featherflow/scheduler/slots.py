"""When schedules fire: intervals -> cron, and slot times in a time zone (cron math, pure).

Pure functions of explicit times (every `after`, `until` and `before` is a
parameter, UTC), so slot times are tested without sleeping or patching the
clock. croniter is imported here and nowhere else. Which slots fire, wait or
are skipped is the firing policy, in policy.py.

Cron expressions are the usual 5 fields (minute hour day-of-month month
day-of-week), croniter's 6-field form whose LAST field is seconds (`* * * * *
*/10` is every ten seconds), or @hourly, @daily, @weekly, @monthly, @yearly.
A day-of-month that a month lacks simply does not fire in that month: `0 0 31
* *` fires on the seven months with a 31st (as in cron); `L` means the last
day of the month.

Time zones and daylight saving time. A slot is a wall-clock time in the
schedule's zone (an IANA name; by default the machine's zone), and is stored
as the UTC instant it falls on. Twice a year the wall clock jumps, and slots
follow what Vixie cron and cronie do:

- Spring forward (e.g. 02:00 -> 03:00 in Europe/Berlin): a wall time in the
  skipped hour does not exist; such a slot fires once, at the instant the gap
  ends (03:00). `30 2 * * *` therefore still runs that day, at 03:00; a slot
  that several skipped times share fires once.
- Fall back (e.g. 03:00 -> 02:00): a wall time in the repeated hour happens
  twice. A job at a fixed time (no `*` in its minute or hour field, e.g.
  `30 2 * * *`) fires once, at the first occurrence; a job with `*` in its
  minute or hour field (`0 * * * *`, `*/15 * * * *`) fires at both, so it
  keeps running every real hour / quarter-hour.

A zone without DST (UTC, the default on most servers) has none of this.
"""

import os
from datetime import datetime, timedelta
from typing import List, Optional, Tuple
from zoneinfo import ZoneInfo

from croniter import croniter

from featherflow.clock import UTC, as_utc

INTERVALS = ("hourly", "daily", "weekly", "monthly")
ALIASES = {
    "@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *",
}
CRON_FORMAT = ("valid: 5 fields 'minute hour day-of-month month day-of-week' such as '30 3 * * *', "
               "6 fields with seconds last such as '* * * * * */10', or @hourly, @daily, @weekly, "
               "@monthly, @yearly")
AT_FORMAT = "valid format is HH:MM, 00:00 to 23:59"
_MAX_STEPS = 10000  # cron matches looked at for one slot (a DST fold needs a few hundred at most)


class ScheduleError(ValueError):
    """A cron expression, --at, interval or zone that cannot be used; the message says what is valid."""


# -- parsing -----------------------------------------------------------------

def parse_at(text: str, interval: str = "daily") -> Tuple[int, int]:
    """`--at HH:MM` -> (hour, minute); with `hourly`, `--at :MM` (minutes past each hour)."""
    raw = (text or "").strip()
    if interval == "hourly":
        minute = raw[1:] if raw.startswith(":") else None
        if minute is None or not (minute.isdigit() and len(minute) == 2 and int(minute) < 60):
            raise ScheduleError(f"bad --at {text!r} for an hourly schedule "
                                "(valid format is :MM, minutes past each hour, e.g. :15)")
        return 0, int(minute)
    hour, sep, minute = raw.partition(":")
    if (not sep or not hour.isdigit() or not minute.isdigit() or len(hour) not in (1, 2)
            or len(minute) != 2 or int(hour) > 23 or int(minute) > 59):
        raise ScheduleError(f"bad --at {text!r} ({AT_FORMAT})")
    return int(hour), int(minute)


def interval_cron(interval: str, at: Optional[str] = None) -> str:
    """The cron expression of an interval (as the original tool): hourly `0 * * * *`, daily at
    HH:MM `MM HH * * *` (midnight by default), weekly on Sunday, monthly on the 1st."""
    if interval not in INTERVALS:
        raise ScheduleError(f"bad interval {interval!r} (valid: {', '.join(INTERVALS)})")
    hour, minute = parse_at(at, interval) if at else (0, 0)
    return {
        "hourly": f"{minute} * * * *",
        "daily": f"{minute} {hour} * * *",
        "weekly": f"{minute} {hour} * * 0",
        "monthly": f"{minute} {hour} 1 * *",
    }[interval]


def parse_cron(text: str) -> str:
    """Validate a cron expression and return it normalised (single spaces, aliases expanded)."""
    raw = " ".join((text or "").split())
    expr = ALIASES.get(raw.lower(), raw)
    if expr.startswith("@"):
        raise ScheduleError(f"bad cron expression {text!r}: unknown alias ({CRON_FORMAT})")
    fields = expr.split(" ")
    if len(fields) not in (5, 6):
        raise ScheduleError(f"bad cron expression {text!r}: {len(fields) if raw else 0} field(s) ({CRON_FORMAT})")
    try:
        croniter(expr, datetime(2000, 1, 1))
    except Exception as exc:  # croniter raises several classes, all with a useful message
        raise ScheduleError(f"bad cron expression {text!r}: {exc} ({CRON_FORMAT})") from None
    try:
        next_slot(expr, "UTC", datetime(2000, 1, 1, tzinfo=UTC))
    except ScheduleError:
        raise ScheduleError(f"bad cron expression {text!r}: it never fires (e.g. February 30th)") from None
    return expr


def zone(name: str):
    """The ZoneInfo for an IANA zone name; a clear error otherwise."""
    try:
        if not name or name.startswith("/") or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        raise ScheduleError(f"unknown time zone {name!r} (valid: an IANA name such as Europe/Berlin, "
                            "America/New_York or UTC; see `timedatectl list-timezones`)") from None


def local_zone_name(tz_env: Optional[str] = None, etc_timezone: str = "/etc/timezone",
                    localtime: str = "/etc/localtime") -> str:
    """The machine's zone as an IANA name: $TZ if it names one, else /etc/timezone, else the
    target of the /etc/localtime link, else UTC."""
    candidates = []
    if tz_env:
        candidates.append(tz_env.lstrip(":"))
    try:
        with open(etc_timezone) as f:
            candidates.append(f.read().strip())
    except OSError:
        pass
    try:
        target = os.path.realpath(localtime)
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for name in candidates:
        try:
            zone(name)
            return name
        except ScheduleError:
            continue
    return "UTC"


# -- slot times --------------------------------------------------------------

def _fields(cron: str) -> List[str]:
    return ALIASES.get(cron.strip().lower(), cron).split()


def _wildcard(cron: str) -> bool:
    """Vixie cron's rule: a `*` in the minute or hour field runs on the clock as it is (both
    passes of a repeated hour); a fixed-time job runs at the first pass only."""
    minute, hour = _fields(cron)[:2]
    return "*" in minute or "*" in hour


def _offsets(wall: datetime, tz):
    first = wall.replace(tzinfo=tz, fold=0)
    second = wall.replace(tzinfo=tz, fold=1)
    return first, second, first.utcoffset(), second.utcoffset()


def _gap_end(before_gap: datetime, after_gap: datetime, new_offset: timedelta, tz) -> datetime:
    """The UTC instant a spring-forward gap ends: the first second whose offset is the new one."""
    lo, hi = as_utc(before_gap), as_utc(after_gap)  # lo is before the transition, hi at or after
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid <= lo:
            break
        if mid.astimezone(tz).utcoffset() == new_offset:
            hi = mid
        else:
            lo = mid
    return hi


def _instants(wall: datetime, tz, wildcard: bool) -> List[datetime]:
    """The UTC instants a matching wall time fires at: one, two (repeated hour, wildcard
    job) or the end of the gap (a wall time that does not exist)."""
    first, second, off_first, off_second = _offsets(wall, tz)
    if off_first == off_second:
        return [as_utc(first)]
    if off_first > off_second:  # fall back: the wall time happens twice
        return [as_utc(first), as_utc(second)] if wildcard else [as_utc(first)]
    # spring forward: fold=1 reads it with the new offset (an instant before the gap),
    # fold=0 with the old one (an instant after it); the gap ends in between.
    return [_gap_end(second, first, off_second, tz)]


def _repeat_size(wall: datetime, tz) -> timedelta:
    """How long the wall clock repeats around `wall` (0 outside a fall-back hour)."""
    _, _, off_first, off_second = _offsets(wall, tz)
    return off_first - off_second if off_first > off_second else timedelta(0)


def _croniter(cron: str, start: datetime):
    return croniter(ALIASES.get(cron.strip().lower(), cron), start)


def next_slot(cron: str, tz: str, after: datetime) -> datetime:
    """The first slot strictly after `after` (UTC; naive means UTC), as an aware UTC datetime.

    Raises ScheduleError for an unknown zone or an expression that never fires again.
    """
    after = as_utc(after)
    zone_ = zone(tz)
    wildcard = _wildcard(cron)
    local = after.astimezone(zone_)
    start = local.replace(tzinfo=None, fold=0)
    if not local.fold:  # in the first pass of a repeated hour, earlier wall times fire again later
        start -= _repeat_size(start, zone_)
    it = _croniter(cron, start - timedelta(seconds=1))  # get_next is strict; `start` itself may fire
    best = None
    for _ in range(_MAX_STEPS):
        try:
            wall = it.get_next(datetime)
        except Exception:  # CroniterBadDateError: no such date (February 30th)
            break
        found = _instants(wall, zone_, wildcard)
        for moment in found:
            if moment > after and (best is None or moment < best):
                best = moment
        # The earliest instant of a wall time never decreases as wall times increase.
        if best is not None and found[0] >= best:
            return best
    if best is not None:
        return best
    raise ScheduleError(f"cron expression {cron!r} never fires after {after.isoformat()}")


def prev_slot(cron: str, tz: str, before: datetime) -> Optional[datetime]:
    """The last slot strictly before `before` (UTC), or None when there is none."""
    before = as_utc(before)
    zone_ = zone(tz)
    wildcard = _wildcard(cron)
    local = before.astimezone(zone_)
    start = local.replace(tzinfo=None, fold=0)
    if local.fold:  # in the second pass of a repeated hour, later wall times fired earlier
        start += _repeat_size(start, zone_) + timedelta(seconds=1)
    it = _croniter(cron, start)
    best = None
    for _ in range(_MAX_STEPS):
        try:
            wall = it.get_prev(datetime)
        except Exception:
            break
        found = _instants(wall, zone_, wildcard)
        for moment in found:
            if moment < before and (best is None or moment > best):
                best = moment
        # The latest instant of a wall time never increases as wall times decrease.
        if best is not None and found[-1] <= best:
            return best
    return best


def slots_between(cron: str, tz: str, after: Optional[datetime], until: datetime,
                  limit: int) -> Tuple[List[datetime], bool]:
    """The last `limit` slots in (after, until], oldest first, and whether earlier ones were left out."""
    found: List[datetime] = []
    cursor = as_utc(until) + timedelta(microseconds=1)
    after = as_utc(after) if after is not None else None
    while len(found) < limit:
        slot = prev_slot(cron, tz, cursor)
        if slot is None or (after is not None and slot <= after):
            return found[::-1], False
        found.append(slot)
        cursor = slot
    older = prev_slot(cron, tz, cursor)
    more = older is not None and (after is None or older > after)
    return found[::-1], more
