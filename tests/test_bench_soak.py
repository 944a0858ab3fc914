"""bench/soak.py in its quick mode: a few simulated hours of three every-minute schedules with
a short retention window, run as a user runs it. Asserts the output's shape and that fds,
runs and database stay bounded (no timing, no RSS figure: those are the bench's to report)."""

import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


def _rows(out, first):
    """The markdown table whose header starts with `first`, as lists of cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if "---" not in line:
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_the_quick_soak_prints_its_table_and_a_verdict_and_stays_bounded(tmp_path):
    done = subprocess.run([sys.executable, str(SOAK), "--days", "0.125", "--schedules", "2", "--sample-every", "30",
                           "--older-than", "30m", "--keep-last", "5", "--prune-every", "30m",
                           "--dir", str(tmp_path / "soak")], capture_output=True, text=True, timeout=300)
    assert "verdict: " in done.stdout, done.stderr
    table = _rows(done.stdout, "sim time")
    assert table[0] == ["sim time", "runs done", "runs kept", "run dirs", "RSS MB", "fds", "db MB", "WAL MB",
                        "logs MB", "pruned"]
    samples = [dict(zip(table[0], row)) for row in table[1:]]
    assert [s["sim time"] for s in samples] == ["0d 00:00", "0d 00:30", "0d 01:00", "0d 01:30", "0d 02:00",
                                                "0d 02:30", "0d 03:00"]
    assert int(samples[-1]["runs done"]) == 2 * 180 + 2  # every slot fired once, none twice
    # The policy (older than 30 min, applied every 30 min) holds the history to about an hour of runs.
    kept = [int(s["runs kept"]) for s in samples]
    assert max(kept) <= 2 * 60 + 2 and kept[-1] < int(samples[-1]["runs done"])
    assert all(s["runs kept"] == s["run dirs"] for s in samples)  # rows and directories go together
    assert int(samples[-1]["pruned"]) == int(samples[-1]["runs done"]) - kept[-1]
    fds = [int(s["fds"]) for s in samples[1:]]
    assert max(fds) - min(fds) <= 2
    assert max(float(s["db MB"]) for s in samples[3:]) <= 2 * max(float(s["db MB"]) for s in samples[:3]) + 0.1
    checks = _rows(done.stdout, "target")
    assert [c[0] for c in checks[1:]] == ["RSS < 30 MB", "RSS flat after 1 h (+2 MB)", "no fd leak",
                                          "database bounded", "logs bounded", "runs bounded"]
    verdicts = {c[0]: c[1] for c in checks[1:]}
    assert all(v in ("PASS", "FAIL") for v in verdicts.values())
    for target in ("no fd leak", "database bounded", "logs bounded", "runs bounded"):
        assert verdicts[target] == "PASS", done.stdout
    assert done.returncode == (0 if set(verdicts.values()) == {"PASS"} else 1)


def test_the_daemon_forgets_the_runs_it_launched_once_they_started(project):
    """What the soak found: the daemon kept a launch count for every run it ever launched
    (its memory grew by one entry a run); now only queued runs keep one."""
    from datetime import datetime, timedelta, timezone

    from featherflow import states
    from featherflow.scheduler import admin as schedule_admin
    from featherflow.scheduler import daemon

    project.write_task("ok.sh", "#!/bin/bash\n:\n")
    project.write_flow({"name": "tick", "tasks": [{"id": "work", "script": "ok.sh"}]})
    app = project.app()
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def finish(run, resume):  # the run's process, at once
        app.store.runs.transition_run(run.id, states.RUNNING, now=now[0])
        for end in (states.RUNNING, states.SUCCESS):
            app.store.runs.transition_attempt(run.id, "work", 1, end, exit_code=0, now=now[0])
        app.store.runs.transition_run(run.id, states.SUCCESS, now=now[0])

    try:
        schedule_admin.add_schedule(app.config, app.store, "tick", cron="* * * * *", tz="UTC", now=t0)
        scheduler = daemon.Scheduler(app.config, app.store, launch=finish, deliver=lambda: None)
        now = [t0]
        for minute in range(1, 31):
            now[0] = t0 + timedelta(minutes=minute)
            scheduler.tick(now[0])
        assert app.store.runs.run_count() == 30
        assert len(scheduler._launches) <= 1
    finally:
        app.close()


def test_the_daemon_trims_old_slot_rows_by_now_not_by_the_wall_clock(project, monkeypatch):
    """What the soak found: slot rows were trimmed once an hour of the *wall clock*, so a daemon
    ticked with `now` (the soak, a test) never trimmed again; now it is once an hour of `now`."""
    from datetime import datetime, timedelta, timezone

    from featherflow.scheduler import admin as schedule_admin
    from featherflow.scheduler import daemon
    from helpers import slot_count

    project.write_task("ok.sh", "#!/bin/bash\n:\n")
    project.write_flow({"name": "tick", "tasks": [{"id": "work", "script": "ok.sh"}]})
    monkeypatch.setattr(daemon, "SLOTS_KEPT", 10)
    app = project.app()
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    try:
        schedule = schedule_admin.add_schedule(app.config, app.store, "tick", cron="* * * * *", tz="UTC",
                                               overlap="allow", now=t0)
        scheduler = daemon.Scheduler(app.config, app.store, launch=lambda run, resume: None, deliver=lambda: None)
        for minute in range(1, 60):
            scheduler.tick(t0 + timedelta(minutes=minute))
        assert slot_count(app.store, schedule.id) == 59  # trimmed at the first tick only
        scheduler.tick(t0 + timedelta(minutes=62))  # an hour of `now` after the first trim
        assert slot_count(app.store, schedule.id) == 10
    finally:
        app.close()
