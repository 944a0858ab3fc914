"""Dashboard benchmark: refresh cost with 100,000 runs, and CPU use while idle.

    python bench/bench_dashboard.py [--runs 100000] [--idle 20] [--repeat 15] [--dir DIR]

1. Generates a database with RUNS finished runs (3 attempts each), a few
   running ones, schedules with slots and a scheduler row.
2. Times one dashboard refresh (Poller.poll: every query of the screen in its
   one read transaction) on the main screen, filtered by flow, and on a run's
   screen, against a baseline in the same run: one bare
   `SELECT * FROM flow_run ORDER BY id DESC LIMIT 30` on the same connection.
   Prints medians, interleaved in rounds so machine load falls on both.
3. If tmux is installed, opens the real `featherflow dashboard` on that
   database for --idle seconds and reports the CPU it used (utime+stime from
   /proc/PID/stat) and its RSS.

Figures on the dev machine (2 shared cores, Python 3.11, SQLite 3.40) are in
the report of issue 6; target: a refresh well under 50 ms with 100,000 runs,
idle CPU under 2 % of one core.
"""

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featherflow.store import db as dbmod  # noqa: E402
from featherflow.dashboard import keys, poller, screen  # noqa: E402
from featherflow.store.readonly import Reader  # noqa: E402
from featherflow.store import Store  # noqa: E402

FLOWS = [f"flow-{i:02d}" for i in range(20)]
TASKS = ["extract", "transform", "load"]


def fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def generate(path: Path, runs: int, now: datetime) -> None:
    """A migrated database with `runs` finished runs, 3 running, 5 schedules, a scheduler row."""
    dbmod.open_database(path).close()
    snapshot = json.dumps({"name": "x", "tasks": [
        {"id": t, "script": f"{t}.sh", "depends_on": TASKS[:i][-1:]} for i, t in enumerate(TASKS)]})
    con = dbmod.sqlite3.connect(str(path), isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    run_rows, attempt_rows = [], []
    total = runs + 3
    for n in range(1, total + 1):
        start = now - timedelta(minutes=(total - n) * 5)
        running = n > runs
        state = "running" if running else ("failed" if n % 17 == 0 else "success")
        end = None if running else start + timedelta(seconds=42)
        run_rows.append((n, f"{n:032x}", FLOWS[n % len(FLOWS)], state, "schedule", "{}",
                         "/f", "/t", "/o", 2, None, None, fmt(start), fmt(start), end and fmt(end),
                         None if running else 1, None, None, None, 0, 0))
        for i, task in enumerate(TASKS):
            if running:
                task_state = ("success", "running", "pending")[i]
            else:
                task_state = "failed" if (state == "failed" and i == 1) else (
                    "upstream_failed" if state == "failed" and i == 2 else "success")
            attempt_rows.append((n, task, 1, task_state, fmt(start), fmt(start), end and fmt(end),
                                 None if task_state in ("running", "pending") else 0, None))
    con.executemany("INSERT INTO flow_run VALUES (" + ",".join("?" * 21) + ")", run_rows)
    con.executemany("INSERT INTO run_snapshot (run_id, snapshot) VALUES (?, ?)",
                    [(row[0], snapshot) for row in run_rows])  # apart from the row (migration 0003)
    con.executemany("INSERT INTO task_attempt (run_id, task_id, attempt, state, created_at, started_at, "
                    "ended_at, exit_code, reason) VALUES (?,?,?,?,?,?,?,?,?)", attempt_rows)
    for i in range(5):
        con.execute("INSERT INTO schedule (name, flow_name, cron, tz, flows_dir, tasks_dir, output_dir, "
                    "created_at, updated_at) VALUES (?, ?, ?, 'UTC', '/f', '/t', '/o', ?, ?)",
                    (f"sched-{i}", FLOWS[i], f"{i * 10} * * * *", fmt(now), fmt(now)))
        for h in range(200):
            slot = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=h)
            con.execute("INSERT INTO schedule_slot (schedule_id, slot_at, state, run_id, created_at) "
                        "VALUES (?, ?, 'fired', ?, ?)", (i + 1, fmt(slot), runs - h * 5 - i, fmt(slot)))
    con.execute("INSERT INTO scheduler VALUES (1, ?, NULL, NULL, ?, ?, NULL)",
                (os.getpid(), fmt(now - timedelta(hours=3)), fmt(now)))
    con.execute("COMMIT")
    con.close()


def time_refreshes(store, cases, repeat: int):
    """Median seconds of Poller.poll per case, and of the baseline query, interleaved per round."""
    pollers = {label: poller.Poller(store, "bench.db", alive=lambda *a: True, next_slot=lambda c, z, a: a)
               for label, _ in cases}
    samples = {label: [] for label, _ in cases}
    samples["baseline: one bare SELECT ... LIMIT 30"] = []
    for _ in range(repeat):
        for label, state in cases:
            start = time.perf_counter()
            pollers[label].poll(state, datetime.utcnow())
            samples[label].append(time.perf_counter() - start)
        start = time.perf_counter()
        store.db.execute_sql("SELECT * FROM flow_run ORDER BY id DESC LIMIT 30").fetchall()
        samples["baseline: one bare SELECT ... LIMIT 30"].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in samples.items()}


def idle_cpu(db_path: Path, seconds: float):
    """CPU seconds the real dashboard uses while open `seconds` in tmux, or None without tmux."""
    if not shutil.which("tmux"):
        return None
    sock = f"ffbench{os.getpid()}"
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "featherflow", "--db", str(db_path), "dashboard"])
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-x", "120", "-y", "40", cmd], check=True)
    try:
        pid = int(subprocess.run(["tmux", "-L", sock, "display", "-p", "#{pane_pid}"],
                                 capture_output=True, text=True, check=True).stdout)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until it has drawn
            pane = subprocess.run(["tmux", "-L", sock, "capture-pane", "-p"], capture_output=True, text=True).stdout
            if "RECENT" in pane:
                break
            time.sleep(0.1)
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        before, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        used, elapsed = cpu() - before, time.monotonic() - t0
        with open(f"/proc/{pid}/status") as f:
            rss = next(line.split()[1] for line in f if line.startswith("VmRSS"))
        return used, elapsed, int(rss)
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
        (Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}" / sock).unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="finished runs to generate (default: 100000)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds to watch the idle dashboard (0: skip)")
    parser.add_argument("--repeat", type=int, default=15, help="rounds of refresh timing (default: 15)")
    parser.add_argument("--dir", help="where to put the database (default: a temp dir, removed after)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.db"
        start = time.perf_counter()
        generate(path, args.runs, datetime.utcnow())
        print(f"generated {args.runs:,} runs in {time.perf_counter() - start:.1f}s "
              f"({path.stat().st_size / 1e6:.1f} MB)")
        store = Reader(dbmod.open_read_only(path))
        newest = store.runs(False, None, 1)[0]["id"]
        cases = [("main screen", keys.ViewState()),
                 ("main, filtered by flow", keys.ViewState(flow=FLOWS[3])),
                 ("main, filter matching nothing", keys.ViewState(flow="no-such-flow")),
                 ("run screen", keys.ViewState(view="run", run_id=newest))]
        for label, seconds in time_refreshes(store, cases, args.repeat).items():
            print(f"refresh, {label:<40} {seconds * 1000:7.2f} ms (median of {args.repeat})")
        snapshot = poller.Poller(store, str(path), alive=lambda *a: True).poll(keys.ViewState(),
                                                                                   datetime.utcnow())
        start = time.perf_counter()
        for _ in range(50):
            screen.render(snapshot, keys.ViewState(), 120, 40, datetime.utcnow())
        print(f"render 120x40 (pure)                             {(time.perf_counter() - start) / 50 * 1000:7.2f} ms")
        store.close()
        if args.idle:
            result = idle_cpu(path, args.idle)
            if result is None:
                print("idle CPU: skipped (tmux is not installed)")
            else:
                used, elapsed, rss = result
                print(f"idle CPU over {elapsed:.1f}s: {used:.2f}s = {100 * used / elapsed:.2f} % of one core; "
                      f"RSS {rss / 1024:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
