"""When schedules fire: intervals -> cron, slot times in a time zone, and the firing policy.

Pure functions of explicit times (every `now`, `after` and `before` is a
parameter, UTC), so the policy is tested without sleeping or patching the
clock. croniter is imported here and nowhere else.

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

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import List, Optional, Sequence, Tuple

UTC = timezone.utc
INTERVALS = ("hourly", "daily", "weekly", "monthly")
CATCHUP = ("none", "latest", "all")
OVERLAP = ("skip", "queue", "allow")
ON_INTERRUPT = ("resume", "leave")
CATCHUP_CAP = 100  # slots one decision fires or queues at most; also the queue limit
GRACE = timedelta(seconds=60)  # how late a slot may be seen and still count as on time
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
    from croniter import croniter

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
    from zoneinfo import ZoneInfo

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
    import os

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

def as_utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken as UTC (that is how the database stores times)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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
    from croniter import croniter

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
                  limit: int = CATCHUP_CAP) -> Tuple[List[datetime], bool]:
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


# -- the firing policy ---------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """What to do with a schedule's due slots: fire now, record as waiting, record as skipped.
    `notes` are the reasons recorded with fired slots that did not fire on time (catch-up, or
    after waiting); an on-time slot has none."""

    fire: Tuple[datetime, ...] = ()
    wait: Tuple[Tuple[datetime, str], ...] = ()
    skip: Tuple[Tuple[datetime, str], ...] = ()
    notes: Tuple[Tuple[datetime, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.fire or self.wait or self.skip)


def decide(schedule, latest: Optional[datetime], now: datetime, active=None,
           waiting: Sequence[datetime] = (), cap: int = CATCHUP_CAP,
           grace: timedelta = GRACE, last_tick: Optional[datetime] = None) -> Decision:
    """Decide which slots of `schedule` fire at `now`, which wait and which are skipped (and why).

    `schedule` has `cron`, `tz`, `catchup`, `overlap` and `updated_at` (when it was added or
    last enabled); `latest` is its latest recorded slot (fired, waiting or skipped); `active`
    is the id of a queued or running run of it (or None); `waiting` its slots recorded as
    waiting, oldest first; `last_tick` when the daemon deciding ticked before `now` (None:
    this is its first tick, it was not running before). The policy:

    - Due slots are the slot times after both `latest` and `updated_at`, up to `now`. A slot
      at or before the latest recorded one is never due again, so a clock that steps
      backwards (or a restart) never fires a slot twice; slots that fell while the schedule
      was disabled or not yet added are not due either.
    - Catch-up picks among the due slots. `latest` (default, like systemd's Persistent=true):
      the most recent one fires, the older ones are skipped as missed. `none`: the most
      recent one fires only if it is on time (at most `grace` late: the scheduler was up
      when it fell); every other one is skipped as missed. `all`: every due slot runs, oldest
      first, one after another. At most `cap` slots are looked at; when more were missed
      (a per-second schedule after a day of downtime) the earlier ones are covered by one
      skipped row at the oldest missed slot that says so. A missed slot says why: one after
      `last_tick` fell while the daemon ran but did not tick (it was frozen by SIGSTOP, the
      machine suspended, or a tick took that long); one before the daemon's first tick fell
      while it was not running; one at or before `last_tick` was left by a tick that failed.
    - Overlap applies while a run of the schedule is active or slots wait. `skip` (default):
      the picked slots are skipped (reason names the active run). `queue`: they wait, and
      fire one at a time as runs end, at most `cap` waiting (further ones are skipped).
      `allow`: they fire at once, whatever runs. Several picked slots with nothing active
      (catch-up `all`) fire one after another as well, unless overlap is `allow`.
    - With nothing active, the oldest waiting slot fires (before any new one).
    - A slot that fires more than `grace` late, or after waiting, gets a note saying so
      (catch-up, or waited for the previous run); an on-time slot gets none.

    Slots are returned oldest first; the caller records them in one transaction.
    """
    now = as_utc(now)
    starts = [as_utc(t) for t in (latest, getattr(schedule, "updated_at", None)) if t is not None]
    after = max(starts) if starts else None
    waiting = sorted(as_utc(t) for t in waiting)
    fire: List[datetime] = []
    wait: List[Tuple[datetime, str]] = []
    skip: List[Tuple[datetime, str]] = []
    busy_before = active is not None or bool(waiting)
    holder = f"run {active}" if active is not None else "an earlier slot's run"
    if schedule.overlap == "allow":
        fire += waiting
        waiting = []
    elif waiting and active is None:
        fire.append(waiting.pop(0))
    waited = list(fire)
    busy = active is not None or bool(fire)

    due, more = ([], False) if after is not None and now <= after else \
        slots_between(schedule.cron, schedule.tz, after, now, cap)
    if more and after is not None:
        first = next_slot(schedule.cron, schedule.tz, after)
        if due and first < due[0]:
            skip.append((first, f"missed, with every slot up to {due[0].isoformat()} "
                                f"(more than {cap} missed slots; catch-up looks at the last {cap})"))
    picked: List[datetime] = []
    if due:
        if schedule.catchup == "all":
            picked, missed = due, []
        elif schedule.catchup == "none" and now - due[-1] > grace:
            picked, missed = [], due
        else:
            picked, missed = [due[-1]], due[:-1]
        policy = f"catchup={schedule.catchup}" + (" runs only the most recent" if schedule.catchup == "latest" else "")
        skip += [(slot, f"missed: {_why_missed(slot, last_tick, now)} ({policy})") for slot in missed]
    for slot in picked:
        if schedule.overlap == "allow":
            fire.append(slot)
        elif schedule.overlap == "skip" and busy_before:
            skip.append((slot, f"{holder} was still active (overlap=skip)"))
        elif not busy:
            fire.append(slot)
            busy = True
        elif len(waiting) + len(wait) >= cap:
            skip.append((slot, f"{cap} slots were already waiting (overlap={schedule.overlap})"))
        elif schedule.overlap == "queue":
            wait.append((slot, f"waits for {holder} to end (overlap=queue)"))
        else:
            wait.append((slot, "catch-up: waits for the previous slot's run to end"))
    skip.sort()
    notes = []
    for slot in fire:
        late = _took(now - slot)
        if slot in waited and schedule.overlap == "queue":
            notes.append((slot, f"fired {late} late, after waiting for the previous run to end (overlap=queue)"))
        elif slot in waited:
            notes.append((slot, f"catch-up: fired {late} late, after the previous slot's run ended "
                                f"(catchup={schedule.catchup})"))
        elif now - slot > grace:
            notes.append((slot, f"catch-up: fired {late} late (catchup={schedule.catchup})"))
    return Decision(tuple(fire), tuple(wait), tuple(skip), tuple(notes))


def _why_missed(slot: datetime, last_tick: Optional[datetime], now: datetime) -> str:
    """Why a due slot was not on time: what the daemon knows of its own ticks."""
    if last_tick is None:
        return "the scheduler was not running then"
    last_tick = as_utc(last_tick)
    if slot > last_tick:
        return f"the scheduler did not tick from {_stamp(last_tick)} to {_stamp(now)}"
    return "a tick of the scheduler failed before recording it (see the scheduler log)"


def _stamp(moment: datetime) -> str:
    return as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def _took(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"
