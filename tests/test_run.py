"""`featherflow run` end to end: real bash, real task scripts, the real database.

Every assertion about order is read from the attempt timestamps the run
recorded; waiting is done on process exit, or by polling a file or the
database with a bounded deadline.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from featherflow import Featherflow, flow as flowmod, paths
from featherflow.engine import launch, reconcile
from helpers import alive, group_members, wait_for

pytestmark = pytest.mark.slow

WAIT = 30  # seconds: the bound on every wait in this file


def only_run(project):
    app = project.app()
    try:
        runs = app.store.runs.list_runs()
        assert len(runs) == 1, runs
        return runs[0], {(a.task_id, a.attempt): a for a in app.store.runs.attempts(runs[0].id)}
    finally:
        app.close()


def latest(attempts):
    out = {}
    for (task, number), attempt in sorted(attempts.items()):
        out[task] = attempt
    return out


def start_run(project, *argv):
    """`featherflow run` as a child we can signal; output to pipes read at the end."""
    return subprocess.Popen(
        [sys.executable, "-m", "featherflow"] + project.args() + ["run"] + [str(a) for a in argv],
        cwd=project.root, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


SLEEP = "import sys, time; time.sleep(float(sys.argv[1]))\n"
TOUCH_THEN_WAIT = """\
import pathlib, sys, time
state = pathlib.Path(sys.argv[1])
(state / f"{sys.argv[2]}.started").touch()
deadline = time.monotonic() + 20
while not (state / sys.argv[3]).exists():
    if time.monotonic() > deadline:
        sys.exit(f"{sys.argv[3]} never appeared")
    time.sleep(0.02)
"""


# -- order and parallelism ---------------------------------------------------

def test_dependents_start_when_their_own_dependencies_succeed(project, tmp_path):
    """c needs only a; b waits until c has started: a per-level scheduler would deadlock b."""
    state = tmp_path / "state"
    state.mkdir()
    project.write_task("sleep.py", SLEEP)
    project.write_task("wait.py", TOUCH_THEN_WAIT)
    project.write_flow({"name": "f", "tasks": [
        {"id": "a", "script": "sleep.py", "args": ["0.05"]},
        {"id": "b", "script": "wait.py", "args": [str(state), "b", "c.started"]},
        {"id": "c", "script": "wait.py", "depends_on": ["a"], "args": [str(state), "c", "c.started"]},
        {"id": "d", "script": "sleep.py", "depends_on": ["b", "c"], "args": ["0"]},
        {"id": "e", "script": "sleep.py", "depends_on": ["d", "a"], "args": ["0"]},
    ]})
    result = project.sh("run", "f", "--max-parallel", "3")
    assert result.code == 0, result.out + result.err
    run, attempts = only_run(project)
    assert run.state == "success" and run.max_parallel == 3
    done = latest(attempts)
    edges = {"c": ["a"], "d": ["b", "c"], "e": ["d", "a"]}
    for task, deps in edges.items():
        for dep in deps:
            assert done[dep].ended_at <= done[task].started_at, (dep, task)
    assert done["c"].started_at < done["b"].ended_at  # not level by level
    for line in ("start   a (attempt 1)", "ok      d (attempt 1) in", "run 1 succeeded"):
        assert line in result.out


def test_max_parallel_1_serialises(project):
    project.write_task("sleep.py", SLEEP)
    project.write_flow({"name": "f", "max_parallel": 3, "tasks": [
        {"id": f"t{i}", "script": "sleep.py", "args": ["0.1"]} for i in range(3)]})
    result = project.sh("run", "f", "--max-parallel", "1")
    assert result.code == 0, result.out + result.err
    run, attempts = only_run(project)
    assert run.max_parallel == 1
    spans = sorted((a.started_at, a.ended_at) for a in attempts.values())
    for (_, previous_end), (start, _) in zip(spans, spans[1:]):
        assert previous_end <= start


# -- failures, retries, timeouts -----------------------------------------------

def test_failure_marks_descendants_upstream_failed_and_unrelated_branch_finishes(project):
    project.write_task("ok.sh", "echo fine\n")
    project.write_task("bad.sh", "echo 'something broke' >&2\nexit 3\n")
    project.write_flow({"name": "f", "tasks": [
        {"id": "bad", "script": "bad.sh"},
        {"id": "child", "script": "ok.sh", "depends_on": ["bad"]},
        {"id": "grandchild", "script": "ok.sh", "depends_on": ["child", "u1"]},
        {"id": "u1", "script": "ok.sh"},
        {"id": "u2", "script": "ok.sh", "depends_on": ["u1"]},
    ]})
    result = project.sh("run", "f")
    assert result.code == 1, result.out + result.err
    run, attempts = only_run(project)
    assert run.state == "failed"
    done = latest(attempts)
    assert (done["bad"].state, done["bad"].exit_code, done["bad"].reason) == ("failed", 3, "exit code 3")
    for task in ("child", "grandchild"):
        assert done[task].state == "upstream_failed"
        assert done[task].started_at is None
        assert "upstream bad failed" in done[task].reason
        assert not (paths.run_dir(run) / "logs" / f"{task}.1.log").exists()
    assert done["u1"].state == done["u2"].state == "success"
    assert "| something broke" in result.out  # the tail of the failed task's log
    assert "run 1 failed: 1 task(s) failed" in result.out


def test_the_failure_tail_cuts_long_lines_and_the_log_keeps_them(project):
    """Ten 10 kB lines would put 100 kB on the terminal: each shown line is cut to
    LOG_TAIL_WIDTH bytes with a marker, never inside a UTF-8 character."""
    from featherflow.engine import script

    width = script.LOG_TAIL_WIDTH
    project.write_task("wide.py", "import sys\n"
                       "for i in range(10):\n    print(str(i) * 10000)\n"
                       f"print('a' * {width - 1} + 'é' + 'tail')\nprint('short')\nsys.exit(1)\n")
    project.write_flow({"name": "f", "tasks": [{"id": "wide", "script": "wide.py"}]})
    result = project.sh("run", "f")
    assert result.code == 1, result.out + result.err
    shown = [line for line in result.out.splitlines() if line.startswith("        | ")]
    assert len(shown) == 12, result.out[:2000]
    assert all(len(line.encode()) <= width + 40 for line in shown)
    assert shown[0] == "        | " + "0" * width + f"… [+{10000 - width} bytes]"
    # the 2-byte é would straddle the cut: it goes whole into the hidden part
    assert shown[10] == "        | " + "a" * (width - 1) + "… [+6 bytes]"
    assert shown[11] == "        | short"
    run, _ = only_run(project)
    log = (paths.run_dir(run) / "logs" / "wide.1.log").read_text(encoding="utf-8").splitlines()
    assert [len(line) for line in log[:10]] == [10000] * 10 and log[10].endswith("étail")


def long_chain(count, script="ok.sh", broken=None):
    tasks = [{"id": f"t{i:03d}", "script": script if i != broken else "bad.sh"} for i in range(count)]
    for i, task in enumerate(tasks[1:], 1):
        task["depends_on"] = [f"t{i - 1:03d}"]
    return tasks


def test_a_long_chain_runs_every_task_once_in_order(project):
    """300 tasks, each started only after the one before ended (the engine's
    ready queue and counts of unmet dependencies, not a rescan of every task)."""
    project.write_task("ok.sh", "true\n")
    project.write_flow({"name": "f", "tasks": long_chain(300)})
    result = project.sh("run", "f")
    assert result.code == 0, result.out + result.err
    run, attempts = only_run(project)
    assert run.state == "success"
    assert sorted(attempts) == [(f"t{i:03d}", 1) for i in range(300)]
    ordered = [attempts[(f"t{i:03d}", 1)] for i in range(300)]
    assert all(a.state == "success" for a in ordered)
    for before, after in zip(ordered, ordered[1:]):
        assert before.ended_at <= after.started_at, (before.task_id, after.task_id)


def test_a_failure_in_the_middle_of_a_long_chain_skips_everything_below_it(project):
    """t150 fails: t151..t299 and a task that also needs an unrelated root are
    upstream_failed, never started; that root and a branch off t100 succeed."""
    project.write_task("ok.sh", "true\n")
    project.write_task("bad.sh", "exit 7\n")
    tasks = long_chain(300, broken=150) + [
        {"id": "root", "script": "ok.sh"},
        {"id": "side", "script": "ok.sh", "depends_on": ["t100"]},
        {"id": "join", "script": "ok.sh", "depends_on": ["root", "t200"]},
        {"id": "after_join", "script": "ok.sh", "depends_on": ["join", "side"]},
    ]
    project.write_flow({"name": "f", "tasks": tasks})
    result = project.sh("run", "f")
    assert result.code == 1, result.out + result.err
    run, attempts = only_run(project)
    assert run.state == "failed"
    done = latest(attempts)
    assert len(done) == len(tasks) and len(attempts) == len(tasks)
    assert done["t150"].state == "failed" and done["t150"].exit_code == 7
    succeeded = [f"t{i:03d}" for i in range(150)] + ["root", "side"]
    assert [t for t in succeeded if done[t].state != "success"] == []
    below = [f"t{i:03d}" for i in range(151, 300)] + ["join", "after_join"]
    for task in below:
        assert done[task].state == "upstream_failed", task
        assert done[task].started_at is None, task
        assert done[task].reason == "upstream t150 failed", task
    assert result.out.count("skip    ") == len(below)
    assert "run 1 failed: 1 task(s) failed" in result.out


@pytest.mark.parametrize("code,expected", [(0, 0), (1, 1), (5, 1)])
def test_exit_codes(project, code, expected):
    """The run's exit code says success (0) or failure (1), whatever the task's own code."""
    project.write_task("t.sh", f"exit {code}\n")
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}]})
    result = project.sh("run", "f")
    assert result.code == expected, result.out + result.err
    _, attempts = only_run(project)
    assert attempts[("t", 1)].exit_code == code
    assert attempts[("t", 1)].state == ("success" if code == 0 else "failed")


def test_retries_make_one_row_and_one_log_per_attempt(project):
    project.write_task("flaky.sh", """\
n=$(cat "$TMP_DIR/count" 2>/dev/null || echo 0)
echo $((n + 1)) >"$TMP_DIR/count"
echo "this is attempt $FEATHERFLOW_ATTEMPT"
[ "$n" -ge 2 ] || exit 7
""")
    project.write_task("never.sh", "echo no luck; exit 9\n")
    project.write_flow({"name": "f", "tasks": [
        {"id": "flaky", "script": "flaky.sh", "retries": 3, "retry_delay": 0.4},
        {"id": "never", "script": "never.sh", "retries": 1},
    ]})
    result = project.sh("run", "f")
    assert result.code == 1, result.out + result.err
    run, attempts = only_run(project)
    flaky = [attempts[("flaky", n)] for n in (1, 2, 3)]
    assert ("flaky", 4) not in attempts
    assert [(a.state, a.exit_code) for a in flaky] == [("failed", 7), ("failed", 7), ("success", 0)]
    never = [attempts[("never", n)] for n in (1, 2)]
    assert [(a.state, a.exit_code) for a in never] == [("failed", 9), ("failed", 9)]
    for n in (1, 2, 3):
        log = paths.log_path(run, "flaky", n).read_text()
        assert f"this is attempt {n}\n" == log
    assert paths.log_path(run, "never", 2).read_text() == "no luck\n"
    # retry_delay: attempt n+1 starts no sooner than 0.4 s after attempt n ended
    # (the end is stamped a few ms after the timer started, hence the margin).
    for before, after in zip(flaky, flaky[1:]):
        assert (after.started_at - before.ended_at).total_seconds() >= 0.3
    assert "retry   flaky (attempt 2) in 0.400s" in result.out


def test_timeout_stops_the_task_and_everything_it_started(project, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    project.write_task("spawn.sh", """\
sleep 317 &
echo $! >>"$1/pids"
(trap '' TERM; exec sleep 317) &   # a child that ignores TERM
echo $! >>"$1/pids"
touch "$1/started"
wait
""")
    project.write_flow({"name": "f", "tasks": [
        {"id": "slow", "script": "spawn.sh", "args": [str(state)], "timeout": 1}]})
    result = project.sh("run", "f")
    assert result.code == 1, result.out + result.err
    _, attempts = only_run(project)
    attempt = attempts[("slow", 1)]
    assert attempt.state == "failed"
    assert attempt.exit_code == 124
    assert "timeout" in attempt.reason
    pids = [int(p) for p in (state / "pids").read_text().split()]
    assert len(pids) == 2
    assert not [pid for pid in pids if alive(pid, "sleep 317")]
    assert "FAILED  slow (attempt 1)" in result.out and "timeout after 1s" in result.out


def test_a_task_that_ignores_term_is_killed_after_the_grace(project, tmp_path):
    """TERM, then KILL after kill_grace: `timeout` is killed too (137) and it still counts as a timeout."""
    state = tmp_path / "state"
    state.mkdir()
    project.write_task("stubborn.sh", 'trap "" TERM\necho $$ >"$1/pid.new"; mv "$1/pid.new" "$1/pid"\n'
                                      'while :; do sleep 0.1; done\n')
    project.write_flow({"name": "f", "tasks": [
        {"id": "s", "script": "stubborn.sh", "args": [str(state)], "timeout": 0.5}]})
    app = project.app()
    prepared = launch.prepare(app.config, app.store, "f", {}, kill_grace=0.5)
    app.close()
    proc = subprocess.run(["bash", str(prepared.script_path)], capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _, attempts = only_run(project)
    assert attempts[("s", 1)].exit_code == 137
    assert attempts[("s", 1)].reason == "timeout after 0.5s"
    assert not alive(int((state / "pid").read_text()))


def test_tasks_killed_by_signals_never_hang_the_run(project):
    """bash's `wait -n` never reports a job killed by a signal while bash ran another
    command; the engine must notice such ends anyway (here: many, in parallel)."""
    project.write_task("die.sh", 'sleep "0.0$((RANDOM % 5))"\nkill -TERM $$\n')
    project.write_flow({"name": "f", "tasks": [
        {"id": f"t{i}", "script": "die.sh", "retries": 1} for i in range(12)]})
    result = project.sh("run", "f", "--max-parallel", "4", timeout=WAIT * 2)
    assert result.code == 1, result.out + result.err
    _, attempts = only_run(project)
    assert len(attempts) == 24
    assert {(a.state, a.exit_code) for a in attempts.values()} == {("failed", 143)}


def test_large_output_goes_to_the_log_without_deadlock(project):
    project.write_task("loud.py", """\
chunk = b"x" * (1 << 20)
import sys
for _ in range(20):
    sys.stdout.buffer.write(chunk)
    sys.stderr.buffer.write(chunk)
""")
    # No cap (0): every byte reaches the log (the default 10 MiB cap: tests/test_logcap.py).
    project.write_flow({"name": "f", "max_log_bytes": 0, "tasks": [{"id": "loud", "script": "loud.py"}]})
    result = project.sh("run", "f")
    assert result.code == 0, result.out + result.err
    run, _ = only_run(project)
    assert paths.log_path(run, "loud", 1).stat().st_size == 40 << 20
    assert len(result.out) < 10_000


def test_tasks_get_default_sigpipe(project):
    """`featherflow run` execs bash from Python, which ignores SIGPIPE; tasks must not inherit that."""
    # With SIGPIPE ignored, `yes` would see EPIPE and exit 1 ("Broken pipe") instead of dying of SIGPIPE.
    project.write_task("pipe.sh", 'yes | head -n 1 >/dev/null\nexit "${PIPESTATUS[0]}"\n')
    project.write_flow({"name": "f", "tasks": [{"id": "p", "script": "pipe.sh"}]})
    result = project.sh("run", "f")
    assert result.code == 1, result.out + result.err
    _, attempts = only_run(project)
    assert attempts[("p", 1)].exit_code == 128 + signal.SIGPIPE


# -- cancellation and the temp dir ---------------------------------------------

LONG_TASK = """\
import os, pathlib, subprocess, sys, time
state = pathlib.Path(sys.argv[1])
child = subprocess.Popen(["sleep", "319"])
(state / "ids").write_text(f"{os.getpid()} {child.pid} {os.getpgid(0)}")
(state / "started").touch()
time.sleep(300)
"""


def sigterm_once_started(proc, started: Path, ready_check):
    """SIGTERM `proc` once `started` exists and `ready_check()` holds; its (out, err)."""
    try:
        wait_for(lambda: started.exists() or proc.poll() is not None, "the task to start")
        assert ready_check()
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()


def pgid_of(state: Path) -> int:
    return int((state / "ids").read_text().split()[2])


def test_sigterm_cancels_the_run(project, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    project.write_task("long.py", LONG_TASK)
    project.write_task("after.sh", "touch \"$1/after-ran\"\n")
    project.write_flow({"name": "f", "tasks": [
        {"id": "long", "script": "long.py", "args": [str(state)]},
        {"id": "after", "script": "after.sh", "depends_on": ["long"], "args": [str(state)]},
    ]})
    proc = start_run(project, "f")
    out, err = sigterm_once_started(proc, state / "started", lambda: group_members(pgid_of(state)))
    task_pid, child_pid, pgid = (int(x) for x in (state / "ids").read_text().split())
    assert proc.returncode == 5, out + err
    run, attempts = only_run(project)
    assert run.state == "cancelled"
    assert attempts[("long", 1)].state == "cancelled"
    assert attempts[("after", 1)].state == "cancelled"
    assert not (state / "after-ran").exists()
    assert not alive(task_pid) and not alive(child_pid, "sleep 319")
    assert group_members(pgid) == []
    assert not (paths.run_dir(run) / "tmp").exists()
    assert "cancelling run 1" in out and "run 1 cancelled" in out


def test_a_cancelled_task_that_ignores_term_is_killed_after_the_grace(project, tmp_path):
    """No timeout, so no `timeout` to escalate: the script's own GRACE timer KILLs the group."""
    state = tmp_path / "state"
    state.mkdir()
    project.write_task("stubborn.sh", 'trap "" TERM\necho $$ >"$1/pid.new"; mv "$1/pid.new" "$1/pid"\n'
                                      '(trap "" TERM; exec sleep 321) &\nwhile :; do sleep 0.1; done\n')
    project.write_flow({"name": "f", "tasks": [{"id": "s", "script": "stubborn.sh", "args": [str(state)]}]})
    app = project.app()
    prepared = launch.prepare(app.config, app.store, "f", {}, kill_grace=0.5)
    app.close()
    proc = subprocess.Popen(["bash", str(prepared.script_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def leads_its_group():  # the task leads its own group (setsid)
        pid = int((state / "pid").read_text())
        return os.getpgid(pid) == pid

    out, err = sigterm_once_started(proc, state / "pid", leads_its_group)
    task_pid = int((state / "pid").read_text())
    assert proc.returncode == 5, out + err
    run, attempts = only_run(project)
    assert (run.state, attempts[("s", 1)].state) == ("cancelled", "cancelled")
    assert attempts[("s", 1)].exit_code == 137
    assert not alive(task_pid) and group_members(task_pid) == []


def test_temp_dir_is_private_removed_or_kept(project):
    project.write_task("t.sh", 'echo data >"$TMP_DIR/file"; [ "$TMP_DIR" = "$TEMP_DIR" ]\n')
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}]})
    assert project.sh("run", "f").code == 0
    assert project.sh("run", "f", "--keep-tmp").code == 0
    app = project.app()
    first, second = sorted(app.store.runs.list_runs(), key=lambda r: r.id)
    app.close()
    assert not (paths.run_dir(first) / "tmp").exists()
    kept = paths.run_dir(second) / "tmp"
    assert (kept / "file").read_text() == "data\n"
    assert kept.stat().st_mode & 0o777 == 0o700



@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc")
def test_no_task_inherits_the_database_files(project, tmp_path):
    """Neither the script's bash nor a task holds a database file open."""
    out = tmp_path / "fds"
    project.write_task("t.sh", f'for fd in /proc/self/fd/* /proc/$PPID/fd/*; do readlink "$fd"; done >{out}\n')
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}]})
    assert project.sh("runs", "list").code == 0  # the database exists before the run opens it
    assert project.sh("run", "f").code == 0
    opened = out.read_text().splitlines()
    assert opened and not [f for f in opened if "featherflow.db" in f], opened

# -- environment contract and params -------------------------------------------

DUMP = """\
import json, os, sys
with open(sys.argv[1], "w") as f:
    json.dump({"argv": sys.argv[2:], "env": dict(os.environ), "python": sys.executable,
               "tmp_is_dir": os.path.isdir(os.environ["TMP_DIR"])}, f)
"""


def test_environment_contract_and_params(project, tmp_path):
    out = tmp_path / "dump.json"
    project.write_task("dump.py", DUMP)
    project.write_flow({"name": "f", "params": {"day": "2000-01-01", "n": 3}, "tasks": [{
        "id": "t", "script": "dump.py",
        "args": [str(out), "{{ params.day }}", "{{ params.n }}", "{{ run_id }}", "{{ flow }}", "{{ scheduled_at }}"],
        "env": {"MINE": "v-{{ params.day }}", "FEATHERFLOW_TRIGGER": "overridden",
                "UID": "not a number", "FF_PYTHON": "/bin/false", "BASH": "/bin/false"},
    }]})
    result = project.sh("run", "f", "--params", '{"day": "2026-03-04"}')
    assert result.code == 0, result.out + result.err
    run, _ = only_run(project)
    seen = json.loads(out.read_text())
    env = seen["env"]
    tmp = str(paths.run_dir(run) / "tmp")
    assert env["TMP_DIR"] == env["TEMP_DIR"] == tmp and seen["tmp_is_dir"]
    assert env["FEATHERFLOW_RUN_ID"] == str(run.id)
    assert env["FEATHERFLOW_FLOW_NAME"] == "f"
    assert env["FEATHERFLOW_TASK_ID"] == "t"
    assert env["FEATHERFLOW_ATTEMPT"] == "1"
    assert json.loads(env["FEATHERFLOW_PARAMS"]) == {"day": "2026-03-04", "n": 3}
    assert env["FEATHERFLOW_SCHEDULED_AT"] == ""
    # the task's own env comes last, and no name changes what the script runs
    assert env["FEATHERFLOW_TRIGGER"] == "overridden"
    assert env["MINE"] == "v-2026-03-04"
    assert env["UID"] == "not a number" and env["FF_PYTHON"] == env["BASH"] == "/bin/false"
    assert seen["argv"] == ["2026-03-04", "3", str(run.id), "f", ""]
    assert seen["python"] == sys.executable  # .py runs with the Python that runs Featherflow
    assert run.params == {"day": "2026-03-04", "n": 3} and run.trigger == "manual"


def test_trigger_is_manual_and_params_come_from_a_file(project, tmp_path):
    out = tmp_path / "dump.json"
    params = tmp_path / "params file.json"
    params.write_text('{"day": "from-file"}')
    project.write_task("dump.py", DUMP)
    project.write_flow({"name": "f", "params": {"day": "x"}, "tasks": [
        {"id": "t", "script": "dump.py", "args": [str(out), "{{ params.day }}"]}]})
    result = project.sh("run", "f", "--params", params)
    assert result.code == 0, result.out + result.err
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["from-file"]
    assert seen["env"]["FEATHERFLOW_TRIGGER"] == "manual"


@pytest.mark.parametrize("params,message", [
    ('{"nope": 1}', "unknown param 'nope'"),
    ('{"day": ', "not valid JSON"),
    ("[1, 2]", "not a JSON object and not a readable file"),
    ('{"day": "a\\u0000b"}', "NUL"),
    ('{"day": "\\ud800"}', "not valid Unicode"),
])
def test_bad_params_exit_2_before_anything_runs(project, tmp_path, params, message):
    project.write_task("t.sh", 'touch "$1"\n')
    project.write_flow({"name": "f", "params": {"day": "x"}, "tasks": [
        {"id": "t", "script": "t.sh", "args": [str(tmp_path / "ran")]}]})
    result = project.sh("run", "f", "--params", params)
    assert result.code == 2
    assert result.err.startswith("error: ") and message in result.err and "Traceback" not in result.err
    assert not (tmp_path / "ran").exists()
    app = project.app()
    assert app.store.runs.list_runs() == []
    app.close()


def test_interpreters(project, tmp_path):
    """.sh runs with bash even without a shebang or exec bit; others run directly."""
    project.write_task("plain.sh", '[[ -n $BASH_VERSION ]] && echo "$BASH_VERSION" >"$1"\n', executable=False)
    project.write_task("tool", '#!/bin/sh\necho "direct $0" >"$1"\n')
    project.write_flow({"name": "f", "tasks": [
        {"id": "s", "script": "plain.sh", "args": [str(tmp_path / "s")]},
        {"id": "x", "script": "tool", "args": [str(tmp_path / "x")]}]})
    result = project.sh("run", "f")
    assert result.code == 0, result.out + result.err
    assert (tmp_path / "s").read_text().strip()
    assert (tmp_path / "x").read_text() == f"direct {project.tasks / 'tool'}\n"


def test_dry_run_writes_a_script_and_runs_nothing(project, tmp_path):
    project.write_task("t.sh", 'touch "$1"\n')
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh", "args": [str(tmp_path / "ran")]}]})
    result = project.sh("run", "f", "--dry-run")
    assert result.code == 0, result.out + result.err
    path = Path(result.out.strip())
    assert path.is_file() and path.read_text().startswith("#!/usr/bin/env bash")
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert not (tmp_path / "ran").exists()
    app = project.app()
    assert app.store.runs.list_runs() == []
    app.close()


# -- a database that cannot record -------------------------------------------------

def locked(project):
    conn = sqlite3.connect(project.db, isolation_level=None, timeout=WAIT)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


def test_a_run_that_cannot_record_its_start_runs_nothing(project, tmp_path):
    project.write_task("t.sh", 'touch "$1"\n')
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh", "args": [str(tmp_path / "ran")]}]})
    app = project.app()
    prepared = launch.prepare(app.config, app.store, "f", {}, lock_wait=0.5)
    app.close()
    conn = locked(project)
    try:
        proc = subprocess.run(["bash", str(prepared.script_path)], capture_output=True, text=True, timeout=WAIT)
    finally:
        conn.rollback()
        conn.close()
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "could not be started" in proc.stdout and "database is locked" in proc.stderr
    assert not (tmp_path / "ran").exists()
    run, attempts = only_run(project)
    assert run.state == "queued" and attempts[("t", 1)].state == "pending"


def test_a_run_that_cannot_record_a_transition_stops(project, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    project.write_task("wait.py", TOUCH_THEN_WAIT)
    project.write_task("t.sh", 'touch "$1/b-ran"\n')
    project.write_flow({"name": "f", "tasks": [
        {"id": "a", "script": "wait.py", "args": [str(state), "a", "go"]},
        {"id": "b", "script": "t.sh", "depends_on": ["a"], "args": [str(state)]}]})
    app = project.app()
    prepared = launch.prepare(app.config, app.store, "f", {}, lock_wait=0.5)
    app.close()
    proc = subprocess.Popen(["bash", str(prepared.script_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    conn = None
    try:
        wait_for(lambda: (state / "a.started").exists() or proc.poll() is not None, "task a to start")
        conn = locked(project)
        (state / "go").touch()  # a ends now; recording that (and b's start) must fail
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
        if conn is not None:
            conn.rollback()
            conn.close()
    assert proc.returncode == 4, out + err
    assert "could not record a state change" in out and "database is locked" in err
    assert not (state / "b-ran").exists()
    run, attempts = only_run(project)
    assert not paths.log_path(run, "b", 1).exists()
    # Nothing after the failure was recorded; the dead run is then found and closed.
    assert (run.state, attempts[("a", 1)].state, attempts[("b", 1)].state) == ("running", "running", "pending")
    app = project.app()
    reconcile.reconcile(app.store)
    assert app.store.runs.get_run(run.id).state == "interrupted"
    app.close()


def test_changes_that_could_not_be_recorded_are_recorded_at_the_end_if_they_can(project, tmp_path):
    """The lock is released once the run reports the failure: its last `_mark` then
    records what happened meanwhile (a succeeded) and ends the run failed."""
    state = tmp_path / "state"
    state.mkdir()
    project.write_task("wait.py", TOUCH_THEN_WAIT)
    project.write_task("t.sh", 'touch "$1/b-ran"\n')
    project.write_flow({"name": "f", "tasks": [
        {"id": "a", "script": "wait.py", "args": [str(state), "a", "go"]},
        {"id": "b", "script": "t.sh", "depends_on": ["a"], "args": [str(state)]}]})
    app = project.app()
    prepared = launch.prepare(app.config, app.store, "f", {}, lock_wait=3)
    app.close()
    proc = subprocess.Popen(["bash", str(prepared.script_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    conn = None
    try:
        wait_for(lambda: (state / "a.started").exists() or proc.poll() is not None, "task a to start")
        conn = locked(project)
        (state / "go").touch()
        seen = []
        for line in proc.stdout:  # ends at the latest when the script exits
            seen.append(line)
            if "could not record a state change" in line:
                break
        conn.rollback()
        conn.close()
        conn = None
        out = "".join(seen) + proc.communicate(timeout=WAIT)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        if conn is not None:
            conn.close()
    assert proc.returncode == 4, out
    run, attempts = only_run(project)
    assert run.state == "failed" and run.reason == "a state change could not be recorded"
    assert attempts[("a", 1)].state == "success"
    assert attempts[("b", 1)].state == "pending" and not (state / "b-ran").exists()


# -- the Python API ----------------------------------------------------------------

def test_python_api(project, tmp_path):
    project.write_task("t.sh", 'echo "$1" >>"$2"\n')
    project.write_flow({"name": "f", "params": {"word": "x"}, "tasks": [
        {"id": "t", "script": "t.sh", "args": ["{{ params.word }}", str(tmp_path / "out")]}]})
    project.write_flow({"name": "g", "tasks": [{"id": "t", "script": "t.sh"}]})
    ff = Featherflow(flows_dir=str(project.flows), tasks_dir=str(project.tasks),
                     output_dir=str(project.output), config_dir=str(project.home))
    try:
        assert ff.list_flows() == ["f", "g"]
        path = ff.execute_flow("f", params={"word": "hello"})
        assert Path(path).is_file()
        assert ff.last_run.state == "success" and ff.last_run.id == 1
        assert Path(path) == paths.run_dir(ff.last_run) / "run.sh"
        assert (tmp_path / "out").read_text() == "hello\n"
        dry = ff.execute_flow("f", dry_run=True)
        assert Path(dry).is_file() and ff.store.runs.run_count() == 1
        ff.execute_flow("g")  # exits 1: no args
        assert ff.last_run.state == "failed" and ff.last_run.id == 2
    finally:
        ff.close()


def test_a_failed_run_keeps_its_temp_dir_for_resume_and_success_removes_it(project):
    marker = project.root / "fixed"
    project.write_task("make.sh", 'echo made > "$TMP_DIR/made.txt"\n')
    project.write_task("use.sh", f'test -e {marker} || exit 7\ncat "$TMP_DIR/made.txt"\n')
    project.write_flow({"name": "tmpflow", "tasks": [
        {"id": "make", "script": "make.sh"},
        {"id": "use", "script": "use.sh", "depends_on": ["make"]}]})
    assert project.sh("run", "tmpflow").code == 1
    app = project.app()
    run = app.store.runs.list_runs()[0]
    tmp = paths.run_dir(run) / "tmp"
    assert (tmp / "made.txt").read_text() == "made\n"
    marker.write_text("")
    resumed = project.sh("runs", "resume", run.id)
    assert resumed.code == 0, resumed.out + resumed.err
    log = paths.log_path(run, "use", 2).read_text()
    assert log == "made\n"  # the kept task's output was still there
    assert not tmp.exists()


def test_a_reader_that_goes_away_does_not_kill_the_run(project):
    project.write_task("a.sh", "echo a\n")
    project.write_flow({"name": "piped", "tasks": [
        {"id": f"t{i}", "script": "a.sh", "depends_on": [f"t{i - 1}"] if i else []} for i in range(5)]})
    command = " ".join([sys.executable, "-m", "featherflow"] + project.args() + ["run", "piped"])
    proc = subprocess.run(["bash", "-c", f"{command} | head -1; exit ${{PIPESTATUS[0]}}"],
                          cwd=project.root, env=project.env, capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert only_run(project)[0].state == "success"


@pytest.mark.parametrize("moment", [datetime(2026, 1, 2, 3, 4, 5), datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                                    datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))])
def test_a_scheduled_time_reaches_the_script_as_utc_whether_the_store_gives_it_naive_or_aware(project, moment):
    project.write_task("t.sh", "true\n")
    flow = flowmod.validate({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}]})
    run = SimpleNamespace(id=7, uid="0123456789abcdef", trigger="schedule", params={}, max_parallel=1,
                          scheduled_at=moment, tasks_dir=str(project.tasks), output_dir=str(project.output))
    path = launch.script_for(project.app().config, run, flow, {"t": 1}, (), False)
    assert "export FEATHERFLOW_SCHEDULED_AT=2026-01-02T03:04:05Z\n" in path.read_text()
