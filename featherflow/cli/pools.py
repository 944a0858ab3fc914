"""The `pool` commands: set, list, remove. They parse, call the store's pools, and print."""

import json
from typing import List

from featherflow.cli.common import command, for_terminal, group, reading


def _slots(value: str):
    """SLOTS as given: a whole number, checked by the store (one `error:` line for 0 or -1 too)."""
    try:
        return int(value)
    except ValueError:
        return value


def cmd_set(app, args) -> int:
    from featherflow import clock  # lazy: not for --help

    pool = app.store.pools.set_pool(args.name, _slots(args.slots), clock.now())
    print(f"pool {pool.name}: {pool.slots} slot{'s' if pool.slots != 1 else ''} "
          "(runs that start from now on use it)")
    return 0


def cmd_list(app, args) -> int:

    views = reading(app).pools.overview()
    if args.json:
        print(json.dumps([view_json(v) for v in views], indent=2, ensure_ascii=False))
    else:
        print("\n".join(table(views)))
    return 0


def cmd_remove(app, args) -> int:
    pool = app.store.pools.remove_pool(args.name)
    print(f"removed pool {pool.name} (runs that start from now on give its tasks 1 slot)")
    return 0


def _use_json(use) -> dict:
    from featherflow import clock  # lazy: not for --help

    return {"run_id": use.run_id, "flow": use.flow_name, "task_id": use.task_id, "attempt": use.attempt,
            "since": clock.iso(use.since)}


def view_json(view) -> dict:
    return {"name": view.pool.name, "slots": view.pool.slots, "defined": view.pool.defined,
            "in_use": len(view.running), "waiting": len(view.waiting),
            "holders": [_use_json(u) for u in view.running], "waiters": [_use_json(u) for u in view.waiting]}


def table(views) -> List[str]:
    if not views:
        return ["no pools (a task names one with \"pool\": NAME; `featherflow pool set NAME SLOTS` sizes it)"]
    lines = [f"{'POOL':<20} {'SLOTS':>5} {'IN USE':>6} {'WAITING':>7}  BY"]
    for v in views:
        slots = f"{v.pool.slots}" + ("" if v.pool.defined else "*")
        by = [f"run {u.run_id} {u.task_id}" for u in v.running]
        by += [f"run {u.run_id} {u.task_id} (waiting)" for u in v.waiting]
        lines.append(for_terminal(f"{v.pool.name:<20} {slots:>5} {len(v.running):>6} {len(v.waiting):>7}  "
                                  f"{', '.join(by)}".rstrip()))
    if any(not v.pool.defined for v in views):
        lines.append("* not defined: 1 slot (`featherflow pool set NAME SLOTS`)")
    return lines


def add_commands(sub) -> None:
    """The `pool` group, under `sub`."""
    pool = group(sub, "pool", "pools: limits on how many tasks run at once across runs",
                 "A task (or a flow, for all its tasks) names a pool with \"pool\": NAME; at most SLOTS "
                 "tasks of a pool run at once across every run of the database. A pool that is not "
                 "defined has 1 slot.")
    p = command("set", cmd_set, "define a pool or change its slots (runs that start later use it)", pool)
    p.add_argument("name", metavar="NAME", help="pool name (1-64 of A-Z a-z 0-9 _ . -)")
    p.add_argument("slots", metavar="SLOTS", help="how many of its tasks may run at once (1-1000)")
    p = command("list", cmd_list, "pools: slots, in use, waiting, by which runs and tasks", pool)
    p.add_argument("--json", action="store_true", help="JSON output")
    p = command("remove", cmd_remove, "remove a pool (its tasks get 1 slot in runs that start later)", pool)
    p.add_argument("name", metavar="NAME")
