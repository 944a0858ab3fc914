"""Benchmark: how rendering and running a flow grow with its number of tasks.

Chains (each task depends on the one before) and wide flows (every task
independent) of no-op `.sh` tasks, 100, 1,000 and 5,000 tasks by default. For
each it prints:

- render: seconds to load, validate and render the flow's script, measured in
  a fresh child process (Python's start and imports not included), and the
  peak RSS of that child (ru_maxrss: imports included, so ~20 MB is the floor);
- script: the size of the rendered run.sh;
- run: wall seconds of `featherflow run FLOW` (the whole command: creating the
  run, rendering, the tasks, every transition recorded), and that divided by
  the number of tasks.

Linear is the target: per-task cost and script bytes per task the same at
5,000 tasks as at 100.

    python bench/bench_scale.py [--repeat 3] [--sizes 100,1000,5000] [--shapes chain,wide]
                                [--run-max 5000] [--dir DIR]

`--run-max N` skips the run of flows larger than N tasks (render is still
measured): a quadratic engine needs minutes for a 5,000-task chain.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import child_env, console_script, timed

# Run in a child: load + validate + render, timed in-process, and the child's peak RSS.
RENDER = r"""
import json, resource, sys, time
from pathlib import Path
from featherflow import flow as flowmod
from featherflow.engine import script
base, name = Path(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
flow = flowmod.load(base / "flows", name, base / "tasks")
spec = script.RunSpec(run_id=1, run_uid="u", trigger="manual", params={}, max_parallel=4,
                      python=sys.executable, mark="/x/mark.py", db=str(base / "ff.db"),
                      tasks_dir=str(base / "tasks"), run_dir=str(base / "r"))
text = script.render(flow, spec)
took = time.perf_counter() - start
print(json.dumps({"seconds": took, "bytes": len(text.encode()),
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def make_flow(shape: str, count: int) -> dict:
    tasks = []
    for i in range(count):
        task = {"id": f"t{i:04d}", "script": "noop.sh"}
        if shape == "chain" and i:
            task["depends_on"] = [f"t{i - 1:04d}"]
        tasks.append(task)
    return {"name": f"{shape}{count}", "description": f"{count} no-op tasks ({shape})", "tasks": tasks}


def render_once(base: Path, name: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", RENDER, str(base), name], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench_scale: rendering {name} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed renders and runs of each flow (default 3)")
    parser.add_argument("--sizes", default="100,1000,5000", help="numbers of tasks (default 100,1000,5000)")
    parser.add_argument("--shapes", default="chain,wide", help="chain, wide or both (default both)")
    parser.add_argument("--run-max", type=int, default=5000, help="run only flows of at most this many tasks")
    parser.add_argument("--run-repeat-max", type=int, default=1000,
                        help="flows larger than this are run once, not --repeat times (default 1000)")
    parser.add_argument("--dir", help="where the project and database go (default: the temp dir)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    shapes = args.shapes.split(",")

    base = Path(tempfile.mkdtemp(prefix="ffbench-scale-", dir=args.dir))
    env = child_env(base)
    rows = []
    try:
        (base / "flows").mkdir()
        (base / "tasks").mkdir()
        (base / "tasks" / "noop.sh").write_text("#!/bin/bash\ntrue\n")
        for shape in shapes:
            for n in sizes:
                data = make_flow(shape, n)
                (base / "flows" / f"{data['name']}.json").write_text(json.dumps(data))
        ff = console_script() + ["-f", str(base / "flows"), "-t", str(base / "tasks"),
                                 "-o", str(base / "out"), "run"]
        timed(ff + [f"{shapes[0]}{sizes[0]}"], env)  # warm-up: creates the database, caches
        for shape in shapes:
            for n in sizes:
                name = f"{shape}{n}"
                renders = [render_once(base, name, env) for _ in range(args.repeat)]
                runs = []
                if n <= args.run_max:
                    for _ in range(args.repeat if n <= args.run_repeat_max else 1):
                        runs.append(timed(ff + [name], env))
                        shutil.rmtree(base / "out", ignore_errors=True)
                rows.append((shape, n, statistics.median(r["seconds"] for r in renders),
                             max(r["maxrss_kb"] for r in renders), renders[0]["bytes"],
                             statistics.median(runs) if runs else None, len(runs)))
                print_row(*rows[-1], file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"no-op tasks, medians of {args.repeat} renders; runs: median of the count shown")
    print("| flow | tasks | render | render peak RSS | run.sh | bytes/task | run | runs | per task |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print_row(*row)
    return 0


def print_row(shape, n, render_s, rss_kb, size, run_s, count, file=None) -> None:
    run = f"{run_s:.2f} s" if run_s is not None else "skipped"
    per = f"{run_s * 1000 / n:.1f} ms" if run_s is not None else "—"
    print(f"| {shape} | {n:,} | {render_s:.3f} s | {rss_kb / 1024:.1f} MB | {_size(size)} | "
          f"{size / n:.0f} | {run} | {count} | {per} |", file=file or sys.stdout)


def _size(size: int) -> str:
    return f"{size / 1024:.0f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MB"


if __name__ == "__main__":
    sys.exit(main())
