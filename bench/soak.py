"""Soak: the scheduler daemon over weeks of simulated time, with the retention policy on.

The real `Scheduler` (scheduler/daemon.py) runs in this process on a fresh project with
ten every-minute schedules of small flows: four that succeed, a three-task chain, two that
fail, one that fails its first attempt and succeeds on the retry, and two with big logs.
`Scheduler.tick(now)` is called with a clock that moves `--minutes-per-tick` simulated
minutes a tick, so weeks of history are made in an hour. Each fired run is carried out at
once by a stand-in for its process (no bash, no `_start-run`): its real script is rendered
into its run dir, its attempts and its end go through the store at the simulated time, and
each attempt writes its log (`--big-log-bytes` for the big ones). So the database and the
output dir hold what real runs would leave, and the daemon's retention pass (once a
simulated day) has real history to delete.

Sampled every `--sample-every` simulated minutes: this process's RSS (VmRSS; the daemon plus
the stand-in runner, so an upper bound of the daemon's) and open file descriptors
(/proc/self/fd), the database, its WAL, and the output dir. Printed as a table, then a
verdict against the targets: RSS flat after the first simulated hour (within
`--rss-noise` MB) and under 30 MB; database, logs and runs bounded (the peak of the last
prune period no more than 1.15 x the peak of the period before, both past the policy's
window: run at least the window plus two periods); no fd leak.
Exit 0 when every target holds, 1 otherwise. Linux only.

    python bench/soak.py [--days 21] [--minutes-per-tick 1] [--schedules 10] [--sample-every 360]
                         [--older-than 1d] [--keep-last 100] [--big-keep-last 200]
                         [--big-log-bytes 65536] [--prune-every 1d] [--synchronous full|normal] [--dir DIR]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# First, as `scheduler start` does (import_daemon): the daemon's modules as its process has them.
from featherflow.scheduler import import_daemon  # noqa: E402

_, daemon = import_daemon()
from featherflow import flow as flowmod, graph, paths, states  # noqa: E402
from featherflow.api import Featherflow  # noqa: E402
from featherflow.cli.format import parse_age  # noqa: E402
from featherflow.engine import launch  # noqa: E402
from featherflow.scheduler import admin as schedule_admin  # noqa: E402
from featherflow.scheduler import housekeeping  # noqa: E402
from featherflow.store import retention  # noqa: E402

RSS_LIMIT_MB = 30.0

# (flow name, task ids in a chain, what its attempts do): ok, fail, retry (fail then succeed), big.
FLOWS = [("ok-1", ["work"], "ok"), ("ok-2", ["work"], "ok"), ("ok-3", ["work"], "ok"),
         ("ok-4", ["work"], "ok"), ("chain", ["extract", "transform", "load"], "ok"),
         ("fail-1", ["work"], "fail"), ("fail-2", ["extract", "load"], "fail"),
         ("retry", ["work"], "retry"), ("big-1", ["dump"], "big"), ("big-2", ["dump"], "big")]


def make_project(root: Path, count: int) -> Featherflow:
    (root / "flows").mkdir(parents=True, exist_ok=True)
    (root / "tasks").mkdir(exist_ok=True)
    script = root / "tasks" / "work.sh"
    script.write_text("#!/bin/bash\necho working\n")
    script.chmod(0o755)
    for name, tasks, kind in FLOWS[:count]:
        retries = 1 if kind == "retry" else 0
        spec = {"name": name, "tasks": [
            {"id": t, "script": "work.sh", "retries": retries, "depends_on": [tasks[i - 1]] if i else []}
            for i, t in enumerate(tasks)]}
        (root / "flows" / f"{name}.json").write_text(json.dumps(spec))
    return Featherflow(root / "flows", root / "tasks", root / "out", config_dir=root / "home", env={})


class StandIn:
    """Carries out a fired run at once, at the simulated time, as its process would."""

    def __init__(self, app: Featherflow, big_log_bytes: int):
        self.app = app
        self.store = app.store
        self.big = big_log_bytes
        self.now = None
        self.kinds = {name: kind for name, _, kind in FLOWS}
        self.runs = 0

    def __call__(self, run, resume):
        store, t = self.store, self.now
        run = store.runs.get_run(run.id)
        flow = flowmod.validate(json.loads(run.snapshot), tasks_dir=Path(run.tasks_dir), source=f"run {run.id}")
        order = graph.topological_order(flow.edges)
        launch.script_for(self.app.config, run, flow, {task: 1 for task in order}, (), keep_tmp=False)
        (paths.run_dir(run) / "logs").mkdir(exist_ok=True)
        kind = self.kinds.get(run.flow_name, "ok")
        store.runs.transition_run(run.id, states.RUNNING, now=t)
        failed = False
        for i, task in enumerate(order):
            t += timedelta(seconds=1)
            if failed:
                store.runs.transition_attempt(run.id, task, 1, states.UPSTREAM_FAILED, now=t)
                continue
            outcomes = {"fail": [False], "retry": [False, True]}.get(kind, [True])
            if kind == "fail" and i < len(order) - 1:
                outcomes = [True]  # the last task of a failing flow fails
            for number, ok in enumerate(outcomes, 1):
                store.runs.transition_attempt(run.id, task, number, states.RUNNING, now=t)
                size = self.big if kind == "big" else 200
                line = ("x" * 99 + "\n") if ok else ("error: something broke" + " " * 77 + "\n")
                with open(paths.log_path(run, task, number), "w") as log:
                    log.write(line * max(1, size // 100))
                store.runs.transition_attempt(run.id, task, number, states.SUCCESS if ok else states.FAILED,
                                              exit_code=0 if ok else 3, reason=None if ok else "exit code 3", now=t)
            failed = not outcomes[-1]
        store.runs.transition_run(run.id, states.FAILED if failed else states.SUCCESS, now=t,
                                  reason="task failed" if failed else None)
        self.runs += 1
        return None  # held by the daemon's pid, which is alive: never adopted, never orphaned


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tree_size(path: Path):
    """(bytes, run dirs) under <output>/runs."""
    total = dirs = 0
    runs = path / "runs"
    if not runs.is_dir():
        return 0, 0
    for entry in os.scandir(runs):
        if entry.is_dir(follow_symlinks=False):
            dirs += 1
            for base, _, files in os.walk(entry.path):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(base, name)).st_size
                    except OSError:
                        pass
    return total, dirs


def verdict(samples, window_minutes: float, period: float, rss_noise_mb: float):
    """[(target, ok, what was measured)] from the samples (dicts)."""
    after_hour = [s for s in samples if s["minute"] >= 60] or samples
    base = after_hour[0]["rss_mb"]
    peak = max(s["rss_mb"] for s in after_hour)
    checks = [("RSS < 30 MB", peak < RSS_LIMIT_MB, f"peak {peak:.1f} MB"),
              (f"RSS flat after 1 h (+{rss_noise_mb:g} MB)", peak - base <= rss_noise_mb,
               f"{base:.1f} MB at 1 h, peak {peak:.1f} MB")]
    fd_base = after_hour[0]["fds"]
    fd_peak = max(s["fds"] for s in after_hour)
    checks.append(("no fd leak", fd_peak <= fd_base + 2, f"{fd_base} at 1 h, at most {fd_peak}"))
    # The policy makes a sawtooth (a pass every `period`): compare the peak of the last period
    # with the peak of the one before, once both are past the policy's window.
    end = samples[-1]["minute"]
    before = [s for s in samples if end - 2 * period <= s["minute"] < end - period]
    last = [s for s in samples if s["minute"] >= end - period]
    for key, label in (("db_mb", "database bounded"), ("logs_mb", "logs bounded"), ("runs", "runs bounded")):
        if end - 2 * period < window_minutes or not before or not last:
            checks.append((label, True, "not judged: under two prune periods past the policy's window"))
            continue
        a, b = max(s[key] for s in before), max(s[key] for s in last)
        checks.append((label, b <= a * 1.15 + 0.05, f"peak {a:g} in the period before the last, {b:g} in the last"))
    return checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=21.0, help="simulated days (default: 21)")
    parser.add_argument("--minutes-per-tick", type=int, default=1,
                        help="simulated minutes between ticks (default: 1; more fires the missed slots as catch-up)")
    parser.add_argument("--schedules", type=int, default=10, choices=range(1, len(FLOWS) + 1), metavar="N",
                        help=f"every-minute schedules, 1-{len(FLOWS)} (default: 10)")
    parser.add_argument("--sample-every", type=int, default=360, help="simulated minutes between samples (default: 360)")
    parser.add_argument("--older-than", default="1d", help="the global rule's --older-than (default: 1d)")
    parser.add_argument("--keep-last", type=int, default=100, help="the global rule's --keep-last (default: 100)")
    parser.add_argument("--big-keep-last", type=int, default=200,
                        help="the big-log flows' own rule: --keep-last N alone (default: 200)")
    parser.add_argument("--big-log-bytes", type=int, default=64 * 1024, help="log of a big-log attempt (default: 64 KiB)")
    parser.add_argument("--prune-every", default="1d", help="how often the daemon applies the policy (default: 1d, "
                        "the daemon's; shorter for a quick run)")
    parser.add_argument("--rss-noise", type=float, default=2.0, help="MB of RSS growth taken as noise (default: 2)")
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full",
                        help="the soak's own connection: full (the daemon's, default) or normal, which skips the "
                             "fsync of each commit (sizes and memory are the same; weeks go several times faster)")
    parser.add_argument("--dir", help="work here (kept) instead of a temp dir (removed)")
    args = parser.parse_args(argv)

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ff-soak-"))
    app = make_project(root, args.schedules)
    try:
        return soak(app, root, args)
    finally:
        app.close()
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


def soak(app, root: Path, args) -> int:
    housekeeping.RETENTION_EVERY = parse_age(args.prune_every)
    store, config = app.store, app.config
    store.db.execute_sql(f"PRAGMA synchronous = {args.synchronous}")
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    older = parse_age(args.older_than)
    retention.set_policy(store, start, None, older, args.keep_last)
    for name, _, kind in FLOWS[:args.schedules]:
        schedule_admin.add_schedule(config, store, name, cron="* * * * *", tz="UTC", name=name,
                                    catchup="all", now=start - timedelta(minutes=1))
        if kind == "big":
            retention.set_policy(store, start, name, None, args.big_keep_last)
    runner = StandIn(app, args.big_log_bytes)
    scheduler = daemon.Scheduler(config, store, launch=runner, deliver=lambda: None, allow_root=True)
    scheduler.acquire(start)
    total = int(args.days * 1440)
    samples, pruned, wall = [], 0, time.monotonic()
    print(f"soak: {args.schedules} every-minute schedules, {args.days:g} simulated days, "
          f"{args.minutes_per_tick} min a tick, synchronous={args.synchronous}; policy: older than {args.older_than}, keep {args.keep_last}/flow "
          f"(big-log flows: keep {args.big_keep_last}); applied every {args.prune_every}; in {root}", flush=True)
    header = "| sim time | runs done | runs kept | run dirs | RSS MB | fds | db MB | WAL MB | logs MB | pruned |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1), flush=True)
    try:
        minute = 0
        while True:
            now = start + timedelta(minutes=minute)
            runner.now = now
            report = scheduler.tick(now)
            pruned += report.pruned
            if minute % args.sample_every == 0 or minute >= total:
                logs, dirs = tree_size(Path(config.output_dir))
                sample = {"minute": minute, "done": runner.runs, "runs": store.runs.run_count(), "dirs": dirs,
                          "rss_mb": rss_kb() / 1024, "fds": fds(),
                          "db_mb": file_size(config.db_path) / 1e6, "wal_mb": file_size(Path(f"{config.db_path}-wal")) / 1e6,
                          "logs_mb": logs / 1e6, "pruned": pruned}
                samples.append(sample)
                print(f"| {minute // 1440}d {minute % 1440 // 60:02d}:{minute % 60:02d} | {sample['done']} | {sample['runs']} | {dirs} | "
                      f"{sample['rss_mb']:.1f} | {sample['fds']} | {sample['db_mb']:.1f} | {sample['wal_mb']:.1f} | "
                      f"{sample['logs_mb']:.1f} | {pruned} |", flush=True)
            if minute >= total:
                break
            minute += args.minutes_per_tick
    finally:
        scheduler.release(start + timedelta(minutes=total))
    took = time.monotonic() - wall
    period = parse_age(args.prune_every).total_seconds() / 60
    checks = verdict(samples, older.total_seconds() / 60, period, args.rss_noise)
    print(f"\n{runner.runs} runs in {args.days:g} simulated days, {took:.0f} s wall "
          f"({runner.runs / max(took, 1e-9):.0f} runs/s)\n")
    print("| target | verdict | measured |")
    print("|---|---|---|")
    for target, ok, what in checks:
        print(f"| {target} | {'PASS' if ok else 'FAIL'} | {what} |")
    good = all(ok for _, ok, _ in checks)
    print(f"\nverdict: {'PASS' if good else 'FAIL'}")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
