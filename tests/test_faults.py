"""Faults while runs go on: a full disk, a read-only or locked database, a killed
migration, a damaged database file, a backup taken mid-run.

Each scenario uses a real `featherflow run` (bash + `_mark`) of a flow `a -> b`
where `a` waits at a gate: the fault is injected while `a` runs, then the gate
opens. `a`'s end and `b`'s start go to the database in one `_mark` call; it
must fail, the script must stop the run with a clear message, `b` must never
start (nothing runs untracked), and once the fault is gone `runs resume` must
finish the run with `b` run exactly once.

How the faults are made, as root or not (a plain CI runner):
- disk full: a small tmpfs holds the database and is filled (needs `mount`,
  i.e. root); everywhere, RLIMIT_FSIZE on the run's process, with the WAL
  grown past the limit from outside (writes that extend a file past it fail).
- read-only: the tmpfs remounted read-only (root), `chattr +i` on the
  database (root, a filesystem with attributes), or `chmod 0400` (non-root;
  root ignores modes) — each variant runs where it can and says why not.
- locked: the test holds BEGIN EXCLUSIVE longer than FEATHERFLOW_MARK_DEADLINE.

Counts (kills, stuck runs, duplicate slots, lost transitions, integrity
checks passed) go as JSON lines to $FEATHERFLOW_FIGURES when set;
bench/figures.py makes the README's table from them. FEATHERFLOW_SOAK=1 runs
the loops many more times.
"""

import contextlib
import errno
import functools
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from featherflow import mark, proc, states
from featherflow.store import backup
from helpers import fake_run, integrity, wait_for

SOAK = os.environ.get("FEATHERFLOW_SOAK") == "1"
MIGRATION_ROUNDS = 40 if SOAK else 2  # rounds over every kill point
LOCK_MARKS = 400 if SOAK else 24
BACKUPS = 60 if SOAK else 6
ROUNDS = range(10 if SOAK else 1)  # each gated scenario, with a fresh project each time
ROOT = os.geteuid() == 0
MARK = [sys.executable, "-I", "-S", os.path.abspath(mark.__file__)]

GATE = """\
touch "$1"
i=0
while [ ! -e "$2" ]; do
  sleep 0.02
  i=$((i + 1))
  [ "$i" -lt 3000 ] || exit 9
done
"""
RECORD = 'echo "$FEATHERFLOW_RUN_ID $FEATHERFLOW_TASK_ID $FEATHERFLOW_ATTEMPT" >> "$1"\n'


# -- figures ------------------------------------------------------------------------

def record_figures(test: str, **counts) -> None:
    """Append one JSON line of counts to $FEATHERFLOW_FIGURES (bench/figures.py reads them)."""
    path = os.environ.get("FEATHERFLOW_FIGURES")
    if not path:
        return
    line = {"test": test, "kills": 0, "stuck_runs": 0, "duplicate_slots": 0, "lost_transitions": 0,
            "integrity_checks_passed": 0, **counts}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def duplicate_slots(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM (SELECT 1 FROM schedule_slot GROUP BY schedule_id, slot_at "
                           "HAVING COUNT(*) > 1)").fetchone()[0]
    finally:
        con.close()


def stuck_runs(db: Path) -> int:
    """Queued or running in the database while their process is gone."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT pid, pid_start, boot_id FROM flow_run "
                           "WHERE state IN ('queued', 'running')").fetchall()
    finally:
        con.close()
    return sum(not proc.is_alive(*row) for row in rows)


# -- the gated run ---------------------------------------------------------------------

class Gated:
    """`featherflow run g` where task a waits for a gate file; b records that it ran."""

    def __init__(self, project):
        self.project = project
        self.started = project.root / "a-started"
        self.gate = project.root / "gate"
        self.ran = project.root / "b-ran"
        project.write_task("gate.sh", GATE)
        project.write_task("record.sh", RECORD)
        project.write_flow({"name": "g", "tasks": [
            {"id": "a", "script": "gate.sh", "args": [str(self.started), str(self.gate)]},
            {"id": "b", "script": "record.sh", "args": [str(self.ran)], "depends_on": ["a"]},
        ]})

    def run(self, fault, env=None, preexec_fn=None):
        """Start the run, inject `fault()` while a runs, open the gate; (code, out, err, seconds after the gate)."""
        project = self.project
        self.started.unlink(missing_ok=True)
        self.gate.unlink(missing_ok=True)
        child = subprocess.Popen([sys.executable, "-m", "featherflow", *project.args(), "run", "g"],
                                 cwd=project.root, env={**project.env, **(env or {})}, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)
        try:
            wait_for(lambda: self.started.exists() or child.poll() is not None, what="task a to start")
            assert child.poll() is None, child.communicate()
            # Between bursts: the co-process closes its connection mark.BURST seconds after its
            # last call (a read-only remount meanwhile would fail: the database is open for writing).
            wait_for(lambda: not held_open(project.db), what="the _mark co-process to let go of the database")
            fault()
            opened = time.monotonic()
            self.gate.touch()
            out, err = child.communicate(timeout=90)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        return child.returncode, out, err, time.monotonic() - opened

    def ran_lines(self):
        return self.ran.read_text().splitlines() if self.ran.exists() else []

    def check_stopped(self, code, out, err, *why):
        """The run stopped loudly, b never started and nothing of the run is left running."""
        assert code == 4, (code, out, err)
        assert "could not record a state change" in out and "nothing runs untracked" in out, out
        assert "cannot record run 1" in err and any(w in err for w in why), err
        untracked = len(self.ran_lines())
        assert untracked == 0  # b never started
        app = self.project.app()
        try:
            uid = app.store.runs.get_run(1).uid
        finally:
            app.close()
        assert proc.processes_with_env("FEATHERFLOW_RUN_UID", uid) == []
        return untracked

    def check_resumes(self):
        """`runs resume` (which first marks the dead run interrupted) finishes it; b ran once."""
        result = self.project.sh("runs", "resume", "1")
        assert result.code == 0, result.out + result.err
        assert self.ran_lines() == ["1 b 1"]
        app = self.project.app()
        try:
            run = app.store.runs.get_run(1)
            latest = app.store.runs.latest_attempts(1)
        finally:
            app.close()
        assert run.state == states.SUCCESS
        assert {t: a.state for t, a in latest.items()} == {"a": "success", "b": "success"}
        assert integrity(self.project.db) == "ok"
        stuck = stuck_runs(self.project.db)
        assert stuck == 0
        return stuck



def held_open(path: Path) -> bool:
    """Whether another process has the file at `path` open (from /proc; False without it)."""
    target = os.path.realpath(path)
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else ()):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return True
            except OSError:
                continue
    return False

@pytest.fixture
def gated(project):
    return Gated(project)


# -- small filesystems -------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def mount_works() -> bool:
    if not ROOT or not shutil.which("mount"):
        return False
    probe = tempfile.mkdtemp()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], capture_output=True)
        if done.returncode:
            return False
        subprocess.run(["umount", probe], capture_output=True)
        return True
    finally:
        os.rmdir(probe)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with open(filler, "ab", buffering=0) as f:  # the last bytes of the last block too
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0")
    return filler


# -- disk full ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("round_", ROUNDS)
def test_disk_full_on_a_small_filesystem_stops_the_run_and_resume_finishes_it(project, gated, round_):
    if not mount_works():
        pytest.skip("needs root and `mount` for a tmpfs (the RLIMIT_FSIZE variant runs everywhere)")
    with tmpfs(project.home, "2m"):
        filled = []
        code, out, err, _ = gated.run(lambda: filled.append(fill(project.home)))
        filled[0].unlink()  # space returns
        untracked = gated.check_stopped(code, out, err, "database or disk is full", "disk I/O error")
        stuck = gated.check_resumes()
    record_figures("disk full (tmpfs)", stuck_runs=stuck, integrity_checks_passed=1, untracked_tasks=untracked)


@pytest.mark.slow
@pytest.mark.parametrize("round_", ROUNDS)
def test_disk_full_by_file_size_limit_stops_the_run_and_resume_finishes_it(project, gated, round_):
    """RLIMIT_FSIZE works for any user: the run (and its `_mark` calls) may not grow a
    file past LIMIT; the test grows the WAL past it while `a` runs, holding a
    connection open so that no checkpoint shrinks it."""
    limit = 1 << 20
    project.cli("runs", "list")  # create the database now, without the limit

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    holder = sqlite3.connect(str(project.db), isolation_level=None)
    try:
        def grow_wal():
            holder.execute("PRAGMA cache_size = 10")  # spill, do not buffer
            holder.execute("BEGIN IMMEDIATE")
            holder.execute("CREATE TABLE fault_filler (x)")
            holder.execute("INSERT INTO fault_filler VALUES (zeroblob(?))", (2 * limit,))
            holder.execute("DROP TABLE fault_filler")
            holder.execute("COMMIT")
            assert Path(f"{project.db}-wal").stat().st_size > limit

        code, out, err, _ = gated.run(grow_wal, preexec_fn=limited)
        untracked = gated.check_stopped(code, out, err, "disk I/O error", "database or disk is full")
    finally:
        holder.close()  # the last connection checkpoints the WAL: space returns
    stuck = gated.check_resumes()
    record_figures("disk full (file size limit)", stuck_runs=stuck, integrity_checks_passed=1,
                   untracked_tasks=untracked)


# -- read-only database -------------------------------------------------------------------

def chattr_works(path: Path) -> bool:
    if not ROOT or not shutil.which("chattr"):
        return False
    probe = path / ".chattr-probe"
    probe.write_text("")
    try:
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode:
            return False
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True, check=True)
        return True
    finally:
        probe.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("round_", ROUNDS)
@pytest.mark.parametrize("how", ["remount", "chattr", "chmod"])
def test_read_only_database_stops_the_run_and_resume_finishes_it(project, gated, how, round_):
    project.home.mkdir(mode=0o700, exist_ok=True)
    if how == "remount" and not mount_works():
        pytest.skip("needs root and `mount` (tmpfs remounted read-only)")
    if how == "chattr" and not chattr_works(project.home):
        pytest.skip("needs root and a filesystem with the immutable attribute (chattr +i)")
    if how == "chmod" and ROOT:
        pytest.skip("root ignores file modes (the remount and chattr variants cover root)")
    with contextlib.ExitStack() as stack:
        if how == "remount":
            stack.enter_context(tmpfs(project.home, "4m"))
        project.cli("runs", "list")  # create the database
        db = str(project.db)
        if how == "remount":
            fault = lambda: subprocess.run(["mount", "-o", "remount,ro", str(project.home)], check=True)  # noqa: E731
            undo = lambda: subprocess.run(["mount", "-o", "remount,rw", str(project.home)], check=True)  # noqa: E731
        elif how == "chattr":
            fault = lambda: subprocess.run(["chattr", "+i", db], check=True)  # noqa: E731
            undo = lambda: subprocess.run(["chattr", "-i", db], check=True)  # noqa: E731
        else:
            fault = lambda: (os.chmod(db, 0o400), os.chmod(project.home, 0o500))  # noqa: E731
            undo = lambda: (os.chmod(project.home, 0o700), os.chmod(db, 0o600))  # noqa: E731
        stack.callback(lambda: undo() if not writable(project.db) else None)
        code, out, err, _ = gated.run(fault)
        undo()
        untracked = gated.check_stopped(code, out, err, "readonly", "read-only", "unable to open",
                                        "attempt to write")
        stuck = gated.check_resumes()
    record_figures(f"read-only database ({how})", stuck_runs=stuck, integrity_checks_passed=1,
                   untracked_tasks=untracked)


def writable(path: Path) -> bool:
    try:
        with open(path, "r+b"):
            return True
    except OSError:
        return False


# -- locked database ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("round_", ROUNDS)
def test_a_lock_held_past_the_deadline_stops_the_run_loudly_and_resume_finishes_it(project, gated, round_):
    deadline = 1.0
    project.cli("runs", "list")
    holder = sqlite3.connect(str(project.db), isolation_level=None)
    try:
        code, out, err, waited = gated.run(lambda: holder.execute("BEGIN EXCLUSIVE"),
                                           env={"FEATHERFLOW_MARK_DEADLINE": str(deadline)})
        # The script ended while the lock was still held: each `_mark` gave up after the deadline.
        assert holder.in_transaction
    finally:
        holder.close()
    untracked = gated.check_stopped(code, out, err, "database is locked")
    assert waited >= deadline  # it retried for the whole deadline before failing
    stuck = gated.check_resumes()
    record_figures("database locked past the deadline", stuck_runs=stuck, integrity_checks_passed=1,
                   untracked_tasks=untracked)


def run_with_tasks(project, n: int) -> int:
    """A run in state running with n pending attempts t0..t{n-1}, made through the store."""
    app = project.app()
    try:
        return fake_run(app.store, "m", [f"t{i}" for i in range(n)]).id
    finally:
        app.close()


def mark_call(db: Path, run_id: int, transition: str, deadline: float):
    done = subprocess.run(MARK + [str(db), str(run_id), transition], capture_output=True, text=True,
                          env={**os.environ, "FEATHERFLOW_MARK_DEADLINE": str(deadline)}, timeout=120)
    return transition, done.returncode, done.stderr


def attempt_states(db: Path, run_id: int):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT task_id, state FROM task_attempt WHERE run_id = ? AND attempt = 1",
                                (run_id,)).fetchall())
    finally:
        con.close()


def concurrent_marks(db: Path, run_id: int, transitions, deadline: float, workers: int = 4):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda t: mark_call(db, run_id, t, deadline), transitions))


def lost(db: Path, run_id: int, results) -> int:
    """Transitions `_mark` acknowledged (exit 0) that the database does not hold."""
    now = attempt_states(db, run_id)
    order = {"pending": 0, "running": 1, "success": 2}
    missing = 0
    for transition, code, _ in results:
        task, _, state = transition.split(":")[:3]
        if code == 0 and order.get(now.get(task), -1) < order[state]:
            missing += 1
    return missing


@pytest.mark.slow
def test_concurrent_marks_under_a_lock_wait_or_fail_loudly_never_silently(project):
    """Marks queue behind a short lock and all land; behind a lock held past their
    deadline they all fail with exit 4 and an error, and none is half-recorded."""
    project.cli("runs", "list")
    db = project.db
    n = LOCK_MARKS
    run_id = run_with_tasks(project, n)
    holder = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.3, holder.rollback)  # a short lock: the fault lasts 0.3 s
    release.start()
    try:
        results = concurrent_marks(db, run_id, [f"t{i}:1:running" for i in range(n)], deadline=30)
    finally:
        release.join()
        holder.close()
    assert [code for _, code, _ in results] == [0] * n, [r for r in results if r[1]][:3]
    assert set(attempt_states(db, run_id).values()) == {"running"}
    missing = lost(db, run_id, results)

    holder = sqlite3.connect(str(db), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        failed = concurrent_marks(db, run_id, [f"t{i}:1:success:0" for i in range(min(n, 8))], deadline=0.5)
    finally:
        holder.rollback()
        holder.close()
    for _, code, err in failed:
        assert code == 4 and "error: cannot record" in err and "database is locked" in err, err
    assert set(attempt_states(db, run_id).values()) == {"running"}  # nothing half-recorded
    missing += lost(db, run_id, failed)
    assert missing == 0
    assert integrity(db) == "ok"
    record_figures("concurrent _mark under a lock", lost_transitions=missing, integrity_checks_passed=1,
                   transitions=n + len(failed))


# -- a killed migration ---------------------------------------------------------------------------

MIGRATE = textwrap.dedent("""\
    import sys, time, types
    from pathlib import Path
    from featherflow import states
    from featherflow.store import db as dbmod

    db_path, markers, pause_at, pause_for = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    STEPS = [
        "CREATE TABLE fault_v2 (id INTEGER PRIMARY KEY, run_id INTEGER, task_id TEXT, state TEXT)",
        "ALTER TABLE task_attempt ADD COLUMN v2_note TEXT",
        # What every attempt was when the upgrade ran: any later change came from
        # code that wrote after the upgrade.
        "INSERT INTO fault_v2 (run_id, task_id, state) SELECT run_id, task_id, state FROM task_attempt",
        "CREATE INDEX fault_v2_task ON fault_v2 (task_id)",
    ]

    def up(database):
        for number, statement in enumerate(STEPS, 1):
            database.execute_sql(statement)
            (markers / f"step{number}").touch()
            if number == pause_at:
                time.sleep(pause_for)

    real = dbmod.migration_modules()
    fake = types.ModuleType("migrations.9999_fault_test")
    fake.up = up
    dbmod.migration_modules = lambda: real + [(len(real) + 1, fake)]
    states.SCHEMA_VERSION = len(real) + 1
    dbmod.open_database(Path(db_path)).close()
    (markers / "done").touch()
""")


def schema_state(db: Path):
    """(user_version, v2 table present, v2 column present)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        table = con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'fault_v2'").fetchone()[0]
        column = any(row[1] == "v2_note" for row in con.execute("PRAGMA table_info(task_attempt)"))
        return version, bool(table), column
    finally:
        con.close()


def start_migration(project, markers: Path, pause_at: int, pause_for: float):
    markers.mkdir(exist_ok=True)
    for old in markers.iterdir():
        old.unlink()
    return subprocess.Popen([sys.executable, "-c", MIGRATE, str(project.db), str(markers), str(pause_at),
                             str(pause_for)], env=project.env, cwd=project.root, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_killing_a_migration_leaves_the_old_or_the_new_schema_and_a_second_open_upgrades(project):
    from featherflow.store import db as dbmod

    rng = random.Random(int(os.environ.get("FEATHERFLOW_SEED", "0")) or None)
    dbmod.open_database(project.db).close()
    markers = project.root / "markers"
    kills = checks = lost_total = stale_writes = after_commit = 0
    points = list(range(1, 5)) + ["random"]
    old = states.SCHEMA_VERSION  # the test migration comes next
    for _ in range(MIGRATION_ROUNDS):
        for point in points:
            assert schema_state(project.db)[0] == old
            run_id = run_with_tasks(project, 6)
            transitions = [f"t{i}:1:running" for i in range(6)]
            pause_at = point if point != "random" else 0
            child = start_migration(project, markers, pause_at, 60)
            traffic = []
            marks = threading.Thread(target=lambda: traffic.extend(
                concurrent_marks(project.db, run_id, transitions, deadline=30, workers=3)))
            if point == "random":
                marks.start()
                time.sleep(rng.uniform(0.0, 0.6))  # a kill at any moment of the open: before, during, after
            else:
                wait_for(lambda: (markers / f"step{point}").exists() or child.poll() is not None,
                         what=f"migration step {point}")
                marks.start()
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            kills += 1
            marks.join(timeout=120)
            version, table, column = schema_state(project.db)
            assert (version, table, column) in ((old, False, False), (old + 1, True, True)), (point, version, table, column)
            assert integrity(project.db) == "ok"
            checks += 1
            for transition, code, err in traffic:
                assert code == 0 or "error:" in err, (transition, code, err)  # never silently dropped
            lost_total += lost(project.db, run_id, traffic)
            if version == old + 1:  # the random kill came after the commit: start again from the old version
                after_commit += 1
                reset_to_v1(project.db)
                continue
            # A second open, slow, with marks arriving meanwhile, completes the upgrade.
            child = start_migration(project, markers, 1, 0.5)
            wait_for(lambda: (markers / "step1").exists() or child.poll() is not None, what="the second open")
            late = concurrent_marks(project.db, run_id, [f"t{i}:1:success:0" for i in range(6)], deadline=30)
            assert child.wait(timeout=60) == 0, child.stderr.read()
            assert schema_state(project.db) == (old + 1, True, True)
            assert integrity(project.db) == "ok"
            checks += 1
            lost_total += lost(project.db, run_id, late)
            for transition, code, err in late:
                assert code == 0 or "error:" in err, (transition, code, err)
            stale_writes += writes_after_upgrade(project.db, run_id)
            reset_to_v1(project.db)
    assert lost_total == 0
    assert stale_writes == 0, "a _mark that knows schema 1 wrote into the upgraded database"
    record_figures("SIGKILL during a migration (with _mark traffic)", kills=kills, lost_transitions=lost_total,
                   integrity_checks_passed=checks, stale_schema_writes=stale_writes,
                   kills_after_the_commit=after_commit)


def writes_after_upgrade(db: Path, run_id: int) -> int:
    """Attempts whose state changed after the upgrade copied it: written by old code."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        then = dict(con.execute("SELECT task_id, state FROM fault_v2 WHERE run_id = ?", (run_id,)).fetchall())
        now = con.execute("SELECT task_id, state FROM task_attempt WHERE run_id = ?", (run_id,)).fetchall()
    finally:
        con.close()
    return sum(then.get(task_id) != state for task_id, state in now)


def reset_to_v1(db: Path) -> None:
    """Undo the test migration (a test-only downgrade) so the next round starts at the old version."""
    con = sqlite3.connect(str(db), isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("DROP TABLE fault_v2")
        con.execute("ALTER TABLE task_attempt DROP COLUMN v2_note")
        con.execute(f"PRAGMA user_version = {states.SCHEMA_VERSION}")
        con.execute("COMMIT")
    finally:
        con.close()


# -- damaged and foreign files ---------------------------------------------------------------------

def damaged(kind: str, good: bytes) -> bytes:
    if kind == "truncated to its header":
        return good[:100]
    if kind == "truncated to half":
        return good[:len(good) // 2]
    if kind == "pages overwritten":
        rng = random.Random(7)
        return good[:100] + bytes(rng.randrange(256) for _ in range(len(good) - 100))
    if kind == "not SQLite":
        return b"name,state\nx,running\n"
    if kind == "another program's SQLite database":
        path = Path(tempfile.mkdtemp()) / "other.db"
        con = sqlite3.connect(str(path))
        con.execute("CREATE TABLE notes (body TEXT)")
        con.execute("INSERT INTO notes VALUES ('mine')")
        con.commit()
        con.close()
        data = path.read_bytes()
        shutil.rmtree(path.parent)
        return data
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated to its header", "truncated to half", "pages overwritten",
                                  "not SQLite", "another program's SQLite database"])
def test_a_damaged_or_foreign_database_file_is_refused_clearly_and_left_unchanged(project, kind):
    project.write_task("t.sh", "true\n")
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}]})
    assert project.sh("run", "f").code == 0
    good = project.db.read_bytes()
    for suffix in ("-wal", "-shm"):
        Path(f"{project.db}{suffix}").unlink(missing_ok=True)
    project.db.write_bytes(damaged(kind, good))
    before = hashlib.sha256(project.db.read_bytes()).hexdigest()
    checks = changed = 0
    for argv in (["runs", "list"], ["run", "f"], ["runs", "show", "1"], ["db", "backup", project.root / "copy.db"]):
        result = project.sh(*argv)
        assert result.code == 4, (argv, result)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(project.db) in lines[0], (argv, result.err)
        assert "move it aside" in lines[0] or "nothing was backed up" in lines[0] or "not a" in lines[0], lines[0]
        assert "Traceback" not in result.err
        changed += hashlib.sha256(project.db.read_bytes()).hexdigest() != before
        checks += 1
    assert not (project.root / "copy.db").exists()
    doctor = project.sh("doctor")
    assert doctor.code == 1 and "Traceback" not in doctor.err and "problem" in doctor.out.lower()
    changed += hashlib.sha256(project.db.read_bytes()).hexdigest() != before
    assert changed == 0
    record_figures("damaged or foreign database file", refusals=checks + 1, kinds=1, bytes_changed=changed)


# -- backup while a run writes -------------------------------------------------------------------------

CHAIN = 12


@pytest.mark.slow
def test_backups_taken_while_a_run_writes_are_consistent_and_pass_integrity_check(project):
    """A chain t0 -> t1 -> ... records `t(k-1) success` and `t(k) running` in one
    transaction; every copy must show a state that was committed at some moment:
    no task is past pending unless the one before it succeeded."""
    project.write_task("t.sh", "true\n")
    project.write_flow({"name": "chain", "tasks": [
        {"id": f"t{k}", "script": "t.sh", **({"depends_on": [f"t{k - 1}"]} if k else {})} for k in range(CHAIN)]})
    project.cli("runs", "list")
    copies = project.root / "backups"
    copies.mkdir()
    done = checks = 0
    while done < BACKUPS:
        child = subprocess.Popen([sys.executable, "-m", "featherflow", *project.args(), "run", "chain"],
                                 cwd=project.root, env=project.env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        try:
            while child.poll() is None and done < BACKUPS:
                copy = copies / f"copy-{done}.db"
                report = backup.backup(project.db, copy)
                assert report.integrity == "ok" and copy.stat().st_mode & 0o777 == 0o600
                assert integrity(copy) == "ok"
                checks += 1
                check_chain_consistent(copy)
                done += 1
        finally:
            child.wait(timeout=120)
        assert child.returncode == 0, child.stderr.read()
    result = project.sh("--db", copies / "copy-0.db", "runs", "list")  # a copy is a usable database
    assert result.code == 0, result.err
    assert not list(copies.glob(".*.tmp")) and not list(copies.glob("*-wal"))
    record_figures("db backup during runs", integrity_checks_passed=checks, backups=done)


def check_chain_consistent(copy: Path) -> None:
    con = sqlite3.connect(str(copy))
    try:
        rows = con.execute("SELECT run_id, task_id, state FROM task_attempt").fetchall()
        version = con.execute("PRAGMA user_version").fetchone()[0]
    finally:
        con.close()
    assert version == states.SCHEMA_VERSION
    by_run = {}
    for run_id, task_id, state in rows:
        by_run.setdefault(run_id, {})[int(task_id[1:])] = state
    for tasks in by_run.values():
        for k in range(1, CHAIN):
            if tasks.get(k, "pending") != "pending":
                assert tasks[k - 1] == "success", tasks


def test_backup_cli_refuses_to_overwrite_and_to_copy_onto_the_database(project):
    project.cli("runs", "list")
    existing = project.root / "exists.db"
    existing.write_bytes(b"keep me")
    for target in (existing, project.db, Path(f"{project.db}-wal")):
        result = project.cli("db", "backup", target)
        assert result.code == 2 and result.err.startswith("error: ") and "Traceback" not in result.err
    assert existing.read_bytes() == b"keep me"
    result = project.cli("db", "backup", project.root / "new.db")
    assert result.code == 0 and "integrity_check ok" in result.out
    assert integrity(project.root / "new.db") == "ok"


# -- an index out of step with its table ------------------------------------------------------------

def break_index(db: Path, index: str = "flow_run_created") -> None:
    """Change row 1 behind the index's back: the index's schema row is taken out, the row
    updated (no index to maintain), the schema row put back. integrity_check then reports
    `row 1 missing from index ...`; quick_check, which does not compare indexes with
    tables, still says ok — like a WAL of another database replayed into this one."""
    con = sqlite3.connect(str(db), isolation_level=None)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        row = con.execute("SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master WHERE name = ?",
                          (index,)).fetchone()
        con.execute("PRAGMA writable_schema = ON")
        con.execute("DELETE FROM sqlite_master WHERE name = ?", (index,))
    finally:
        con.close()
    con = sqlite3.connect(str(db), isolation_level=None)
    try:
        con.execute("UPDATE flow_run SET created_at = '1999-01-01 00:00:00.000000' WHERE id = 1")
        con.execute("PRAGMA writable_schema = ON")
        con.execute("INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES (?, ?, ?, ?, ?)", row)
    finally:
        con.close()


def test_doctor_finds_an_index_out_of_step_and_agrees_with_db_backup(project):
    from featherflow import errors

    project.write_task("t.sh", "true\n")
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}]})
    assert project.sh("run", "f").code == 0
    break_index(project.db)
    con = sqlite3.connect(f"file:{project.db}?mode=ro", uri=True)
    try:
        assert [r[0] for r in con.execute("PRAGMA quick_check")] == ["ok"]  # the damage quick_check misses
    finally:
        con.close()
    assert "missing from index flow_run_created" in integrity(project.db)

    doctor = project.sh("doctor", "--json")
    assert doctor.code == 1 and "Traceback" not in doctor.err
    found = next(f for f in json.loads(doctor.out)["findings"] if f["name"] == "database integrity")
    assert found["status"] == "problem", found
    assert "damaged" in found["detail"] and "missing from index flow_run_created" in found["detail"], found
    copy = project.sh("db", "backup", project.root / "copy.db")
    assert copy.code == 4 and "damaged" in copy.err and "missing from index flow_run_created" in copy.err
    # One piece of advice for one fault: the backup sends the user to doctor, doctor to a backup.
    assert errors.DAMAGED_FIX in found["fix"] and errors.DAMAGED_FIX in copy.err and "doctor" in copy.err
    assert not (project.root / "copy.db").exists()


def test_a_malformed_database_error_says_what_helps_not_retry(project, monkeypatch):
    """`database disk image is malformed` met in the middle of a command: retrying cannot
    help; the one error line gives the damage advice (doctor's integrity check, a backup)."""
    from featherflow import errors
    from featherflow.cli import runs as cli_runs

    def damaged_meanwhile(app, args):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(cli_runs, "cmd_runs_list", damaged_meanwhile)
    result = project.cli("runs", "list")
    assert result.code == 4 and result.err.count("\n") == 1 and result.err.startswith("error: "), result.err
    assert "(retry;" not in result.err and "retrying cannot help" in result.err, result.err
    assert "integrity_check" in result.err and errors.DAMAGED_FIX in result.err, result.err


# -- a full or read-only disk is not a damaged database ---------------------------------------------------

def no_damage_advice(text: str) -> None:
    lowered = text.lower()
    assert "move it aside" not in lowered and "restore a backup" not in lowered, text
    assert "start a new one" not in lowered and "copy a backup" not in lowered, text


@pytest.mark.slow
def test_a_full_disk_is_reported_as_full_not_as_a_damaged_database(project):
    if not mount_works():
        pytest.skip("needs root and `mount` for a tmpfs")
    project.write_task("t.sh", "true\n")
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}]})
    with tmpfs(project.home, "2m"):
        assert project.sh("run", "f").code == 0
        filler = fill(project.home)
        try:
            for argv in (["runs", "list"], ["runs", "show", "1"], ["run", "f"]):
                result = project.sh(*argv)
                assert result.code == 4 and "Traceback" not in result.err, (argv, result)
                assert "is full" in result.err and "nothing is damaged" in result.err, (argv, result.err)
                no_damage_advice(result.err)
            doctor = project.sh("doctor", "--json")
            assert doctor.code == 1 and "Traceback" not in doctor.err
            found = next(f for f in json.loads(doctor.out)["findings"] if f["name"] == "database integrity")
            assert found["status"] == "problem" and "free space" in found["fix"], found
            no_damage_advice(found["fix"])
        finally:
            filler.unlink()
        assert integrity(project.db) == "ok"
        assert project.sh("runs", "list").code == 0  # space back: everything works again


@pytest.mark.slow
def test_read_only_disk_still_reads_and_says_so_without_damage_advice(project):
    if not mount_works():
        pytest.skip("needs root and `mount` for a tmpfs remounted read-only")
    project.write_task("t.sh", "true\n")
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}]})
    with tmpfs(project.home, "4m"):
        assert project.sh("run", "f").code == 0
        assert not Path(f"{project.db}-shm").exists()  # the last connection removed it: the hard case
        subprocess.run(["mount", "-o", "remount,ro", str(project.home)], check=True)
        try:
            listed = project.sh("runs", "list", "--json")
            assert listed.code == 0, listed.err
            assert [r["state"] for r in json.loads(listed.out)] == ["success"]
            assert "read-only filesystem" in listed.err
            shown = project.sh("runs", "show", "1")
            assert shown.code == 0 and "success" in shown.out, shown.err
            doctor = project.sh("doctor", "--json")
            found = next(f for f in json.loads(doctor.out)["findings"] if f["name"] == "database integrity")
            assert found["status"] == "ok" and "integrity_check ok" in found["detail"], found
            copy = project.sh("db", "backup", project.root / "copy.db")
            assert copy.code == 0, copy.err
            started = project.sh("run", "f")  # a write: refused as read-only, not as damage
            assert started.code == 4 and "read-only" in started.err and "nothing is damaged" in started.err
            no_damage_advice(started.err)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(project.home)], check=True)
    assert integrity(project.root / "copy.db") == "ok"


@pytest.mark.slow
def test_a_full_output_dir_exits_4_not_2(project):
    """The run's script cannot be written: the environment, not the input."""
    if not mount_works():
        pytest.skip("needs root and `mount` for a tmpfs")
    project.write_task("t.sh", "true\n")
    project.write_flow({"name": "f", "tasks": [{"id": "t", "script": "t.sh"}]})
    project.cli("runs", "list")
    with tmpfs(project.output, "256k"):
        filler = fill(project.output)
        try:
            result = project.sh("run", "f")
        finally:
            filler.unlink()
    assert result.code == 4, result
    assert "cannot write its script" in result.err and "No space left on device" in result.err
    shown = project.sh("runs", "show", "1", "--json")
    assert json.loads(shown.out)["state"] == "failed"
