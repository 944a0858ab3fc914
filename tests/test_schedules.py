"""The scheduling policy as pure functions: every time is passed in, nothing sleeps."""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from featherflow.scheduler import policy, slots as schedules
from featherflow.scheduler.policy import decide
from featherflow.scheduler.slots import ScheduleError, next_slot, prev_slot, slots_between

UTC = timezone.utc


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def walk(cron, tz, start, count):
    out, t = [], start
    for _ in range(count):
        t = next_slot(cron, tz, t)
        out.append(t)
    return out


def local(moments, tz):
    return [m.astimezone(schedules.zone(tz)).strftime("%m-%d %H:%M %Z") for m in moments]


@dataclass
class Sched:
    cron: str = "0 * * * *"
    tz: str = "UTC"
    catchup: str = "latest"
    overlap: str = "skip"
    updated_at: datetime = utc(2026, 1, 1)


# -- intervals, --at, cron, zones ------------------------------------------------

def test_interval_mapping_is_the_original_tools():
    assert schedules.interval_cron("hourly") == "0 * * * *"
    assert schedules.interval_cron("daily") == "0 0 * * *"
    assert schedules.interval_cron("daily", "03:30") == "30 3 * * *"
    assert schedules.interval_cron("daily", "7:05") == "5 7 * * *"
    assert schedules.interval_cron("weekly", "23:59") == "59 23 * * 0"
    assert schedules.interval_cron("monthly") == "0 0 1 * *"
    assert schedules.interval_cron("hourly", ":15") == "15 * * * *"


@pytest.mark.parametrize("at", ["25:00", "12:60", "noon", "1230", "12:3", "", "-1:00", "12:30:00"])
def test_bad_at_states_the_valid_format(at):
    with pytest.raises(ScheduleError, match="valid format is HH:MM"):
        schedules.interval_cron("daily", at or " ")


def test_hourly_at_takes_minutes_past_the_hour():
    with pytest.raises(ScheduleError, match=r"valid format is :MM"):
        schedules.interval_cron("hourly", "03:15")


def test_bad_interval_lists_the_valid_ones():
    with pytest.raises(ScheduleError, match="hourly, daily, weekly, monthly"):
        schedules.interval_cron("fortnightly")


@pytest.mark.parametrize("expr, why", [
    ("61 * * * *", "out of range"),
    ("* * * *", "4 field"),
    ("* * * * * * *", "7 field"),
    ("", "0 field"),
    ("@reboot", "unknown alias"),
    ("0 0 30 2 *", "never fires"),
    ("a b c d e", "valid: 5 fields"),
])
def test_bad_cron_says_why_and_what_is_valid(expr, why):
    with pytest.raises(ScheduleError) as info:
        schedules.parse_cron(expr)
    assert why in str(info.value)
    assert "valid: 5 fields" in str(info.value) or "never fires" in str(info.value)


def test_cron_forms_accepted():
    assert schedules.parse_cron("  30   3 * * * ") == "30 3 * * *"
    assert schedules.parse_cron("@daily") == "0 0 * * *"
    assert schedules.parse_cron("* * * * * */10") == "* * * * * */10"  # seconds LAST (croniter)
    assert walk("* * * * * */10", "UTC", utc(2026, 1, 1, 0, 0, 1), 3) == [
        utc(2026, 1, 1, 0, 0, 10), utc(2026, 1, 1, 0, 0, 20), utc(2026, 1, 1, 0, 0, 30)]


def test_unknown_zone_is_a_clear_error():
    for name in ("Mars/Olympus", "../etc/passwd", ""):
        with pytest.raises(ScheduleError, match="IANA name"):
            schedules.zone(name)


def test_local_zone_name_prefers_tz_then_files(tmp_path):
    etc = tmp_path / "timezone"
    etc.write_text("Europe/Berlin\n")
    assert schedules.local_zone_name("America/New_York", str(etc), "/nonexistent") == "America/New_York"
    assert schedules.local_zone_name(":Nowhere/Land", str(etc), "/nonexistent") == "Europe/Berlin"
    assert schedules.local_zone_name(None, str(tmp_path / "none"), "/nonexistent") == "UTC"


# -- slot times ------------------------------------------------------------------

def test_next_slot_is_strictly_after_and_utc():
    assert next_slot("0 * * * *", "UTC", utc(2026, 5, 1, 10, 0)) == utc(2026, 5, 1, 11, 0)
    assert next_slot("0 * * * *", "UTC", datetime(2026, 5, 1, 10, 0, 1)) == utc(2026, 5, 1, 11, 0)  # naive = UTC
    assert next_slot("30 3 * * *", "Europe/Berlin", utc(2026, 7, 1)) == utc(2026, 7, 1, 1, 30)  # CEST = +2
    assert prev_slot("0 * * * *", "UTC", utc(2026, 5, 1, 10, 0)) == utc(2026, 5, 1, 9, 0)


def test_monthly_on_the_31st_skips_short_months():
    slots = walk("0 0 31 * *", "UTC", utc(2026, 1, 1), 4)
    assert [s.date().isoformat() for s in slots] == ["2026-01-31", "2026-03-31", "2026-05-31", "2026-07-31"]
    assert [s.day for s in walk(schedules.interval_cron("monthly"), "UTC", utc(2026, 1, 15), 3)] == [1, 1, 1]


def test_spring_forward_berlin_fixed_time_fires_once_when_the_gap_ends():
    # 2026-03-29: 02:00 CET -> 03:00 CEST (01:00 UTC); 02:30 does not exist that night.
    slots = walk("30 2 * * *", "Europe/Berlin", utc(2026, 3, 27, 12), 3)
    assert local(slots, "Europe/Berlin") == ["03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]
    assert slots[1] == utc(2026, 3, 29, 1, 0)


def test_spring_forward_hourly_keeps_real_hours():
    slots = walk("0 * * * *", "Europe/Berlin", utc(2026, 3, 28, 23, 30), 4)
    assert local(slots, "Europe/Berlin") == ["03-29 01:00 CET", "03-29 03:00 CEST", "03-29 04:00 CEST",
                                             "03-29 05:00 CEST"]
    assert all(b - a == timedelta(hours=1) for a, b in zip(slots, slots[1:]))


def test_fall_back_berlin_fixed_time_fires_once_hourly_fires_twice():
    # 2026-10-25: 03:00 CEST -> 02:00 CET (01:00 UTC); 02:xx happens twice.
    once = walk("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), 2)
    assert local(once, "Europe/Berlin") == ["10-25 02:30 CEST", "10-26 02:30 CET"]
    hourly = walk("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 22, 30), 4)
    assert local(hourly, "Europe/Berlin") == ["10-25 01:00 CEST", "10-25 02:00 CEST", "10-25 02:00 CET",
                                              "10-25 03:00 CET"]
    assert all(b - a == timedelta(hours=1) for a, b in zip(hourly, hourly[1:]))


def test_fall_back_new_york_quarter_hours_are_every_real_quarter_hour():
    # 2026-11-01: 02:00 EDT -> 01:00 EST (06:00 UTC).
    slots = walk("*/15 * * * *", "America/New_York", utc(2026, 11, 1, 5, 0), 8)
    assert all(b - a == timedelta(minutes=15) for a, b in zip(slots, slots[1:]))
    assert "11-01 01:15 EST" in local(slots, "America/New_York")
    assert "11-01 01:45 EDT" in local(slots, "America/New_York")


def test_spring_forward_new_york_fixed_time():
    # 2026-03-08: 02:00 EST -> 03:00 EDT (07:00 UTC).
    slots = walk("15 2 * * *", "America/New_York", utc(2026, 3, 7, 12), 2)
    assert local(slots, "America/New_York") == ["03-08 03:00 EDT", "03-09 02:15 EDT"]


ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
CRONS = st.sampled_from(["0 * * * *", "30 2 * * *", "*/20 * * * *", "15 1-3 * * *", "0 0 31 * *",
                         "* * * * * */30"])


@settings(max_examples=60, deadline=None)
@given(cron=CRONS, tz=ZONES, start=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 1)))
def test_forward_and_backward_walks_agree(cron, tz, start):
    """Around DST changes too: prev(next(t)) steps back over exactly the same slots."""
    start = start.replace(tzinfo=UTC)
    forward = walk(cron, tz, start, 6)
    assert all(a < b for a, b in zip(forward, forward[1:]))
    back, cursor = [], forward[-1]
    for _ in range(5):
        cursor = prev_slot(cron, tz, cursor)
        back.append(cursor)
    assert back[::-1] == forward[:-1]
    found, more = slots_between(cron, tz, start, forward[-1], limit=100)
    assert found == forward and not more


# -- the firing policy ---------------------------------------------------------------

def test_on_time_slot_fires_once_and_never_again():
    s = Sched(updated_at=utc(2026, 1, 1, 9, 30))
    d = decide(s, None, utc(2026, 1, 1, 10, 0, 0, 400000))
    assert d.fire == (utc(2026, 1, 1, 10),)
    assert not d.skip and not d.wait
    again = decide(s, utc(2026, 1, 1, 10), utc(2026, 1, 1, 10, 0, 0, 900000))
    assert not again


def test_no_slot_before_the_schedule_was_added_or_enabled():
    s = Sched(updated_at=utc(2026, 1, 1, 10, 30))
    assert not decide(s, None, utc(2026, 1, 1, 10, 59))
    assert decide(s, None, utc(2026, 1, 1, 11, 0, 1)).fire == (utc(2026, 1, 1, 11),)


def test_catchup_latest_runs_only_the_most_recent_missed_slot():
    d = decide(Sched(catchup="latest"), utc(2026, 1, 1, 5), utc(2026, 1, 1, 9, 20))
    assert d.fire == (utc(2026, 1, 1, 9),)
    assert [slot for slot, _ in d.skip] == [utc(2026, 1, 1, h) for h in (6, 7, 8)]
    assert all("missed" in why and "catchup=latest" in why for _, why in d.skip)


def test_catchup_none_runs_nothing_late_but_an_on_time_slot():
    late = decide(Sched(catchup="none"), utc(2026, 1, 1, 5), utc(2026, 1, 1, 9, 20))
    assert not late.fire
    assert [slot for slot, _ in late.skip] == [utc(2026, 1, 1, h) for h in (6, 7, 8, 9)]
    assert all("catchup=none" in why for _, why in late.skip)
    on_time = decide(Sched(catchup="none"), utc(2026, 1, 1, 5), utc(2026, 1, 1, 9, 0, 30))
    assert on_time.fire == (utc(2026, 1, 1, 9),) and len(on_time.skip) == 3


def test_catchup_all_runs_every_missed_slot_one_after_another():
    d = decide(Sched(catchup="all"), utc(2026, 1, 1, 5), utc(2026, 1, 1, 9, 20))
    assert d.fire == (utc(2026, 1, 1, 6),)
    assert [slot for slot, _ in d.wait] == [utc(2026, 1, 1, h) for h in (7, 8, 9)]
    assert not d.skip
    parallel = decide(Sched(catchup="all", overlap="allow"), utc(2026, 1, 1, 5), utc(2026, 1, 1, 9, 20))
    assert parallel.fire == tuple(utc(2026, 1, 1, h) for h in (6, 7, 8, 9))


def test_a_missed_slot_says_whether_the_scheduler_was_down_or_did_not_tick():
    """The daemon passes its previous tick time: a slot after it fell while the daemon ran
    but was frozen (SIGSTOP, suspend); with no previous tick it was not running."""
    down = decide(Sched(), utc(2026, 1, 1, 5), utc(2026, 1, 1, 9, 20))
    assert all(why.startswith("missed: the scheduler was not running then") for _, why in down.skip)
    frozen = decide(Sched(), utc(2026, 1, 1, 5), utc(2026, 1, 1, 9, 20), last_tick=utc(2026, 1, 1, 5, 0, 1))
    assert [slot for slot, _ in frozen.skip] == [utc(2026, 1, 1, h) for h in (6, 7, 8)]
    assert {why for _, why in frozen.skip} == {
        "missed: the scheduler did not tick from 2026-01-01 05:00:01 UTC to 2026-01-01 09:20:00 UTC "
        "(catchup=latest runs only the most recent)"}
    # slots at or before the previous tick were left by a tick that failed, not by downtime
    failed = decide(Sched(), utc(2026, 1, 1, 5), utc(2026, 1, 1, 9, 20), last_tick=utc(2026, 1, 1, 7, 30))
    reasons = dict(failed.skip)
    assert "a tick of the scheduler failed" in reasons[utc(2026, 1, 1, 6)]
    assert "did not tick from 2026-01-01 07:30:00 UTC" in reasons[utc(2026, 1, 1, 8)]
    none = decide(Sched(catchup="none"), utc(2026, 1, 1, 5), utc(2026, 1, 1, 9, 20), last_tick=utc(2026, 1, 1, 5))
    assert all("did not tick" in why and "(catchup=none)" in why for _, why in none.skip)


def test_a_fired_slot_says_it_fired_late_or_after_waiting():
    on_time = decide(Sched(), utc(2026, 1, 1, 9), utc(2026, 1, 1, 10, 0, 1))
    assert on_time.fire == (utc(2026, 1, 1, 10),) and not on_time.notes
    late = decide(Sched(catchup="all"), utc(2026, 1, 1, 5), utc(2026, 1, 1, 9, 20))
    assert late.notes == ((utc(2026, 1, 1, 6), "catch-up: fired 3h20m late (catchup=all)"),)
    after = decide(Sched(catchup="all"), utc(2026, 1, 1, 9), utc(2026, 1, 1, 9, 25), waiting=[utc(2026, 1, 1, 7)])
    assert after.fire == (utc(2026, 1, 1, 7),)
    assert after.notes == ((utc(2026, 1, 1, 7), "catch-up: fired 2h25m late, after the previous slot's run "
                                                "ended (catchup=all)"),)
    queued = decide(Sched(overlap="queue"), utc(2026, 1, 1, 10), utc(2026, 1, 1, 10, 30),
                    waiting=[utc(2026, 1, 1, 10)])
    assert queued.notes == ((utc(2026, 1, 1, 10), "fired 30m00s late, after waiting for the previous run "
                                                  "to end (overlap=queue)"),)


def test_catchup_is_capped_and_the_rest_is_one_recorded_row():
    s = Sched(cron="* * * * * *", catchup="all", overlap="allow")
    d = decide(s, utc(2026, 1, 1), utc(2026, 1, 2), cap=100)  # a day of per-second slots
    assert len(d.fire) == 100 and d.fire[-1] == utc(2026, 1, 2)
    assert len(d.skip) == 1 and d.skip[0][0] == utc(2026, 1, 1, 0, 0, 1)
    assert "more than 100 missed" in d.skip[0][1]
    latest = decide(Sched(cron="* * * * * *"), utc(2026, 1, 1), utc(2026, 1, 2), cap=100)
    assert latest.fire == (utc(2026, 1, 2),) and len(latest.skip) == 100


def test_overlap_skip_names_the_active_run():
    d = decide(Sched(), utc(2026, 1, 1, 9), utc(2026, 1, 1, 10, 0, 1), active=42)
    assert not d.fire and d.skip == ((utc(2026, 1, 1, 10), "run 42 was still active (overlap=skip)"),)


def test_overlap_queue_waits_then_fires_oldest_first_when_idle():
    s = Sched(overlap="queue")
    busy = decide(s, utc(2026, 1, 1, 9), utc(2026, 1, 1, 10, 0, 1), active=7)
    assert not busy.fire and [slot for slot, _ in busy.wait] == [utc(2026, 1, 1, 10)]
    assert "run 7" in busy.wait[0][1]
    idle = decide(s, utc(2026, 1, 1, 10), utc(2026, 1, 1, 10, 30), waiting=[utc(2026, 1, 1, 10)])
    assert idle.fire == (utc(2026, 1, 1, 10),) and not idle.wait
    full = decide(s, utc(2026, 1, 1, 9), utc(2026, 1, 1, 10, 0, 1), active=7,
                  waiting=[utc(2025, 12, 31, h) for h in range(3)], cap=3)
    assert not full.wait and "already waiting" in full.skip[0][1]


def test_overlap_allow_fires_whatever_runs():
    d = decide(Sched(overlap="allow"), utc(2026, 1, 1, 9), utc(2026, 1, 1, 10, 0, 1), active=3)
    assert d.fire == (utc(2026, 1, 1, 10),)


def test_waiting_slots_block_new_ones_under_overlap_skip():
    d = decide(Sched(catchup="all"), utc(2026, 1, 1, 9), utc(2026, 1, 1, 10, 0, 1),
               waiting=[utc(2026, 1, 1, 8)])
    assert d.fire == (utc(2026, 1, 1, 8),)
    assert [slot for slot, _ in d.skip] == [utc(2026, 1, 1, 10)]


def test_clock_stepping_backwards_never_refires():
    s = Sched(cron="*/5 * * * *")
    latest = utc(2026, 6, 1, 12, 0)  # recorded while the clock was ahead
    for now in (utc(2026, 6, 1, 11, 0), utc(2026, 6, 1, 11, 59, 59), latest):
        assert not decide(s, latest, now)
    assert decide(s, latest, utc(2026, 6, 1, 12, 5)).fire == (utc(2026, 6, 1, 12, 5),)


@settings(max_examples=80, deadline=None)
@given(catchup=st.sampled_from(policy.CATCHUP), overlap=st.sampled_from(policy.OVERLAP),
       gap=st.integers(0, 40), late=st.integers(0, 3600), active=st.sampled_from([None, 5]),
       waiting=st.integers(0, 2))
def test_every_due_slot_is_fired_waiting_or_skipped_exactly_once(catchup, overlap, gap, late, active, waiting):
    s = Sched(cron="*/10 * * * *", catchup=catchup, overlap=overlap)
    latest = utc(2026, 2, 1, 0, 0)
    now = latest + timedelta(minutes=10 * gap, seconds=late)
    queued = [latest - timedelta(minutes=10 * (i + 1)) for i in range(waiting)]
    d = decide(s, latest, now, active=active, waiting=queued)
    new = [slot for slot in list(d.fire) + [w for w, _ in d.wait] + [k for k, _ in d.skip] if slot > latest]
    due, _ = slots_between(s.cron, s.tz, latest, now, policy.CATCHUP_CAP)
    assert sorted(new) == due  # nothing lost, nothing twice
    assert all(slot <= now for slot in new)
    old = [slot for slot in d.fire if slot <= latest]
    assert set(old) <= set(queued)  # the only old slots fired are ones that were waiting
    if active is not None and overlap != "allow":
        assert not [slot for slot in d.fire if slot > latest]
