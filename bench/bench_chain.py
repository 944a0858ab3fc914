"""Benchmark: Featherflow's per-task overhead on a 50-task chain of no-op tasks.

The same 50 no-op task scripts run once through `featherflow run` (a chain:
each depends on the one before) and once from a plain bash script that runs
them one after the other with `bash TASK.sh`. The difference divided by 50 is
what Featherflow costs per task: the `featherflow run` start, one `_mark`
process per task, the `timeout` wrapper, logs. Target: under 40 ms per task
(where we are heading: about 8 ms, like Luigi's local scheduler, durable).

    python bench/bench_chain.py [--repeat N] [--tasks 50] [--dir DIR]

A 1-task flow is timed too, so the fixed cost of `featherflow run` (Python
start, peewee, migration check, creating the run, rendering) can be told
apart from the cost of each further task.
"""

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import child_env, console_script, timed


def chain_flow(name: str, count: int) -> dict:
    tasks = []
    for i in range(count):
        task = {"id": f"t{i:02d}", "script": f"t{i:02d}.sh"}
        if i:
            task["depends_on"] = [f"t{i - 1:02d}"]
        tasks.append(task)
    return {"name": name, "description": f"{count} no-op tasks in a chain", "tasks": tasks}


def setup(base: Path, count: int) -> Path:
    """A project with the chain flows, the task scripts and the plain-bash baseline."""
    (base / "flows").mkdir()
    (base / "tasks").mkdir()
    for i in range(count):
        (base / "tasks" / f"t{i:02d}.sh").write_text("#!/bin/bash\ntrue\n")
    (base / "flows" / "chain.json").write_text(json.dumps(chain_flow("chain", count)))
    (base / "flows" / "one.json").write_text(json.dumps(chain_flow("one", 1)))
    plain = base / "plain.sh"
    lines = ["#!/bin/bash", "set -e"] + [
        f'"$BASH" {base}/tasks/t{i:02d}.sh' for i in range(count)]
    plain.write_text("\n".join(lines) + "\n")
    return plain


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed runs of each kind (default 15)")
    parser.add_argument("--tasks", type=int, default=50, help="length of the chain (default 50)")
    parser.add_argument("--dir", help="where the project and database go (default: the temp dir)")
    args = parser.parse_args(argv)
    if args.tasks < 2:
        parser.error("--tasks must be at least 2")

    base = Path(tempfile.mkdtemp(prefix="ffbench-chain-", dir=args.dir))
    env = child_env(base)
    try:
        plain = setup(base, args.tasks)
        ff = console_script() + ["-f", str(base / "flows"), "-t", str(base / "tasks"),
                                 "-o", str(base / "out"), "run"]
        kinds = {
            "plain bash": ["bash", str(plain)],
            "featherflow run (chain)": ff + ["chain"],
            "featherflow run (1 task)": ff + ["one"],
        }
        times = {name: [] for name in kinds}
        for round_ in range(args.repeat + 1):  # round 0 warms caches and creates the database
            order = list(kinds)
            random.shuffle(order)
            for name in order:
                took = timed(kinds[name], env)
                if round_:
                    times[name].append(took)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    med = {name: statistics.median(v) * 1000 for name, v in times.items()}
    n = args.tasks
    # Per-repetition differences too, so the spread of the headline figure shows.
    per_task = sorted((f - p) * 1000 / n for f, p in zip(times["featherflow run (chain)"], times["plain bash"]))
    print(f"{n}-task chain of no-op tasks, {args.repeat} runs of each, medians")
    print(f"{'':28} {'median ms':>10} {'min':>9} {'max':>9}")
    for name, values in times.items():
        ms = [v * 1000 for v in values]
        print(f"{name:28} {med[name]:10.1f} {min(ms):9.1f} {max(ms):9.1f}")
    overhead = (med["featherflow run (chain)"] - med["plain bash"]) / n
    fixed = med["featherflow run (1 task)"] - med["plain bash"] / n
    marginal = (med["featherflow run (chain)"] - med["featherflow run (1 task)"]) / (n - 1) - med["plain bash"] / n
    print()
    print(f"overhead per task  (featherflow - plain) / {n} = {overhead:6.1f} ms   "
          f"(per-run spread {per_task[0]:.1f} .. {per_task[-1]:.1f}; target < 40 ms: "
          f"{'met' if overhead < 40 else 'NOT met'})")
    print(f"  fixed cost of a run (1-task flow minus one plain task) = {fixed:6.1f} ms")
    print(f"  each further task, beyond its plain cost                = {marginal:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
