"""Benchmark: the floor under a run's fixed cost and its cost per task, measured part by part.

A run is `featherflow run` (a Python start with peewee, to create the run), bash running
the script, and the `_mark` co-process (a second Python start, with SQLite); each task is
a fork and exec of its script plus two transitions, each committed (WAL,
`synchronous=FULL`) before the script goes on. This times each of those parts alone, in
the same rounds (a shuffled order each round, medians), so the closing figures of
`peers.py` can be read against what no change to Featherflow can take away:

    python bench/floor.py [--repeat 15] [--commits 200] [--dir DIR]

The commits are timed in one process on one connection, in the directory the database
would be in (`--dir`: on a Pi, the SD card), so the figure is the disk's fsync.
"""

import argparse
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import child_env, console_script

PY = sys.executable


def commands() -> dict:
    """Name -> argv of each process start timed."""
    return {
        "bash -c :": ["bash", "-c", ":"],
        "python -I -S -c pass": [PY, "-I", "-S", "-c", "pass"],
        "python -I -S, import sqlite3 (the co-process's floor)": [PY, "-I", "-S", "-c", "import sqlite3"],
        "python -c pass": [PY, "-c", "pass"],
        "python, import peewee": [PY, "-c", "import peewee"],
        "featherflow --version": console_script() + ["--version"],
    }


def commit_ms(base: Path, count: int) -> float:
    """Median ms of one INSERT committed in BEGIN IMMEDIATE, WAL, synchronous=FULL."""
    conn = sqlite3.connect(str(base / "floor.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    times = []
    for _ in range(count):
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES ('x')")
        conn.execute("COMMIT")
        times.append(time.perf_counter() - start)
    conn.close()
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs of each process start (default 15)")
    parser.add_argument("--commits", type=int, default=200, help="commits timed (default 200)")
    parser.add_argument("--dir", help="where the database goes (default: the temp dir)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ff-floor-", dir=args.dir))
    try:
        env = child_env(base)
        timed = {name: [] for name in commands()}
        for name, argv in commands().items():  # a warm-up round: bytecode cached, files in the page cache
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
        for _ in range(args.repeat):
            order = list(commands().items())
            random.shuffle(order)
            for name, argv in order:
                start = time.perf_counter()
                subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
                timed[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) * 1000 for name, t in timed.items()}
        commit = commit_ms(base, args.commits)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"floor.py: medians of {args.repeat} starts, {args.commits} commits; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| part | median ms |\n| --- | --- |")
    for name, ms in medians.items():
        print(f"| `{name}` | {ms:.1f} |")
    print(f"| one commit, WAL, synchronous=FULL | {commit:.2f} |")
    run_floor = (medians["featherflow --version"] + medians["python, import peewee"] - medians["python -c pass"]
                 + medians["bash -c :"] + medians["python -I -S, import sqlite3 (the co-process's floor)"] + 3 * commit)
    task_floor = medians["bash -c :"] + 2 * commit
    print(f"\nfixed cost floor of a run (featherflow start + peewee + bash + co-process + 3 commits): {run_floor:.0f} ms")
    print(f"per-task floor (a bash start + 2 commits): {task_floor:.1f} ms; over plain bash: {2 * commit:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
