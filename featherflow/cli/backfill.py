"""The `backfill` command: start one (and drive it in the foreground), list, show, cancel, resume.

Only parses, calls scheduler/backfill.py (and backfill_driver.py) and prints; main.py builds the parser and
handles errors. One command with an action word, because `backfill SCHEDULE ...`
and `backfill list` share a place on the command line.
"""

import json
import sys

from featherflow import errors
from featherflow.cli.common import command, positive

ACTIONS = ("list", "show", "cancel", "resume")


def cmd_backfill(app, args) -> int:
    what, rest = args.what, args.rest
    if what in ACTIONS:
        given = [name for name, value in (("--from", args.start), ("--to", args.end), ("--flow", args.flow),
                                          ("--cron", args.cron), ("--tz", args.tz), ("--dry-run", args.dry_run),
                                          ("--reverse", args.reverse), ("--reprocess", args.reprocess != "none"),
                                          ("--max-runs", args.max_runs != 1)) if value]
        if given:
            raise errors.UsageError(f"`backfill {what}` takes no {', '.join(given)} (they go with "
                                    "`backfill SCHEDULE --from WHEN --to WHEN`)")
        if what == "list":
            if rest:
                raise errors.UsageError(f"`backfill list` takes no argument (got {rest!r})")
            return _list(app, args)
        if not rest or not rest.isdigit() or int(rest) < 1:
            raise errors.UsageError(f"`backfill {what}` needs a backfill ID, a whole number >= 1 "
                                    "(see `featherflow backfill list`)")
        return {"show": _show, "cancel": _cancel, "resume": _resume}[what](app, args, int(rest))
    if rest:
        raise errors.UsageError(f"unexpected {rest!r} after the schedule name (valid: `backfill SCHEDULE "
                                "--from WHEN --to WHEN`, or an action: list, show ID, cancel ID, resume ID)")
    return _start(app, args)


def _start(app, args) -> int:
    from featherflow import clock  # lazy: not for --help
    from featherflow.scheduler import admin, backfill  # lazy: peewee

    req = backfill.Request(schedule=args.what, flow=args.flow, cron=args.cron, tz=args.tz, start=args.start,
                           end=args.end, reprocess=args.reprocess, max_runs=args.max_runs, reverse=args.reverse)
    made = backfill.create(app.config, app.store, req, clock.now(), dry_run=args.dry_run)
    s = made.schedule
    if args.dry_run:
        print(f"dry run: backfill of schedule {s.name} (flow {s.flow_name}, '{s.cron}' in {s.tz}): "
              f"{len(made.planned)} slot(s); nothing recorded")
        for p in made.planned:
            print(f"  {admin.in_zone(p.slot_at, s.tz):<24} {p.action:<7} {p.reason or 'a new run'}")
        return 0
    b = made.backfill
    print(f"backfill {b.id} of schedule {s.name}" + (" (made for --flow/--cron, disabled)" if made.implicit else "")
          + f": {len(made.planned)} slot(s) from {admin.in_zone(b.range_from, s.tz)} to "
          f"{admin.in_zone(b.range_to, s.tz)}, {backfill.progress_text(b.counts)}")
    return _drive(app, b.id)


def _drive(app, backfill_id: int) -> int:
    from featherflow import config  # lazy: not for --help
    from featherflow.scheduler import backfill, backfill_driver  # lazy: peewee

    driver = backfill_driver.Driver(app.config, app.store, fault=config.scheduler_env()["fault"])
    try:
        b = backfill_driver.drive(app.config, app.store, backfill_id, on_line=lambda line: print(line, flush=True),
                           driver=driver)
    except KeyboardInterrupt:
        print(f"stopped driving backfill {backfill_id}; it is still running: the scheduler daemon continues it, "
              f"or `featherflow backfill resume {backfill_id}`", file=sys.stderr)
        return 130
    print(f"backfill {b.id} {b.state}: {backfill.progress_text(b.counts)}")
    return {"success": errors.EXIT_OK, "cancelled": errors.EXIT_CANCELLED}.get(b.state, errors.EXIT_FAILED)


def _list(app, args) -> int:
    from featherflow.scheduler import admin, backfill  # lazy: peewee

    found = app.store.backfills.list()
    if args.json:
        print(json.dumps([backfill.as_json(app.store, b) for b in found], indent=2, ensure_ascii=False))
        return 0
    if not found:
        print("no backfills yet (start one with `featherflow backfill SCHEDULE --from DATE --to DATE`)")
        return 0
    print(f"{'ID':>4}  {'SCHEDULE':<18} {'STATE':<10} {'FROM':<24} {'TO':<24} PROGRESS")
    for b in found:
        s = app.store.schedules.get_schedule(b.schedule_id)
        print(f"{b.id:>4}  {s.name[:18]:<18} {b.state:<10} {admin.in_zone(b.range_from, s.tz):<24} "
              f"{admin.in_zone(b.range_to, s.tz):<24} {backfill.progress_text(b.counts)}")
    return 0


def _show(app, args, backfill_id: int) -> int:
    from featherflow.scheduler import admin, backfill  # lazy: peewee

    b = app.store.backfills.get(backfill_id)
    if args.json:
        print(json.dumps(backfill.as_json(app.store, b, with_slots=True), indent=2, ensure_ascii=False))
        return 0
    s = app.store.schedules.get_schedule(b.schedule_id)
    print(f"backfill {b.id}  schedule {s.name}  flow {s.flow_name}  {b.state}" + (f" ({b.reason})" if b.reason else ""))
    print(f"  range      {admin.in_zone(b.range_from, s.tz)} to {admin.in_zone(b.range_to, s.tz)}  ('{s.cron}')")
    print(f"  options    --reprocess {b.reprocess} --max-runs {b.max_runs}" + (" --reverse" if b.reverse else ""))
    print(f"  progress   {backfill.progress_text(b.counts)}")
    print("")
    print(f"  {'SLOT':<24} {'ACTION':<7} {'STATE':<9} {'RUN':<18} REASON")
    for slot in app.store.backfills.slots(b.id):
        run = f"{slot.run_id} {slot.run_state or 'deleted'}" if slot.run_id else "-"
        state = slot.outcome if slot.state == "done" else slot.state
        print(f"  {admin.in_zone(slot.slot_at, s.tz):<24} {slot.action:<7} {state:<9} {run:<18} "
              f"{slot.reason or ''}".rstrip())
    return 0


def _cancel(app, args, backfill_id: int) -> int:
    from featherflow import clock  # lazy: not for --help
    from featherflow.scheduler import backfill  # lazy: peewee

    b = backfill.cancel(app.store, backfill_id, clock.now())
    running = b.counts.get("launched", 0)
    print(f"backfill {b.id} cancelled: no new run starts" + (
        f"; {running} run(s) already started go on (stop one with `featherflow runs cancel RUN`)" if running else ""))
    return 0


def _resume(app, args, backfill_id: int) -> int:
    b = app.store.backfills.get(backfill_id)
    from featherflow.scheduler import backfill  # lazy: peewee

    print(f"backfill {b.id}: {backfill.progress_text(b.counts)}")
    return _drive(app, backfill_id)


def cmd_backfill_resume_run(app, args) -> int:
    """Hidden: how a backfill resumes (or, with --all, re-runs) the run of a slot."""
    from featherflow.engine import launch, resume  # lazy: peewee

    prepared = resume.start_backfill_resume(app.config, app.store, args.run_id, args.resumes, every=args.all)
    launch.exec_logged(app.store, prepared)
    return errors.EXIT_FAILED  # not reached: exec replaced this process


def add_commands(sub) -> None:
    p = command("backfill", cmd_backfill,
                "fill a schedule's slots over a date range (and: list, show ID, cancel ID, resume ID)", sub)
    p.description = (
        "Fill the slots of a schedule from --from to --to (both included), each run with its own slot time, "
        "at most --max-runs at a time, oldest first; it runs in the foreground (Ctrl-C leaves it resumable) "
        "and the scheduler daemon continues an unfinished one. `backfill list`, `backfill show ID`, "
        "`backfill cancel ID` and `backfill resume ID` manage them. WHEN is YYYY-MM-DD or "
        "YYYY-MM-DDTHH:MM[:SS] in the schedule's time zone (or with Z / +HH:MM).")
    p.add_argument("what", metavar="SCHEDULE|ACTION", nargs="?",
                   help="the schedule to backfill, or list, show, cancel, resume")
    p.add_argument("rest", metavar="ID", nargs="?", help="the backfill (show, cancel, resume)")
    p.add_argument("--from", dest="start", metavar="WHEN", help="first time of the range (a date: from its 00:00)")
    p.add_argument("--to", dest="end", metavar="WHEN", help="last time of the range, included (a date: all of it)")
    p.add_argument("--reprocess", choices=("none", "failed", "all"), default="none",
                   help="slots that have a run: leave them (none, default), resume failed/interrupted ones "
                        "(failed), or run every task of every one again (all)")
    p.add_argument("--max-runs", type=positive, default=1, metavar="N", help="runs at a time (default: 1)")
    p.add_argument("--reverse", action="store_true", help="newest slot first")
    p.add_argument("--dry-run", action="store_true", help="list the slots and what would happen to each")
    p.add_argument("--flow", metavar="FLOW", help="backfill a flow without a schedule (with --cron)")
    p.add_argument("--cron", metavar="EXPR", help="its cron expression (with --flow)")
    p.add_argument("--tz", metavar="ZONE", help="its time zone (with --flow; default: the machine's)")
    p.add_argument("--json", action="store_true", help="list/show: print JSON")
    p = command("_backfill-resume", cmd_backfill_resume_run, "", sub, hidden=True)
    p.add_argument("run_id", type=positive)
    p.add_argument("--resumes", type=int, required=True)
    p.add_argument("--all", action="store_true")
