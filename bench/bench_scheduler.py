"""Benchmark: what the idle scheduler daemon costs — memory and wake-ups.

Starts `featherflow scheduler start --foreground` on a fresh project with one
daily schedule (so nothing fires while we watch), waits for its first tick,
then for `--seconds` samples:

- RSS and PSS (from /proc/PID/smaps_rollup) of the daemon, against an idle
  `python -c 'import time; time.sleep(...)'` of the same interpreter started
  in the same run (the floor any Python daemon pays). Target: under 30 MB.
- wake-ups: loop iterations counted from the daemon's DEBUG log ("sleeping"
  lines), voluntary context switches (/proc/PID/status), and CPU time
  (utime+stime), each scaled to an hour. Target: no busy polling, i.e. about
  3600 / check-interval wake-ups an hour. With --strace, `strace -c` counts
  the daemon's select() calls as well.

Linux only.

    python bench/bench_scheduler.py [--seconds 130] [--check-interval 60] [--strace] [--dir DIR]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def memory(pid: int):
    """(RSS kB, PSS kB) of one process."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f.read().splitlines()[1:]:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])


def counters(pid: int):
    """(voluntary context switches, CPU seconds) so far."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(status["voluntary_ctxt_switches"]), (int(fields[11]) + int(fields[12])) / ticks


def wait_for(predicate, deadline: float, what: str):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=130.0, help="idle period watched (default: 130)")
    parser.add_argument("--check-interval", type=float, default=60.0, help="the daemon's (default: 60, its default)")
    parser.add_argument("--strace", action="store_true", help="also count select() calls with strace -c")
    parser.add_argument("--dir", help="work here instead of a temp dir (kept)")
    args = parser.parse_args()

    root = Path(args.dir or tempfile.mkdtemp(prefix="ff-bench-sched-"))
    (root / "flows").mkdir(parents=True, exist_ok=True)
    (root / "tasks").mkdir(exist_ok=True)
    (root / "tasks" / "noop.sh").write_text("#!/bin/bash\n:\n")
    (root / "flows" / "nightly.json").write_text(json.dumps(
        {"name": "nightly", "tasks": [{"id": "noop", "script": "noop.sh"}]}))
    base = [sys.executable, "-m", "featherflow", "-f", str(root / "flows"), "-t", str(root / "tasks"),
            "-o", str(root / "out"), "--config-dir", str(root / "home")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATHERFLOW_")}
    subprocess.run(base + ["schedule", "add", "nightly", "--interval", "daily", "--at", "03:00"],
                   check=True, env=env, capture_output=True)
    log_path = root / "daemon.log"
    floor = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({args.seconds + 60})"])
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(base + ["-l", "DEBUG", "scheduler", "start", "--foreground", "--allow-root",
                                          "--check-interval", str(args.check_interval)],
                                  env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    tracer = None
    try:
        wait_for(lambda: "sleeping" in log_path.read_text(), 30, "the daemon's first tick")
        time.sleep(0.5)
        if args.strace and shutil.which("strace"):
            tracer = subprocess.Popen(["strace", "-c", "-f", "-e", "trace=select,pselect6,poll,ppoll",
                                       "-p", str(daemon.pid), "-o", str(root / "strace.txt")],
                                      stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        sleeps_before = log_path.read_text().count("sleeping")
        switches_before, cpu_before = counters(daemon.pid)
        time.sleep(args.seconds)
        sleeps = log_path.read_text().count("sleeping") - sleeps_before
        switches, cpu = counters(daemon.pid)
        switches -= switches_before
        cpu -= cpu_before
        rss, pss = memory(daemon.pid)
        floor_rss, floor_pss = memory(floor.pid)
    finally:
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        floor.kill()
        floor.wait()
    scale = 3600.0 / args.seconds
    print(f"idle daemon: RSS {rss / 1024:.1f} MB, PSS {pss / 1024:.1f} MB "
          f"(python -c sleep floor: RSS {floor_rss / 1024:.1f} MB, PSS {floor_pss / 1024:.1f} MB; "
          f"daemon above floor: RSS {(rss - floor_rss) / 1024:.1f} MB)")
    print(f"over {args.seconds:.0f}s idle, check interval {args.check_interval:g}s: {sleeps} loop wake-up(s), "
          f"{switches} voluntary context switch(es), {cpu:.2f}s CPU")
    print(f"per idle hour: {sleeps * scale:.0f} wake-ups, {switches * scale:.0f} context switches, "
          f"{cpu * scale:.2f}s CPU ({cpu * scale / 36:.4f}% of one core)")
    if tracer is not None and (root / "strace.txt").exists():
        print("strace -c:\n" + (root / "strace.txt").read_text().rstrip())
    print(f"target: RSS under 30 MB -> {'ok' if rss < 30 * 1024 else 'OVER'}; "
          f"wake-ups about {3600 / args.check_interval:.0f}/h -> "
          f"{'ok' if sleeps * scale <= 2 * 3600 / args.check_interval + 2 else 'TOO MANY'}")
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
