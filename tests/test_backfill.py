"""Backfill: the range and its slots (the schedule's own, DST included), exactly-once slots
whoever fires them, --reprocess, cancel, resume, the daemon continuing one, and kill -9."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from featherflow import clock, states
from featherflow.errors import ConflictError, UsageError
from featherflow.scheduler import admin as schedule_admin
from featherflow.scheduler import backfill, backfill_driver
from featherflow.scheduler import daemon as scheduler
from featherflow.scheduler import slots
from featherflow.store import backfills as rows
from helpers import wait_for

UTC = timezone.utc
NOW = datetime(2030, 6, 1, tzinfo=UTC)
# The task writes what it was given for its slot: the env var, and {{ scheduled_at }} as its argument;
# it fails for a slot named in fail.txt.
RECORD = """#!/bin/bash
echo "$FEATHERFLOW_SCHEDULED_AT $1 $FEATHERFLOW_TRIGGER" >> "$(dirname "$0")/../seen.txt"
if [ -f "$(dirname "$0")/../fail.txt" ] && grep -qx "$1" "$(dirname "$0")/../fail.txt"; then exit 7; fi
"""


def add_flow(project, name="nightly"):
    project.write_task("record.sh", RECORD)
    project.write_flow({"name": name, "tasks": [{"id": "a", "script": "record.sh", "args": ["{{ scheduled_at }}"]}]})


def add_schedule(project, app, cron="0 3 * * *", tz="Europe/Berlin", name="nightly"):
    add_flow(project, name)
    return schedule_admin.add_schedule(app.config, app.store, name, cron=cron, tz=tz, now=NOW - timedelta(days=400))


def seen(project):
    path = project.root / "seen.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def one_error_line(result, code, *needles):
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


class FakeSpawn:
    """Records what a driver would start; the pid it answers is this test's own (alive)."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv, run):
        self.calls.append(argv)
        return os.getpid()


# -- the range -----------------------------------------------------------------------------

def test_when_formats_are_wall_times_of_the_schedules_zone_and_to_is_inclusive():
    berlin = "Europe/Berlin"
    assert backfill.parse_when("2026-03-29", berlin, "--from") == datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert backfill.parse_when("2026-03-29", berlin, "--to", end=True) == \
        datetime(2026, 3, 29, 22, tzinfo=UTC) - timedelta(microseconds=1)  # CEST from 02:00
    assert backfill.parse_when("2026-03-29T04:30", berlin, "--from") == datetime(2026, 3, 29, 2, 30, tzinfo=UTC)
    assert backfill.parse_when("2026-03-29 04:30:15", berlin, "--to", end=True) == \
        datetime(2026, 3, 29, 2, 30, 15, tzinfo=UTC)
    assert backfill.parse_when("2026-03-29T04:30Z", berlin, "--from") == datetime(2026, 3, 29, 4, 30, tzinfo=UTC)
    for bad in ("yesterday", "2026-13-01", "29.03.2026", ""):
        with pytest.raises(UsageError, match="valid: a date YYYY-MM-DD"):
            backfill.parse_when(bad, berlin, "--from")


@pytest.mark.parametrize("cron", ["30 2 * * *", "0 * * * *", "*/20 * * * *", "0 3 * * 0"])
@pytest.mark.parametrize("start,end", [("2026-03-28", "2026-03-30"), ("2026-10-24", "2026-10-26")])
def test_a_range_over_dst_gives_the_schedules_own_firing(cron, start, end):
    """The backfill's slots are exactly the instants the schedule fires at over that range
    (walked with next_slot, as the daemon fires them one after the other)."""
    tz = "Europe/Berlin"
    lo, hi = backfill.parse_when(start, tz, "--from"), backfill.parse_when(end, tz, "--to", end=True)
    firing, moment = [], lo - timedelta(microseconds=1)
    while True:
        moment = slots.next_slot(cron, tz, moment)
        if moment > hi:
            break
        firing.append(moment)
    assert backfill.range_slots(cron, tz, lo, hi) == firing
    if cron == "30 2 * * *" and start.startswith("2026-03"):  # 02:30 does not exist on the 29th: 03:00 CEST
        assert datetime(2026, 3, 29, 1, tzinfo=UTC) in firing
    if cron == "0 * * * *" and start.startswith("2026-10"):  # 02:00 happens twice on the 25th: both fire
        assert {datetime(2026, 10, 25, 0, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC)} <= set(firing)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["*/7 * * * *", "15 1-3 * * *", "0 2 * * *", "30 */5 * * 1-5"]),
       st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1)),
       st.integers(min_value=0, max_value=3 * 24 * 60))
def test_range_slots_are_the_next_slot_walk_for_any_range(cron, start, minutes):
    tz = "Europe/Berlin"
    lo = start.replace(tzinfo=UTC)
    hi = lo + timedelta(minutes=minutes)
    walk, moment = [], lo - timedelta(microseconds=1)
    while True:
        moment = slots.next_slot(cron, tz, moment)
        if moment > hi:
            break
        walk.append(moment)
    assert backfill.range_slots(cron, tz, lo, hi) == walk


def test_action_for_each_reprocess_mode():
    act = backfill.action_for
    assert act("none", None, None, None)[0] == rows.RUN
    assert act("none", "skipped", None, None)[0] == rows.RUN  # a missed slot is filled
    assert act("all", "fired", None, None)[0] == rows.LEAVE  # its run was pruned
    for mode in backfill.REPROCESS:
        assert act(mode, "fired", 1, states.RUNNING)[0] == rows.LEAVE
    assert act("none", "fired", 1, states.FAILED)[0] == rows.LEAVE
    assert act("failed", "fired", 1, states.FAILED)[0] == rows.RESUME
    assert act("failed", "fired", 1, states.INTERRUPTED)[0] == rows.RESUME
    assert act("failed", "fired", 1, states.SUCCESS)[0] == rows.LEAVE
    assert act("all", "fired", 1, states.SUCCESS)[0] == rows.RERUN
    assert act("all", "fired", 1, states.FAILED)[0] == rows.RERUN


# -- bad input: one error line each ----------------------------------------------------------

@pytest.mark.parametrize("argv,code,needles", [
    (["backfill", "nope", "--from", "2026-01-01", "--to", "2026-01-02"], 2, ["no schedule named 'nope'"]),
    (["backfill", "nightly", "--from", "01/02/2026", "--to", "2026-01-02"], 2, ["bad --from", "valid: a date"]),
    (["backfill", "nightly", "--from", "2026-01-05", "--to", "2026-01-02"], 2, ["is after --to"]),
    (["backfill", "nightly", "--from", "2000-01-01", "--to", "2026-01-02"], 2, ["more than 5000 slots", "split"]),
    (["backfill", "nightly", "--from", "2999-01-01", "--to", "2999-01-02"], 2, ["in the future"]),
    (["backfill", "nightly", "--to", "2026-01-02"], 2, ["--from WHEN --to WHEN"]),
    (["backfill", "--flow", "nightly", "--cron", "61 * * * *", "--from", "2026-01-01", "--to", "2026-01-02"], 2,
     ["bad cron expression"]),
    (["backfill", "--flow", "nightly", "--cron", "0 3 * * *", "--tz", "Mars/Olympus", "--from", "2026-01-01",
      "--to", "2026-01-02"], 2, ["unknown time zone"]),
    (["backfill", "--flow", "ghost", "--cron", "0 3 * * *", "--tz", "UTC", "--from", "2026-01-01",
      "--to", "2026-01-02"], 2, ["ghost"]),
    (["backfill", "nightly", "--flow", "nightly", "--from", "2026-01-01", "--to", "2026-01-02"], 2, ["not both"]),
    (["backfill"], 2, ["say what to backfill"]),
    (["backfill", "show"], 2, ["needs a backfill ID"]),
    (["backfill", "show", "99"], 2, ["no backfill 99"]),
    (["backfill", "resume", "x"], 2, ["needs a backfill ID"]),
    (["backfill", "list", "--from", "2026-01-01"], 2, ["takes no --from"]),
])
def test_bad_input_is_one_error_line(project, argv, code, needles):
    app = project.app()
    add_schedule(project, app)
    app.close()
    one_error_line(project.cli(*argv), code, *needles)


def test_dry_run_lists_the_slots_and_records_nothing(project):
    app = project.app()
    s = add_schedule(project, app)
    app.close()
    result = project.cli("backfill", "nightly", "--from", "2026-03-28", "--to", "2026-03-29", "--dry-run")
    assert result.code == 0, result.err
    assert "2 slot(s); nothing recorded" in result.out
    assert "2026-03-28 03:00:00 CET  run" in result.out and "2026-03-29 03:00:00 CEST run" in result.out
    app = project.app()
    assert app.store.backfills.list() == [] and app.store.schedules.recent_slots(s.id) == []
    app.close()
    # --flow/--cron: the dry run makes no schedule either
    result = project.cli("backfill", "--flow", "nightly", "--cron", "0 4 * * *", "--tz", "UTC",
                         "--from", "2026-03-28", "--to", "2026-03-28", "--dry-run")
    assert result.code == 0 and "1 slot(s)" in result.out, result.err
    app = project.app()
    assert [x.name for x in app.store.schedules.list_schedules()] == ["nightly"]
    app.close()


# -- exactly once, in process (the driver's steps with a fake spawn) --------------------------

def test_a_slot_the_scheduler_fired_is_left_and_one_it_fires_after_the_plan_is_not_doubled(project):
    app = project.app()
    s = add_schedule(project, app, cron="0 3 * * *", tz="UTC")
    sched = scheduler.Scheduler(app.config, app.store, launch=lambda run, resume: None, deliver=lambda: None)
    sched.tick(datetime(2030, 1, 1, 3, 0, 1, tzinfo=UTC))  # the daemon fires Jan 1st
    made = backfill.create(app.config, app.store, backfill.Request(
        schedule="nightly", start="2030-01-01", end="2030-01-03"), NOW)
    assert [p.action for p in made.planned] == [rows.LEAVE, rows.RUN, rows.RUN]
    # The daemon fires Jan 2nd after the backfill planned it (it was down, catch-up fires it now).
    slot2 = datetime(2030, 1, 2, 3, tzinfo=UTC)
    app.store.schedules.record_decision(s.id, fire=[(slot2, sched.new_run(s))], now=NOW)
    spawn = FakeSpawn()
    driver = backfill_driver.Driver(app.config, app.store, spawn=spawn)
    said = driver.step(made.backfill.id, NOW)
    assert any("taken meanwhile" in line for line in said), said
    by_slot = Counter(r.scheduled_at for r in app.store.runs.list_runs(limit=None))
    assert set(by_slot.values()) == {1} and len(by_slot) == 3
    started = [x for x in app.store.backfills.slots(made.backfill.id) if x.state == rows.LAUNCHED]
    assert [x.slot_at for x in started] == [datetime(2030, 1, 3, 3, tzinfo=UTC)]
    run = app.store.runs.get_run(started[0].run_id)
    assert (run.trigger, run.schedule_id, run.scheduled_at) == ("backfill", s.id, datetime(2030, 1, 3, 3, tzinfo=UTC))
    assert spawn.calls == [["_start-run", str(run.id), "--launcher", str(os.getpid())]]
    # The scheduler's slot row says who filled it; a second backfill over the range leaves all three.
    slot_rows = {x.slot_at: x for x in app.store.schedules.recent_slots(s.id)}
    assert slot_rows[datetime(2030, 1, 3, 3, tzinfo=UTC)].reason == f"backfill {made.backfill.id}"
    again = backfill.create(app.config, app.store, backfill.Request(
        schedule="nightly", start="2030-01-01", end="2030-01-03"), NOW)
    assert [p.action for p in again.planned] == [rows.LEAVE] * 3
    app.close()


def test_max_runs_and_order(project):
    app = project.app()
    add_schedule(project, app, cron="0 * * * *", tz="UTC")
    for reverse, expected in ((False, [0, 1]), (True, [5, 4])):
        made = backfill.create(app.config, app.store, backfill.Request(
            schedule="nightly", start=f"2030-01-0{2 + reverse}T00:00", end=f"2030-01-0{2 + reverse}T05:00",
            max_runs=2, reverse=reverse), NOW)
        driver = backfill_driver.Driver(app.config, app.store, spawn=FakeSpawn())
        driver.step(made.backfill.id, NOW)
        driver.step(made.backfill.id, NOW)  # the two are active (held by this live process): no third
        started = [x.slot_at.hour for x in app.store.backfills.slots(made.backfill.id) if x.state == rows.LAUNCHED]
        assert started == sorted(expected)
    app.close()


def test_flow_and_cron_without_a_schedule_use_one_disabled_schedule_as_the_slot_key(project):
    add_flow(project)
    app = project.app()
    req = backfill.Request(flow="nightly", cron="0 4 * * *", tz="UTC", start="2030-01-01", end="2030-01-02")
    first = backfill.create(app.config, app.store, req, NOW)
    assert first.implicit and not first.schedule.enabled
    assert first.schedule.name == backfill.implicit_name("nightly", "0 4 * * *", "UTC")
    backfill_driver.Driver(app.config, app.store, spawn=FakeSpawn()).step(first.backfill.id, NOW)
    second = backfill.create(app.config, app.store, req, NOW)
    assert second.schedule.id == first.schedule.id
    assert [p.action for p in second.planned] == [rows.LEAVE, rows.RUN]  # the first one has not fired Jan 2nd yet
    driver = backfill_driver.Driver(app.config, app.store, spawn=FakeSpawn())
    driver.step(second.backfill.id, NOW)  # the second backfill fires Jan 2nd
    app.store.runs.transition_run(app.store.runs.list_runs(limit=None)[-1].id, states.CANCELLED)  # Jan 1st ends
    assert "slot 2030-01-02 04:00:00 UTC: taken meanwhile; left alone" in driver.step(first.backfill.id, NOW)
    assert Counter(r.scheduled_at.day for r in app.store.runs.list_runs(limit=None)) == {1: 1, 2: 1}
    assert len(app.store.schedules.list_schedules()) == 1
    # the daemon never fires it (disabled)
    report = scheduler.Scheduler(app.config, app.store, launch=lambda r, res: None, deliver=lambda: None).tick(NOW)
    assert report.fired == 0
    app.close()


def test_cancel_leaves_pending_slots_and_only_a_running_backfill_cancels(project):
    app = project.app()
    add_schedule(project, app, tz="UTC")
    made = backfill.create(app.config, app.store, backfill.Request(
        schedule="nightly", start="2030-01-01", end="2030-01-04"), NOW)
    backfill_driver.Driver(app.config, app.store, spawn=FakeSpawn()).step(made.backfill.id, NOW)  # starts one
    app.close()
    result = project.cli("backfill", "cancel", made.backfill.id)
    assert result.code == 0 and "1 run(s) already started go on" in result.out, (result.out, result.err)
    app = project.app()
    b = app.store.backfills.get(made.backfill.id)
    assert b.state == rows.CANCELLED and b.counts[rows.LEFT] == 3 and b.counts[rows.LAUNCHED] == 1
    assert backfill_driver.Driver(app.config, app.store, spawn=FakeSpawn()).step(b.id, NOW) == []  # starts nothing
    app.close()
    one_error_line(project.cli("backfill", "cancel", made.backfill.id), 3, "only a running one")
    one_error_line(project.cli("backfill", "resume", made.backfill.id), 3, "cancelled")
    listed = json.loads(project.cli("backfill", "list", "--json").out)
    assert [(b["id"], b["state"]) for b in listed] == [(made.backfill.id, "cancelled")]


def test_only_one_driver_at_a_time(project):
    app = project.app()
    add_schedule(project, app, tz="UTC")
    made = backfill.create(app.config, app.store, backfill.Request(
        schedule="nightly", start="2030-01-01", end="2030-01-01"), NOW)
    fd = backfill_driver.take_lock(app.config, made.backfill.id)
    try:
        assert backfill_driver.take_lock(app.config, made.backfill.id) is None
        with pytest.raises(ConflictError, match=f"driven by process {os.getpid()}"):
            backfill_driver.drive(app.config, app.store, made.backfill.id, lock_wait=0.1)
        assert backfill_driver.tick(app.config, app.store, NOW, driver=backfill_driver.Driver(app.config, app.store,
                                                                               spawn=FakeSpawn())) == 0
    finally:
        backfill_driver.release_lock(app.config, made.backfill.id, fd)
    assert backfill_driver.tick(app.config, app.store, NOW, driver=backfill_driver.Driver(app.config, app.store,
                                                                           spawn=FakeSpawn())) == 1
    app.close()


def test_rerun_of_a_finished_run_needs_the_flag():
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE flow_run (id INTEGER PRIMARY KEY, state TEXT, reason TEXT, started_at TEXT, "
                "ended_at TEXT, pid INTEGER, pid_start INTEGER, boot_id TEXT)")
    con.execute("CREATE TABLE task_attempt (run_id INTEGER, task_id TEXT, state TEXT)")
    con.execute("CREATE TABLE channel (enabled INTEGER)")
    con.execute("INSERT INTO flow_run (id, state) VALUES (1, 'success')")
    cur = con.cursor()
    with pytest.raises(states.IllegalTransition):
        states.apply_run(cur, 1, states.RUNNING, resume=True)
    assert states.apply_run(cur, 1, states.RUNNING, resume=True, rerun=True) == states.SUCCESS


# -- end to end: real runs -------------------------------------------------------------------

def test_backfill_end_to_end_each_run_gets_its_slot_time(project):
    app = project.app()
    s = add_schedule(project, app)
    app.close()
    result = project.sh("backfill", "nightly", "--from", "2026-03-28", "--to", "2026-03-30", "--max-runs", "3")
    assert result.code == 0, (result.out, result.err)
    assert "backfill 1 success: 3/3 done (3 success)" in result.out
    expected = ["2026-03-28T02:00:00Z", "2026-03-29T01:00:00Z", "2026-03-30T01:00:00Z"]  # 03:00 CET, CEST
    assert sorted(seen(project)) == [[t, t, "backfill"] for t in expected]
    listed = json.loads(project.cli("runs", "list", "--trigger", "backfill", "--json").out)
    assert sorted(r["scheduled_at"] for r in listed) == expected
    assert project.cli("runs", "list", "--trigger", "schedule").out.startswith("no run matches --trigger schedule")
    shown = project.cli("schedule", "show", "nightly")
    assert "backfills (newest first" in shown.out and "3/3 done (3 success)" in shown.out
    data = json.loads(project.cli("schedule", "show", "nightly", "--json").out)
    assert data["backfills"][0]["state"] == "success"
    show = json.loads(project.cli("backfill", "show", "1", "--json").out)
    assert [x["outcome"] for x in show["slots"]] == ["success"] * 3 and show["schedule"] == s.name


def test_reprocess_none_failed_all(project):
    app = project.app()
    add_schedule(project, app, tz="UTC")
    app.close()
    (project.root / "fail.txt").write_text("2026-01-02T03:00:00Z\n")
    rng = ["--from", "2026-01-01", "--to", "2026-01-03"]
    first = project.sh("backfill", "nightly", *rng, "--max-runs", "3")
    assert first.code == 1 and "backfill 1 failed" in first.out, (first.out, first.err)
    app = project.app()
    runs = {r.scheduled_at.day: r for r in app.store.runs.list_runs(limit=None)}
    assert [runs[d].state for d in (1, 2, 3)] == ["success", "failed", "success"]
    app.close()

    none = project.sh("backfill", "nightly", *rng)  # --reprocess none: every slot has a run
    assert none.code == 0 and "3/3 done (3 left)" in none.out, (none.out, none.err)
    assert len(seen(project)) == 3

    (project.root / "fail.txt").unlink()
    failed = project.sh("backfill", "nightly", *rng, "--reprocess", "failed", "--max-runs", "3")
    assert failed.code == 0, (failed.out, failed.err)
    app = project.app()
    after = {r.scheduled_at.day: app.store.runs.get_run(r.id) for r in app.store.runs.list_runs(limit=None)}
    assert len(after) == 3 and after[2].id == runs[2].id and after[2].state == "success" and after[2].resumes == 1
    assert [a.attempt for a in app.store.runs.attempts(runs[2].id)] == [1, 2]
    assert [after[d].resumes for d in (1, 3)] == [0, 0]
    app.close()
    assert len(seen(project)) == 4

    everything = project.sh("backfill", "nightly", *rng, "--reprocess", "all", "--max-runs", "3")
    assert everything.code == 0, (everything.out, everything.err)
    app = project.app()
    final = app.store.runs.list_runs(limit=None)
    assert sorted(r.id for r in final) == sorted(r.id for r in runs.values())  # the same three runs
    assert all(r.state == "success" for r in final)
    assert {r.scheduled_at.day: len(app.store.runs.attempts(r.id)) for r in final} == {1: 2, 2: 3, 3: 2}
    app.close()
    assert Counter(line[0] for line in seen(project)) == {
        "2026-01-01T03:00:00Z": 2, "2026-01-02T03:00:00Z": 3, "2026-01-03T03:00:00Z": 2}


def test_the_daemon_continues_a_backfill(project):
    app = project.app()
    add_schedule(project, app, tz="UTC")
    made = backfill.create(app.config, app.store, backfill.Request(
        schedule="nightly", start="2026-01-01", end="2026-01-02", max_runs=2), clock.now())
    sched = scheduler.Scheduler(app.config, app.store, launch=lambda run, resume: None, deliver=lambda: None)

    def done():
        sched.tick(clock.now())
        return app.store.backfills.get(made.backfill.id).state != rows.RUNNING

    wait_for(done, "the daemon's ticks to finish the backfill", timeout=60, interval=0.2)
    assert app.store.backfills.get(made.backfill.id).state == rows.SUCCESS
    assert sorted(line[0] for line in seen(project)) == ["2026-01-01T03:00:00Z", "2026-01-02T03:00:00Z"]
    assert not backfill_driver.lock_path(app.config, made.backfill.id).exists()
    app.close()


def test_ctrl_c_stops_driving_and_leaves_the_backfill_to_resume(project):
    app = project.app()
    add_schedule(project, app, tz="UTC")
    app.close()
    gate = project.root / "gate"  # the runs wait for it: the backfill cannot end before the Ctrl-C
    project.write_task("record.sh", RECORD.replace("#!/bin/bash\n", f"#!/bin/bash\nwhile [ ! -e {gate} ]; do sleep 0.02; done\n"))
    argv = [sys.executable, "-m", "featherflow"] + project.args() + [
        "backfill", "nightly", "--from", "2026-01-01", "--to", "2026-01-04"]
    # SIGINT at its default in the driver, as at a terminal: a parent started in the background
    # by a shell without job control (a CI runner, say) hands SIGINT down ignored.
    driver = subprocess.Popen(argv, cwd=project.root, env=project.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = driver.stdout.readline()
    while "started" not in first:
        first = driver.stdout.readline()
        assert first, driver.stderr.read()
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130 and "backfill resume 1" in err, (out, err)
    app = project.app()
    assert app.store.backfills.get(1).state == rows.RUNNING
    app.close()
    gate.touch()
    done = project.sh("backfill", "resume", "1")
    assert done.code == 0 and "backfill 1 success: 4/4 done (4 success)" in done.out, (done.out, done.err)
    assert sorted(line[0] for line in seen(project)) == [f"2026-01-0{d}T03:00:00Z" for d in range(1, 5)]


@pytest.mark.slow
def test_kill_9_of_the_driver_at_random_points_never_doubles_a_slot(project):
    """30 drivers killed at random moments, then one that finishes: every slot exactly one
    run, every run succeeded, none left queued or running."""
    app = project.app()
    s = add_schedule(project, app, cron="* * * * *", tz="UTC")
    # Each run takes 0.3 s, so the backfill outlasts most drivers even on a fast machine.
    project.write_task("record.sh", RECORD.replace("#!/bin/bash\n", "#!/bin/bash\nsleep 0.3\n"))
    made = backfill.create(app.config, app.store, backfill.Request(
        schedule="nightly", start="2026-01-01T00:00", end="2026-01-01T00:19", max_runs=3), clock.now())
    app.close()
    rnd = random.Random(15)
    argv = [sys.executable, "-m", "featherflow"] + project.args() + ["backfill", "resume", str(made.backfill.id)]
    killed = 0
    for _ in range(30):
        driver = subprocess.Popen(argv, cwd=project.root, env=project.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            driver.wait(timeout=rnd.uniform(0.1, 0.45))
        except subprocess.TimeoutExpired:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            killed += 1
    assert killed >= 15  # most drivers die mid-way (the others found it finished, or driven)
    last = project.sh("backfill", "resume", made.backfill.id, timeout=120)
    assert last.code in (0, 3), (last.out, last.err)  # 3: an earlier driver had finished it
    app = project.app()

    def settled():
        return not app.store.runs.list_runs(states_in=(states.QUEUED, states.RUNNING), limit=None)

    wait_for(settled, "no run queued or running", timeout=60, interval=0.1)
    b = app.store.backfills.get(made.backfill.id)
    assert b.state == rows.SUCCESS, b
    runs = app.store.runs.list_runs(limit=None)
    assert Counter(r.scheduled_at for r in runs) == Counter(
        {datetime(2026, 1, 1, 0, m, tzinfo=UTC): 1 for m in range(20)})
    assert all(r.state == states.SUCCESS and r.trigger == "backfill" for r in runs)
    fired = {x.slot_at: x.run_id for x in app.store.schedules.recent_slots(s.id, limit=None)}
    assert fired == {r.scheduled_at: r.id for r in runs}
    assert Counter(line[0] for line in seen(project)) == Counter(
        {f"2026-01-01T00:{m:02d}:00Z": 1 for m in range(20)})  # each task ran once: no run started twice
    app.close()


@pytest.mark.slow
@pytest.mark.parametrize("point,reprocess", [("backfill-after-fire", "none"), ("backfill-after-spawn", "none"),
                                             ("backfill-after-claim", "failed"),
                                             ("backfill-after-resume-spawn", "failed")])
def test_a_driver_killed_at_each_point_of_the_launch_path_is_taken_up_once(project, point, reprocess):
    app = project.app()
    add_schedule(project, app, tz="UTC")
    app.close()
    rng = ["--from", "2026-01-01", "--to", "2026-01-01"]
    if reprocess == "failed":  # the slot needs a failed run first
        (project.root / "fail.txt").write_text("2026-01-01T03:00:00Z\n")
        assert project.sh("backfill", "nightly", *rng).code == 1
        (project.root / "fail.txt").unlink()
    env = dict(project.env, FEATHERFLOW_FAULT=point)
    argv = [sys.executable, "-m", "featherflow"] + project.args() + ["backfill", "nightly", *rng,
                                                                      "--reprocess", reprocess]
    killed = subprocess.run(argv, cwd=project.root, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    app = project.app()
    b = app.store.backfills.list()[0]
    assert b.state == rows.RUNNING
    app.close()
    done = project.sh("backfill", "resume", b.id)
    assert done.code == 0, (done.out, done.err)
    app = project.app()
    wait_for(lambda: not app.store.runs.list_runs(states_in=(states.QUEUED, states.RUNNING), limit=None),
             "no run queued or running", timeout=60, interval=0.1)
    runs = app.store.runs.list_runs(limit=None)
    assert [r.scheduled_at.day for r in runs] == [1] and runs[0].state == states.SUCCESS
    assert app.store.backfills.get(b.id).state == rows.SUCCESS
    app.close()
    per_slot = Counter(line[0] for line in seen(project))
    assert per_slot == {"2026-01-01T03:00:00Z": 1 + (reprocess == "failed")}  # once (and the failed try)


def test_the_dashboard_shows_a_backfill_run_by_its_trigger():
    from featherflow.dashboard.keys import ViewState
    from featherflow.dashboard.poller import Counts, RunInfo, SchedulerInfo, Snapshot
    from featherflow.dashboard.screen import render

    at = datetime(2026, 6, 12, 3, 0, 0)
    run = RunInfo(6, "etl", "success", "backfill", at - timedelta(minutes=4), counts=Counts(1, 0, 0, 0),
                  started_at=at - timedelta(minutes=3), ended_at=at - timedelta(minutes=2))
    snap = Snapshot(taken_at=at, db_path="/x.db", scheduler=SchedulerInfo(1, at, at, None, True),
                    schedules=(), running=(), recent=(run,), detail=None)
    line = next(line for line in render(snap, ViewState(), 100, 24, at) if " 6 " in line and "etl" in line)
    assert "backfill" in line


def test_a_notification_of_a_backfill_run_carries_its_trigger_and_backfill_id(project):
    from types import SimpleNamespace

    from featherflow.notify.deliver import Deliverer

    app = project.app()
    add_schedule(project, app, tz="UTC")
    made = backfill.create(app.config, app.store, backfill.Request(
        schedule="nightly", start="2030-01-01", end="2030-01-01"), NOW)
    backfill_driver.Driver(app.config, app.store, spawn=FakeSpawn()).step(made.backfill.id, NOW)
    [run] = app.store.runs.list_runs()
    doc = Deliverer(app.store, send=None, host="pi").base(SimpleNamespace(run_id=run.id, kind="started"))
    assert (doc["trigger"], doc["backfill_id"], doc["scheduled_at"]) == (
        "backfill", made.backfill.id, "2030-01-01T03:00:00Z")
    app.close()


def test_an_interrupted_backfill_run_is_resumed_once(project):
    """A reboot interrupts a backfill's run: the driver resumes it once (as the scheduler does
    for its own), waits for that resume, and ends the slot when it does not take."""
    app = project.app()
    add_schedule(project, app, tz="UTC")
    made = backfill.create(app.config, app.store, backfill.Request(
        schedule="nightly", start="2030-01-01", end="2030-01-01"), NOW)
    spawn = FakeSpawn()
    driver = backfill_driver.Driver(app.config, app.store, spawn=spawn)
    driver.step(made.backfill.id, NOW)
    [run] = app.store.runs.list_runs()
    app.store.runs.transition_run(run.id, states.RUNNING)
    app.store.runs.transition_run(run.id, states.INTERRUPTED, reason="the machine restarted while it ran")
    assert driver.step(made.backfill.id, NOW) == [f"slot 2030-01-01 03:00:00 UTC: run {run.id} was interrupted; "
                                                  "resuming it once"]
    assert spawn.calls[-1] == ["_start-run", str(run.id), "--resume"]
    assert driver.step(made.backfill.id, NOW) == [] and len(spawn.calls) == 2  # its resume is starting
    [slot] = app.store.backfills.slots(made.backfill.id)
    app.store.backfills.set_launcher(slot.id, 2 ** 22 + 1, None, None)  # that process died without resuming it
    assert driver.step(made.backfill.id, NOW) == [f"slot 2030-01-01 03:00:00 UTC: run {run.id} interrupted"]
    b = app.store.backfills.get(made.backfill.id)
    assert (b.state, b.counts.get("interrupted")) == (rows.FAILED, 1) and len(spawn.calls) == 2
    app.close()
