"""Benchmark: what the log cap costs a task that prints 100 MiB.

The same task (`yes LINE | head -c SIZE`) runs through `featherflow run` with
`max_log_bytes` set to the cap (1 MiB by default) and with 0 (no cap), and from
a plain bash redirect (`bash big.sh >>FILE`, the floor), alternating in a
shuffled order each round. For each it prints the medians of: the task's own
time (its attempt's started..ended, as recorded), the whole `featherflow run`,
and the log's size and blocks on disk at the end. With a cap the run's end also
waits for the last compaction (head + marker + tail), which is in the run's time
but not in the task's.

    python bench/bench_logcap.py [--repeat 7] [--size-mib 100] [--cap 1MiB] [--slow] [--dir DIR]

--slow adds a task that prints the same amount at about 25 MiB/s (a Python task
writing 256 KiB every 10 ms), capped and uncapped, so that the watcher cuts while
it prints; the peak blocks on disk are sampled every 20 ms.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import child_env, console_script, timed

BIG = """\
echo "first line"
yes "0123456789 abcdefghij 0123456789 abcdefghij" | head -c {size}
echo "the last line"
"""
SLOW = """\
import os, time
line = b"y" * 1023 + b"\\n"
for i in range({chunks}):
    os.write(1, line * 256)
    time.sleep(0.01)
"""


def setup(base: Path, size: int, cap: str) -> None:
    (base / "flows").mkdir()
    (base / "tasks").mkdir()
    (base / "tasks" / "big.sh").write_text(BIG.format(size=size))
    (base / "tasks" / "slow.py").write_text(SLOW.format(chunks=size // (256 * 1024)))
    for name, value, task in (("capped", cap, "big.sh"), ("uncapped", 0, "big.sh"), ("slow", cap, "slow.py"),
                              ("slow-uncapped", 0, "slow.py")):
        flow = {"name": name, "max_log_bytes": value, "tasks": [{"id": "big", "script": task}]}
        (base / "flows" / f"{name}.json").write_text(json.dumps(flow))


def last_run(cli, env) -> dict:
    out = subprocess.run(cli + ["runs", "list", "--json", "--limit", "1"], env=env, capture_output=True,
                         check=True, text=True).stdout
    run_id = json.loads(out)[0]["id"]
    out = subprocess.run(cli + ["runs", "show", str(run_id), "--json"], env=env, capture_output=True,
                         check=True, text=True).stdout
    return json.loads(out)


def peak_blocks(base: Path, done: threading.Event, peak: list) -> None:
    while not done.is_set():
        for path in base.glob("out/runs/*/logs/big.1.log"):
            try:
                peak[0] = max(peak[0], os.stat(path).st_blocks * 512)
            except FileNotFoundError:
                pass
        done.wait(0.02)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of each kind (default 7)")
    parser.add_argument("--size-mib", type=int, default=100, help="MiB the task prints (default 100)")
    parser.add_argument("--cap", default="1MiB", help="max_log_bytes of the capped flow (default 1MiB)")
    parser.add_argument("--slow", action="store_true", help="also a task printing at about 25 MiB/s")
    parser.add_argument("--dir", help="where the project goes (default: the temp dir)")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ff-bench-logcap-", dir=args.dir))
    try:
        size = args.size_mib * 1024 * 1024
        setup(base, size, args.cap)
        env = child_env(base)
        cli = console_script() + ["-f", str(base / "flows"), "-t", str(base / "tasks"), "-o", str(base / "out")]
        kinds = ["capped", "uncapped", "plain"] + (["slow", "slow-uncapped"] if args.slow else [])
        figures = {kind: {"run": [], "task": [], "size": [], "disk": [], "peak": []} for kind in kinds}
        floor_log = base / "plain.log"
        for _ in range(args.repeat):
            random.shuffle(kinds)
            for kind in kinds:
                if kind == "plain":
                    floor_log.unlink(missing_ok=True)
                    start = time.perf_counter()
                    with open(floor_log, "ab") as out:
                        subprocess.run(["bash", str(base / "tasks" / "big.sh")], stdout=out, stderr=out, check=True)
                    took = time.perf_counter() - start
                    figures[kind]["run"].append(took)
                    figures[kind]["task"].append(took)
                    st = os.stat(floor_log)
                    figures[kind]["size"].append(st.st_size)
                    figures[kind]["disk"].append(st.st_blocks * 512)
                    continue
                done, peak = threading.Event(), [0]
                sampler = threading.Thread(target=peak_blocks, args=(base, done, peak))
                sampler.start()
                try:
                    figures[kind]["run"].append(timed(cli + ["run", kind], env=env))
                finally:
                    done.set()
                    sampler.join()
                run = last_run(cli, env)
                attempt = run["tasks"][0]["attempts"][0]
                figures[kind]["task"].append(attempt["duration_seconds"])
                st = os.stat(attempt["log"])
                figures[kind]["size"].append(st.st_size)
                figures[kind]["disk"].append(st.st_blocks * 512)
                figures[kind]["peak"].append(peak[0])
                shutil.rmtree(Path(attempt["log"]).parent.parent)  # keep the disk free between rounds
        print(f"{args.size_mib} MiB printed by one task, cap {args.cap}, {args.repeat} rounds, medians")
        print("| kind | task s | run s | log bytes at the end | on disk at the end | peak on disk while it ran |")
        print("| --- | --- | --- | --- | --- | --- |")
        for kind in sorted(figures):
            f = figures[kind]
            peak = f"{statistics.median(f['peak']) / 1e6:.1f} MB" if f["peak"] else "-"
            print(f"| {kind} | {statistics.median(f['task']):.3f} | {statistics.median(f['run']):.3f} | "
                  f"{int(statistics.median(f['size']))} | {statistics.median(f['disk']) / 1e6:.1f} MB | {peak} |")
        for kind in sorted(figures):
            print(f"{kind} task s, round by round: {' '.join(f'{t:.3f}' for t in figures[kind]['task'])}")
        task_ratio = statistics.median(figures["capped"]["task"]) / statistics.median(figures["uncapped"]["task"])
        print(f"capped / uncapped task time: {task_ratio:.2f}")
        if args.slow:
            slow_ratio = (statistics.median(figures["slow"]["task"])
                          / statistics.median(figures["slow-uncapped"]["task"]))
            print(f"slow capped / slow uncapped task time: {slow_ratio:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
