"""`featherflow doctor`: the pure checks with explicit inputs, then the command on real projects."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from featherflow import clock, doctor, host, scaffold, states
from featherflow.host import OK, PROBLEM, WARNING
from helpers import fake_run

NOW = datetime(2030, 6, 1, 12, 0, 0)

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /srv/share rw,relatime shared:5 - nfs4 nas:/export rw,vers=4.2
41 27 0:51 / /mnt/win\\040share rw - cifs //pc/c rw
42 27 0:52 / /home/pi/remote rw,nosuid - fuse.sshfs pi@host:/ rw
43 40 0:53 / /srv/share/local rw - ext4 /dev/sdb1 rw
"""


# -- pure checks ---------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    ("/home/pi/.featherflow/featherflow.db", ("/", "ext4")),
    ("/srv/share/ff/featherflow.db", ("/srv/share", "nfs4")),
    ("/srv/share/local/featherflow.db", ("/srv/share/local", "ext4")),  # the longest mount point wins
    ("/srv/shared/featherflow.db", ("/", "ext4")),  # a prefix of the name is not a parent dir
    ("/mnt/win share/featherflow.db", ("/mnt/win share", "cifs")),  # \040 in the table is a space
    ("/home/pi/remote/featherflow.db", ("/home/pi/remote", "fuse.sshfs")),
])
def test_filesystem_of_picks_the_mount_holding_the_path(path, expected):
    assert host.filesystem_of(path, MOUNTINFO) == expected


def test_proc_mounts_format_is_understood_too():
    mounts = "/dev/vda / ext4 rw 0 0\nnas:/x /data nfs rw 0 0\n"
    assert host.filesystem_of("/data/ff.db", mounts) == ("/data", "nfs")


@pytest.mark.parametrize("fstype", ["nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "sshfs"])
def test_a_database_on_a_network_filesystem_is_a_problem(tmp_path, fstype):
    table = f"27 1 254:0 / / rw - ext4 /dev/vda rw\n50 27 0:9 / {tmp_path} rw - {fstype} srv:/x rw\n"
    finding = host.check_filesystem(tmp_path / "featherflow.db", table)
    assert finding.status == PROBLEM and fstype in finding.detail and "local disk" in finding.fix


def test_a_database_on_a_local_filesystem_is_fine(tmp_path):
    finding = host.check_filesystem(tmp_path / "featherflow.db", "1 0 1:1 / / rw - ext4 /dev/x rw\n")
    assert finding.status == OK and "ext4" in finding.detail


@pytest.mark.parametrize("free, total, status", [
    (50e6, 8e9, PROBLEM),  # under 100 MB
    (300e6, 8e9, PROBLEM),  # under 5 % of an SD card
    (2e9, 8e9, OK),
    (150e9, 4e12, OK),  # under 5 % of a big disk, but 150 GB remain
    (120e6, 1e9, OK),
])
def test_free_space_thresholds(free, total, status):
    (finding,) = host.check_free_space([("/x", int(free), int(total))])
    assert finding.status == status
    if status == PROBLEM:
        assert "runs prune" in finding.fix


@pytest.mark.parametrize("synced, now, status", [
    (True, NOW, OK), (False, NOW, WARNING), (None, NOW, WARNING),
    (True, datetime(1970, 1, 1, 0, 1), PROBLEM),  # a Pi that booted without RTC or network
])
def test_clock(synced, now, status):
    finding = host.check_clock(synced, now)
    assert finding.status == status and (finding.fix or status == OK)


def beat(age_seconds, pid=123, stopped=None):
    return {"pid": pid, "heartbeat_at": clock.to_text(NOW - timedelta(seconds=age_seconds)),
            "stopped_at": stopped}


@pytest.mark.parametrize("row, alive, enabled, status, words", [
    (None, False, 0, OK, "never started"),
    (None, False, 2, PROBLEM, "none will fire"),
    (beat(5), True, 1, OK, "heartbeat 5s ago"),
    (beat(600), True, 1, PROBLEM, "hung"),
    (beat(5), False, 1, PROBLEM, "is gone"),
    (beat(5, stopped="2030-06-01 11:00:00"), False, 1, PROBLEM, "stopped"),
    (beat(5, stopped="2030-06-01 11:00:00"), False, 0, OK, "stopped"),
])
def test_scheduler_check(row, alive, enabled, status, words):
    finding = doctor.check_scheduler(row, alive, enabled, NOW)
    assert finding.status == status and words in finding.detail
    if status == PROBLEM:
        assert "scheduler start" in finding.fix


@pytest.mark.parametrize("version, tables, status", [(0, 0, OK), (0, 3, PROBLEM), (1, 5, OK), (2, 5, PROBLEM)])
def test_schema_check(version, tables, status):
    assert doctor.check_schema(version, tables, 1).status == status


def test_stuck_and_orphan_checks_name_the_runs_and_the_fix():
    stuck = doctor.check_stuck([(7, "etl", "running")])
    assert stuck.status == PROBLEM and "7 (etl, running)" in stuck.detail and "runs resume" in stuck.fix
    assert doctor.check_stuck([]).status == OK
    orphans = doctor.check_orphans({4242: (3, "success"), 4343: (4, "running")})
    assert orphans.status == PROBLEM and "pid 4242 (run 3, success)" in orphans.detail and orphans.fix == "kill 4242"
    assert doctor.check_orphans({4343: (4, "running")}).status == OK


def test_wal_and_logs_sizes():
    assert doctor.check_wal_size(None).status == OK
    assert doctor.check_wal_size(100 << 20).status == WARNING
    logs = doctor.check_logs(2 << 30, 40, "/out/runs")
    assert logs.status == WARNING and "featherflow runs prune --older-than 30d" in logs.fix
    assert "runs prune" in doctor.check_logs(1000, 1, "/out/runs").fix


def test_permissions_name_each_loose_file_and_its_chmod(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    db = home / "featherflow.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    output = tmp_path / "out"
    output.mkdir(mode=0o777)
    output.chmod(0o777)
    found = {f.name: f for f in doctor.check_permissions(db, home, output, os.getuid())}
    assert found["database permissions"].status == PROBLEM and f"chmod 600 {db}" in found["database permissions"].fix
    config = found["config dir permissions"]
    assert config.status == PROBLEM and f"chmod 700 {home}" in config.fix
    assert found["output dir permissions"].status == PROBLEM and "plant" in found["output dir permissions"].detail
    output.chmod(0o755)
    assert doctor.check_output_dir(output, os.getuid()).status == WARNING
    output.chmod(0o700)
    db.chmod(0o600)
    home.chmod(0o700)
    assert all(f.status == OK for f in doctor.check_permissions(db, home, output, os.getuid()))


def test_project_permissions_warn_about_what_others_can_write(tmp_path):
    flows, tasks = tmp_path / "flows", tmp_path / "tasks"
    (tasks / "lib").mkdir(parents=True)
    flows.mkdir()
    (flows / "f.json").write_text("{}")
    script = tasks / "lib" / "t.sh"
    script.write_text("echo\n")
    for path, mode in ((flows, 0o755), (tasks, 0o755), (tasks / "lib", 0o755), (flows / "f.json", 0o644),
                       (script, 0o755)):
        path.chmod(mode)
    ok = doctor.check_project(flows, tasks, scaffold.loose_paths(flows, tasks))
    assert ok.status == OK and str(tasks) in ok.detail
    tasks.chmod(0o777)
    script.chmod(0o775)
    (flows / "f.json").chmod(0o666)
    loose = scaffold.loose_paths(flows, tasks)
    assert loose == [(str(flows / "f.json"), 0o666), (str(tasks), 0o777), (str(script), 0o775)]
    found = doctor.check_project(flows, tasks, loose)
    assert found.status == WARNING
    assert f"{tasks} is 0777" in found.detail and f"{script} is 0775" in found.detail
    assert found.fix == f"chmod go-w {flows / 'f.json'} {tasks} {script}"
    many = doctor.check_project(flows, tasks, [(f"/p/{i}", 0o777) for i in range(8)])
    assert "and 3 more" in many.detail and many.fix == f"chmod -R go-w {flows} {tasks}"
    assert doctor.check_project(tmp_path / "no", tmp_path / "nor", []).status == OK


# -- the command ------------------------------------------------------------------------

@pytest.fixture
def synced(monkeypatch):
    """This sandbox has no time sync to ask: make the clock a known quantity."""
    monkeypatch.setattr(doctor, "clock_synchronised", lambda: True)


def ran(project):
    project.write_task("t.sh", "echo some log output\n")
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}]})
    result = project.sh("run", "f")
    assert result.code == 0, result.err
    return project


def test_a_healthy_project_exits_0(project, synced):
    ran(project)
    result = project.cli("doctor")
    assert result.code == 0, result.out
    assert result.out.strip().endswith("healthy")
    data = json.loads(project.cli("doctor", "--json").out)
    assert data["healthy"] is True and data["problems"] == 0
    names = [f["name"] for f in data["findings"]]
    for name in ("database integrity", "schema version", "WAL size", "database permissions",
                 "config dir permissions", "output dir permissions", "project permissions", "database filesystem",
                 "free disk space", "clock", "scheduler", "stuck runs", "orphaned processes", "logs disk use"):
        assert name in names
    logs = next(f for f in data["findings"] if f["name"] == "logs disk use")
    assert "1 run dir(s)" in logs["detail"] and "featherflow runs prune --older-than 30d" in logs["fix"]


def test_doctor_without_a_database_creates_nothing(project, synced):
    result = project.cli("doctor")
    assert result.code == 0 and "no database" in result.out
    assert not project.db.exists() and not project.home.exists()


def test_problems_exit_1_with_their_fixes(project, synced):
    ran(project)
    project.db.chmod(0o644)
    project.home.chmod(0o755)
    result = project.cli("doctor")
    assert result.code == 1
    assert f"fix: chmod 600 {project.db}" in result.out and f"fix: chmod 700 {project.home}" in result.out
    assert "2 problem(s)" in result.out
    data = json.loads(project.cli("doctor", "--json").out)
    assert data["healthy"] is False and data["problems"] == 2


def test_a_world_writable_tasks_dir_is_a_warning_with_its_fix(project, synced):
    ran(project)
    project.tasks.chmod(0o777)
    result = project.cli("doctor")
    assert result.code == 0, result.out  # a warning, not a problem
    line = next(line for line in result.out.splitlines() if "project permissions" in line)
    assert line.startswith("warning") and f"{project.tasks} is 0777" in line
    assert f"fix: chmod go-w {project.tasks}" in result.out
    assert result.out.strip().endswith("0 problem(s), 1 warning(s)")


def test_network_filesystem_is_reported(project, synced, monkeypatch):
    ran(project)
    table = f"27 1 254:0 / / rw - ext4 /dev/vda rw\n60 27 0:9 / {project.home} rw - nfs4 nas:/ff rw\n"
    monkeypatch.setattr(doctor, "read_mountinfo", lambda: table)
    result = project.cli("doctor")
    assert result.code == 1 and "network filesystem (nfs4" in result.out


def test_a_stuck_run_is_reported_and_left_alone(project, synced):
    ran(project)
    app = project.app()
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        run = fake_run(app.store, "f", ["t"], pid=dead.pid, pid_start=12345)
    finally:
        app.close()
    result = project.cli("doctor")
    assert result.code == 1 and f"{run.id} (f, running)" in result.out and "runs resume" in result.out
    app = project.app()
    try:
        assert app.store.runs.get_run(run.id).state == states.RUNNING  # the doctor only looks
    finally:
        app.close()


def test_a_process_of_a_finished_run_is_an_orphan(project, synced):
    ran(project)
    app = project.app()
    try:
        uid = app.store.runs.get_run(1).uid
    finally:
        app.close()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, "FEATHERFLOW_RUN_UID": uid})
    try:
        result = project.cli("doctor")
        assert result.code == 1 and f"pid {child.pid} (run 1, success)" in result.out
        assert f"fix: kill {child.pid}" in result.out
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_a_hung_scheduler_with_enabled_schedules_is_a_problem(project, synced):
    ran(project)
    old = clock.to_text(datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=10))
    con = sqlite3.connect(str(project.db))
    with con:
        con.execute("INSERT INTO scheduler (id, pid, pid_start, boot_id, started_at, heartbeat_at) "
                    "VALUES (1, ?, NULL, NULL, ?, ?)", (os.getpid(), old, old))
        con.execute("INSERT INTO schedule (name, flow_name, cron, tz, flows_dir, tasks_dir, output_dir, "
                    "created_at, updated_at) VALUES ('f', 'f', '* * * * *', 'UTC', '/f', '/t', '/o', ?, ?)",
                    (old, old))
    con.close()
    result = project.cli("doctor")
    assert result.code == 1 and f"pid {os.getpid()} is alive but hung" in result.out


def test_a_damaged_database_is_a_problem_not_a_traceback(project, synced):
    ran(project)
    data = project.db.read_bytes()
    project.db.write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    before = project.db.read_bytes()
    result = project.sh("doctor", "--json")
    assert result.code == 1 and "Traceback" not in result.err
    integrity = next(f for f in json.loads(result.out)["findings"] if f["name"] == "database integrity")
    assert integrity["status"] == PROBLEM and "backup" in integrity["fix"]
    assert project.db.read_bytes() == before


def test_the_restore_advice_moves_the_wal_aside_too(tmp_path):
    """A -wal left beside a restored backup would be replayed into it: the advice moves all three."""
    db = tmp_path / "my dir" / "featherflow.db"
    db.parent.mkdir()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").write_text(suffix)
    fix = doctor._restore(db)
    command = fix[fix.index("(for ") + 1:fix.index("done)") + 4]
    subprocess.run(["bash", "-c", command], check=True)
    assert sorted(p.name for p in db.parent.iterdir()) == [
        "featherflow.db-shm.damaged", "featherflow.db-wal.damaged", "featherflow.db.damaged"]
