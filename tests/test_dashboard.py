"""The dashboard: pure rendering and keys, read-only snapshots, the real thing in tmux."""

import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import unicodedata
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from featherflow import clock, states
from featherflow.dashboard import app as dashboard
from featherflow.store import db as dbmod
from featherflow.dashboard import keys, poller as poller_mod
from featherflow.dashboard.keys import ViewState, handle_key, page_size
from featherflow.dashboard.poller import (
    Counts, LogInfo, LogTail, Poller, RunDetail, RunInfo, ScheduleInfo, SchedulerInfo, Snapshot, TaskInfo,
)
from featherflow.dashboard.screen import MIN_HEIGHT, MIN_WIDTH, render
from featherflow.text import cells, clean, fit
from featherflow.errors import DatabaseError
from featherflow.store.readonly import Reader
from featherflow.store import Store
from helpers import fake_run, wait_for

NOW = datetime(2026, 6, 12, 3, 0, 0)
EVIL = "\x1b[2J\x1b]0;pwned\x07\r\x9b31m\u202e\x00"


def run_info(id=7, flow="etl", state="running", counts=Counts(2, 1, 3, 0), **kw):
    kw.setdefault("started_at", NOW - timedelta(minutes=3))
    return RunInfo(id, flow, state, "manual", NOW - timedelta(minutes=4), counts=counts, **kw)


def full_snapshot(**kw) -> Snapshot:
    tasks = (TaskInfo("extract", "success", 1, NOW - timedelta(minutes=3), NOW - timedelta(minutes=2), 0),
             TaskInfo("transform", "running", 2, NOW - timedelta(seconds=30)),
             TaskInfo("load", "pending", 1))
    base = dict(
        taken_at=NOW, db_path="/home/pi/.featherflow/featherflow.db",
        scheduler=SchedulerInfo(123, NOW - timedelta(hours=3), NOW - timedelta(seconds=2), None, True),
        schedules=(ScheduleInfo("nightly", "etl", "0 3 * * *", "UTC", True, NOW + timedelta(minutes=5),
                                last_slot_at=NOW - timedelta(days=1), last_state="fired", last_run_id=6,
                                last_run_state="success"),
                   ScheduleInfo("paused", "etl", "0 * * * *", "UTC", False)),
        running=(run_info(),),
        recent=(run_info(6, state="failed", ended_at=NOW - timedelta(minutes=10),
                         failed_tasks=("transform",)),
                run_info(5, state="success", ended_at=NOW - timedelta(hours=1))),
        detail=RunDetail(run_info(), tasks),
    )
    base.update(kw)
    return Snapshot(**base)


def assert_fits(lines, width, height):
    assert len(lines) <= height
    for line in lines:
        assert cells(line) <= width, (width, line)
        assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in line), repr(line)


# -- render: sizes ------------------------------------------------------------------

def test_wide_main_screen_shows_scheduler_schedules_running_and_recent():
    lines = render(full_snapshot(), ViewState(), 120, 30, NOW)
    assert_fits(lines, 120, 30)
    assert len(lines) == 30
    text = "\n".join(lines)
    assert "running  pid 123  up 3h00m  heartbeat 2s ago" in text
    assert "nightly" in text and "5m00s" in text and "fired" in text and "run 6 success" in text
    assert "disabled" in text
    running = next(line for line in lines if line.startswith(">") and " 7 " in line)
    assert "etl" in running and "2/6" in running and "[###-------]" in running and "3m00s" in running
    assert any("failed: transform" in line for line in lines)
    assert "q quit" in lines[-1] and "Enter open" in lines[-1]


def test_narrow_screen_drops_columns_but_keeps_the_essentials():
    lines = render(full_snapshot(), ViewState(), 50, 20, NOW)
    assert_fits(lines, 50, 20)
    row = next(line for line in lines if line.startswith(">"))
    assert "7" in row and "etl" in row and "2/6" in row  # id, flow, compact progress
    assert "PROGRESS" not in "\n".join(lines)
    assert lines[1].startswith("SCHEDULER")


@pytest.mark.parametrize("width,height", [(0, 0), (1, 1), (10, 3), (MIN_WIDTH - 1, 40), (120, MIN_HEIGHT - 1)])
def test_tiny_terminal_says_too_small(width, height):
    lines = render(full_snapshot(), ViewState(), width, height, NOW)
    assert_fits(lines, width, height)
    if width and height:
        assert lines[0] == fit("terminal too small", width)


def test_smallest_supported_size_still_shows_scheduler_and_selection():
    state = ViewState(run_id=5)  # the last run: the list must scroll to it
    lines = render(full_snapshot(), state, MIN_WIDTH, MIN_HEIGHT, NOW)
    assert_fits(lines, MIN_WIDTH, MIN_HEIGHT)
    assert lines[1].startswith("SCHEDULER")
    assert any(line.startswith(">") and " 5 " in line for line in lines)


def test_run_screen_lists_tasks_in_given_order_with_attempt_exit_and_duration():
    lines = render(full_snapshot(), ViewState(view="run", run_id=7, task_id="transform"), 100, 20, NOW)
    assert_fits(lines, 100, 20)
    tasks = [line for line in lines if any(t in line for t in ("extract", "transform", "load"))]
    assert [t.split()[1] if t.startswith(">") else t.split()[0] for t in tasks] == ["extract", "transform", "load"]
    assert tasks[0].split()[1:4] == ["success", "1", "0"] and "1m00s" in tasks[0]
    assert tasks[1].startswith("> transform") and "running" in tasks[1] and " 2 " in tasks[1]
    assert "run 7  etl  RUNNING" in lines[1]


def test_long_names_are_cut_with_an_ellipsis():
    name = "a-very-long-flow-name-" * 20
    snap = full_snapshot(running=(run_info(flow=name),),
                         detail=RunDetail(run_info(flow=name), (TaskInfo("t" * 500, "running", 1),)))
    for state in (ViewState(), ViewState(view="run", run_id=7)):
        lines = render(snap, state, 80, 24, NOW)
        assert_fits(lines, 80, 24)
        assert any("a-very-long-fl" in line and "…" in line for line in lines)
        assert any("ttttttttttttttt" in line and "…" in line for line in lines) or state.view == "main"
    ascii_lines = render(snap, ViewState(), 80, 24, NOW, ascii_only=True)
    assert all(line.isascii() for line in ascii_lines)
    assert any("a-very-long-fl" in line and "~" in line for line in ascii_lines)


# -- render: hostile text -------------------------------------------------------------

def test_control_characters_in_task_ids_flow_names_and_logs_are_escaped():
    task = TaskInfo("evil" + EVIL, "running", 1)
    log = LogInfo(task.task_id, 1, "running", "/out/logs/evil.1.log",
                  lines=("before " + EVIL + " after", "\ttabbed"))
    snap = full_snapshot(running=(run_info(flow="f" + EVIL),), detail=RunDetail(run_info(), (task,)), log=log)
    seen = []
    for state in (ViewState(), ViewState(view="run", run_id=7),
                  ViewState(view="log", run_id=7, task_id=task.task_id, attempt=1)):
        lines = render(snap, state, 200, 20, NOW)
        assert_fits(lines, 200, 20)
        seen += lines
    text = "\n".join(seen)
    for raw in ("\x1b", "\x07", "\r", "\x9b", "\u202e", "\x00", "\t"):
        assert raw not in text
    assert "before \\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x9b31m\\u202e\\x00 after" in text
    assert "evil\\x1b[2J" in text and "f\\x1b[2J" in text


def test_clean_keeps_ordinary_unicode_and_counts_wide_characters():
    assert clean("naïve 日本") == "naïve 日本"
    assert cells("日本") == 4
    assert cells(fit("日本語のタスク", 7)) <= 7
    assert clean("日本", ascii_only=True) == "??"


@settings(max_examples=150, deadline=None)
@given(name=st.text(max_size=80), line=st.text(max_size=200), width=st.integers(0, 160),
       height=st.integers(0, 50), view=st.sampled_from(["main", "run", "log", "help"]),
       ascii_only=st.booleans())
def test_any_text_any_size_fits_and_never_carries_control_characters(name, line, width, height, view, ascii_only):
    task = TaskInfo(name, "running", 1)
    snap = full_snapshot(running=(run_info(flow=name),), detail=RunDetail(run_info(flow=name), (task,)),
                         log=LogInfo(name, 1, "running", "/x/" + name, lines=(line,) * 3),
                         problem=name or None)
    state = ViewState(view="main" if view == "help" else view, help=view == "help", run_id=7,
                      task_id=name, flow=name or None)
    lines = render(snap, state, width, height, NOW, ascii_only=ascii_only)
    assert_fits(lines, width, height)
    if ascii_only:
        assert all(line.isascii() for line in lines)


# -- render: empty database, scheduler health ------------------------------------------

def test_empty_database_renders_guidance():
    lines = render(Snapshot(NOW), ViewState(), 100, 20, NOW)
    assert_fits(lines, 100, 20)
    text = "\n".join(lines)
    assert "not running (it has never run on this database)" in text
    assert "SCHEDULES  none" in text and "RUNNING  none" in text
    assert "no finished runs yet (start one with `featherflow run FLOW`)" in text
    assert not any(line.startswith(">") for line in lines)


@pytest.mark.parametrize("info,expected,problem", [
    (SchedulerInfo(9, NOW - timedelta(hours=1), NOW - timedelta(seconds=5), None, True), "running  pid 9", False),
    (SchedulerInfo(9, NOW - timedelta(hours=1), NOW - timedelta(seconds=100), None, True), "heartbeat 1m40s ago",
     False),  # a tick is up to --check-interval (60 s) away: not stale yet
    (SchedulerInfo(9, NOW - timedelta(hours=1), NOW - timedelta(minutes=5), None, True), "STALE: pid 9", True),
    (SchedulerInfo(9, NOW - timedelta(hours=1), NOW - timedelta(seconds=5), None, False), "NOT RUNNING: pid 9", True),
    (SchedulerInfo(9, NOW - timedelta(hours=1), NOW - timedelta(hours=1), NOW - timedelta(minutes=2), False),
     "stopped 2m00s ago", False),
])
def test_scheduler_health_and_a_stale_heartbeat_is_a_problem(info, expected, problem):
    line = render(full_snapshot(scheduler=info), ViewState(), 100, 20, NOW)[1]
    assert expected in line
    assert line.startswith("SCHEDULER  ! ") == problem


def test_database_problem_is_shown_on_every_view():
    snap = full_snapshot(problem="cannot read the database (disk I/O error); showing 03:00:00")
    for state in (ViewState(), ViewState(view="run", run_id=7), ViewState(help=True)):
        assert render(snap, state, 100, 20, NOW)[1].startswith("! cannot read the database")


# -- keys ------------------------------------------------------------------------------

def test_keys_select_open_a_run_open_a_log_and_go_back():
    snap, state = full_snapshot(), ViewState()
    assert handle_key(state, "j", snap, 10) is None and state.run_id == 6
    assert handle_key(state, "down", snap, 10) is None and state.run_id == 5
    handle_key(state, "down", snap, 10)
    assert state.run_id == 5  # stays on the last
    handle_key(state, "k", snap, 10)
    assert handle_key(state, "enter", snap, 10) == keys.REFETCH
    assert (state.view, state.run_id) == ("run", 6)
    handle_key(state, "j", snap, 10)
    assert state.task_id == "transform"
    assert handle_key(state, "\n", snap, 10) == keys.REFETCH
    assert (state.view, state.task_id, state.attempt) == ("log", "transform", 2)
    assert handle_key(state, "\x1b", snap, 10) == keys.REFETCH and state.view == "run"
    assert handle_key(state, "backspace", snap, 10) == keys.REFETCH and state.view == "main"
    assert handle_key(state, "q", snap, 10) == keys.QUIT


def test_filter_prompt_takes_text_including_letters_that_are_keys():
    snap, state = full_snapshot(), ViewState(view="run", run_id=7)
    handle_key(state, "/", snap, 10)
    for ch in "jq?x":
        assert handle_key(state, ch, snap, 10) is None
    handle_key(state, "backspace", snap, 10)
    assert "filter by flow: jq?_" in render(snap, state, 100, 20, NOW)[-1]
    assert handle_key(state, "enter", snap, 10) == keys.REFETCH
    assert (state.flow, state.view, state.prompt) == ("jq?", "main", None)
    assert "flow: jq?" in render(snap, state, 100, 20, NOW)[0]
    handle_key(state, "f", snap, 10)
    handle_key(state, "\x1b", snap, 10)  # Esc cancels the prompt, keeps the filter
    assert state.flow == "jq?" and state.prompt is None
    assert handle_key(state, "\x1b", snap, 10) == keys.REFETCH and state.flow is None  # Esc clears it


def test_help_opens_and_any_key_closes_it():
    snap, state = full_snapshot(), ViewState()
    handle_key(state, "?", snap, 10)
    assert any(line.startswith("Keys") for line in render(snap, state, 100, 30, NOW))
    handle_key(state, "j", snap, 10)
    assert not state.help and state.run_id is None  # the key only closed the help


def test_log_pages_up_and_down_and_follows_the_end_again():
    log = LogInfo("t", 1, "running", "/x", lines=tuple(f"line {i}" for i in range(100)))
    snap, state = full_snapshot(log=log), ViewState(view="log", run_id=7, task_id="t", attempt=1)
    assert page_size("log", 14) == 10  # 14 rows: title, 2 log header rows, 10 lines, footer
    following = render(snap, state, 80, 14, NOW)
    assert "line 99" in following[-2] and "following" in following[1]
    handle_key(state, "pgup", snap, 10)
    assert state.log_top == 80
    paused = render(snap, state, 80, 14, NOW)
    assert "line 80" in paused[3] and "paused" in paused[1] and "lines 81-90 of 100" in paused[1]
    handle_key(state, " ", snap, 10)
    assert state.log_top is None  # back at the end: follow again
    handle_key(state, "g", snap, 10)
    assert state.log_top == 0
    handle_key(state, "G", snap, 10)
    assert state.log_top is None


# -- reading the database ------------------------------------------------------------------

@pytest.fixture
def busy_db(store, project):
    """One running run (tasks out of alphabetical order), one failed, a schedule with a slot."""
    live = fake_run(store, "etl", ["z_load", "a_extract", "m_side"], depends_on={"z_load": ["a_extract"]},
                    pid=os.getpid(), max_parallel=2)
    store.runs.transition_attempt(live.id, "a_extract", 1, states.RUNNING)
    store.runs.transition_attempt(live.id, "a_extract", 1, states.SUCCESS, exit_code=0)
    store.runs.transition_attempt(live.id, "m_side", 1, states.RUNNING)
    dead = fake_run(store, "other", ["only"], pid=os.getpid(), max_parallel=2)
    store.runs.transition_attempt(dead.id, "only", 1, states.RUNNING)
    store.runs.transition_attempt(dead.id, "only", 1, states.FAILED, exit_code=3)
    store.runs.transition_run(dead.id, states.FAILED)
    now = clock.to_text(clock.now())
    with store.db.atomic("IMMEDIATE"):
        store.db.execute_sql(
            "INSERT INTO schedule (name, flow_name, cron, tz, flows_dir, tasks_dir, output_dir, created_at, "
            "updated_at) VALUES ('hourly', 'other', '0 * * * *', 'UTC', '/f', '/t', '/o', ?, ?)", (now, now))
        store.db.execute_sql("INSERT INTO schedule_slot (schedule_id, slot_at, state, run_id, created_at) "
                             "VALUES (1, ?, 'fired', ?, ?)", (now, dead.id, now))
        store.db.execute_sql("INSERT INTO scheduler VALUES (1, 4242, NULL, NULL, ?, ?, NULL)", (now, now))
    return live, dead


@pytest.fixture
def reader(project, busy_db):
    ro = Reader(dbmod.open_read_only(project.db))
    yield ro
    ro.close()


def test_poll_reads_counts_order_schedules_and_scheduler(reader, busy_db):
    live, dead = busy_db
    calls = []

    def next_slot(cron, tz, after):
        calls.append(after)
        return after + timedelta(minutes=30)

    poller = Poller(reader, "db", alive=lambda pid, *rest: pid != 4242, next_slot=next_slot)
    now = datetime.utcnow()
    snap = poller.poll(ViewState(view="run", run_id=live.id), now)
    assert [r.id for r in snap.running] == [live.id] and [r.id for r in snap.recent] == [dead.id]
    assert snap.running[0].counts == Counts(done=1, running=1, pending=1, failed=0)
    assert snap.recent[0].failed_tasks == ("only",)
    assert [t.task_id for t in snap.detail.tasks] == ["a_extract", "m_side", "z_load"]  # dependency order
    assert [t.state for t in snap.detail.tasks] == ["success", "running", "pending"]
    assert snap.detail.tasks[0].exit_code == 0
    assert snap.scheduler.pid == 4242 and not snap.scheduler.alive
    (sched,) = snap.schedules
    assert (sched.name, sched.last_state, sched.last_run_id, sched.last_run_state) == (
        "hourly", "fired", dead.id, "failed")
    assert sched.next_at == now + timedelta(minutes=30)
    poller.poll(ViewState(), now + timedelta(minutes=1))
    assert len(calls) == 1  # cached until the slot passes
    poller.poll(ViewState(), now + timedelta(minutes=31))
    assert len(calls) == 2
    filtered = poller.poll(ViewState(flow="other"), now)
    assert (filtered.running, [r.id for r in filtered.recent]) == ((), [dead.id])
    orphan = Poller(reader, "db", alive=lambda *a: False).poll(ViewState(), now)
    assert orphan.running[0].gone
    assert "orphan" in "\n".join(render(orphan, ViewState(), 100, 30, now))


def test_poll_uses_the_schedulers_next_slot(reader, busy_db):
    now = datetime(2026, 6, 12, 3, 17)
    (sched,) = Poller(reader, "db").poll(ViewState(), now).schedules
    assert sched.next_at == datetime(2026, 6, 12, 4, 0) and sched.next_error is None


def test_a_session_writes_nothing_and_blocks_no_writer(project, busy_db, reader):
    live, _ = busy_db
    monitor = sqlite3.connect(str(project.db), isolation_level=None, timeout=0)
    monitor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    version = monitor.execute("PRAGMA data_version").fetchall()
    before = project.db.read_bytes(), project.db.stat().st_mtime_ns
    poller = Poller(reader, "db")
    for state in (ViewState(), ViewState(view="run", run_id=live.id),
                  ViewState(view="log", run_id=live.id, task_id="a_extract", attempt=1), ViewState(flow="etl")):
        poller.poll(state, datetime.utcnow())
    assert monitor.execute("PRAGMA data_version").fetchall() == version
    assert (project.db.read_bytes(), project.db.stat().st_mtime_ns) == before
    with pytest.raises(Exception, match="readonly"):
        reader.db.execute_sql("UPDATE flow_run SET state = 'success'")
    # Between refreshes nothing is held: a writer commits and a full checkpoint
    # empties the WAL at once (busy timeout 0), so the WAL cannot grow.
    monitor.execute("BEGIN IMMEDIATE")
    monitor.execute("UPDATE flow_run SET reason = 'x' WHERE id = ?", (live.id,))
    monitor.execute("COMMIT")
    assert monitor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall() == [(0, 0, 0)]
    # Even inside a refresh's read transaction a writer is not blocked.
    with reader.transaction():
        reader.runs(True, None, 10)
        monitor.execute("BEGIN IMMEDIATE")
        monitor.execute("UPDATE flow_run SET reason = 'y' WHERE id = ?", (live.id,))
        monitor.execute("COMMIT")
    monitor.close()


def test_read_only_open_refuses_missing_non_sqlite_and_newer_files(tmp_path):
    with pytest.raises(DatabaseError, match="no database at"):
        dbmod.open_read_only(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite at all")
    with pytest.raises(DatabaseError, match="not a SQLite database"):
        dbmod.open_read_only(junk)
    newer = tmp_path / "newer.db"
    con = sqlite3.connect(str(newer))
    con.execute(f"PRAGMA user_version = {states.SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(DatabaseError, match="newer than this Featherflow"):
        dbmod.open_read_only(newer)


def test_an_unmigrated_database_is_shown_as_empty(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(str(path)).close()  # a 0-byte file
    ro = Reader(dbmod.open_read_only(path))
    snap = Poller(ro, str(path)).poll(ViewState(), NOW)
    ro.close()
    assert "empty" in snap.problem and snap.running == ()


# -- log tail ----------------------------------------------------------------------------

def test_log_tail_reads_only_new_bytes_and_handles_partial_lines_and_truncation(tmp_path):
    path = tmp_path / "t.log"
    tail = LogTail(path, keep=3)
    assert tail.poll()[3] == "no log file (yet)"
    path.write_bytes(b"a\nb\npar")
    assert tail.poll() == (("a", "b", "par"), 0, 0, None)
    with open(path, "ab") as f:
        f.write(b"tial\r\nc\nd\n")
    lines, first, skipped, error = tail.poll()
    assert lines == ("partial", "c", "d") and first == 2  # the newest 3 of 5 lines (0-based)
    path.write_bytes(b"new\n")  # rewritten shorter: start over
    assert tail.poll()[:2] == (("new",), 0)


def test_log_tail_starts_near_the_end_of_a_huge_log(tmp_path, monkeypatch):
    monkeypatch.setattr(poller_mod, "LOG_FIRST_READ", 1000)
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i:05d}\n" for i in range(10_000)))
    lines, first, skipped, error = LogTail(path).poll()
    assert lines[-1] == "line 09999" and all(line.startswith("line ") and len(line) == 10 for line in lines)
    assert 0 < skipped < path.stat().st_size and len(lines) < 100


# -- the command -------------------------------------------------------------------------

def test_refuses_when_stdout_is_not_a_terminal(project):
    result = project.cli("dashboard")
    assert result.code == 2
    assert result.err.startswith("error: the dashboard needs a terminal, and stdout is not one")
    piped = project.sh("dashboard", "--flow", "etl", timeout=60)
    assert piped.code == 2 and "error: the dashboard needs a terminal" in piped.err
    assert "Traceback" not in piped.err


def test_scheduler_status_interactive_opens_the_dashboard(project):
    result = project.cli("scheduler", "status", "--interactive")
    assert result.code == 2
    assert result.err.startswith("error: the dashboard needs a terminal, and stdout is not one")
    assert not project.db.exists()  # no reconcile, no migration: the dashboard path never writes


@pytest.mark.parametrize("term,message", [("nosuchterm", "unknown terminal type"), ("dumb", "cannot move the cursor")])
def test_refuses_a_terminal_it_cannot_drive(project, term, message):
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "featherflow", *project.args(), "dashboard"],
                              stdin=slave, stdout=slave, stderr=subprocess.PIPE, text=True, timeout=60,
                              env={**project.env, "TERM": term})
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 2 and message in proc.stderr


# -- end to end in tmux --------------------------------------------------------------------

class Tmux:
    def __init__(self, cwd):
        self.sock = f"fftest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.cwd = cwd

    def __call__(self, *args):
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def pane(self) -> str:
        return self("capture-pane", "-p")

    def wait(self, what, test, timeout=20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.pane()
            if test(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text}")
            time.sleep(0.05)

    def wait_for(self, *needles, timeout=20.0) -> str:
        return self.wait(" and ".join(map(repr, needles)), lambda t: all(n in t for n in needles), timeout)

    def close(self) -> None:
        """Stop this test's own tmux server and remove its socket file."""
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)
        base = os.environ.get("TMUX_TMPDIR") or "/tmp"
        (Path(base) / f"tmux-{os.getuid()}" / self.sock).unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed (.ci/run installs it)")
def test_end_to_end_in_tmux_with_a_live_run(project):
    go = project.root / "go"
    project.write_task("prep.sh", "printf 'evil \\033[2J end\\n'\n")
    project.write_task("wait.sh", f"echo waiting for go\nwhile [ ! -e {shlex.quote(str(go))} ]; do sleep 0.05; done\n"
                                  "echo finished\n")
    project.write_flow({"name": "live", "tasks": [{"id": "prep", "script": "prep.sh"},
                                                 {"id": "wait", "script": "wait.sh", "depends_on": ["prep"]}]})
    run = subprocess.Popen([sys.executable, "-m", "featherflow", *project.args(), "run", "live"],
                           cwd=project.root, env=project.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmux = Tmux(project.root)
    command = " ".join(shlex.quote(a) for a in [
        "env", "TERM=vt100", "NO_COLOR=1", f"FEATHERFLOW_HOME={project.home}",
        sys.executable, "-m", "featherflow", *project.args(), "dashboard"])
    try:
        wait_for(project.db.exists, "the run to create the database", timeout=30, interval=0.05)
        tmux("new-session", "-d", "-x", "100", "-y", "30", "-c", str(project.root),
             "env PS1='ffprompt$ ' bash --norc --noprofile")
        tmux("send-keys", "-l", f"{command}; echo EXIT=$?")
        tmux("send-keys", "Enter")
        tmux.wait("the live run", lambda t: "RUNNING  1" in t and "live" in t and "1/2" in t)
        tmux("send-keys", "Enter")
        tmux.wait_for("run 1  live  RUNNING", "TASKS  2")
        tmux("send-keys", "j", "Enter")
        tmux.wait_for("run 1 > wait > attempt 1", "waiting for go")
        tmux("resize-window", "-x", "30", "-y", "6")
        tmux.wait_for("terminal too small")
        tmux("resize-window", "-x", "100", "-y", "30")
        tmux.wait_for("run 1 > wait > attempt 1", "waiting for go")
        go.touch()
        tmux.wait_for("finished", "success")  # the open log kept tailing
        assert run.wait(timeout=30) == 0
        tmux("send-keys", "Escape")
        tmux.wait_for("run 1  live  SUCCESS")
        tmux("send-keys", "k", "Enter")
        pane = tmux.wait_for("run 1 > prep > attempt 1", "evil \\x1b[2J end")

        # From here on nothing else writes: the dashboard alone must change nothing.
        monitor = sqlite3.connect(str(project.db), isolation_level=None)
        version = monitor.execute("PRAGMA data_version").fetchall()
        before = project.db.read_bytes(), project.db.stat().st_mtime_ns
        clock = pane.splitlines()[0]
        tmux("send-keys", "Escape", "Escape")
        tmux.wait("a refresh", lambda t: "RECENT  1" in t and t.splitlines()[0] != clock)
        tmux("send-keys", "q")
        pane = tmux.wait("the shell prompt", lambda t: "EXIT=0" in t and t.rstrip().endswith("ffprompt$"))
        assert tmux("display", "-p", "#{alternate_on} #{cursor_flag}").split() == ["0", "1"]
        assert "RECENT" not in pane  # the screen was cleared on the way out
        assert monitor.execute("PRAGMA data_version").fetchall() == version
        assert (project.db.read_bytes(), project.db.stat().st_mtime_ns) == before
        monitor.close()

        # The original tool's entry point opens the same screen; Ctrl-C quits it cleanly too.
        tmux("send-keys", "-l", "clear; " + command.replace(" dashboard", " scheduler status --interactive")
             + "; echo EXIT2=$?")
        tmux("send-keys", "Enter")
        tmux.wait_for("SCHEDULER  not running", "RECENT  1")
        tmux("send-keys", "C-c")
        tmux.wait("the shell prompt again", lambda t: "EXIT2=0" in t and t.rstrip().endswith("ffprompt$"))
        assert tmux("display", "-p", "#{alternate_on} #{cursor_flag}").split() == ["0", "1"]
    finally:
        go.touch()
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
        tmux.close()


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed (.ci/run installs it)")
@pytest.mark.parametrize("no_color", [False, True])
def test_no_color_means_no_colour_escapes(project, busy_db, no_color):
    import re

    tmux = Tmux(project.root)
    env = ["env"] + (["NO_COLOR=1"] if no_color else ["-u", "NO_COLOR"]) + ["TERM=xterm-256color"]
    command = " ".join(shlex.quote(a) for a in env + [sys.executable, "-m", "featherflow", *project.args(),
                                                      "dashboard"])
    try:
        tmux("new-session", "-d", "-x", "100", "-y", "30", "-c", str(project.root), command)
        tmux.wait_for("RECENT  1", "failed")
        screen = tmux("capture-pane", "-p", "-e")
        colours = re.findall(r"\x1b\[[0-9;]*(?:3[0-7]|9[0-7]|38;5;\d+)m", screen)
        assert bool(colours) != no_color
        assert "\x1b[7m" in screen or "\x1b[7;" in screen or ";7m" in screen  # reverse video stays
    finally:
        tmux.close()
