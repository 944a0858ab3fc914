"""Orphans: a run whose process died is detected with certainty, cleaned up and resumable.

The main test SIGKILLs a real run (`python -m featherflow run`, whose pid is the
bash script after exec) at random moments — while a task runs, inside `_mark`
(tasks that end at once make marks frequent), anywhere — then checks that a
`runs list` (which reconciles) leaves nothing `running`, that no task process
survives, that the database is intact, and that `runs resume` finishes the run
re-running exactly the tasks that had not succeeded. FEATHERFLOW_SOAK=1 kills
many more times. The smaller tests cover a reboot (another boot id), a reused
pid (a live unrelated process with another start time), an unreaped (zombie)
run process, a fork of the script that had not exec'd yet, a parent process
sharing the run's process group (it must survive), and a live run (untouched).
"""

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featherflow import paths, proc, states
from featherflow.engine import reconcile
from helpers import alive, fake_run, integrity, read, set_process, wait_for

SOAK = os.environ.get("FEATHERFLOW_SOAK") == "1"
KILLS = int(os.environ.get("FEATHERFLOW_KILLS", "200" if SOAK else "30"))

QUICK = 'echo $$ >> "$1/$FEATHERFLOW_RUN_ID-$FEATHERFLOW_TASK_ID-$FEATHERFLOW_ATTEMPT.pid"\necho quick\n'
# A task with a child process: the whole task group must go when its run dies.
SLOW = ('echo $$ >> "$1/$FEATHERFLOW_RUN_ID-$FEATHERFLOW_TASK_ID-$FEATHERFLOW_ATTEMPT.pid"\n'
        'sleep 0.4 &\necho $! >> "$1/$FEATHERFLOW_RUN_ID-$FEATHERFLOW_TASK_ID-$FEATHERFLOW_ATTEMPT.pid"\n'
        'wait\n')
# Fails its first attempt in every run, so retries (and their timers) happen.
FLAKY = ('echo $$ >> "$1/$FEATHERFLOW_RUN_ID-$FEATHERFLOW_TASK_ID-$FEATHERFLOW_ATTEMPT.pid"\n'
         '[ "$FEATHERFLOW_ATTEMPT" != 1 ]\n')
GATED = ('echo $$ >> "$1/$FEATHERFLOW_RUN_ID-$FEATHERFLOW_TASK_ID-$FEATHERFLOW_ATTEMPT.pid"\n'
         'echo waiting\nwhile [ ! -e "$2" ]; do sleep 0.02; done\necho done\n')


def kill_flow(pids_dir: Path) -> dict:
    arg = [str(pids_dir)]
    return {"name": "k", "max_parallel": 2, "tasks": [
        {"id": "a", "script": "quick.sh", "args": arg},
        {"id": "b", "script": "slow.sh", "args": arg, "depends_on": ["a"]},
        {"id": "c", "script": "quick.sh", "args": arg, "depends_on": ["a"]},
        {"id": "d", "script": "flaky.sh", "args": arg, "depends_on": ["c"],
         "retries": 1, "retry_delay": 0.1},
        {"id": "e", "script": "quick.sh", "args": arg, "depends_on": ["c"]},
        {"id": "f", "script": "quick.sh", "args": arg, "depends_on": ["b", "d", "e"]},
    ]}


@pytest.fixture
def killable(project):
    pids = project.root / "pids"
    pids.mkdir()
    project.write_task("quick.sh", QUICK)
    project.write_task("slow.sh", SLOW)
    project.write_task("flaky.sh", FLAKY)
    project.write_task("gated.sh", GATED)
    project.write_flow(kill_flow(pids))
    project.pids = pids
    return project


# -- helpers: /proc, read independently of featherflow.proc -----------------------

def children(pid: int):
    return [int(p) for p in read(f"/proc/{pid}/task/{pid}/children").split()]


def run_processes(uid: str, script: str):
    """Live processes that belong to run `uid`: its env var, or `bash <its script>`."""
    needle = f"FEATHERFLOW_RUN_UID={uid}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not alive(int(entry)):
            continue
        argv = read(f"/proc/{entry}/cmdline").split(b"\0")
        if needle in read(f"/proc/{entry}/environ").split(b"\0") or script.encode() in argv[1:2]:
            found.append(int(entry))
    return found


def start_run(project, flow: str, out: Path, new_session: bool = True) -> subprocess.Popen:
    with open(out, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "featherflow", *project.args(), "run", flow],
            cwd=project.root, env=project.env, stdout=f, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=new_session)


def db_rows(db: Path, run_id: int):
    con = sqlite3.connect(str(db))
    try:
        run = con.execute("SELECT state, reason FROM flow_run WHERE id = ?", (run_id,)).fetchone()
        attempts = con.execute(
            "SELECT task_id, attempt, state FROM task_attempt WHERE run_id = ? ORDER BY task_id, attempt",
            (run_id,)).fetchall()
        return run, attempts
    finally:
        con.close()


def open_states(db: Path):
    """Runs queued/running and attempts running, anywhere in the database."""
    con = sqlite3.connect(str(db))
    try:
        runs = con.execute("SELECT id, state FROM flow_run WHERE state IN ('queued', 'running')").fetchall()
        attempts = con.execute(
            "SELECT run_id, task_id, attempt FROM task_attempt WHERE state = 'running'").fetchall()
        return runs, attempts
    finally:
        con.close()


def recorded_pids(pids_dir: Path, run_id: int):
    pids = []
    for path in pids_dir.glob(f"{run_id}-*.pid"):
        pids += [int(line) for line in path.read_text().split()]
    return pids


def survivors(pids, uid: str):
    """Recorded task pids still alive and still ours (a reused pid is someone else)."""
    needle = f"FEATHERFLOW_RUN_UID={uid}".encode()
    return [p for p in pids if alive(p) and needle in read(f"/proc/{p}/environ").split(b"\0")]


# -- the kill loop ---------------------------------------------------------------

def moment(pid: int) -> str:
    """What the run's bash is doing: waiting for a `_mark` answer (from its co-process,
    or a one-shot `_mark` child), with a task running, or neither."""
    kids = children(pid)
    if b"pipe_read" in read(f"/proc/{pid}/wchan") or any(
            b"mark.py" in argv and b"--serve" not in argv
            for argv in (read(f"/proc/{c}/cmdline").split(b"\0") for c in kids)):
        return "in_mark"
    if any(leads_group(c) for c in kids):  # a task: setsid or `timeout` made it a group leader
        return "in_task"
    return "between"


def leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _kill_at(popen: subprocess.Popen, mode: str, rng: random.Random, span: float) -> str:
    """Wait for the moment `mode` asks for, then SIGKILL the run. Returns what was hit."""
    pid = popen.pid
    if mode == "random":
        time.sleep(rng.uniform(0.0, span))  # the moment itself is what is random
        what = moment(pid)
    else:
        time.sleep(rng.uniform(0.0, span * 0.7))
        seen = []

        def hit():
            seen[:] = [moment(pid)]
            return popen.poll() is not None or seen[0] == mode

        with contextlib.suppress(AssertionError):  # not seen in time: kill it wherever it is
            wait_for(hit, f"the run to be {mode}", timeout=span * 2, interval=0.0005)
        what = seen[0] if seen else moment(pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    popen.wait(timeout=30)
    return what if popen.returncode == -signal.SIGKILL else "missed"


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_nothing_running_and_resumes(killable):
    project = killable
    seed = int(os.environ.get("FEATHERFLOW_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)

    # One undisturbed run: it must succeed, and it tells how long a run takes here.
    began = time.monotonic()
    first = start_run(project, "k", project.root / "run-0.out")
    assert first.wait(timeout=120) == 0, (project.root / "run-0.out").read_text()
    span = time.monotonic() - began

    counts = dict(kills=0, stuck=0, survivors=0, resumed_ok=0, finished_anyway=0,
                  in_mark=0, in_task=0, between=0, no_run=0, missed=0)
    modes = ["in_mark", "in_task", "random"]
    tries = 0
    last_run_id = 1
    while counts["kills"] < KILLS and tries < KILLS * 3:
        tries += 1
        popen = start_run(project, "k", project.root / f"run-{tries}.out")
        hit = _kill_at(popen, modes[tries % len(modes)], rng, span)

        # `runs list` reconciles (in-process; the run was killed, so nothing is alive).
        listing = project.cli("runs", "list", "--json")
        assert listing.code == 0, listing.err
        app = project.app()
        try:
            runs = app.store.runs.list_runs(limit=1)
            run = runs[0] if runs and runs[0].id > last_run_id else None
            if run is None:  # killed before the run row was created
                counts["no_run"] += 1
                continue
            last_run_id = run.id
            if hit == "missed":  # it ended before the kill
                assert run.state == states.SUCCESS
                counts["missed"] += 1
                continue
            counts["kills"] += 1
            counts[hit] += 1
            script = str(paths.run_dir(run) / "run.sh")
        finally:
            app.close()

        open_runs, open_attempts = open_states(project.db)
        if open_runs or open_attempts:
            counts["stuck"] += 1
        assert not open_runs and not open_attempts, (seed, hit, open_runs, open_attempts)

        # No task process (nor a _mark, nor a fork of the script) outlives its run.
        pids = recorded_pids(project.pids, run.id)
        try:
            gone = wait_for(lambda: not survivors(pids, run.uid) and not run_processes(run.uid, script),
                            "the run's processes to end", timeout=10)
        except AssertionError:
            gone = False
        if not gone:
            counts["survivors"] += 1
        assert gone, (seed, hit, survivors(pids, run.uid), run_processes(run.uid, script))
        assert integrity(project.db) == "ok"

        state, attempts_before = db_rows(project.db, run.id)
        if state[0] == states.SUCCESS:  # killed during its last _mark, which was recorded
            assert all(s == states.SUCCESS for t, n, s in attempts_before
                       if n == max(m for u, m, _ in attempts_before if u == t))
            counts["finished_anyway"] += 1
            continue
        assert state[0] == states.INTERRUPTED, (seed, hit, state)
        assert "killed" in state[1] or "gone" in state[1], state

        latest = {}
        for task_id, number, st in attempts_before:
            latest[task_id] = (number, st)
        succeeded = {t for t, (n, st) in latest.items() if st == states.SUCCESS}

        resumed = project.sh("runs", "resume", run.id, timeout=120)
        assert resumed.code == 0, (seed, hit, resumed.out, resumed.err)
        state, attempts_after = db_rows(project.db, run.id)
        assert state[0] == states.SUCCESS, (seed, hit, state)
        # Every earlier attempt is kept as it was, apart from a pending one the resume ran.
        after = {(t, n): st for t, n, st in attempts_after}
        for task_id, number, st in attempts_before:
            assert (task_id, number) in after
            if st != states.PENDING:
                assert after[(task_id, number)] == st, (seed, hit, task_id, number)
        # Exactly the tasks that had not succeeded ran again.
        before = {(t, n): st for t, n, st in attempts_before}
        rerun = {t for (t, n), st in after.items()
                 if (t, n) not in before or (before[(t, n)] == states.PENDING != st)}
        assert rerun == set(latest) - succeeded, (seed, hit, rerun, succeeded)
        for task_id in rerun:
            newest = max(n for t, n in after if t == task_id)
            assert after[(task_id, newest)] == states.SUCCESS
        counts["resumed_ok"] += 1

    summary = " ".join(f"{k}={v}" for k, v in counts.items())
    print(f"\norphans: {summary} seed={seed}")
    assert counts["kills"] == KILLS, summary
    assert counts["in_mark"] > 0 and counts["in_task"] > 0, summary
    assert counts["resumed_ok"] + counts["finished_anyway"] == KILLS
    assert integrity(project.db) == "ok"


# -- detection without a real kill -------------------------------------------------

A_RUNNING = dict(flow="fake", tasks=["a", "b"], outcomes={"a": ["running"]})  # a:1 running, b pending


def test_another_boot_id_means_the_machine_restarted(store):
    me = os.getpid()
    run = fake_run(store, **A_RUNNING, pid=me, pid_start=proc.start_time(me),
                   boot_id="00000000-0000-0000-0000-000000000000")
    assert proc.boot_id() and proc.boot_id() != run.boot_id
    done = reconcile.reconcile(store)
    assert [r for r, _ in done] == [run.id]
    after = store.runs.get_run(run.id)
    assert after.state == states.INTERRUPTED and "restarted" in after.reason
    assert [a.state for a in store.runs.attempts(run.id)] == [states.INTERRUPTED, states.PENDING]
    assert store.runs.attempts(run.id)[0].reason  # the reason is recorded on the attempt too


def test_a_reused_pid_with_another_start_time_is_not_the_run(store):
    me = os.getpid()  # alive, but not the process that was recorded
    run = fake_run(store, **A_RUNNING, pid=me, pid_start=proc.start_time(me) - 1, boot_id=proc.boot_id())
    assert not proc.is_alive(me, proc.start_time(me) - 1, proc.boot_id())
    reconcile.reconcile(store)
    after = store.runs.get_run(run.id)
    assert after.state == states.INTERRUPTED
    assert "another process" in after.reason
    assert os.getpid() == me  # and we are still here: reconcile never signals an unrelated pid


def test_the_very_process_recorded_is_alive_and_untouched(store):
    me = os.getpid()
    run = fake_run(store, **A_RUNNING, pid=me, pid_start=proc.start_time(me), boot_id=proc.boot_id())
    assert reconcile.reconcile(store) == []
    assert store.runs.get_run(run.id).state == states.RUNNING
    assert store.runs.attempts(run.id)[0].state == states.RUNNING


def test_a_dead_pid_and_an_unreaped_zombie_are_both_gone(store):
    done = subprocess.Popen(["true"])
    done.wait()
    zombie = subprocess.Popen(["true"])
    try:
        wait_for(lambda: not alive(zombie.pid), "the child to exit", timeout=10)  # exited, not collected
        assert os.path.exists(f"/proc/{zombie.pid}")
        boot = proc.boot_id()
        dead_run = fake_run(store, **A_RUNNING, pid=done.pid, pid_start=1, boot_id=boot)
        zombie_run = fake_run(store, **A_RUNNING, pid=zombie.pid, pid_start=proc.start_time(zombie.pid),
                              boot_id=boot)
        assert not proc.is_alive(zombie.pid, proc.start_time(zombie.pid), boot)
        reconcile.reconcile(store)
        assert store.runs.get_run(dead_run.id).state == states.INTERRUPTED
        assert store.runs.get_run(zombie_run.id).state == states.INTERRUPTED
        assert "killed, crashed" in store.runs.get_run(zombie_run.id).reason
    finally:
        zombie.wait()


def test_a_late_mark_that_starts_the_run_during_reconcile_does_not_leave_it_running(store, monkeypatch):
    """Killed during its first `_mark` (queued -> running): that mark may commit while
    reconcile works on the run. The run must still end up interrupted."""
    run = fake_run(store, "fake", ["a"], state=states.QUEUED,
                   pid=os.getpid(), pid_start=proc.start_time(os.getpid()) + 1, boot_id=proc.boot_id())
    assert run.state == states.QUEUED
    real = reconcile.kill_leftovers
    late = []

    def kill_then_the_late_mark_lands(r, *a, **k):
        if not late:
            late.append(store.runs.transition_run(run.id, states.RUNNING))
        return real(r, *a, **k)

    monkeypatch.setattr(reconcile, "kill_leftovers", kill_then_the_late_mark_lands)
    assert [r for r, _ in reconcile.reconcile(store)] == [run.id]
    assert late == [states.QUEUED]
    assert store.runs.get_run(run.id).state == states.INTERRUPTED


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_first_mark_that_lands_after_its_process_died_is_refused_and_the_run_interrupted(
        project, store):
    """The real `_mark --pid P --run running` of a run killed meanwhile must not record P
    without its start time (the run would look alive to any process reusing P)."""
    from featherflow import mark

    pid = dead_pid()
    run = fake_run(store, "fake", ["a"], state=states.QUEUED, pid=pid, pid_start=12345, boot_id=proc.boot_id())
    assert mark.main([str(project.db), str(run.id), "--pid", str(pid), "--run", "running"]) == 3
    row = store.runs.get_run(run.id)
    assert (row.state, row.pid_start) == (states.QUEUED, 12345)
    assert [r for r, _ in reconcile.reconcile(store)] == [run.id]
    assert store.runs.get_run(run.id).state == states.INTERRUPTED


def test_a_fork_of_the_script_that_has_not_exec_d_yet_is_killed(project, store):
    """A subshell forked by the run's bash shows the run only in its command line."""
    run = fake_run(store, **A_RUNNING, output=project.output)
    script = paths.run_dir(run) / "run.sh"
    script.parent.mkdir(parents=True)
    ready = project.root / "forked"
    # The subshell runs two commands, so bash cannot exec the first in its place.
    script.write_text(f'( touch {ready}; sleep 60; true ) &\nwait\n')
    main = subprocess.Popen(["bash", str(script)], start_new_session=True)
    try:
        wait_for(ready.exists, "the subshell to start", timeout=10)

        def forks():  # the subshell's own children show `bash <script>` until they exec
            return [p for p in proc.processes_running_script(str(script)) if p != main.pid]

        wait_for(lambda: len(forks()) == 1, "one fork", timeout=10)
        fork = forks()
        assert read(f"/proc/{fork[0]}/cmdline").split(b"\0")[0].endswith(b"bash")
        assert b"FEATHERFLOW_RUN_UID" not in read(f"/proc/{fork[0]}/environ")
        set_process(store, run.id, main.pid, proc.start_time(main.pid), proc.boot_id())
        main.kill()
        main.wait()
        reconcile.reconcile(store)
        assert store.runs.get_run(run.id).state == states.INTERRUPTED
        wait_for(lambda: not alive(fork[0]), "the fork to be killed", timeout=10)
    finally:
        try:
            os.killpg(main.pid, signal.SIGKILL)  # its own session: the subshell and its sleep
        except ProcessLookupError:
            pass
        main.wait()


@pytest.mark.slow
def test_a_parent_sharing_the_runs_process_group_survives_the_cleanup(killable):
    """A run started from a script (no group of its own): reconcile kills the
    run's leftovers, never the script that started it."""
    project = killable
    project.write_task("fail.sh", "exit 3\n")
    project.write_flow({"name": "timer", "tasks": [
        {"id": "t", "script": "fail.sh", "retries": 1, "retry_delay": 60}]})
    pidfile = project.root / "run.pid"
    cmd = (f"{sys.executable} -m featherflow {' '.join(project.args())} run timer >/dev/null 2>&1 &\n"
           f"echo $! > {pidfile}\nwait\nsleep 60\n")
    harness = subprocess.Popen(["bash", "-c", cmd], cwd=project.root, env=project.env,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the run's pid", timeout=10)
        run_pid = int(pidfile.read_text())

        def timer():
            return [c for c in children(run_pid) if read(f"/proc/{c}/cmdline").startswith(b"sleep")]

        wait_for(lambda: timer(), "the retry's timer", timeout=30)  # the retry's timer runs in the run's group
        sleeper = timer()[0]
        assert os.getpgid(sleeper) == harness.pid
        os.kill(run_pid, signal.SIGKILL)
        # kill() returns before the process is gone: wait for that (a zombie counts as gone)
        wait_for(lambda: not proc.is_alive(run_pid, None, None), "the run to die", timeout=10)
        listing = project.cli("runs", "list")
        assert listing.code == 0 and "interrupted" in listing.out
        wait_for(lambda: not alive(sleeper), "the timer to be killed", timeout=10)
        assert harness.poll() is None, "reconcile killed the process that started the run"
        assert alive(harness.pid)
    finally:
        if harness.poll() is None:
            os.killpg(harness.pid, signal.SIGKILL)
        harness.wait()


@pytest.mark.slow
def test_a_live_run_is_never_touched_by_reconcile(killable):
    project = killable
    gate = project.root / "gate"
    project.write_flow({"name": "live", "tasks": [
        {"id": "w", "script": "gated.sh", "args": [str(project.pids), str(gate)]},
        {"id": "z", "script": "quick.sh", "args": [str(project.pids)], "depends_on": ["w"]}]})
    popen = start_run(project, "live", project.root / "live.out")
    try:
        app = project.app()
        try:
            def task_running():
                runs = app.store.runs.list_runs(limit=1)
                return bool(runs) and any(a.state == states.RUNNING for a in app.store.runs.attempts(runs[0].id))

            wait_for(task_running, "a task to run", timeout=30)
            run = app.store.runs.list_runs(limit=1)[0]
            pids = recorded_pids(project.pids, run.id)
            wait_for(lambda: recorded_pids(project.pids, run.id), "the task's pid", timeout=10)
            pids = recorded_pids(project.pids, run.id)
            for _ in range(3):
                assert reconcile.reconcile(app.store) == []
                assert project.cli("runs", "list").code == 0
                assert project.cli("runs", "show", run.id).code == 0
            assert app.store.runs.get_run(run.id).state == states.RUNNING
            assert {a.task_id: a.state for a in app.store.runs.attempts(run.id)} == {
                "w": states.RUNNING, "z": states.PENDING}
            assert all(alive(p) for p in pids)
        finally:
            app.close()
        gate.touch()
        assert popen.wait(timeout=60) == 0
        rows = db_rows(project.db, run.id)
        assert rows[0][0] == states.SUCCESS
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
