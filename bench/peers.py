"""Benchmark: Featherflow against its peers (make, plain bash, doit, Luigi) on the same flows.

Every tool runs the same generated task scripts in the same shapes, at most 4 at a
time, alternating tools run by run (a shuffled order each round) so that load from
other users of the machine falls on all alike. Every task writes its own file and
the script checks after every run that each one did, so no tool is timed for work
it skipped. Printed: medians, the overhead per task over the fastest floor (make
or plain bash) and the ratio of each tool to Featherflow; then the start-up
medians of `featherflow --help` and `featherflow runs list`.

    python bench/peers.py [--repeat 3] [--venv DIR] [--doit-venv DIR] [--luigi-venv DIR]
                          [--tools make,bash,doit,luigi,featherflow] [--workloads one,chain50,...]
                          [--big] [--dir DIR]

doit and Luigi are used only where installed: from --doit-venv / --luigi-venv,
else --venv, else $FEATHERFLOW_PEERS_VENV, else the PATH (see bench/README.md);
a note lists what was skipped and why.
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
import time
from pathlib import Path

from common import child_env, console_script

CAP = 4
FLOORS = ("make", "bash")
TOOLS = ("make", "bash", "doit", "luigi", "featherflow")
BIG_TOOLS = ("bash", "featherflow")


def shape(kind: str, size: int) -> dict:
    """Task id -> its dependencies, for a chain, a wide (independent) flow or a 1->N->1 fan."""
    ids = [f"t{i:04d}" for i in range(size)]
    if kind == "chain":
        return {t: ([ids[i - 1]] if i else []) for i, t in enumerate(ids)}
    if kind == "wide":
        return {t: [] for t in ids}
    middle = ids[1:-1]  # fan: the first, `size - 2` after it, the last after all of them
    graph = {ids[0]: []}
    graph.update({t: [ids[0]] for t in middle})
    graph[ids[-1]] = list(middle)
    return graph


def workloads(big: bool) -> dict:
    """Name -> (graph, seconds each task sleeps, tools allowed); the issue's set, --big adds scale."""
    found = {}
    for sleep, suffix in ((0.0, ""), (0.1, "-sleep")):
        found["one" + suffix] = (shape("wide", 1), sleep, TOOLS)
        found["chain50" + suffix] = (shape("chain", 50), sleep, TOOLS)
        found["fan20" + suffix] = (shape("fan", 22), sleep, TOOLS)
        found["wide200" + suffix] = (shape("wide", 200), sleep, TOOLS)
    if big:
        for size in (1000, 5000):
            found[f"chain{size}"] = (shape("chain", size), 0.0, BIG_TOOLS)
            found[f"wide{size}"] = (shape("wide", size), 0.0, BIG_TOOLS)
    return found


def levels(graph: dict) -> list:
    """The tasks in waves: each wave depends only on earlier ones (plain bash's schedule)."""
    depth = {}
    for task in graph:  # graphs are generated in topological order
        depth[task] = 1 + max((depth[d] for d in graph[task]), default=-1)
    waves = [[] for _ in range(max(depth.values()) + 1)]
    for task, d in depth.items():
        waves[d].append(task)
    return waves


def write_project(base: Path, name: str, graph: dict, sleep: float) -> None:
    """The task scripts, and the same flow for every tool: a flow JSON, a Makefile, a plain
    bash script, a dodo.py and a Luigi module."""
    tasks, done = base / "tasks", base / "done"
    for d in (tasks, done, base / "flows"):
        d.mkdir(parents=True, exist_ok=True)
    body = f"sleep {sleep}\n" if sleep else ""
    for task in graph:
        # `: >` is a builtin: the proof that the task ran costs no process of its own.
        (tasks / f"{task}.sh").write_text(f"#!/bin/bash\n{body}: > {done}/{task}\n")
    flow = {"name": name, "description": f"{len(graph)} generated tasks",
            "tasks": [dict({"id": t, "script": f"{t}.sh"}, **({"depends_on": d} if d else {}))
                      for t, d in graph.items()]}
    (base / "flows" / f"{name}.json").write_text(json.dumps(flow))
    make = [".PHONY: all " + " ".join(graph), "all: " + " ".join(graph)]
    make += [f"{t}: {' '.join(d)}\n\t@bash {tasks}/{t}.sh" for t, d in graph.items()]
    (base / "Makefile").write_text("\n".join(make) + "\n")
    plain = ["#!/bin/bash", "set -e"]
    for wave in levels(graph):
        if len(wave) == 1:
            plain.append(f"bash {tasks}/{wave[0]}.sh")
        else:  # a wave of independent tasks, 4 at a time
            plain.append(f"printf '%s\\n' {' '.join(f'{tasks}/{t}.sh' for t in wave)} | xargs -P {CAP} -n 1 bash")
    (base / "plain.sh").write_text("\n".join(plain) + "\n")
    (base / "graph.json").write_text(json.dumps(graph))
    (base / "dodo.py").write_text(
        "import json\nDOIT_CONFIG = {'verbosity': 0}\n"
        f"GRAPH = json.load(open({str(base / 'graph.json')!r}))\n"
        "def task_flow():\n"
        "    for t, deps in GRAPH.items():\n"
        f"        yield {{'name': t, 'actions': ['bash {tasks}/%s.sh' % t],\n"
        "               'task_dep': ['flow:' + d for d in deps], 'uptodate': [False]}\n")
    (base / "peerflow.py").write_text(
        "import json, subprocess\nimport luigi\n"
        f"GRAPH = json.load(open({str(base / 'graph.json')!r}))\n"
        "class T(luigi.Task):\n"
        "    name = luigi.Parameter()\n"
        "    def requires(self):\n"
        "        return [T(name=d) for d in GRAPH[self.name]]\n"
        "    def output(self):\n"
        f"        return luigi.LocalTarget({str(done)!r} + '/' + self.name)\n"
        "    def run(self):\n"
        f"        subprocess.run(['bash', {str(tasks)!r} + '/' + self.name + '.sh'], check=True)\n"
        "class All(luigi.WrapperTask):\n"
        "    def requires(self):\n"
        "        needed = {d for deps in GRAPH.values() for d in deps}\n"
        "        return [T(name=t) for t in GRAPH if t not in needed]\n")


def find_peers(args) -> tuple:
    """{tool: argv prefix} for doit and Luigi where installed, and the notes on what was skipped."""
    found, notes = {}, []
    for tool, own in (("doit", args.doit_venv), ("luigi", args.luigi_venv)):
        venv = own or args.venv or os.environ.get("FEATHERFLOW_PEERS_VENV")
        if venv:
            python = Path(venv) / "bin" / "python"
            ok = python.exists() and subprocess.run(
                [str(python), "-c", f"import {tool}"], capture_output=True).returncode == 0
            where = f"{venv}"
        else:  # the console scripts on the PATH run with the interpreter they belong to
            ok, where = bool(shutil.which(tool)), "PATH"
        if not ok:
            notes.append(f"{tool}: skipped, not installed ({where}; see bench/README.md)")
        elif not venv:
            found[tool] = [shutil.which(tool)]
        elif tool == "doit":
            found[tool] = [str(Path(venv) / "bin" / "doit")]
        else:
            found[tool] = [str(python), "-m", "luigi"]
    return found, notes


def commands(base: Path, name: str, peers: dict) -> dict:
    """Tool -> the argv that runs the project's flow with it, 4 at a time."""
    return {
        "make": ["make", "-s", f"-j{CAP}", "-f", str(base / "Makefile")],
        "bash": ["bash", str(base / "plain.sh")],
        "doit": peers.get("doit", []) + ["run", "-f", str(base / "dodo.py"), "-n", str(CAP),
                                          "--db-file", str(base / "doit.db")],
        "luigi": peers.get("luigi", []) + ["--module", "peerflow", "All", "--local-scheduler",
                                            "--workers", str(CAP), "--no-lock"],
        "featherflow": console_script() + ["-f", str(base / "flows"), "-t", str(base / "tasks"),
                                           "-o", str(base / "out"), "run", name,
                                           "--max-parallel", str(CAP)],
    }


def run_once(argv, env, base: Path, count: int, label: str) -> float:
    """Wall seconds of one run; stops the benchmark if it failed or left a task undone."""
    done = base / "done"
    for f in done.iterdir():
        f.unlink()
    start = time.perf_counter()
    out = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env, cwd=str(base))
    took = time.perf_counter() - start
    ran = sum(1 for _ in done.iterdir())
    if out.returncode != 0 or ran != count:
        sys.exit(f"peers: {label} exited {out.returncode} with {ran} of {count} tasks done: "
                 f"{out.stderr.decode(errors='replace').strip()[-2000:]}")
    return took


def startup(env, base: Path, peers: dict, repeat: int) -> dict:
    """Medians (ms) of the commands a user types first: Featherflow's and the peers' --help."""
    ff = console_script()
    kinds = {"featherflow --help": ff + ["--help"], "featherflow runs list": ff + ["runs", "list"]}
    if "doit" in peers:
        kinds["doit --help"] = peers["doit"] + ["--help"]
    if "luigi" in peers:
        kinds["luigi --help"] = peers["luigi"] + ["--help"]
    times = {k: [] for k in kinds}
    for _ in range(repeat):
        order = list(kinds)
        random.shuffle(order)
        for k in order:
            start = time.perf_counter()
            subprocess.run(kinds[k], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env, cwd=str(base), check=True)
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each tool and workload (default 3)")
    parser.add_argument("--venv", help="a virtual environment holding doit and luigi")
    parser.add_argument("--doit-venv", help="the virtual environment holding doit")
    parser.add_argument("--luigi-venv", help="the virtual environment holding luigi")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated (default: all)")
    parser.add_argument("--workloads", help="comma-separated names (default: all; see the table)")
    parser.add_argument("--big", action="store_true", help="add 1,000 and 5,000 chain and wide (Featherflow and bash)")
    parser.add_argument("--startup-repeat", type=int, default=10, help="runs of each start-up command (default 10)")
    parser.add_argument("--dir", help="where the projects and database go (default: the temp dir)")
    args = parser.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown or args.repeat < 1:
        parser.error(f"unknown tool {unknown} (valid: {', '.join(TOOLS)}); --repeat at least 1")
    chosen = workloads(args.big)
    if args.workloads:
        names = args.workloads.split(",")
        bad = [n for n in names if n not in chosen]
        if bad:
            parser.error(f"unknown workload {bad} (valid: {', '.join(chosen)})")
        chosen = {n: chosen[n] for n in names}

    peers, notes = find_peers(args)
    if "make" in tools and not shutil.which("make"):
        notes.append("make: skipped, not on PATH")
    tools = [t for t in tools if t not in ("doit", "luigi") or t in peers]
    tools = [t for t in tools if t != "make" or shutil.which("make")]

    root = Path(tempfile.mkdtemp(prefix="ffbench-peers-", dir=args.dir))
    env = {k: v for k, v in child_env(root).items() if k not in ("MAKEFLAGS", "MFLAGS")}
    env["PYTHONPATH"] = ""  # set per project for Luigi's module
    times = {}
    try:
        projects = {}
        for name, (graph, sleep, allowed) in chosen.items():
            base = root / name
            write_project(base, name, graph, sleep)
            projects[name] = (base, len(graph), [t for t in tools if t in allowed])
        # Round 0 warms the page cache and creates the one fresh database; not counted.
        for round_ in range(args.repeat + 1):
            for name, (base, count, here) in projects.items():
                if round_ == 0 and count > 1:
                    continue
                cmds = commands(base, name, peers)
                order = list(here)
                random.shuffle(order)
                for tool in order:
                    tenv = dict(env, PYTHONPATH=str(base))
                    took = run_once(cmds[tool], tenv, base, count, f"{tool} on {name}")
                    if round_:
                        times.setdefault(name, {}).setdefault(tool, []).append(took)
        start = startup(env, root / next(iter(projects)), peers, args.startup_repeat) \
            if "featherflow" in tools else {}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report(times, {n: p[1] for n, p in projects.items()}, tools, start, notes, args)
    return 0


def report(times: dict, counts: dict, tools: list, start: dict, notes: list, args) -> None:
    """The table: per workload the median of each tool, Featherflow's ms per task over the
    fastest floor, and each tool's time as a multiple of Featherflow's."""
    shown = [t for t in TOOLS if t in tools and any(t in by_tool for by_tool in times.values())]
    print(f"peers.py: {args.repeat} runs of each tool and workload, cap {CAP}, medians; "
          f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    header = (["workload", "tasks"] + [f"{t} s" for t in shown] + ["floor", "featherflow ms/task over floor"]
              + [f"{t}/ff" for t in shown if t != "featherflow"])
    print("| " + " | ".join(header) + " |")
    print("| --- " * len(header) + "|")
    for name, by_tool in times.items():
        med = {t: statistics.median(v) for t, v in by_tool.items()}
        floors = [t for t in FLOORS if t in med]
        floor = min(floors, key=lambda t: med[t]) if floors else None
        ff = med.get("featherflow")
        over = f"{(ff - med[floor]) * 1000 / counts[name]:.2f}" if ff and floor else "-"
        cells = [f"{med[t]:.3f}" if t in med else "-" for t in shown]
        ratios = [f"{med[t] / ff:.2f}" if ff and t in med else "-" for t in shown if t != "featherflow"]
        print(f"| {name} | {counts[name]} | " + " | ".join(cells) + f" | {floor or '-'} | {over} | "
              + " | ".join(ratios) + " |")
    if start:
        print()
        print("| start-up | median ms |")
        print("| --- | --- |")
        for k, ms in start.items():
            print(f"| `{k}` | {ms:.1f} |")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    sys.exit(main())
