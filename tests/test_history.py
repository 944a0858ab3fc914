"""History: `runs list/show/logs/cancel/prune`, as a user reads them.

Read-only checks share one project with a few real runs (module scope: real
runs cost a process start each). Times are checked in a subprocess with TZ
set; prune is driven through the library with an explicit `now`, and once
through the CLI.
"""

import json
import os
import queue
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import Project
from featherflow import clock, paths, proc, states
from featherflow.cli import main as cli
from featherflow.store import retention
from featherflow.cli import format as views
from helpers import fake_run, group_members, integrity, this_process, wait_for

README = Path(__file__).resolve().parent.parent / "README.md"

RUN_KEYS = ["id", "uid", "flow", "state", "trigger", "params", "schedule_id", "scheduled_at",
            "created_at", "started_at", "ended_at", "duration_seconds", "reason", "failed_tasks",
            "resumes", "flows_dir", "tasks_dir", "output_dir", "max_parallel", "pid"]
TASK_KEYS = ["id", "state", "attempts", "rule"]
ATTEMPT_KEYS = ["attempt", "state", "exit_code", "reason", "started_at", "ended_at",
                "duration_seconds", "log", "outputs"]
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")

OK = 'echo "out $FEATHERFLOW_TASK_ID attempt $FEATHERFLOW_ATTEMPT"\n'
FAIL = 'echo "boom $FEATHERFLOW_TASK_ID attempt $FEATHERFLOW_ATTEMPT"\nexit 3\n'
# Dependency order z, a, m is not alphabetical: `show` and `logs` must follow the graph.
ETL = {"name": "etl", "params": {"day": "x"}, "tasks": [
    {"id": "z", "script": "ok.sh"},
    {"id": "a", "script": "fail.sh", "depends_on": ["z"], "retries": 1},
    {"id": "m", "script": "ok.sh", "depends_on": ["a"]},
]}
HELLO = {"name": "hello", "tasks": [{"id": "only", "script": "ok.sh"}]}


def write_basics(project):
    project.write_task("ok.sh", OK)
    project.write_task("fail.sh", FAIL)
    project.write_flow(ETL)
    project.write_flow(HELLO)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """Runs 1 hello (success), 2 etl (failed: a, twice), 3 hello (success)."""
    project = Project(tmp_path_factory.mktemp("history"))
    write_basics(project)
    for flow, code in (("hello", 0), ("etl", 1), ("hello", 0)):
        result = project.sh("run", flow)
        assert result.code == code, result.out + result.err
    return project


def set_times(db, run_id, created, started=None, ended=None):
    con = sqlite3.connect(str(db))
    with con:
        con.execute("UPDATE flow_run SET created_at = ?, started_at = ?, ended_at = ? WHERE id = ?",
                    (clock.to_text(created), started and clock.to_text(started),
                     ended and clock.to_text(ended), run_id))
    con.close()


def error_line(result, code=2):
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    return lines[0]


# -- runs list ---------------------------------------------------------------------

def test_list_is_newest_first_and_names_the_failing_task(done):
    result = done.cli("runs", "list")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split()[:3] == ["ID", "FLOW", "STATE"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("3", "hello", "success"), ("2", "etl", "failed"), ("1", "hello", "success")]
    assert lines[2].rstrip().endswith("failed: a")
    assert all("failed:" not in line for line in (lines[1], lines[3]))
    assert all("manual" in line for line in lines[1:])
    assert all(len(line) <= 80 for line in lines)


def test_list_filters_by_flow_state_and_limit(done):
    def ids(*argv):
        result = done.cli("runs", "list", "--json", *argv)
        assert result.code == 0, result.err
        return [r["id"] for r in json.loads(result.out)]

    assert ids() == [3, 2, 1]
    assert ids("--flow", "hello") == [3, 1]
    assert ids("--state", "failed") == [2]
    assert ids("--state", "success", "--flow", "etl") == []
    assert ids("--limit", "2") == [3, 2]
    assert ids("--flow", "hello", "--limit", "1") == [3]
    bad = done.cli("runs", "list", "--state", "stuck")
    assert bad.code == 2 and "invalid choice" in bad.err
    bad = done.cli("runs", "list", "--limit", "0")
    assert bad.code == 2 and "whole number >= 1" in bad.err


def test_an_empty_filter_result_is_not_an_empty_history(done, project):
    result = done.cli("runs", "list", "--state", "running", "--flow", "etl")
    assert result.code == 0, result.err
    assert "no runs yet" not in result.out
    assert result.out.startswith("no run matches --flow etl --state running (3 run(s) in the history")
    assert "no run matches --since 2999-01-01" in done.cli("runs", "list", "--since", "2999-01-01").out
    empty = project.cli("runs", "list", "--state", "running")  # nothing ever ran here
    assert empty.code == 0 and empty.out.startswith("no runs yet (start one with")


def test_list_json_has_the_documented_stable_keys(done):
    result = done.cli("runs", "list", "--json")
    runs = json.loads(result.out)
    assert [list(r) for r in runs] == [RUN_KEYS] * 3
    failed = runs[1]
    assert failed["flow"] == "etl" and failed["failed_tasks"] == ["a"]
    assert failed["params"] == {"day": "x"} and failed["trigger"] == "manual"
    for key in ("created_at", "started_at", "ended_at"):
        assert ISO_UTC.fullmatch(failed[key]), failed[key]
    assert failed["duration_seconds"] >= 0 and failed["scheduled_at"] is None
    # The README documents exactly these keys.
    text = " ".join(README.read_text().split())
    section = text[text.index("### JSON output"):text.index("## Exit codes")]
    run_part = section[section.index("A run has the keys"):section.index("A task has")]
    assert re.findall(r"`(\w+)`", run_part) == RUN_KEYS
    task_part = section[section.index("A task has"):section.index("each with")]
    assert re.findall(r"`(\w+)`", task_part) == TASK_KEYS
    attempt_part = section[section.index("each with"):section.index("Times")]
    assert re.findall(r"`(\w+)`", attempt_part) == ATTEMPT_KEYS


def test_list_since_takes_an_age_or_a_local_time(project, store):
    old = fake_run(store, "hello", outcomes={"a": ["success"]}, state=states.SUCCESS)
    new = fake_run(store, "hello", outcomes={"a": ["success"]}, state=states.SUCCESS)
    three_days_ago = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=3)
    set_times(project.db, old.id, three_days_ago, three_days_ago, three_days_ago)

    def ids(since):
        result = project.cli("runs", "list", "--json", "--since", since)
        assert result.code == 0, result.err
        return [r["id"] for r in json.loads(result.out)]

    assert ids("1d") == [new.id]
    assert ids("4d") == [new.id, old.id]
    assert ids("2000-01-01") == [new.id, old.id]
    assert ids("2999-01-01 00:00") == []
    line = error_line(project.cli("runs", "list", "--since", "yesterday"))
    assert "--since" in line and "2h" in line  # says what is valid


def test_parse_since_and_parse_age_take_now_as_a_parameter(monkeypatch):
    now = datetime(2026, 3, 10, 12, 0, 0, tzinfo=timezone.utc)
    assert views.parse_since("2h", now) == datetime(2026, 3, 10, 10, 0, 0, tzinfo=timezone.utc)
    assert views.parse_since("7d", now) == datetime(2026, 3, 3, 12, 0, 0, tzinfo=timezone.utc)
    assert views.parse_age("2w") == timedelta(weeks=2)
    monkeypatch.setenv("TZ", "XXX-02")  # local time is UTC+2
    time.tzset()
    try:
        assert views.parse_since("2026-03-01 03:00", now) == datetime(2026, 3, 1, 1, 0, 0, tzinfo=timezone.utc)
        assert views.parse_since("2026-03-01", now) == datetime(2026, 2, 28, 22, 0, 0, tzinfo=timezone.utc)
    finally:
        monkeypatch.undo()
        time.tzset()
    for bad in ("", "2", "d", "-1d", "1y", "2026-13-01"):
        with pytest.raises(ValueError):
            views.parse_since(bad, now)


def test_list_lines_fit_80_columns_whatever_the_names(project, store):
    long_flow = "f" * 120
    tasks = {("t%02d" % i) + "x" * 60: ["failed"] for i in range(3)}
    fake_run(store, long_flow, outcomes=tasks, state=states.FAILED)
    run = fake_run(store, "etl-" + "y" * 100, outcomes={"a": ["running"]})
    store.runs.interrupt(run.id, states.RUNNING, "its process 4242 is gone (killed, crashed or out of memory)" * 3)
    fake_run(store, "hello", outcomes={"a": ["success"]}, state=states.SUCCESS)
    result = project.cli("runs", "list")
    assert result.code == 0
    lines = result.out.splitlines()
    assert len(lines) == 4
    assert all(len(line) <= 80 for line in lines), [len(line) for line in lines]
    assert "failed: t0" in lines[3] and lines[3].endswith("…")
    assert "interrupted" in lines[2] and "its proc" in lines[2]


# -- runs show ---------------------------------------------------------------------

def test_show_lists_tasks_in_dependency_order_with_every_attempt(done):
    result = done.cli("runs", "show", 2)
    assert result.code == 0, result.err
    out = result.out
    assert out.splitlines()[0].startswith("run 2  etl  FAILED")
    assert '"day": "x"' in out and str(done.flows) in out and str(done.output) in out
    rows = [line.split() for line in out.splitlines() if re.match(r"  [zam] ", line)]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("z", "success", "1", "0"), ("a", "failed", "1", "3"), ("a", "failed", "2", "3"),
        ("m", "upstream_failed", "1", "-")]
    assert out.count("exit code 3") == 2 and "upstream a failed" in out
    logs = re.findall(r"log: (\S+)", out)
    assert [Path(p).name for p in logs] == ["z.1.log", "a.1.log", "a.2.log"]  # m never started
    assert all(Path(p).is_file() for p in logs)


def test_show_json_has_tasks_attempts_and_log_paths(done):
    result = done.cli("runs", "show", 2, "--json")
    data = json.loads(result.out)
    assert list(data) == RUN_KEYS + ["tasks"]
    assert [t["id"] for t in data["tasks"]] == ["z", "a", "m"]
    assert [list(t) for t in data["tasks"]] == [TASK_KEYS] * 3
    a = data["tasks"][1]
    assert a["state"] == "failed"
    assert [(x["attempt"], x["state"], x["exit_code"], x["reason"]) for x in a["attempts"]] == [
        (1, "failed", 3, "exit code 3"), (2, "failed", 3, "exit code 3")]
    assert all(list(x) == ATTEMPT_KEYS for t in data["tasks"] for x in t["attempts"])
    assert Path(a["attempts"][1]["log"]).read_text() == "boom a attempt 2\n"
    assert data["tasks"][2]["attempts"][0]["started_at"] is None
    assert error_line(done.cli("runs", "show", 99)).endswith("(see `featherflow runs list`)")


# -- runs logs ---------------------------------------------------------------------

def test_logs_prints_the_latest_attempt_or_the_one_asked(done):
    assert done.cli("runs", "logs", 2, "a").out == "boom a attempt 2\n"
    assert done.cli("runs", "logs", 2, "a", "--attempt", 1).out == "boom a attempt 1\n"
    assert "no attempt 3" in error_line(done.cli("runs", "logs", 2, "a", "--attempt", 3))
    assert "no task 'q'" in error_line(done.cli("runs", "logs", 2, "q"))


def test_logs_without_a_task_prints_every_task_in_dependency_order(done):
    out = done.cli("runs", "logs", 2).out
    heads = re.findall(r"==> (\w) \(attempt (\d), (\w+)\)", out)
    assert heads == [("z", "1", "success"), ("a", "2", "failed"), ("m", "1", "upstream_failed")]
    assert out.index("out z attempt 1") < out.index("boom a attempt 2") < out.index("no log")


def test_logs_follow_needs_a_task(done):
    assert "TASK" in error_line(done.cli("runs", "logs", 2, "--follow"))


def gated(project):
    """A flow whose task prints, waits for the file `gate`, prints again."""
    gate = project.root / "gate"
    pids = project.root / "pids"
    pids.mkdir(exist_ok=True)
    project.write_task("gated.sh", 'echo $$ > "$2/.pid"; mv "$2/.pid" "$2/$FEATHERFLOW_TASK_ID.pid"\n'
                                   'echo "before"\n'
                                   'while [ ! -e "$1" ]; do sleep 0.02; done\necho "after"\n')
    project.write_task("ok.sh", OK)
    project.write_flow({"name": "gated", "tasks": [
        {"id": "w", "script": "gated.sh", "args": [str(gate), str(pids)]},
        {"id": "next", "script": "ok.sh", "depends_on": ["w"]}]})
    return gate, pids


def start(project, *argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "featherflow", *project.args(), *map(str, argv)],
                            cwd=project.root, env=kwargs.pop("env", project.env),
                            stdin=subprocess.DEVNULL, **kwargs)


def stop(run: subprocess.Popen) -> None:
    """Clean-up: SIGKILL the process group of a run still going, and reap it."""
    if run.poll() is None:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()


def running_task(project, task_id):
    """The id of the newest run once `task_id` runs in it (bounded wait)."""
    app = project.app()
    try:
        def ready():
            runs = app.store.runs.list_runs(limit=1)
            return bool(runs) and any(a.task_id == task_id and a.state == states.RUNNING
                                      for a in app.store.runs.attempts(runs[0].id))

        wait_for(ready, f"task {task_id} to run", timeout=30)
        return app.store.runs.list_runs(limit=1)[0].id
    finally:
        app.close()


class Lines:
    """Read a process's stdout in a thread, so a test can wait for a line with a deadline."""

    def __init__(self, popen):
        self.queue = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, args=(popen.stdout,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, text, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            line = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                return False
            self.seen.append(line)
        return True

    def rest(self, timeout=30.0):
        while True:
            line = self.queue.get(timeout=timeout)
            if line is None:
                return "".join(self.seen)
            self.seen.append(line)


@pytest.mark.slow
def test_logs_follow_tails_a_running_task_until_it_ends(project):
    gate, _ = gated(project)
    run = start(project, "run", "gated", stdout=subprocess.DEVNULL)
    try:
        run_id = running_task(project, "w")
        follow = start(project, "runs", "logs", run_id, "w", "--follow", stdout=subprocess.PIPE, text=True)
        lines = Lines(follow)
        assert lines.wait_for("before")
        assert follow.poll() is None  # the task still runs: follow keeps waiting
        gate.touch()
        assert follow.wait(timeout=30) == 0
        assert lines.rest() == "before\nafter\n"
        assert run.wait(timeout=30) == 0
    finally:
        for p in (run,):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_logs_follow_ends_when_the_run_dies(project):
    """Its run killed, the attempt would stay `running` forever: follow reconciles and stops."""
    gated(project)
    run = start(project, "run", "gated", stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        run_id = running_task(project, "w")
        follow = start(project, "runs", "logs", run_id, "w", "--follow", stdout=subprocess.PIPE, text=True)
        lines = Lines(follow)
        assert lines.wait_for("before")
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        assert follow.wait(timeout=30) == 0
        assert lines.rest() == "before\n"
        app = project.app()
        assert app.store.runs.get_run(run_id).state == states.INTERRUPTED
        app.close()
    finally:
        stop(run)


# -- local time, terminal safety ---------------------------------------------------

def test_times_are_stored_in_utc_and_shown_in_local_time(project, store):
    run = fake_run(store, "hello", outcomes={"a": ["success"]}, state=states.SUCCESS)
    noon = datetime(2026, 1, 15, 12, 0, 0)
    set_times(project.db, run.id, noon, noon, noon + timedelta(seconds=90))

    def shown(tz, *argv):
        result = subprocess.run(
            [sys.executable, "-m", "featherflow", *project.args(), "runs", *map(str, argv)],
            env=dict(project.env, TZ=tz), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    # POSIX TZ strings: no tz database needed. "XXX-05:30" is UTC+5:30.
    assert "started    2026-01-15 12:00:00" in shown("UTC0", "show", run.id)
    assert "started    2026-01-15 17:30:00" in shown("XXX-05:30", "show", run.id)
    assert "ended      2026-01-15 07:01:30" in shown("XXX+05", "show", run.id)
    assert "01-15 17:30" in shown("XXX-05:30", "list")
    assert json.loads(shown("XXX-05:30", "show", run.id, "--json"))["started_at"] == "2026-01-15T12:00:00Z"


class TTY:
    """A stdout that says it is a terminal."""

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass

    def isatty(self):
        return True


NASTY = r'printf "red \033[31mRED\033[0m title \033]0;pwned\007 back\rspace\ttab\n"'


def test_control_characters_in_logs_are_escaped_on_a_terminal_only(project, monkeypatch):
    project.write_task("nasty.sh", NASTY + "\n")
    project.write_flow({"name": "nasty", "tasks": [{"id": "n", "script": "nasty.sh"}]})
    assert project.sh("run", "nasty").code == 0
    raw = project.cli("runs", "logs", 1, "n").out  # not a terminal: the text as written
    assert raw == "red \x1b[31mRED\x1b[0m title \x1b]0;pwned\x07 back\rspace\ttab\n"
    tty = TTY()
    monkeypatch.setattr(sys, "stdout", tty)
    assert cli.main(project.args() + ["runs", "logs", "1", "n"]) == 0
    monkeypatch.undo()
    shown = "".join(tty.parts)
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert shown == "red \\x1b[31mRED\\x1b[0m title \\x1b]0;pwned\\x07 back\\x0dspace\ttab\n"


@pytest.mark.slow
def test_control_characters_are_escaped_on_a_real_pty(project):
    project.write_task("nasty.sh", NASTY + "\n")
    project.write_flow({"name": "nasty", "tasks": [{"id": "n", "script": "nasty.sh"}]})
    assert project.sh("run", "nasty").code == 0
    master, slave = os.openpty()
    try:
        child = start(project, "runs", "logs", 1, "n", stdout=slave, stderr=subprocess.DEVNULL)
        os.close(slave)
        data = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            data += chunk
        assert child.wait(timeout=30) == 0
    finally:
        os.close(master)
    assert b"\x1b" not in data and b"\x07" not in data
    assert b"\\x1b[31mRED" in data and b"\\x07" in data


# -- runs cancel -------------------------------------------------------------------

@pytest.mark.slow
def test_cancel_from_another_process_stops_the_run_and_its_task_group(project):
    gate, pids = gated(project)
    run = start(project, "run", "gated", stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        run_id = running_task(project, "w")
        wait_for((pids / "w.pid").exists, "task w to start", timeout=30)
        task = int((pids / "w.pid").read_text())
        group = os.getpgid(task)
        assert group != run.pid and group_members(group)  # the task has its own group
        result = project.sh("runs", "cancel", run_id)
        assert result.code == 0, result.err
        assert result.out.strip() == f"run {run_id}: cancelled"
        assert run.wait(timeout=30) == 5  # the script handled the TERM itself: no SIGKILL needed
        wait_for(lambda: not group_members(group), "the task group to end", timeout=10)
        app = project.app()
        try:
            assert app.store.runs.get_run(run_id).state == states.CANCELLED
            assert {a.task_id: a.state for a in app.store.runs.attempts(run_id)} == {
                "w": states.CANCELLED, "next": states.CANCELLED}
        finally:
            app.close()
        again = project.cli("runs", "cancel", run_id)
        assert "only queued or running" in error_line(again, code=3)
    finally:
        stop(run)


@pytest.mark.slow
def test_sigterm_ends_a_run_cancelled_by_its_own_script(project):
    """SIGTERM (what `runs cancel` and Ctrl-C send) ends the run by itself, exit 5, every time.

    (Before the engine reaped every ended task, a task reaped while the trap ran
    left `wait -n` with nothing to wait for, and the main loop spun until SIGKILL.)
    """
    gated(project)
    for attempt in range(4):
        run = start(project, "run", "gated", stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            running_task(project, "w")
            os.kill(run.pid, signal.SIGTERM)
            try:
                code = run.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = "still running 10 s after SIGTERM"
            assert code == 5, f"try {attempt + 1}: {code}"
        finally:
            stop(run)


@pytest.mark.slow
def test_a_cancel_that_lands_while_a_start_is_being_recorded_starts_nothing(project):
    """SIGTERM while the script waits for `_mark` to record `w` starting (the database is
    locked): the trap runs, the start is then recorded, and `w` must not be launched after
    all (it would wait for its gate forever, with no trap left to stop it)."""
    gate, pids = gated(project)
    go = project.root / "go"
    project.write_task("first.sh", f'while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.02; done\n')
    project.write_flow({"name": "gated", "tasks": [
        {"id": "first", "script": "first.sh"},
        {"id": "w", "script": "gated.sh", "args": [str(gate), str(pids)], "depends_on": ["first"]}]})
    run = start(project, "run", "gated", stdout=subprocess.PIPE, text=True, start_new_session=True)
    lines = Lines(run)
    holder = None
    try:
        running_task(project, "first")
        holder = sqlite3.connect(str(project.db), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # the next state change (first ends, w starts) waits
        go.touch()
        wait_for(lambda: b"pipe_read" in Path(f"/proc/{run.pid}/wchan").read_bytes(), "the run to wait in _mark",
                 timeout=30)
        run.send_signal(signal.SIGTERM)
        assert lines.wait_for("cancelling run")  # the trap has run; the start is not recorded yet
        holder.execute("COMMIT")
        assert run.wait(timeout=30) == 5, lines.rest()
    finally:
        if holder is not None:
            holder.close()
        stop(run)
        for started in pids.glob("w.pid"):  # a task leads its own group: not in the run's
            try:
                os.killpg(int(started.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not list(pids.glob("w.pid"))  # w never ran
    app = project.app()
    try:
        (row,) = app.store.runs.list_runs()
        assert row.state == states.CANCELLED
        assert {a.task_id: (a.state, a.reason) for a in app.store.runs.attempts(row.id)} == {
            "first": (states.SUCCESS, None),
            "w": (states.CANCELLED, "run cancelled before the task started")}
    finally:
        app.close()


# -- runs resume ------------------------------------------------------------------

@pytest.fixture
def failed_etl(project):
    """Run 1 of etl failed at `a`; `a` succeeds once the file `fixed` exists."""
    project.write_task("ok.sh", OK)
    project.write_task("fail.sh", f'[ -e {project.root / "fixed"} ] || {{ {FAIL.strip()}; }}\n')
    project.write_flow(ETL)
    assert project.sh("run", "etl").code == 1
    return project


def attempts_of(project, run_id):
    app = project.app()
    try:
        return [(a.task_id, a.attempt, a.state) for a in app.store.runs.attempts(run_id)]
    finally:
        app.close()


def test_resume_dry_run_says_what_is_kept_and_what_runs_again(failed_etl):
    before = attempts_of(failed_etl, 1)
    result = failed_etl.cli("runs", "resume", 1, "--dry-run")
    assert result.code == 0, result.err
    assert result.out.splitlines()[1:] == ["  keep:   z", "  re-run: a, m"]
    assert "the definition run 1 started with" in result.out
    from_z = failed_etl.cli("runs", "resume", 1, "--dry-run", "--from", "z")
    assert from_z.out.splitlines()[1:] == ["  keep:   -", "  re-run: z, a, m"]
    assert attempts_of(failed_etl, 1) == before
    assert "--from: unknown task 'q'" in error_line(failed_etl.cli("runs", "resume", 1, "--from", "q"))


@pytest.mark.slow
def test_resume_reruns_what_did_not_succeed_and_keeps_history(failed_etl):
    (failed_etl.root / "fixed").touch()
    result = failed_etl.sh("run", "etl", "--resume")  # the flow's latest failed run
    assert result.code == 0, result.out + result.err
    assert sorted(attempts_of(failed_etl, 1)) == sorted([
        ("z", 1, "success"), ("a", 1, "failed"), ("a", 2, "failed"), ("a", 3, "success"),
        ("m", 1, "upstream_failed"), ("m", 2, "success")])
    shown = json.loads(failed_etl.cli("runs", "show", 1, "--json").out)
    assert shown["state"] == "success" and shown["resumes"] == 1
    assert "only failed or interrupted" in error_line(failed_etl.cli("runs", "resume", 1), code=3)


def test_resume_refuses_a_changed_flow_unless_forced(failed_etl):
    changed = json.loads(json.dumps(ETL))
    changed["tasks"][0]["args"] = ["new"]
    failed_etl.write_flow(changed)
    line = error_line(failed_etl.cli("runs", "resume", 1, "--dry-run"), code=3)
    assert "changed since run 1 started" in line and "--force" in line
    forced = failed_etl.cli("runs", "resume", 1, "--dry-run", "--force")
    assert forced.code == 0 and "the CURRENT definition" in forced.out


@pytest.mark.slow
def test_an_interrupted_run_whose_tasks_all_succeeded_resumes_to_success(project, store):
    """Killed after its last task but before recording its own end: nothing runs again."""
    project.write_task("ok.sh", OK)
    project.write_flow(HELLO)
    flow = project.app().load_flow("hello")
    run = fake_run(store, "hello", outcomes={"only": ["success"]}, snapshot=flow.snapshot(),
                   pid=dead_pid_for_history(), flows_dir=project.flows, tasks_dir=project.tasks,
                   output=project.output)
    listing = json.loads(project.cli("runs", "list", "--json").out)  # reconciles
    assert listing[0]["state"] == states.INTERRUPTED
    result = project.sh("runs", "resume", run.id)
    assert result.code == 0, result.out + result.err
    assert "re-run: - (every task succeeded" in result.out
    # Read through a fresh connection: `project.cli` rebound the models to its own database.
    shown = json.loads(project.cli("runs", "show", run.id, "--json").out)
    assert shown["state"] == states.SUCCESS and shown["resumes"] == 1
    assert [(t["id"], [(a["attempt"], a["state"]) for a in t["attempts"]]) for t in shown["tasks"]] == [
        ("only", [(1, "success")])]


def dead_pid_for_history() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# -- runs prune --------------------------------------------------------------------

def with_files(run, size=1000):
    """Give a fake run a script and a log, as a real one has."""
    directory = paths.run_dir(run)
    (directory / "logs").mkdir(parents=True)
    (directory / "run.sh").write_text("FF_DB=elsewhere\n")
    (directory / "logs" / "a.1.log").write_text("x" * size)
    return directory


@pytest.fixture
def pruneable(project, store):
    """Finished runs of two flows (with files), one live run, and one leftover dir."""
    runs = {}
    for name in ("a1", "a2", "a3"):
        runs[name] = fake_run(store, "alpha", outcomes={"a": ["failed", "success"]}, state=states.SUCCESS,
                              output=project.output)
    runs["b1"] = fake_run(store, "beta", outcomes={"a": ["failed"]}, state=states.FAILED, output=project.output)
    runs["live"] = fake_run(store, "alpha", outcomes={"a": ["running"]}, output=project.output,
                            **this_process())
    for run in runs.values():
        with_files(run)
    ended = max(r.ended_at for r in store.runs.list_runs(limit=None) if r.ended_at)
    return runs, ended


def remaining(store):
    return sorted(r.id for r in store.runs.list_runs(limit=None))


def test_prune_older_than_counts_from_now_and_never_takes_a_running_run(project, store, pruneable):
    runs, ended = pruneable
    report = retention.prune(store, project.db, ended + timedelta(days=29), timedelta(days=30))
    assert report.runs == [] and remaining(store) == sorted(r.id for r in runs.values())
    report = retention.prune(store, project.db, ended + timedelta(days=31), timedelta(days=30))
    assert sorted(report.runs) == sorted(runs[k].id for k in ("a1", "a2", "a3", "b1"))
    assert report.attempts == 3 * 2 + 1
    assert report.files_bytes >= 4 * 1000
    assert remaining(store) == [runs["live"].id]
    assert paths.run_dir(runs["live"]).is_dir()
    assert not any(paths.run_dir(runs[k]).exists() for k in ("a1", "a2", "a3", "b1"))
    con = sqlite3.connect(str(project.db))
    assert con.execute("SELECT COUNT(*) FROM task_attempt").fetchone()[0] == 1
    con.close()
    assert integrity(project.db) == "ok"


def test_prune_keep_last_and_flow(project, store, pruneable):
    runs, ended = pruneable
    now = ended + timedelta(days=1)
    # The live run counts as alpha's newest, so keep-last 2 keeps it and a3.
    report = retention.prune(store, project.db, now, keep_last=2, flow="alpha")
    assert sorted(report.runs) == sorted([runs["a1"].id, runs["a2"].id])
    assert remaining(store) == sorted([runs["a3"].id, runs["b1"].id, runs["live"].id])
    # Both limits: a run goes only when both say so.
    assert retention.prune(store, project.db, now, timedelta(days=30), keep_last=0).runs == []
    report = retention.prune(store, project.db, now, keep_last=0)
    assert sorted(report.runs) == sorted([runs["a3"].id, runs["b1"].id])
    assert remaining(store) == [runs["live"].id]


def test_prune_dry_run_deletes_nothing_but_reports(project, store, pruneable):
    runs, ended = pruneable
    before = remaining(store)
    report = retention.prune(store, project.db, ended + timedelta(days=400), timedelta(days=30), dry_run=True)
    assert len(report.runs) == 4 and report.attempts == 7 and report.files_bytes >= 4000
    assert remaining(store) == before
    assert all(paths.run_dir(r).is_dir() for r in runs.values())


def test_prune_removes_leftover_dirs_of_this_database_only(project, store, pruneable):
    runs, ended = pruneable
    base = project.output / "runs"
    mine = base / "999-deadbeef"
    mine.mkdir()
    (mine / "run.sh").write_text(f"#!/usr/bin/env bash\nFF_DB={shlex.quote(str(project.db))}\n")
    (mine / "big.log").write_text("y" * 5000)
    theirs = base / "998-cafebabe"
    theirs.mkdir()
    (theirs / "run.sh").write_text("FF_DB=/some/other.db\n")
    other = base / "not-a-run"
    other.mkdir()
    report = retention.prune(store, project.db, ended, keep_last=100, output_dir=project.output)
    assert report.runs == []
    assert report.orphan_dirs == [str(mine)] and not mine.exists()
    assert report.files_bytes >= 5000
    assert theirs.is_dir() and other.is_dir()
    assert all(paths.run_dir(r).is_dir() for r in runs.values())


def test_prune_keeps_the_files_of_a_run_resumed_after_it_was_chosen(project, store, pruneable, monkeypatch):
    """Rows are deleted only if still finished; the files of a run that is not deleted stay."""
    runs, ended = pruneable
    resumed = runs["b1"]
    original = store.runs.delete_runs

    def resume_first(ids):  # the resume lands between choosing and deleting
        store.runs.resume(resumed.id, ["a"], pid=os.getpid(), pid_start=proc.start_time(os.getpid()),
                     boot_id=proc.boot_id())
        return original(ids)

    monkeypatch.setattr(store.runs, "delete_runs", resume_first)
    report = retention.prune(store, project.db, ended + timedelta(days=31), timedelta(days=30))
    assert resumed.id not in report.runs and len(report.runs) == 3
    assert store.runs.get_run(resumed.id).state == states.RUNNING
    assert paths.run_dir(resumed).is_dir()


def test_prune_command_reports_what_it_freed(project):
    write_basics(project)
    for flow in ("hello", "hello", "etl"):
        assert project.sh("run", flow).code in (0, 1)
    app = project.app()
    dirs = [paths.run_dir(r) for r in app.store.runs.list_runs(limit=None)]
    live = fake_run(app.store, "hello", outcomes={"only": ["running"]}, output=project.output,
                    **this_process())
    app.close()
    assert all(d.is_dir() for d in dirs)

    # The live run is hello's newest: keep-last 1 keeps it and takes both finished hello runs.
    dry = project.cli("runs", "prune", "--keep-last", "1", "--dry-run")
    assert dry.code == 0 and re.fullmatch(r"would delete 2 run\(s\), 2 attempt\(s\), \d+(\.\d)? k?B "
                                          r"of scripts and logs\n", dry.out), dry.out
    assert all(d.is_dir() for d in dirs)

    result = project.cli("runs", "prune", "--older-than", "0s")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0].startswith("deleted 3 run(s), 6 attempt(s), ")
    assert re.search(r"database: [\d.]+ [kMG]?B -> [\d.]+ [kMG]?B", result.out)
    assert not any(d.exists() for d in dirs)
    listing = json.loads(project.cli("runs", "list", "--json").out)
    assert [r["id"] for r in listing] == [live.id]

    assert "--older-than" in error_line(project.cli("runs", "prune", "--older-than", "30 days"))
    assert "--keep-last" in error_line(project.cli("runs", "prune", "--keep-last", "-1"))
    assert project.cli("runs", "prune", "--flow", "nope").out.startswith("deleted 0 run(s)")


# -- runs list without peewee (store/quick.py) ---------------------------------------------

def test_the_quick_runs_list_reads_what_the_store_reads(project, store):
    """quick.list_runs answers exactly what RunStore.list_runs does, for every filter."""
    from featherflow.store import quick

    fake_run(store, "a", outcomes={"x": ["success"]}, state=states.SUCCESS)
    fake_run(store, "b", outcomes={"x": ["failed"], "y": ["failed", "success"], "z": ["upstream_failed"]},
             state=states.FAILED)
    fake_run(store, "a", outcomes={"x": ["failed", "failed"]}, state=states.FAILED)
    fake_run(store, "b", outcomes={"x": ["running"]}, **this_process())  # alive: nothing to reconcile
    fake_run(store, "a", state=states.QUEUED, **this_process())
    since = clock.now() - timedelta(minutes=5)
    for filters in ({}, {"flow": "a"}, {"state": states.FAILED}, {"flow": "b", "state": states.FAILED},
                    {"since": since}, {"limit": 2}, {"limit": None}, {"flow": "none"},
                    {"since": clock.now() + timedelta(minutes=5)}):
        runs, total = quick.list_runs(project.db, project.home, **filters)
        assert runs == store.runs.list_runs(**filters), filters
        assert total == (None if runs else store.runs.run_count())
    assert [r.failed_tasks for r in store.runs.list_runs(state=states.FAILED)] == [["x"], ["x"]]


def test_the_quick_runs_list_leaves_every_other_case_to_the_store(project, store):
    """An orphan to reconcile, another schema version, a database others may read, no
    database: None, and `runs list` takes the usual way (which marks the orphan)."""
    from featherflow.store import quick

    assert quick.list_runs(project.root / "none.db") is None
    assert quick.list_runs(project.db, project.home) == ([], 0)
    orphan = fake_run(store, "a", outcomes={"x": ["running"]}, pid=2 ** 22 + 1, pid_start=1,
                      boot_id=proc.boot_id())
    assert quick.list_runs(project.db, project.home) is None
    result = project.cli("runs", "list")
    assert result.code == 0 and f"note: run {orphan.id} is now interrupted" in result.err
    assert quick.list_runs(project.db, project.home)[0][0].state == states.INTERRUPTED
    os.chmod(project.db, 0o644)
    assert quick.list_runs(project.db, project.home) is None
    assert project.cli("runs", "list").code == 0  # which makes it private again
    assert os.stat(project.db).st_mode & 0o777 == 0o600
    with sqlite3.connect(project.db) as conn:
        conn.execute(f"PRAGMA user_version = {states.SCHEMA_VERSION + 1}")
    assert quick.list_runs(project.db, project.home) is None


def test_runs_list_loads_no_peewee_when_nothing_needs_it(project, store):
    """Nor the flow loader or the run_if rules: a list needs neither (a few ms of its start)."""
    fake_run(store, "a", outcomes={"x": ["success"]}, state=states.SUCCESS)
    code = ("import sys; from featherflow.cli import main\n"
            "code = main.main(sys.argv[1:])\n"
            "print(code, sorted(m for m in ('peewee', 'featherflow.store.runs', 'featherflow.engine.reconcile', "
            "'featherflow.flow', 'featherflow.rules') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *project.args(), "runs", "list"], env=project.env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines()[-1] == "0 []" and "success" in out
