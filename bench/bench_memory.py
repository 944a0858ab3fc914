"""Benchmark: the memory a running flow costs besides its tasks.

While a flow of 4 parallel long sleeps runs, this sums RSS and PSS (from
/proc/PID/smaps_rollup) over the run's own processes: everything in the run's
process tree except the task processes, i.e. the bash running run.sh, its
timers (`sleep`), the `timeout` wrapper of each task that has a timeout (the
others run under `setsid`, which execs them: no process of its own) and, while
transitions come in bursts, the
run's `_mark --serve` co-process. Two states are measured: "busy", right
after the tasks started, with the co-process still waiting for the next
call; and "steady", once it has ended after its idle seconds (what a run of
long tasks costs most of the time). The
baseline is one idle bash (`bash -c 'sleep 30; :'`; the `; :` keeps bash from
exec-ing sleep). PSS splits shared pages (libc, the bash binary) among the
processes that map them, so it is the fairer "what does this run cost" figure.
Target: under 16 MB in both. Linux only.

    python bench/bench_memory.py [--repeat N] [--samples K] [--dir DIR]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import child_env, console_script

TASKS = 4
DEADLINE = 30.0  # seconds to wait for the tasks to be running


def children() -> dict:
    """{parent pid: [child pids]} for every process we can see."""
    tree = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def is_marker(pid: int) -> bool:
    """The run's long-lived `_mark --serve` co-process (counted: it is the run's own)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"--serve" in f.read().split(b"\0")
    except OSError:
        return False


def memory(pid: int):
    """(RSS kB, PSS kB) of one process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines()[1:]:  # the first line is the [rollup] address range
        key, _, value = line.partition(":")
        fields[key] = value
    try:
        return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])
    except (KeyError, ValueError, IndexError):
        return None


def leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def run_tree(root: int):
    """(own pids, task pids) under `root`. A task is what a `timeout` started, or
    a process of the script's that leads a group of its own (setsid), and below."""
    tree = children()
    own, tasks = [], []

    def walk(pid, in_task):
        (tasks if in_task else own).append(pid)
        for child in tree.get(pid, []):
            task = comm(pid) == "timeout" or (leads_group(child) and comm(child) != "timeout")
            walk(child, in_task or task)

    walk(root, False)
    return own, tasks


def total(pids):
    found = [m for m in map(memory, pids) if m is not None]
    return sum(m[0] for m in found) / 1024, sum(m[1] for m in found) / 1024


def setup(base: Path, seconds: int) -> None:
    (base / "flows").mkdir()
    (base / "tasks").mkdir()
    (base / "tasks" / "sleep.sh").write_text(f"#!/bin/bash\nsleep {seconds}\n")
    flow = {"name": "sleeps", "description": f"{TASKS} parallel sleeps",
            "tasks": [{"id": f"s{i}", "script": "sleep.sh"} for i in range(TASKS)]}
    (base / "flows" / "sleeps.json").write_text(json.dumps(flow))


def stop(proc: subprocess.Popen, pids) -> None:
    """End what we started: TERM to the run (its trap stops the tasks), then KILL leftovers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def measure_run(base: Path, env: dict, samples: int):
    """Start the flow, wait for its tasks, sample while the `_mark` co-process
    lives, then after it has ended; returns {"busy": [...], "steady": [...]},
    each a list of (own RSS, own PSS, own count, own names)."""
    argv = console_script() + ["-f", str(base / "flows"), "-t", str(base / "tasks"),
                               "-o", str(base / "out"), "run", "sleeps", "--max-parallel", str(TASKS)]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    seen = set()

    def settle(marker: bool) -> None:
        """Wait until every task sleeps and no Python runs but (if `marker`) the co-process."""
        deadline = time.monotonic() + DEADLINE
        while True:
            own, tasks = run_tree(proc.pid)
            seen.update(own + tasks)
            pythons = [p for p in own if comm(p).startswith("python")]
            if sum(comm(p) == "sleep" for p in tasks) == TASKS and \
                    all(marker and is_marker(p) for p in pythons):
                return
            if proc.poll() is not None:
                sys.exit(f"bench_memory: the run ended early (exit {proc.returncode})")
            if time.monotonic() > deadline:
                sys.exit(f"bench_memory: not settled after {DEADLINE:.0f}s: {[comm(p) for p in own]}")
            time.sleep(0.05)

    def sample(want_marker: bool):
        found = []
        for _ in range(samples):
            own, tasks = run_tree(proc.pid)
            seen.update(own + tasks)
            if any(is_marker(p) for p in own) == want_marker:
                rss, pss = total(own)
                found.append((rss, pss, len(own), sorted(comm(p) for p in own)))
            time.sleep(0.05)
        return found

    try:
        settle(marker=True)
        busy = sample(want_marker=True)
        settle(marker=False)
        return {"busy": busy, "steady": sample(want_marker=False)}
    finally:
        stop(proc, seen)


def measure_idle_bash(samples: int):
    proc = subprocess.Popen(["bash", "-c", "sleep 30; :"], stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        found = []
        for _ in range(samples):
            found.append(memory(proc.pid))
            time.sleep(0.05)
        return [m for m in found if m]
    finally:
        proc.kill()
        proc.wait()
        for child in children().get(proc.pid, []):  # its sleep, if reparenting lags
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="flows started and measured (default 5)")
    parser.add_argument("--samples", type=int, default=10, help="samples per flow (default 10)")
    parser.add_argument("--dir", help="where the project and database go (default: the temp dir)")
    args = parser.parse_args(argv)
    if not os.path.exists("/proc/self/smaps_rollup"):
        sys.exit("bench_memory: needs Linux >= 4.14 (/proc/PID/smaps_rollup)")

    base = Path(tempfile.mkdtemp(prefix="ffbench-memory-", dir=args.dir))
    env = child_env(base)
    try:
        setup(base, 60)
        idle = []
        runs = {"busy": [], "steady": []}
        for _ in range(args.repeat):
            idle += measure_idle_bash(args.samples)
            for state, found in measure_run(base, env, args.samples).items():
                runs[state] += found
    finally:
        shutil.rmtree(base, ignore_errors=True)

    idle_rss = statistics.median(m[0] for m in idle) / 1024
    idle_pss = statistics.median(m[1] for m in idle) / 1024
    print(f"memory of a running flow ({TASKS} parallel sleeps) besides its tasks; "
          f"{args.repeat} runs x {args.samples} samples, medians")
    print(f"{'':40} {'RSS MB':>8} {'PSS MB':>8} {'x idle bash (PSS)':>18}")
    label = "idle bash (bash -c 'sleep 30; :')"
    print(f"{label:40} {idle_rss:8.2f} {idle_pss:8.2f} {1:18.2f}")
    verdicts = []
    for state, found in runs.items():
        if not found:
            sys.exit(f"bench_memory: no {state} sample (the co-process came or went too fast)")
        rss = statistics.median(r[0] for r in found)
        pss = statistics.median(r[1] for r in found)
        label = f"run, {state} ({statistics.median(r[2] for r in found):g} processes)"
        print(f"{label:40} {rss:8.2f} {pss:8.2f} {pss / idle_pss:18.2f}")
        verdicts.append(f"{state}: RSS {rss:.2f} MB ({'met' if rss < 16 else 'NOT met'}), "
                        f"PSS {pss:.2f} MB ({'met' if pss < 16 else 'NOT met'})")
        print(f"  {state} processes: {', '.join(max(found, key=lambda r: r[2])[3])}")
    print("\nrun overhead (target < 16 MB): " + "; ".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
