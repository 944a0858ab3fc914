"""History benchmark: `runs list` and `runs show` with 100,000 runs and 1,000,000 attempts.

    python bench/bench_history.py [--runs 100000] [--repeat 7] [--cold 3] [--quick] [--dir DIR]

1. Generates a database: the schema from Featherflow's own migrations
   (db.open_database), then every row in one executemany transaction. RUNS
   runs over 20 flows of 10 tasks (and a 21st flow, run once every 3,333
   runs), one attempt per task, so 10 attempts a run: mostly success, ~5 %
   failed (a failed attempt, its descendants upstream_failed), ~1 %
   interrupted (an interrupted attempt, the rest pending), a few cancelled;
   one run every 5 minutes, the newest finished half an hour ago. Plus 2
   runs `running`, held by this very process, so the reconcile before every
   `runs` command has live runs to check (and must leave them alone:
   checked at the end).
2. Runs the same Store calls as each command in-process, captures every
   SELECT they make (peewee's log), prints its EXPLAIN QUERY PLAN and its
   in-process time, and flags a scan of a table or of an index, or a sort of
   every matching row (walking flow_run newest first with no WHERE is fine:
   it stops at LIMIT).
3. Times each command as a subprocess of the installed console script, in
   rounds, shuffled every round, with two references in the same rounds:
   `featherflow --version` (Python start and the CLI's imports: the
   baseline) and `runs list` on an empty database (plus peewee, open,
   migration check, reconcile: the fixed cost of any `runs` command).
   Prints median and max wall time, the ratio to the baseline and the
   difference from the empty database; first warm (the database was just
   written), then cold: the database evicted from the page cache
   (posix_fadvise DONTNEED) before each command, as after a reboot, with
   the bytes each command read from disk (getrusage ru_inblock).

--quick: 10,000 runs, 3 warm rounds and 1 cold (a smoke test). Target
(issue 4): every command well under a second at 100,000 runs. On a Pi, put
--dir on the SD card.
"""
import argparse
import json
import logging
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featherflow import clock, proc, states# noqa: E402
from featherflow.store import db as dbmod
from featherflow.engine import reconcile
from featherflow.store import Store  # noqa: E402

from common import console_script  # noqa: E402

FLOWS = [f"flow-{i:02d}" for i in range(20)]
RARE = "monthly"  # a flow run once every 3,333 runs: filters on it must not walk everything
TASKS = ["fetch", "unpack", "clean", "dedupe", "enrich", "aggregate", "score", "export", "archive", "notify"]
DEPENDS = {"unpack": ["fetch"], "clean": ["unpack"], "dedupe": ["clean"], "enrich": ["clean"],
           "aggregate": ["dedupe", "enrich"], "score": ["aggregate"], "export": ["score"],
           "archive": ["export"], "notify": ["archive"]}
RUN_COLUMNS = ("id", "uid", "flow_name", "state", "trigger", "params", "snapshot", "flows_dir", "tasks_dir",
               "output_dir", "max_parallel", "schedule_id", "scheduled_at", "created_at", "started_at",
               "ended_at", "pid", "pid_start", "boot_id", "reason", "resumes", "auto_resumed")
ATTEMPT_COLUMNS = ("run_id", "task_id", "attempt", "state", "created_at", "started_at", "ended_at",
                   "exit_code", "reason")
LIVE_RUNS = 2


def fmt(moment: datetime) -> str:
    return clock.to_text(moment)


def descendants(task: str) -> set:
    found, todo = set(), [task]
    while todo:
        current = todo.pop()
        for child, parents in DEPENDS.items():
            if current in parents and child not in found:
                found.add(child)
                todo.append(child)
    return found


def plan_rows(runs: int, now: datetime, rng: random.Random, out: Path):
    """(run row, [attempt rows]) per run, oldest first; the last LIVE_RUNS are running, held by us."""
    snapshots = {flow: json.dumps({"name": flow, "description": f"{flow}: a 10-task pipeline", "tasks": [
        {"id": t, "script": f"{t}.sh", "depends_on": DEPENDS.get(t, []), "retries": 1, "timeout": 600}
        for t in TASKS]}) for flow in FLOWS + [RARE]}
    dead_boot, live_boot = "0f0e0d0c-0b0a-0908-0706-050403020100", proc.boot_id()
    me, my_start = os.getpid(), proc.start_time(os.getpid())
    newest_end = now - timedelta(minutes=30)
    total = runs + LIVE_RUNS
    for n in range(1, total + 1):
        flow = RARE if n % 3333 == 0 else FLOWS[n % len(FLOWS)]
        live = n > runs
        start = now - timedelta(seconds=10 * (total - n)) if live else newest_end - timedelta(minutes=5 * (runs - n))
        roll = rng.random()
        state = ("running" if live else "success" if roll < 0.935 else "failed" if roll < 0.985
                 else "interrupted" if roll < 0.995 else "cancelled")
        broken = rng.choice(TASKS[1:-1])  # where a failed/interrupted/cancelled run went wrong
        below = descendants(broken)
        clock, attempts = start, []
        for task in TASKS:
            took = timedelta(seconds=rng.uniform(0.5, 30))
            if live:
                task_state = {"fetch": "success", "unpack": "running"}.get(task, "pending")
            elif state == "success" or (task != broken and task not in below):
                task_state = "success"
            elif task == broken:
                task_state = state
            else:
                task_state = {"failed": "upstream_failed", "interrupted": "pending", "cancelled": "cancelled"}[state]
            began = clock if task_state not in ("pending", "upstream_failed") else None
            ended = began + took if began and task_state != "running" else None
            exit_code = {"success": 0, "failed": 1}.get(task_state)
            reason = {"interrupted": "run interrupted", "cancelled": "run cancelled",
                      "upstream_failed": f"upstream {broken} failed"}.get(task_state)
            attempts.append((n, task, 1, task_state, fmt(start), began and fmt(began), ended and fmt(ended),
                             exit_code, reason))
            if ended:
                clock = ended
        run_reason = {"interrupted": "its process 4242 is gone (killed, crashed or out of memory)",
                      "cancelled": "cancelled by `featherflow runs cancel`"}.get(state)
        run = (n, f"{rng.getrandbits(128):032x}", flow, state, "schedule" if n % 3 else "manual",
               json.dumps({"day": (start.date()).isoformat()}), snapshots[flow], "/srv/ff/flows",
               "/srv/ff/tasks", str(out), 4, None, None, fmt(start), fmt(start),
               None if live else fmt(clock), me if live else 1000 + n % 30000, my_start if live else 123456,
               live_boot if live else dead_boot, run_reason, 0, 0)
        yield run, attempts


def generate(path: Path, runs: int, now: datetime) -> None:
    """The real schema (Featherflow's migrations), then every row in one transaction."""
    dbmod.open_database(path).close()
    con = dbmod.sqlite3.connect(str(path), isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        batch_runs, batch_attempts = [], []
        for run, attempts in plan_rows(runs, now, random.Random(4), path.parent / "out"):
            batch_runs.append(run)
            batch_attempts.extend(attempts)
            if len(batch_runs) >= 10_000:
                _insert(con, batch_runs, batch_attempts)
                batch_runs, batch_attempts = [], []
        _insert(con, batch_runs, batch_attempts)
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def _insert(con, runs, attempts) -> None:
    """The runs' rows, their snapshots apart (migration 0003, as the store writes them), attempts."""
    at = RUN_COLUMNS.index("snapshot")
    columns = [c for c in RUN_COLUMNS if c != "snapshot"]
    con.executemany(f"INSERT INTO flow_run ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    [row[:at] + row[at + 1:] for row in runs])
    con.executemany("INSERT INTO run_snapshot (run_id, snapshot) VALUES (?, ?)", [(row[0], row[at]) for row in runs])
    con.executemany(f"INSERT INTO task_attempt ({', '.join(ATTEMPT_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})", attempts)


# -- query plans -------------------------------------------------------------

class Captured(logging.Handler):
    """Collects the (sql, params) peewee logs for every query it runs."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.queries = []

    def emit(self, record):
        if isinstance(record.msg, tuple) and len(record.msg) == 2:
            self.queries.append(record.msg)


def verdict(sql: str, params, details) -> str:
    """'ok', or what is wrong with a plan.

    Walking flow_run newest first is fine without a WHERE (it stops at LIMIT),
    and so is sorting the runs found through the state index when only
    queued/running ones are asked for (reconcile: as many as are active).
    """
    tables = dict((alias, table) for table, alias in re.findall(r'"(\w+)" AS "(\w+)"', sql))
    active_only = bool(params) and set(params) <= {"queued", "running"} and "flow_run_state" in " ".join(details)
    where = " WHERE " in sql.upper()
    bad = []
    for detail in details:
        words = detail.split()
        table = tables.get(words[1], words[1]) if len(words) > 1 else ""
        if "TEMP B-TREE" in detail and not active_only:
            bad.append("sorts every matching row")
        elif words[0] == "SCAN":
            if " INDEX " in detail and "COVERING" not in detail:
                bad.append(f"scans an index of {table}")
            elif " INDEX " not in detail and not (table == "flow_run" and "LIMIT" in sql.upper() and not where):
                bad.append(f"scans {table}" + (" (until LIMIT rows match)" if table == "flow_run" else ""))
    return "; ".join(bad) or "ok"


def show_plans(path: Path, cases, repeat: int = 5) -> bool:
    """Print each case's SELECTs with plan, verdict and in-process time; True if all ok."""
    db = dbmod.open_database(path)
    store = Store(db)
    peewee_log = logging.getLogger("peewee")
    handler = Captured()
    peewee_log.addHandler(handler)
    peewee_log.setLevel(logging.DEBUG)
    all_ok = True
    try:
        for label, call in cases:
            handler.queries.clear()
            start = time.perf_counter()
            call(store)
            whole = time.perf_counter() - start
            queries = [(sql, tuple(params or ())) for sql, params in handler.queries
                       if sql.lstrip().upper().startswith("SELECT")]
            print(f"\n{label}  (all its queries in-process: {whole * 1000:.1f} ms)")
            for sql, params in dict.fromkeys(queries):
                details = [row[-1] for row in db.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall()]
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    db.execute_sql(sql, params).fetchall()
                    times.append(time.perf_counter() - t0)
                result = verdict(sql, params, details)
                all_ok &= result == "ok"
                short = sql if len(sql) < 150 else sql[:70] + " ... " + sql[-75:]
                print(f"  {statistics.median(times) * 1000:7.2f} ms  {result:<8} {short}")
                for detail in details:
                    print(f"{'':21}{detail}")
    finally:
        peewee_log.removeHandler(handler)
        store.close()
    return all_ok


# -- timing the CLI ------------------------------------------------------------

def timed(argv, env, cwd):
    """(wall seconds, bytes the command read from disk); exits if it failed or complained."""
    blocks = resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock
    start = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, cwd=cwd)
    took = time.perf_counter() - start
    read = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock - blocks) * 512
    if done.returncode != 0 or done.stderr.strip():
        sys.exit(f"bench_history: {' '.join(argv)} exited {done.returncode}: "
                 f"{done.stderr.decode(errors='replace').strip()[-2000:]}")
    if not done.stdout.strip():
        sys.exit(f"bench_history: {' '.join(argv)} printed nothing")
    return took, read


def evict(paths) -> bool:
    """Drop these files from the page cache (POSIX_FADV_DONTNEED), so the next command reads
    the database from disk as after a reboot; False where the platform cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages are not dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def time_commands(commands, rounds: int, env, cwd, cold_files=()):
    """{label: [(seconds, bytes read)]}: `rounds` rounds in a shuffled order each; with
    `cold_files`, those are evicted from the page cache before every command."""
    samples = {label: [] for label, _ in commands}
    order = list(commands)
    for _ in range(rounds):
        random.shuffle(order)
        for label, argv in order:
            evict(cold_files)
            samples[label].append(timed(argv, env, cwd))
    return samples


def report(title: str, commands, samples, show_read: bool) -> None:
    """Median and max per command, x the baseline, and above the empty-database reference."""
    seconds = {label: [s for s, _ in samples[label]] for label, _ in commands}
    baseline = statistics.median(seconds[commands[0][0]])
    reference = statistics.median(seconds[commands[1][0]])
    print(f"\n{title}")
    print(f"  {'command':<44} {'median':>7} {'max':>7} {'x base':>7} {'vs empty':>8}"
          + (f" {'read':>8}" if show_read else ""))
    for label, _ in commands:
        median = statistics.median(seconds[label])
        line = (f"  {label:<44} {median * 1000:5.0f}ms {max(seconds[label]) * 1000:5.0f}ms "
                f"{median / baseline:6.2f}x {(median - reference) * 1000:+6.0f}ms")
        if show_read:
            line += f" {statistics.median(r for _, r in samples[label]) / 1e6:6.1f}MB"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="runs to generate, 10 attempts each (default: 100000)")
    parser.add_argument("--repeat", type=int, help="rounds of timing (default: 7)")
    parser.add_argument("--quick", action="store_true", help="10,000 runs and 3 rounds: a smoke test")
    parser.add_argument("--cold", type=int, help="rounds with the database evicted from the page cache "
                        "(default: 3; 0 skips)")
    parser.add_argument("--dir", help="where to put the database (default: a temp dir, removed after)")
    args = parser.parse_args()
    if args.cold is None:
        args.cold = 1 if args.quick else 3
    runs = args.runs or (10_000 if args.quick else 100_000)
    repeat = args.repeat or (3 if args.quick else 7)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        path, empty = base / "history.db", base / "empty.db"
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        start = time.perf_counter()
        generate(path, runs, now)
        built = time.perf_counter() - start
        dbmod.open_database(empty).close()
        size = sum(p.stat().st_size for p in base.glob("history.db*"))
        print(f"generated {runs:,} runs + {LIVE_RUNS} running, {(runs + LIVE_RUNS) * len(TASKS):,} attempts "
              f"in {built:.1f}s; database {size / 1e6:.1f} MB")

        con = dbmod.sqlite3.connect(str(path))
        newest = con.execute("SELECT MAX(id) FROM flow_run").fetchone()[0]
        old_failed = con.execute("SELECT MIN(id) FROM flow_run WHERE state = 'failed'").fetchone()[0]
        con.close()
        flow = FLOWS[7]
        ago2d, ago10m, ago400d = now - timedelta(days=2), now - timedelta(minutes=10), now - timedelta(days=400)
        cases = [
            ("runs list", lambda s: s.runs.list_runs(limit=20)),
            (f"runs list --flow {flow}", lambda s: s.runs.list_runs(flow=flow, limit=20)),
            ("runs list --state failed", lambda s: s.runs.list_runs(state="failed", limit=20)),
            ("runs list --since 2d", lambda s: s.runs.list_runs(since=ago2d, limit=20)),
            ("runs list --since 10m (2 runs in the window)", lambda s: s.runs.list_runs(since=ago10m, limit=20)),
            ("runs list --since 400d (every run in the window)", lambda s: s.runs.list_runs(since=ago400d, limit=20)),
            (f"runs list --flow {RARE} --state success", lambda s: s.runs.list_runs(flow=RARE, state="success", limit=20)),
            ("reconcile (before every runs command)", lambda s: reconcile.reconcile(s)),
            (f"runs show {old_failed}", lambda s: (s.runs.get_run(old_failed), s.runs.attempts(old_failed))),
        ]
        print("\nquery plans (EXPLAIN QUERY PLAN) and in-process time of each SELECT:")
        plans_ok = show_plans(path, cases)

        ff = console_script() + ["--db", str(path)]
        commands = [
            ("baseline: featherflow --version", console_script() + ["--version"]),
            ("reference: runs list, empty database", console_script() + ["--db", str(empty), "runs", "list"]),
            ("runs list", ff + ["runs", "list"]),
            (f"runs list --flow {flow}", ff + ["runs", "list", "--flow", flow]),
            ("runs list --state failed", ff + ["runs", "list", "--state", "failed"]),
            ("runs list --since 2d", ff + ["runs", "list", "--since", "2d"]),
            ("runs list --since 10m (2 runs in it)", ff + ["runs", "list", "--since", "10m"]),
            ("runs list --since 400d (every run)", ff + ["runs", "list", "--since", "400d"]),
            (f"runs list --flow {RARE} --state success", ff + ["runs", "list", "--flow", RARE, "--state", "success"]),
            ("runs list --json", ff + ["runs", "list", "--json"]),
            (f"runs show {old_failed} (old, failed)", ff + ["runs", "show", str(old_failed)]),
            (f"runs show {newest} (newest)", ff + ["runs", "show", str(newest)]),
            (f"runs show {old_failed} --json", ff + ["runs", "show", str(old_failed), "--json"]),
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("FEATHERFLOW_DB", "PYTHONDONTWRITEBYTECODE")}
        env["FEATHERFLOW_HOME"] = str(base / "home")
        env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
        time_commands(commands, 1, env, base)  # warm-up: bytecode compiled, page cache filled
        warm = time_commands(commands, repeat, env, base)
        report(f"wall time as subprocesses, warm page cache, median of {repeat} interleaved rounds:",
               commands, warm, show_read=False)
        db_files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        if args.cold and evict(db_files):
            cold = time_commands(commands, args.cold, env, base, cold_files=db_files)
            report(f"cold: the database evicted from the page cache before each command "
                   f"(median of {args.cold}; read = bytes read from disk):", commands, cold, show_read=True)
        slowest = max(statistics.median(s for s, _ in warm[label]) for label, _ in commands[2:])

        con = dbmod.sqlite3.connect(str(path))
        still = con.execute("SELECT COUNT(*) FROM flow_run WHERE state = 'running'").fetchone()[0]
        con.close()
        print(f"\nlive runs still running after every reconcile: {still} of {LIVE_RUNS}")
        print(f"query plans: {'all use an index or stop at LIMIT' if plans_ok else 'SOME SCAN OR SORT (above)'}")
        print(f"slowest command, warm: median {slowest * 1000:.0f} ms (target: well under 1000 ms)")
        return 0 if still == LIVE_RUNS else 1


if __name__ == "__main__":
    sys.exit(main())
