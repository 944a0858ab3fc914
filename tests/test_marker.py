"""The run's `_mark --serve` co-process: answers after commit, ends when idle,
and a run goes on (and records everything) when it dies or never answers."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from featherflow import mark, paths, states
from featherflow.engine import launch
from helpers import fake_run

WAIT = 30  # seconds: the bound on every wait in this file
MARK = mark.LAUNCHER  # what the generated script runs


def serve_once(db, run_id, calls):
    """The answers serve() gives to `calls` (lists of words), in one session."""
    answers = []
    lines = ["\t".join(words).encode() for words in calls]
    mark.serve(str(db), run_id, 5.0, states, lines, answers.append)
    return answers


def test_serve_answers_each_call_with_its_exit_code(project, store):
    run = fake_run(store, pid=os.getpid()).id
    answers = serve_once(project.db, run, [
        ["a:1:running"],
        ["a:1:success:0", "b:1:running"],
        ["a:1:running"],  # illegal: success is final
        ["not-a-transition"],  # bad words
        ["b:1:success:0", "--run", "success"],
    ])
    assert answers == ["0\n", "0\n", "3\n", "2\n", "0\n"]
    assert store.runs.get_run(run).state == states.SUCCESS
    assert [(a.task_id, a.state) for a in store.runs.attempts(run)] == [("a", "success"), ("b", "success")]


def test_serve_answers_only_after_the_transition_is_committed(project, store):
    run = fake_run(store, tasks=["a"], pid=os.getpid()).id
    seen = []

    def answer(text):  # what another process sees the moment the answer is sent
        with sqlite3.connect(project.db) as conn:
            seen.append(conn.execute("SELECT state FROM task_attempt WHERE run_id = ?", (run,)).fetchone()[0])

    mark.serve(str(project.db), run, 5.0, states, [b"a:1:running", b"a:1:failed:1:exit code 1"], answer)
    assert seen == ["running", "failed"]


def test_serve_of_a_missing_database_answers_4_and_creates_nothing(tmp_path):
    db = tmp_path / "gone.db"
    assert serve_once(db, 1, [["a:1:running"], ["a:1:running"]]) == ["4\n", "4\n"]
    assert not db.exists()




def test_serve_keeps_one_connection_for_a_burst_and_closes_it_in_a_pause(project, store, monkeypatch):
    """The calls of a burst share a connection; a pause (None) and the end close it, so
    between bursts nothing holds the database open."""
    run = fake_run(store, tasks=["a", "b"], pid=os.getpid()).id
    opened = []  # every connection mark opens, and whether it is closed

    class Tracked(sqlite3.Connection):
        closed = False

        def close(self):
            self.closed = True
            super().close()

    real = mark.sqlite3.connect
    monkeypatch.setattr(mark.sqlite3, "connect",
                        lambda *a, **k: opened.append(real(*a, factory=Tracked, **k)) or opened[-1])
    held = []

    def calls():
        yield b"a:1:running"
        yield b"a:1:success:0\tb:1:running"
        held.append([c.closed for c in opened])
        yield None  # a pause
        held.append([c.closed for c in opened])
        yield b"b:1:success:0"
        held.append([c.closed for c in opened])

    answers = []
    mark.serve(str(project.db), run, 5.0, states, calls(), answers.append)
    assert answers == ["0\n"] * 3
    assert held == [[False], [True], [True, False]]  # one for the first burst, one after the pause
    assert [c.closed for c in opened] == [True, True]
    assert [a.state for a in store.runs.attempts(run)] == ["success", "success"]

def test_lines_mark_each_pause_then_end_when_idle():
    read, write = os.pipe()
    try:
        got = mark.lines(read, idle=0.5, burst=0.01)
        os.write(write, b"one\ntw")
        assert next(got) == b"one"
        os.write(write, b"o\n")
        assert next(got) == b"two"
        assert next(got) is None  # nothing came for `burst` seconds
        os.write(write, b"three\n")
        assert next(got) == b"three"
        os.close(write)
        write = None
        assert list(got) == []  # the end of input ends it
    finally:
        os.close(read)
        if write is not None:
            os.close(write)

def start_marker(db, run_id, *extra):
    return subprocess.Popen([sys.executable, "-I", "-S", MARK, str(db), str(run_id), *extra, "--serve"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_co_process_ends_by_itself_when_idle(project, store):
    run = fake_run(store, tasks=["a"], pid=os.getpid()).id
    marker = start_marker(project.db, run, "--idle", "0.2")
    marker.stdin.write(b"a:1:running\n")
    marker.stdin.flush()
    assert marker.stdout.readline() == b"0\n"
    # No more calls: it ends on its own (the stdin pipe stays open).
    assert marker.wait(timeout=WAIT) == 0
    marker.stdin.close()
    assert [a.state for a in store.runs.attempts(run)] == [states.RUNNING]


def test_the_co_process_ends_at_the_end_of_its_input(project, store):
    run = fake_run(store, tasks=["a"], pid=os.getpid()).id
    marker = start_marker(project.db, run)  # default idle: seconds
    out, err = marker.communicate(b"a:1:running\na:1:success:0\n", timeout=WAIT)
    assert (marker.returncode, out, err) == (0, b"0\n0\n", b"")


def test_serve_refuses_transitions_on_its_command_line(project):
    marker = start_marker(project.db, 1, "a:1:running")
    _, err = marker.communicate(timeout=WAIT)
    assert marker.returncode == 2
    assert b"--serve takes no transitions" in err


# -- the script's side ---------------------------------------------------------

KILL_MY_MARKER = """\
import os, signal
uid = os.environ["FEATHERFLOW_RUN_UID"].encode()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\\0")
    except OSError:
        continue
    if b"--serve" in argv and b"FEATHERFLOW_RUN_UID=" + uid in env:
        os.kill(int(pid), signal.SIGKILL)
        print("killed", pid)
"""


@pytest.mark.slow
def test_a_run_whose_co_process_is_killed_records_everything_through_a_new_one(project):
    project.write_task("kill_marker.py", KILL_MY_MARKER)
    project.write_task("ok.sh", "exit 0\n")
    project.write_flow({"name": "f", "tasks": [
        {"id": "first", "script": "ok.sh"},
        {"id": "killer", "script": "kill_marker.py", "depends_on": ["first"]},
        {"id": "last", "script": "ok.sh", "depends_on": ["killer"]}]})
    result = project.sh("run", "f", timeout=WAIT * 2)
    assert result.code == 0, result.out + result.err
    app = project.app()
    try:
        run = app.store.runs.list_runs()[0]
        assert run.state == states.SUCCESS
        assert {a.task_id: a.state for a in app.store.runs.attempts(run.id)} == {
            "first": "success", "killer": "success", "last": "success"}
        killer_log = paths.log_path(run, "killer", 1).read_text()
        run_log = (paths.run_dir(run) / "run.log").read_text()
    finally:
        app.close()
    assert killer_log.startswith("killed ")
    assert "does not answer" not in run_log + result.out + result.err  # a new one took over


@pytest.mark.slow
def test_a_co_process_that_never_answers_falls_back_to_one_mark_per_call(project, tmp_path):
    """A `_mark` that fails as a co-process but works one call at a time: the run
    still records every transition, and says once that it fell back."""
    wrapper = tmp_path / "mark_no_serve.py"
    wrapper.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(MARK).parent.parent)!r})\n"
        "if '--serve' in sys.argv:\n"
        "    sys.exit(1)\n"
        "from featherflow import mark\n"
        "sys.exit(mark.main())\n")
    project.write_task("ok.sh", "exit 0\n")
    project.write_flow({"name": "f", "tasks": [
        {"id": "a", "script": "ok.sh"}, {"id": "b", "script": "ok.sh", "depends_on": ["a"]}]})
    app = project.app()
    try:
        prepared = launch.prepare(app.config, app.store, "f", {})
    finally:
        app.close()
    text = prepared.script_path.read_text()
    assert f"FF_MARK={MARK}\n" in text
    prepared.script_path.write_text(text.replace(f"FF_MARK={MARK}\n", f"FF_MARK={wrapper}\n"))
    done = subprocess.run(["bash", str(prepared.script_path)], capture_output=True, text=True,
                          timeout=WAIT * 2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.count("does not answer; one _mark process per call") == 1
    app = project.app()
    try:
        run = app.store.runs.list_runs()[0]
        assert run.state == states.SUCCESS
        assert [a.state for a in app.store.runs.attempts(run.id)] == ["success", "success"]
    finally:
        app.close()
