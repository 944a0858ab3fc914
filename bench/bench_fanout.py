"""Benchmark: a 20-wide fan-out of `sleep 0.5` tasks, Featherflow against `make -j4`.

Twenty independent tasks, four at a time: `featherflow run --max-parallel 4`
against `make -j4` running the same twenty commands (`bash TASK.sh`). Both
should take about five waves of 0.5 s; what Featherflow adds is its start, one
`_mark` per start/end batch and its reaction time when a slot frees up.
Target: Featherflow within 1.2x of make.

    python bench/bench_fanout.py [--repeat N] [--width 20] [--parallel 4] [--sleep 0.5]
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


def setup(base: Path, width: int, seconds: float) -> Path:
    """The fan-out flow, its task scripts, and a Makefile running the same commands."""
    (base / "flows").mkdir()
    (base / "tasks").mkdir()
    names = [f"s{i:02d}" for i in range(width)]
    for name in names:
        (base / "tasks" / f"{name}.sh").write_text(f"#!/bin/bash\nsleep {seconds}\n")
    flow = {"name": "fanout", "description": f"{width} independent sleeps",
            "tasks": [{"id": name, "script": f"{name}.sh"} for name in names]}
    (base / "flows" / "fanout.json").write_text(json.dumps(flow))
    make = [".PHONY: all " + " ".join(names), "all: " + " ".join(names)]
    make += [f"{name}:\n\t@bash {base}/tasks/{name}.sh" for name in names]
    (base / "Makefile").write_text("\n".join(make) + "\n")
    return base / "Makefile"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of each kind (default 7)")
    parser.add_argument("--width", type=int, default=20, help="independent tasks (default 20)")
    parser.add_argument("--parallel", type=int, default=4, help="tasks at once (default 4)")
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds each task sleeps (default 0.5)")
    parser.add_argument("--dir", help="where the project and database go (default: the temp dir)")
    args = parser.parse_args(argv)
    if not shutil.which("make"):
        sys.exit("bench_fanout: `make` is needed for the baseline")

    base = Path(tempfile.mkdtemp(prefix="ffbench-fanout-", dir=args.dir))
    env = {k: v for k, v in child_env(base).items() if k not in ("MAKEFLAGS", "MFLAGS")}
    try:
        makefile = setup(base, args.width, args.sleep)
        kinds = {
            f"make -j{args.parallel}": ["make", "-s", f"-j{args.parallel}", "-f", str(makefile)],
            f"featherflow run --max-parallel {args.parallel}": console_script() + [
                "-f", str(base / "flows"), "-t", str(base / "tasks"), "-o", str(base / "out"),
                "run", "fanout", "--max-parallel", str(args.parallel)],
        }
        times = {name: [] for name in kinds}
        for round_ in range(args.repeat + 1):  # round 0 warms caches and creates the database
            order = list(kinds)
            random.shuffle(order)
            for name in order:
                took = timed(kinds[name], env, cwd=base)
                if round_:
                    times[name].append(took)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    make_name, ff_name = list(kinds)
    med = {name: statistics.median(v) for name, v in times.items()}
    waves = -(-args.width // args.parallel)
    ideal = waves * args.sleep
    print(f"{args.width} x sleep {args.sleep}, {args.parallel} at once ({waves} waves, ideal {ideal:.2f} s); "
          f"{args.repeat} runs of each, medians")
    print(f"{'':34} {'median s':>9} {'min':>7} {'max':>7} {'x make':>7}")
    for name, values in times.items():
        print(f"{name:34} {med[name]:9.3f} {min(values):7.3f} {max(values):7.3f} "
              f"{med[name] / med[make_name]:7.2f}")
    ratio = med[ff_name] / med[make_name]
    print(f"\nfeatherflow / make = {ratio:.2f}x  (target <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'}); "
          f"featherflow - make = {(med[ff_name] - med[make_name]) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
