"""Schedules and the scheduler daemon: CLI, tick(now) against a real database, real daemons.

tick() tests pass explicit times and a fake launcher; the slow tests run real
daemons (`scheduler start`, `--foreground`) on per-second schedules, SIGKILL
them at each point of the fire path and check that no slot fired twice, none
was lost and no run stayed queued.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from featherflow import clock, states
from featherflow.cli import main as cli
from featherflow.scheduler import admin as schedule_admin
from featherflow.scheduler import compat, lock, systemd
from featherflow.scheduler import daemon as scheduler
from featherflow.scheduler import slots as schedules
from featherflow.errors import ConflictError, UsageError
from helpers import fire_slot, set_process, slot_count

UTC = timezone.utc
T0 = datetime(2030, 1, 1, tzinfo=UTC)
ROOT = os.geteuid() == 0
RECORD = """#!/bin/bash
echo "$FEATHERFLOW_RUN_ID|$FEATHERFLOW_ATTEMPT|$FEATHERFLOW_TRIGGER|$FEATHERFLOW_SCHEDULED_AT|$FEATHERFLOW_PARAMS|$PWD" \
  >> "$FEATHERFLOW_OUTPUT_DIR/record.txt"
"""


def add_flow(project, name="tick", params=None, script="record.sh", text=RECORD):
    project.write_task(script, text)
    project.write_flow({"name": name, "params": params or {}, "tasks": [{"id": "work", "script": script}]})


class FakeLaunch:
    """Records what the scheduler would start; starts nothing (the run stays queued, held by us)."""

    def __init__(self):
        self.calls = []

    def __call__(self, run, resume):
        self.calls.append((run.id, resume))
        return None


def ticker(project, **kwargs):
    app = project.app()
    fake = FakeLaunch()
    return app, scheduler.Scheduler(app.config, app.store, launch=fake, **kwargs), fake


def wait_for(predicate, deadline=30.0, what="condition"):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def one_error_line(result, *needles):
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- schedule commands ------------------------------------------------------------

def test_schedule_add_list_show_remove(project):
    add_flow(project, params={"who": "world"})
    r = project.cli("schedule", "add", "tick", "--interval", "daily", "--at", "03:30", "--tz", "Europe/Berlin",
                    "--params", '{"who": "cron"}', "--description", "nightly")
    assert r.code == 0, r.err
    assert "cron '30 3 * * *' in Europe/Berlin" in r.out and "next: " in r.out
    r = project.cli("schedule", "add", "tick", "--name", "tick-fast", "--cron", "*/5 * * * *", "--tz", "UTC",
                    "--catchup", "all", "--overlap", "queue", "--on-interrupt", "leave", "--disabled")
    assert r.code == 0 and "(disabled)" in r.out
    listed = json.loads(project.cli("schedule", "list", "--json").out)
    assert [s["name"] for s in listed] == ["tick", "tick-fast"]
    first, second = listed
    assert first["params"] == {"who": "cron"} and first["tz"] == "Europe/Berlin" and first["next_at"]
    assert first["flows_dir"] == str(project.flows) and first["output_dir"] == str(project.output)
    assert (second["catchup"], second["overlap"], second["on_interrupt"], second["enabled"]) == (
        "all", "queue", "leave", False)
    assert second["next_at"] is None
    table = project.cli("schedule", "list").out
    assert "tick-fast" in table and "disabled" in table and "never fired" in table
    assert all(len(line) <= 80 for line in table.splitlines())
    shown = project.cli("schedule", "show", "tick").out
    assert "nightly" in shown and "catchup=latest overlap=skip on-interrupt=resume" in shown
    assert project.cli("schedule", "enable", "tick-fast").code == 0
    assert json.loads(project.cli("schedule", "list", "--json").out)[1]["enabled"] is True
    assert project.cli("schedule", "disable", "tick").code == 0
    assert project.cli("schedule", "remove", "tick").code == 0
    assert [s["name"] for s in json.loads(project.cli("schedule", "list", "--json").out)] == ["tick-fast"]


def test_schedule_default_zone_is_the_machines(project):
    add_flow(project)
    assert project.cli("schedule", "add", "tick", "--interval", "hourly").code == 0
    zone = json.loads(project.cli("schedule", "list", "--json").out)[0]["tz"]
    assert zone == schedules.local_zone_name(os.environ.get("TZ"))


@pytest.mark.parametrize("argv, code, needles", [
    (["nope", "--interval", "daily"], 2, ["flow 'nope' not found"]),
    (["tick", "--cron", "61 * * * *"], 2, ["bad cron expression", "valid: 5 fields"]),
    (["tick", "--cron", "* * * *"], 2, ["4 field(s)"]),
    (["tick", "--interval", "daily", "--at", "24:00"], 2, ["valid format is HH:MM"]),
    (["tick", "--interval", "hourly", "--at", "01:15"], 2, ["valid format is :MM"]),
    (["tick", "--interval", "daily", "--cron", "0 * * * *"], 2, ["not both"]),
    (["tick", "--cron", "0 * * * *", "--at", "03:00"], 2, ["--at goes with --interval"]),
    (["tick"], 2, ["say when"]),
    (["tick", "--interval", "daily", "--tz", "Mars/Base"], 2, ["unknown time zone", "IANA"]),
    (["tick", "--interval", "daily", "--params", '{"nope": 1}'], 2, ["unknown param 'nope'"]),
    (["tick", "--interval", "daily", "--name", "../x"], 2, ["bad schedule name"]),
])
def test_schedule_add_errors_are_one_clear_line(project, argv, code, needles):
    add_flow(project)
    r = project.cli("schedule", "add", *argv)
    assert r.code == code
    one_error_line(r, *needles)
    assert project.cli("schedule", "list", "--json").out.strip() == "[]"


def test_invalid_flow_cannot_be_scheduled(project):
    project.write_flow({"name": "broken", "tasks": [{"id": "a", "script": "missing.sh"}]})
    r = project.cli("schedule", "add", "broken", "--interval", "daily")
    assert r.code == 2 and "missing.sh" in r.err


def test_schedule_add_help_says_a_second_schedule_needs_its_own_name(project):
    """The original README adds --interval hourly, then --cron, to one flow without --name."""
    text = project.cli("schedule", "add", "--help").out
    flat = " ".join(text.split())
    assert "a second schedule of the same flow needs its own --name" in flat
    assert "each further schedule of the flow needs its own" in flat  # the --name option itself


def test_second_schedule_needs_its_own_name(project):
    add_flow(project)
    assert project.cli("schedule", "add", "tick", "--interval", "daily").code == 0
    r = project.cli("schedule", "add", "tick", "--interval", "hourly")
    assert r.code == 3
    one_error_line(r, "already exists", "--name")
    assert project.cli("schedule", "add", "tick", "--interval", "hourly", "--name", "tick-hourly").code == 0


def test_unknown_schedule_names_the_known_ones(project):
    add_flow(project)
    project.cli("schedule", "add", "tick", "--interval", "daily")
    for command in ("show", "remove", "enable", "disable"):
        r = project.cli("schedule", command, "nope")
        assert r.code == 2
        one_error_line(r, "no schedule named 'nope'", "known: tick")


# -- tick(now) against a real database ---------------------------------------------------

def test_tick_fires_a_due_slot_once(project):
    add_flow(project, params={"who": "x"})
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 3 * * *", tz="UTC", params={"who": "y"}, now=T0)
    now = T0 + timedelta(hours=3, seconds=0.4)
    report = sched.tick(now)
    assert (report.fired, report.skipped) == (1, 0)
    slots = app.store.schedules.recent_slots(s.id)
    assert [(x.slot_at, x.state) for x in slots] == [(datetime(2030, 1, 1, 3, tzinfo=UTC), "fired")]
    run = app.store.runs.get_run(slots[0].run_id)
    assert (run.trigger, run.schedule_id, run.scheduled_at, run.state) == (
        "schedule", s.id, datetime(2030, 1, 1, 3, tzinfo=UTC), "queued")
    assert run.params == {"who": "y"} and run.flows_dir == str(project.flows)
    assert fake.calls == [(run.id, False)]
    again = sched.tick(now)
    assert (again.fired, again.skipped, again.launched) == (0, 0, 0)
    assert slot_count(app.store, s.id) == 1 and app.store.runs.run_count() == 1
    app.close()


def test_a_fired_slot_and_its_run_are_stamped_with_the_ticks_now(project):
    """One clock: the run written in the slot's transaction is created at the tick's `now`,
    not at the wall clock's (which would date a 2030 run today)."""
    add_flow(project)
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 3 * * *", tz="UTC", now=T0)
    now = datetime(2030, 1, 1, 3, tzinfo=UTC)
    assert sched.tick(now).fired == 1
    (slot,) = app.store.schedules.recent_slots(s.id)
    run = app.store.runs.get_run(slot.run_id)
    assert clock.as_utc(slot.created_at) == now
    assert clock.as_utc(run.created_at) == now
    assert [clock.as_utc(a.created_at) for a in app.store.runs.attempts(run.id)] == [now]
    app.close()


def test_tick_after_downtime_records_skips_with_reasons(project):
    add_flow(project)
    app, sched, fake = ticker(project)
    latest = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 * * * *", tz="UTC", name="l", now=T0)
    none = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 * * * *", tz="UTC", name="n", catchup="none", now=T0)
    report = sched.tick(T0 + timedelta(hours=4, minutes=10))
    assert report.fired == 1 and report.skipped == 3 + 4
    by_state = Counter(x.state for x in app.store.schedules.recent_slots(latest.id))
    assert by_state == {"fired": 1, "skipped": 3}
    assert all(x.state == "skipped" and "catchup=none" in x.reason for x in app.store.schedules.recent_slots(none.id))
    shown = project.cli("schedule", "show", "l").out
    assert "missed: the scheduler was not running then" in shown
    app.close()


def finish(app, run_id):
    app.store.runs.transition_run(run_id, states.RUNNING)
    for attempt in app.store.runs.attempts(run_id):
        app.store.runs.transition_attempt(run_id, attempt.task_id, attempt.attempt, states.RUNNING)
        app.store.runs.transition_attempt(run_id, attempt.task_id, attempt.attempt, states.SUCCESS, exit_code=0)
    app.store.runs.transition_run(run_id, states.SUCCESS)


def test_slots_missed_while_the_daemon_was_frozen_say_it_did_not_tick(project):
    """SIGSTOP then SIGCONT: the daemon was running, not ticking, between its two ticks."""
    add_flow(project)
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 * * * *", tz="UTC", now=T0)
    sched.tick(T0 + timedelta(minutes=5))  # its first tick: nothing was due yet
    assert sched.tick(T0 + timedelta(hours=1, seconds=1)).fired == 1
    finish(app, app.store.schedules.recent_slots(s.id)[0].run_id)
    sched.tick(T0 + timedelta(hours=4, minutes=10))  # frozen from 01:00:01 until 04:10
    missed = [x for x in app.store.schedules.recent_slots(s.id) if x.state == "skipped"]
    assert [x.slot_at.hour for x in missed] == [3, 2]
    assert all(x.reason.startswith("missed: the scheduler did not tick from 2030-01-01 01:00:01 UTC "
                                   "to 2030-01-01 04:10:00 UTC") for x in missed)
    shown = project.cli("schedule", "show", s.name).out
    assert "did not tick from" in shown and "not running then" not in shown
    app.close()


def test_a_waiting_catch_up_slot_says_it_fired_once_it_did(project):
    add_flow(project)
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 * * * *", tz="UTC", catchup="all", now=T0)
    sched.tick(T0 + timedelta(hours=2, minutes=30))  # after downtime: 01:00 fires, 02:00 waits
    by_hour = {x.slot_at.hour: x for x in app.store.schedules.recent_slots(s.id)}
    assert by_hour[1].reason == "catch-up: fired 1h30m late (catchup=all)"
    assert by_hour[2].state == "waiting" and "waits for the previous slot's run" in by_hour[2].reason
    finish(app, by_hour[1].run_id)
    assert sched.tick(T0 + timedelta(hours=2, minutes=31)).fired == 1
    fired = next(x for x in app.store.schedules.recent_slots(s.id) if x.slot_at.hour == 2)
    assert fired.state == "fired" and fired.run_id is not None
    assert fired.reason == "catch-up: fired 31m00s late, after the previous slot's run ended (catchup=all)"
    app.close()


def test_tick_overlap_skip_names_the_run(project):
    add_flow(project)
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="*/10 * * * *", tz="UTC", now=T0)
    sched.tick(T0 + timedelta(minutes=10, seconds=1))  # fires; the fake launcher leaves it queued
    run_id = app.store.schedules.recent_slots(s.id)[0].run_id
    sched.tick(T0 + timedelta(minutes=20, seconds=1))
    newest = app.store.schedules.recent_slots(s.id)[0]
    assert newest.state == "skipped" and newest.reason == f"run {run_id} was still active (overlap=skip)"
    app.close()


def test_tick_queue_fires_the_waiting_slot_when_the_run_ends(project):
    add_flow(project)
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="*/10 * * * *", tz="UTC", overlap="queue", now=T0)
    sched.tick(T0 + timedelta(minutes=10, seconds=1))
    first = app.store.schedules.recent_slots(s.id)[0].run_id
    sched.tick(T0 + timedelta(minutes=20, seconds=1))
    assert app.store.schedules.recent_slots(s.id)[0].state == "waiting"
    app.store.runs.transition_run(first, states.RUNNING)
    for attempt in app.store.runs.attempts(first):
        app.store.runs.transition_attempt(first, attempt.task_id, attempt.attempt, states.RUNNING)
        app.store.runs.transition_attempt(first, attempt.task_id, attempt.attempt, states.SUCCESS, exit_code=0)
    app.store.runs.transition_run(first, states.SUCCESS)
    report = sched.tick(T0 + timedelta(minutes=21))
    newest = app.store.schedules.recent_slots(s.id)[0]
    assert report.fired == 1 and newest.state == "fired" and newest.slot_at == datetime(2030, 1, 1, 0, 20, tzinfo=UTC)
    assert app.store.runs.get_run(newest.run_id).scheduled_at == datetime(2030, 1, 1, 0, 20, tzinfo=UTC)
    app.close()


def test_tick_records_a_flow_that_cannot_run(project):
    add_flow(project)
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 * * * *", tz="UTC", now=T0)
    (project.tasks / "record.sh").unlink()
    report = sched.tick(T0 + timedelta(hours=1, seconds=1))
    slot = app.store.schedules.recent_slots(s.id)[0]
    assert report.fired == 0 and slot.state == "skipped" and "cannot run" in slot.reason and "record.sh" in slot.reason
    app.close()


def test_tick_disabled_schedule_does_not_fire_and_enable_starts_from_now(project):
    add_flow(project)
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 * * * *", tz="UTC", enabled=False, now=T0)
    assert sched.tick(T0 + timedelta(hours=5, seconds=1)).fired == 0
    app.store.schedules.set_schedule_enabled("tick", True, now=T0 + timedelta(hours=5, minutes=30))
    assert sched.tick(T0 + timedelta(hours=5, minutes=40)).fired == 0  # nothing from while disabled
    assert sched.tick(T0 + timedelta(hours=6, seconds=1)).fired == 1
    assert [x.slot_at.hour for x in app.store.schedules.recent_slots(s.id)] == [6]
    app.close()


def test_tick_adopts_a_queued_run_whose_launcher_died(project):
    add_flow(project)
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 * * * *", tz="UTC", now=T0)
    dead = subprocess.Popen(["true"])
    dead.wait()
    args = replace(sched.new_run(app.store.schedules.get_schedule(s.id)), pid=dead.pid, pid_start=1)
    run = fire_slot(app.store, s.id, T0 + timedelta(hours=1), args)
    report = sched.tick(T0 + timedelta(hours=1, seconds=30))
    assert report.adopted == 1 and report.interrupted == 0 and fake.calls == [(run.id, False)]
    assert app.store.runs.get_run(run.id).state == "queued" and app.store.runs.get_run(run.id).pid == os.getpid()
    app.close()


def test_tick_auto_resumes_an_interrupted_scheduled_run_once(project):
    add_flow(project)
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 3 * * *", tz="UTC", now=T0)
    sched.tick(T0 + timedelta(hours=3, seconds=1))
    run_id = app.store.schedules.recent_slots(s.id)[0].run_id

    def crash():  # as if the machine rebooted while it ran
        set_process(app.store, run_id, 999999, 1, "another-boot")
        app.store.runs.transition_run(run_id, states.RUNNING, resume=True)

    crash()
    report = sched.tick(T0 + timedelta(hours=4))
    assert report.interrupted == 1 and report.resumed == 1
    assert fake.calls[-1] == (run_id, True)
    assert app.store.runs.get_run(run_id).auto_resumed is True
    crash()  # interrupted again: never a second automatic resume
    report = sched.tick(T0 + timedelta(hours=5))
    assert report.interrupted == 1 and report.resumed == 0 and fake.calls[-1] == (run_id, True)
    app.close()


def test_on_interrupt_leave_is_not_resumed(project):
    add_flow(project)
    app, sched, fake = ticker(project)
    s = schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 3 * * *", tz="UTC", on_interrupt="leave", now=T0)
    sched.tick(T0 + timedelta(hours=3, seconds=1))
    run_id = app.store.schedules.recent_slots(s.id)[0].run_id
    set_process(app.store, run_id, 999999, 1, "another-boot")
    app.store.runs.transition_run(run_id, states.RUNNING)
    assert sched.tick(T0 + timedelta(hours=4)).resumed == 0
    assert app.store.runs.get_run(run_id).state == "interrupted"
    app.close()


def test_root_is_refused_unless_allowed():
    with pytest.raises(UsageError, match="--allow-root"):
        scheduler.check_root(False, euid=0)
    scheduler.check_root(True, euid=0)
    scheduler.check_root(False, euid=1000)


@pytest.mark.skipif(not ROOT, reason="needs to run as root")
def test_cli_refuses_root(project):
    r = project.cli("scheduler", "start", "--foreground")
    assert r.code == 2
    one_error_line(r, "refusing to run the scheduler as root", "--allow-root")


def test_lock_is_exclusive_in_process(project):
    app = project.app()
    first = scheduler.Scheduler(app.config, app.store, allow_root=True)
    first.acquire(T0)
    other = project.app()
    with pytest.raises(ConflictError, match=f"already runs \\(pid {os.getpid()}\\)"):
        scheduler.Scheduler(other.config, other.store, allow_root=True).acquire(T0)
    first.release(T0)
    scheduler.Scheduler(other.config, other.store, allow_root=True).acquire(T0)  # free again
    assert (project.home / "scheduler.lock").stat().st_mode & 0o777 == 0o600
    other.close()
    app.close()


def test_status_when_not_running_exits_1(project):
    r = project.cli("scheduler", "status")
    assert r.code == 1 and "not running" in r.out
    assert project.cli("scheduler", "stop").out.strip() == "scheduler is not running"


# -- systemd unit and the Python API ---------------------------------------------------------

def test_systemd_unit(project, monkeypatch):
    monkeypatch.setenv("SUDO_USER", "pi")
    r = project.cli("scheduler", "install", "--print")
    assert r.code == 0, r.err
    unit = r.out
    for line in ("After=time-sync.target network-online.target", "Wants=time-sync.target",
                 "Restart=on-failure", "KillMode=process", "WantedBy=multi-user.target", "Type=simple"):
        assert line in unit.splitlines()
    user = "pi" if ROOT else __import__("pwd").getpwuid(os.geteuid()).pw_name
    assert f"User={user}" in unit.splitlines()
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "scheduler start --foreground" in exec_line and str(project.home) in exec_line
    assert exec_line.split("=", 1)[1].split()[0] == sys.executable
    user_unit = systemd.unit_text(project.app().config, "pi", system=False)
    assert "WantedBy=default.target" in user_unit and "User=" not in user_unit


def _exec_argv(unit):
    """The featherflow arguments of the unit's ExecStart, after `python -m featherflow`."""
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    words = line.split("=", 1)[1].split()
    assert words[1:3] == ["-m", "featherflow"], line
    return words[3:]


def test_install_as_root_alone_prints_a_root_unit_and_writes_one_only_with_allow_root(project, tmp_path):
    """Root with nobody behind sudo (a container, a bare t2.nano): printing is harmless."""
    cfg = project.app().config
    path, unit = systemd.install(cfg, write=False, euid=0)
    assert path is None and "User=root" in unit.splitlines()
    assert "--allow-root" not in _exec_argv(unit)
    assert any(line.startswith("# ") and "refuses root without --allow-root" in line for line in unit.splitlines())
    with pytest.raises(UsageError, match="needs --allow-root"):
        systemd.install(cfg, write=True, euid=0, sudo_user="root", home=str(tmp_path))
    assert not (tmp_path / ".config").exists()
    path, unit = systemd.install(cfg, system=False, write=True, euid=0, home=str(tmp_path), allow_root=True)
    assert path == tmp_path / ".config" / "systemd" / "user" / systemd.UNIT_NAME
    assert path.read_text() == unit
    argv = _exec_argv(unit)
    assert argv[-4:] == ["scheduler", "start", "--foreground", "--allow-root"]
    args = cli.build_parser().parse_args(argv)
    assert args.allow_root and args.foreground  # the unit's command line is one `scheduler start` takes


def test_install_under_sudo_is_for_the_sudo_user_whatever_allow_root(project):
    _, unit = systemd.install(project.app().config, write=False, euid=0, sudo_user="pi",
                                     home="/nonexistent-root-home", allow_root=True)
    assert "User=pi" in unit.splitlines() and "--allow-root" not in _exec_argv(unit)
    with pytest.raises(UsageError, match="without sudo"):
        systemd.install(project.app().config, system=False, write=False, euid=0, sudo_user="pi")


@pytest.mark.skipif(not ROOT, reason="needs to run as root")
def test_cli_install_as_root(project, monkeypatch, tmp_path):
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # --user writes under it; never /etc
    r = project.cli("scheduler", "install", "--print")
    assert r.code == 0, r.err
    assert "User=root" in r.out.splitlines() and "--allow-root" not in _exec_argv(r.out)
    assert r.err.startswith("note: ") and "--allow-root" in r.err and len(r.err.splitlines()) == 1
    r = project.cli("scheduler", "install", "--print", "--allow-root")
    assert r.code == 0 and r.err == "" and _exec_argv(r.out)[-1] == "--allow-root"
    r = project.cli("scheduler", "install", "--user")
    assert r.code == 2
    one_error_line(r, "as root", "--allow-root")
    assert not (tmp_path / ".config").exists()
    r = project.cli("scheduler", "install", "--user", "--allow-root")
    assert r.code == 0, r.err
    written = (tmp_path / ".config" / "systemd" / "user" / systemd.UNIT_NAME).read_text()
    assert _exec_argv(written)[-1] == "--allow-root"


def test_python_api(project):
    add_flow(project)
    s = compat.get_scheduler(flows_dir=str(project.flows), tasks_dir=str(project.tasks),
                                output_dir=str(project.output), config_dir=str(project.home), check_interval=30)
    manager = s.schedule_manager
    assert manager.add_schedule("tick", "*/5 * * * *", description="five") is True
    assert manager.add_schedule("tick", "61 * * * *") is False  # bad cron: logged, False (as the original)
    entries = manager.get_all_schedules()
    assert [(e.flow_name, e.cron_expression, e.enabled, e.description) for e in entries] == [
        ("tick", "*/5 * * * *", True, "five")]
    assert entries[0].next_run is not None and entries[0].to_dict()["next_run"].endswith("Z")
    assert s.is_running() is False and s.stop() is False
    assert manager.remove_schedule("tick") is True and manager.remove_schedule("tick") is False
    s.close()


README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(project):
    """The README's "From Python (compatible with the original tool)" block, run from the project
    folder with its relative dirs. As root (the test machine), `allow_root=True` is added to
    get_scheduler, the only change: the daemon refuses root otherwise, as the README says."""
    section = README.split("From Python (compatible with the original tool):", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "scheduler.get_scheduler(" in block and "s.start()" in block
    if ROOT:
        assert block.count("check_interval=60)") == 1
        block = block.replace("check_interval=60)", "check_interval=60, allow_root=True)")
    project.write_task("etl.sh", "#!/bin/bash\necho etl\n")
    project.write_flow({"name": "etl", "tasks": [{"id": "work", "script": "etl.sh"}]})
    check = ("\nentries = s.schedule_manager.get_all_schedules()\n"
             "print(s.is_running(), s.stop(), entries)\n")
    done = subprocess.run([sys.executable, "-c", block + check], cwd=str(project.root), env=project.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False []", done.stdout
    log_text = (project.home / "logs" / scheduler.LOG_NAME).read_text()
    assert "scheduler started" in log_text and "scheduler stopped" in log_text, log_text


# -- real daemons --------------------------------------------------------------------------------

def daemon(project, *extra, env=None):
    """`scheduler start --foreground` as a child process."""
    argv = [sys.executable, "-m", "featherflow"] + project.args() + [
        "scheduler", "start", "--foreground", "--allow-root", *extra]
    return subprocess.Popen(argv, cwd=project.root, env={**project.env, **(env or {})},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def records(project):
    path = project.output / "record.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split("|") for line in lines]


def scheduled_runs(store):
    return [r for r in store.runs.list_runs(limit=None) if r.trigger == "schedule"]


def settle(store, deadline=60.0):
    """Wait until no run is queued or running (bounded)."""
    wait_for(lambda: not store.runs.list_runs(states_in=(states.QUEUED, states.RUNNING), limit=None),
             deadline, "runs to finish")


@pytest.mark.slow
def test_daemon_end_to_end(project):
    add_flow(project, params={"who": "world"})
    r = project.sh("scheduler", "start", "--check-interval", "60", "--allow-root")
    assert r.code == 0, r.err
    pid = int(r.out.split("pid ")[1].split(")")[0])
    second = project.sh("scheduler", "start", "--allow-root")
    assert second.code == 3 and f"already runs (pid {pid})" in second.err
    # Added while the daemon sleeps for its 60 s check interval: `schedule add` wakes it.
    assert project.cli("schedule", "add", "tick", "--cron", "* * * * * */2", "--tz", "UTC",
                       "--params", '{"who": "sched"}').code == 0
    app = project.app()
    wait_for(lambda: len([x for x in scheduled_runs(app.store) if x.state == "success"]) >= 2, 25, "two runs")
    status = project.sh("scheduler", "status")
    assert status.code == 0 and f"running, pid {pid}" in status.out and "tick" in status.out
    stopped = project.sh("scheduler", "stop")
    assert stopped.code == 0 and f"stopped (pid {pid})" in stopped.out
    assert project.sh("scheduler", "status").code == 1
    settle(app.store)
    runs = scheduled_runs(app.store)
    slots = {x.run_id: x for x in app.store.schedules.recent_slots(1, None) if x.state == "fired"}
    assert runs and all(r.state == "success" for r in runs)
    for run in runs:
        assert run.scheduled_at == slots[run.id].slot_at and run.scheduled_at.second % 2 == 0
        assert run.params == {"who": "sched"}
    seen = {int(rec[0]): rec for rec in records(project)}
    for run in runs:
        _, _, trigger, scheduled, params, cwd = seen[run.id]
        assert trigger == "schedule" and json.loads(params) == {"who": "sched"}
        assert cwd == str(project.root)  # the parent of the schedule's flows dir
        assert datetime.fromisoformat(scheduled.replace("Z", "+00:00")) == run.scheduled_at  # the slot, not "now"
    log = (project.home / "logs" / "scheduler.log").read_text()
    assert "scheduler started" in log and "scheduler stopped" in log
    app.close()


@pytest.mark.slow
def test_python_api_starts_and_stops_the_daemon(project):
    s = compat.get_scheduler(flows_dir=str(project.flows), tasks_dir=str(project.tasks),
                                output_dir=str(project.output), config_dir=str(project.home),
                                check_interval=30, allow_root=ROOT)
    assert s.start() is True
    assert s.is_running() is True
    assert s.start() is False  # one per database
    assert s.stop() is True and s.is_running() is False
    s.close()


@pytest.mark.slow
def test_sigterm_finishes_the_tick_releases_the_lock_and_exits_0(project):
    first = daemon(project, "--check-interval", "30")
    app = project.app()
    wait_for(lambda: lock.row_alive(app.store.schedules.scheduler_row()), 20, "the daemon")
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0
    assert app.store.schedules.scheduler_row().stopped_at is not None
    again = daemon(project, "--check-interval", "30")  # the lock was released
    wait_for(lambda: app.store.schedules.scheduler_row().pid == again.pid and lock.row_alive(app.store.schedules.scheduler_row()),
             20, "the second daemon")
    again.send_signal(signal.SIGINT)
    assert again.wait(20) == 0
    app.close()


@pytest.mark.slow
def test_five_schedulers_started_at_once_exactly_one_runs(project):
    procs = [daemon(project, "--check-interval", "30") for _ in range(5)]
    app = project.app()
    deadline = time.monotonic() + 40
    while sum(p.poll() is not None for p in procs) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    exited = [p for p in procs if p.poll() is not None]
    alive = [p for p in procs if p.poll() is None]
    assert len(exited) == 4 and len(alive) == 1, [p.returncode for p in procs]
    winner = alive[0]
    for p in exited:
        assert p.returncode == 3
        assert f"already runs (pid {winner.pid})" in p.stderr.read()
    wait_for(lambda: app.store.schedules.scheduler_row() and app.store.schedules.scheduler_row().pid == winner.pid, 20, "winner row")
    assert project.sh("scheduler", "stop").code == 0
    assert winner.wait(20) == 0
    for p in procs:
        p.stderr.close()
    app.close()


@pytest.mark.slow
def test_auto_resume_after_the_run_is_killed(project):
    project.write_task("slow.sh", "#!/bin/bash\necho started >> \"$FEATHERFLOW_OUTPUT_DIR/slow.txt\"\n"
                                  "[ \"$FEATHERFLOW_ATTEMPT\" = 1 ] && sleep 60\nexit 0\n")
    project.write_flow({"name": "slow", "tasks": [{"id": "work", "script": "slow.sh"}]})
    assert project.cli("schedule", "add", "slow", "--cron", "* * * * * *", "--tz", "UTC").code == 0
    d = daemon(project, "--check-interval", "1")
    app = project.app()
    try:
        run = wait_for(lambda: next((r for r in scheduled_runs(app.store) if r.state == "running"), None),
                       30, "a running run")
        wait_for(lambda: (project.output / "slow.txt").exists(), 30, "the task to start")
        os.killpg(run.pid, signal.SIGKILL)  # the run's bash dies; its task is a leftover
        done = wait_for(lambda: app.store.runs.get_run(run.id).state == "success" and app.store.runs.get_run(run.id),
                        40, "the resumed run to succeed")
        assert done.auto_resumed is True and done.resumes == 1
        attempts = [a.attempt for a in app.store.runs.attempts(run.id)]
        assert attempts == [1, 2]
        assert app.store.runs.attempts(run.id)[0].state == "interrupted"
    finally:
        d.send_signal(signal.SIGTERM)
        assert d.wait(20) == 0
        d.stderr.close()
    settle(app.store)
    app.close()


FAULT_KILLS = int(os.environ.get("FEATHERFLOW_TEST_FAULT_KILLS", "20"))


@pytest.mark.slow
def test_fault_injection_sigkill_at_each_point_of_the_fire_path(project, capsys):
    add_flow(project)
    assert project.cli("schedule", "add", "tick", "--cron", "* * * * * *", "--tz", "UTC",
                       "--overlap", "allow").code == 0
    app = project.app()
    kills, adopted = Counter(), 0
    for point in scheduler.FAULT_POINTS:
        for _ in range(FAULT_KILLS):
            d = daemon(project, "--check-interval", "5", env={"FEATHERFLOW_FAULT": point})
            _, err = d.communicate(timeout=30)
            assert d.returncode == -signal.SIGKILL, f"{point}: exit {d.returncode}\n{err}"
            kills[point] += 1
            adopted += err.count("its launcher (pid")
    # A clean daemon picks up whatever the killed ones left, fires a few more, and stops.
    final = daemon(project, "--check-interval", "1")
    wait_for(lambda: len({r.id for r in scheduled_runs(app.store)}) and
             lock.row_alive(app.store.schedules.scheduler_row()), 20, "the clean daemon")
    time.sleep(2.5)  # a few per-second slots, on purpose
    final.send_signal(signal.SIGTERM)
    _, err = final.communicate(timeout=20)
    assert final.returncode == 0, err
    adopted += err.count("its launcher (pid")
    settle(app.store)
    project.cli("runs", "list")  # reconcile anything left

    schedule = app.store.schedules.get_schedule("tick")
    slots = app.store.schedules.recent_slots(schedule.id, None)
    runs = scheduled_runs(app.store)
    heartbeat = app.store.schedules.scheduler_row().heartbeat_at
    due, _ = schedules.slots_between(schedule.cron, schedule.tz, schedule.updated_at, heartbeat, limit=10 ** 6)
    recorded = {x.slot_at.replace(tzinfo=UTC) for x in slots}
    duplicate_slots = len(slots) - len({x.slot_at for x in slots})
    duplicate_runs = sum(n - 1 for n in Counter(r.scheduled_at for r in runs).values())
    lost = [slot for slot in due if slot not in recorded]
    fired_without_run = [x for x in slots if x.state == "fired" and not x.run_id]
    queued = [r for r in app.store.runs.list_runs(limit=None) if r.state == "queued"]
    executions = Counter(int(rec[0]) for rec in records(project))
    twice = [run_id for run_id, n in executions.items() if n > 1]
    states_count = Counter(r.state for r in runs)
    refused = (project.home / "logs" / "scheduler.log").read_text().count("not starting it twice")
    with capsys.disabled():
        print(f"\nfault injection: kills {dict(kills)}; slots due {len(due)}, recorded {len(slots)} "
              f"(fired {sum(x.state == 'fired' for x in slots)}, skipped {sum(x.state == 'skipped' for x in slots)}); "
              f"runs {len(runs)} {dict(states_count)}; duplicate slots {duplicate_slots}, duplicate runs "
              f"{duplicate_runs}, runs executed twice {len(twice)}, lost slots {len(lost)}, "
              f"fired slots without run {len(fired_without_run)}, runs stuck queued {len(queued)}; "
              f"runs adopted from a killed daemon {adopted}, second starts refused by the claim {refused}")
    assert sum(kills.values()) == 3 * FAULT_KILLS
    assert duplicate_slots == 0 and duplicate_runs == 0 and not twice
    assert not lost and not fired_without_run and not queued
    assert {r.id for r in runs} == {x.run_id for x in slots if x.state == "fired"}
    assert all(r.state == "success" for r in runs), states_count
    assert set(executions) == {r.id for r in runs}  # every run ran, exactly once
    assert adopted >= FAULT_KILLS  # every after-slot-commit kill left a run to adopt
    assert app.store.db.execute_sql("PRAGMA integrity_check").fetchone()[0] == "ok"
    app.close()


def damage_flow_run(db) -> None:
    """Overwrite the pages of flow_run and its indexes: the file still opens (header, schema,
    the scheduler row are intact) but every read of runs fails `database disk image is malformed`."""
    import random
    import sqlite3

    con = sqlite3.connect(str(db), isolation_level=None)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = [row[0] for row in con.execute("SELECT rootpage FROM sqlite_master WHERE tbl_name = 'flow_run' "
                                               "AND rootpage > 1")]
        size = con.execute("PRAGMA page_size").fetchone()[0]
    finally:
        con.close()
    rng = random.Random(5)
    with open(db, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * size)
            f.write(bytes(rng.randrange(256) for _ in range(size)))


@pytest.mark.slow
def test_a_damaged_database_fails_scheduler_start_and_stops_the_daemon(project):
    add_flow(project)
    assert project.sh("run", "tick").code == 0
    damage_flow_run(project.db)
    refused = project.sh("runs", "list")
    assert refused.code == 4 and "damaged" in refused.err, refused  # every other command refuses it

    started = project.sh("scheduler", "start", "--check-interval", "1", "--allow-root")
    assert started.code == 4 and "scheduler started" not in started.out, started
    one_error_line(started, "damaged", "malformed")
    log_text = (project.home / "logs" / scheduler.LOG_NAME).read_text()
    assert "ERROR" in log_text and "error: " in log_text and "Traceback" not in log_text, log_text

    child = daemon(project, "--check-interval", "0.2")  # as systemd runs it
    try:
        code = child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    err = child.stderr.read()
    assert code == 4 and "error: " in err and "malformed" in err and "Traceback" not in err, err
