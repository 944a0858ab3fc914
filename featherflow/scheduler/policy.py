"""The firing policy: which due slots of a schedule fire, wait or are skipped, and why (pure).

Kept apart from the cron math (slots.py) and from the daemon that records and
launches what it decides, so the whole policy (missed slots, overlap, the
catch-up cap) is one function of explicit times, written in its docstring and
tested without a database, a clock or a sleep.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import List, Optional, Sequence, Tuple

from featherflow.clock import as_utc
from featherflow.scheduler.slots import next_slot, slots_between
from featherflow.text import duration

CATCHUP = ("none", "latest", "all")
OVERLAP = ("skip", "queue", "allow")
ON_INTERRUPT = ("resume", "leave")
CATCHUP_CAP = 100  # slots one decision fires or queues at most; also the queue limit
GRACE = timedelta(seconds=60)  # how late a slot may be seen and still count as on time


def next_fire(schedule, latest: Optional[datetime], now: datetime) -> Optional[datetime]:
    """When `schedule` fires next (aware UTC), None when it is disabled.

    The first slot after `now`, after its latest recorded slot (`latest`) and after
    `updated_at` (added or last enabled): the same start as the due slots of decide().
    """
    if not schedule.enabled:
        return None
    starts = [t for t in (now, latest, schedule.updated_at) if t is not None]
    return next_slot(schedule.cron, schedule.tz, max(as_utc(t) for t in starts))


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
    return Decision(tuple(fire), tuple(wait), tuple(skip), _notes(schedule, fire, waited, now, grace))


def _notes(schedule, fire: List[datetime], waited: List[datetime], now: datetime,
           grace: timedelta) -> Tuple[Tuple[datetime, str], ...]:
    """Why each fired slot that is not on time fired late: it waited, or it is a catch-up."""
    notes = []
    for slot in fire:
        late = duration((now - slot).total_seconds())
        if slot in waited and schedule.overlap == "queue":
            notes.append((slot, f"fired {late} late, after waiting for the previous run to end (overlap=queue)"))
        elif slot in waited:
            notes.append((slot, f"catch-up: fired {late} late, after the previous slot's run ended "
                                f"(catchup={schedule.catchup})"))
        elif now - slot > grace:
            notes.append((slot, f"catch-up: fired {late} late (catchup={schedule.catchup})"))
    return tuple(notes)


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

