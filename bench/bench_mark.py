"""Benchmark: the wall time of one `_mark` call against a floor process that writes SQLite.

Every task pays for `_mark` process starts, so this is the first number to
watch. The generated script calls `python -I -S /abs/featherflow/_mark.py DB
RUN_ID TASK:1:running`; the floor is a process started the same way that does
one INSERT in its own BEGIN IMMEDIATE transaction on a WAL database with
synchronous=FULL, in the same directory (same disk, same fsync cost).
Target: _mark.py (which imports mark.py) at most 2x the `-I -S` floor.

    python bench/bench_mark.py [--repeat N] [--dir DIR]

Calls are interleaved in a shuffled order each round, so load from other users
of the machine spreads over every row alike; the figures are medians.

The script really talks to one `_mark.py --serve` co-process while transitions
come in bursts (a process start only after 3 idle seconds): the last rows time
one call over its pipe, written and answered (after commit) as the script does.
"""

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import featherflow.mark
from common import child_env, console_script, timed
from featherflow.api import Featherflow
from featherflow.store.records import NewRun

FLOOR_CODE = """\
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
c.execute('PRAGMA journal_mode=WAL')
c.execute('PRAGMA synchronous=FULL')
c.execute('BEGIN IMMEDIATE')
c.execute('INSERT INTO t (v) VALUES (?)', ('x',))
c.execute('COMMIT')
c.close()
"""


def setup(base: Path, tasks: int):
    """A migrated Featherflow database with one running run of `tasks` pending tasks,
    and a fresh floor database (WAL, one table) in the same directory."""
    for sub in ("flows", "tasks", "out"):
        (base / sub).mkdir()
    app = Featherflow(base / "flows", base / "tasks", base / "out", config_dir=base / "home", env={})
    try:
        run = app.store.runs.create_run(NewRun(
            "bench", [f"{p}{i}" for p in "tuv" for i in range(tasks)], "{}", {}, "manual",
            str(base / "flows"), str(base / "tasks"), str(base / "out"), 1))
        db = str(app.config.db_path)
    finally:
        app.close()
    floor = str(Path(db).with_name("floor.db"))
    conn = sqlite3.connect(floor, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.close()
    return db, run.id, floor


def co_process(py, mark, db, run_id, repeat, warmup) -> dict:
    """Per-call wall time of the `--serve` co-process: tasks v<k> go running, then success."""
    server = subprocess.Popen([py, "-I", "-S", mark, db, str(run_id), "--serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    found = {"co-process call  TASK:1:running": [], "co-process call  TASK:1:success": []}
    try:
        for k in range(repeat + warmup):
            for name, word in zip(found, (f"v{k}:1:running", f"v{k}:1:success:0")):
                start = time.perf_counter()
                server.stdin.write(word.encode() + b"\n")
                server.stdin.flush()
                answer = server.stdout.readline()
                took = time.perf_counter() - start
                if answer != b"0\n":
                    sys.exit(f"bench_mark: the co-process answered {answer!r} to {word}")
                if k >= warmup:
                    found[name].append(took)
    finally:
        server.stdin.close()
        server.wait()
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=60, help="timed calls per row (default 60)")
    parser.add_argument("--dir", help="where the databases go (default: the temp dir); "
                        "use a disk like the one the real database lives on")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="ffbench-mark-", dir=args.dir))
    try:
        warmup = 3
        db, run_id, floor = setup(base, args.repeat + warmup)
        py, mark, ff = sys.executable, featherflow.mark.LAUNCHER, console_script()  # what the script runs
        env = child_env(base)
        # The run is started the way the script starts it, so attempts can move.
        timed([py, "-I", "-S", mark, db, str(run_id), "--run", "running"])
        rows = {
            "process start: /bin/true": lambda k: ["/bin/true"],
            "floor: python -I -S -c insert": lambda k: [py, "-I", "-S", "-c", FLOOR_CODE, floor],
            "floor: python -c insert (with site)": lambda k: [py, "-c", FLOOR_CODE, floor],
            "floor: sqlite3 CLI insert": lambda k: (
                ["sqlite3", floor, "PRAGMA synchronous=FULL; BEGIN IMMEDIATE; "
                 "INSERT INTO t (v) VALUES ('x'); COMMIT;"] if shutil.which("sqlite3") else None),
            "_mark.py -I -S TASK:1:running": lambda k: [py, "-I", "-S", mark, db, str(run_id), f"t{k}:1:running"],
            "_mark.py -I -S TASK:1:success": lambda k: [py, "-I", "-S", mark, db, str(run_id), f"t{k}:1:success:0"],
            "featherflow _mark TASK:1:running": lambda k: [*ff, "_mark", db, str(run_id), f"u{k}:1:running"],
            "featherflow _mark TASK:1:success": lambda k: [*ff, "_mark", db, str(run_id), f"u{k}:1:success:0"],
        }
        rows = {name: make for name, make in rows.items() if make(0) is not None}
        times = {name: [] for name in rows}
        # Tasks t<k> (mark.py) and u<k> (console script) go pending -> running
        # -> success, as in a real run: every call is a legal transition and a real write.
        order = list(rows)
        for k in range(args.repeat + warmup):
            random.shuffle(order)
            # shuffle freely, but keep each task's marks in their legal order
            marks = [n for n in rows if "TASK" in n]
            others = [n for n in order if "TASK" not in n]
            slots = sorted(random.sample(range(len(order)), len(marks)))
            sequence = list(others)
            for slot, name in zip(slots, marks):
                sequence.insert(slot, name)
            for name in sequence:
                took = timed(rows[name](k), env)
                if k >= warmup:
                    times[name].append(took)
        times.update(co_process(py, mark, db, run_id, args.repeat, warmup))
        check = sqlite3.connect(db)
        done = check.execute("SELECT COUNT(*) FROM task_attempt WHERE run_id = ? AND state = 'success'",
                             (run_id,)).fetchone()[0]
        check.close()
        if done != 3 * (args.repeat + warmup):
            sys.exit(f"bench_mark: expected {3 * (args.repeat + warmup)} successful attempts, found {done}")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    med = {name: statistics.median(values) * 1000 for name, values in times.items()}
    floor_name = "floor: python -I -S -c insert"
    print(f"_mark wall time, {args.repeat} calls per row, medians (python {sys.version.split()[0]}, "
          f"{sys.executable})")
    print(f"{'':38} {'median ms':>10} {'p10':>7} {'p90':>7} {'x floor':>8}")
    for name, values in times.items():
        ms = sorted(v * 1000 for v in values)
        p10, p90 = ms[len(ms) // 10], ms[(len(ms) * 9) // 10]
        print(f"{name:38} {med[name]:10.2f} {p10:7.2f} {p90:7.2f} {med[name] / med[floor_name]:8.2f}")
    ratio = med["_mark.py -I -S TASK:1:running"] / med[floor_name]
    print(f"\n_mark.py (TASK:1:running) / floor (python -I -S -c insert) = {ratio:.2f}x  "
          f"(target <= 2.0x: {'met' if ratio <= 2.0 else 'NOT met'})")
    served = med["co-process call  TASK:1:running"]
    print(f"co-process call (TASK:1:running) = {served:.2f} ms = {served / med[floor_name]:.2f}x the floor "
          f"(what a run pays per call while its co-process lives)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
