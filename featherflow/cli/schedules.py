"""The `schedule` and `scheduler` commands of the CLI (and the hidden `_start-run`).

These only parse, call schedule_admin / scheduler, and print; main.py builds the
parser and handles errors for every command. The scheduler and the engine load
peewee: each command imports what it calls inside (see common.py).
"""

import json
import sys

from featherflow import errors
from featherflow.cli.admin import cmd_dashboard
from featherflow.cli.common import command, group, positive, reconciled, seconds


def cmd_schedule_add(app, args) -> int:
    from featherflow import clock  # lazy: not for --help
    from featherflow.engine import launch  # lazy: peewee
    from featherflow.scheduler import admin as schedule_admin  # lazy: peewee
    from featherflow.scheduler import control  # lazy: peewee

    s = schedule_admin.add_schedule(
        app.config, app.store, args.flow, cron=args.cron, interval=args.interval, at=args.at, tz=args.tz, name=args.name,
        params=launch.parse_params(args.params), catchup=args.catchup, overlap=args.overlap,
        on_interrupt=args.on_interrupt, description=args.description, enabled=not args.disabled)
    print(f"added schedule {s.name}: flow {s.flow_name}, cron '{s.cron}' in {s.tz}"
          + ("" if s.enabled else " (disabled)"))
    if s.enabled:
        print(f"next: {schedule_admin.in_zone(control.next_fire(app.store, s, clock.now()), s.tz)}")
    return 0


def cmd_schedule_list(app, args) -> int:
    from featherflow import clock  # lazy: not for --help
    from featherflow.scheduler import admin as schedule_admin  # lazy: peewee

    now = clock.now()
    if args.json:
        print(json.dumps([schedule_admin.schedule_json(app.store, s, now) for s in app.store.schedules.list_schedules()],
                         indent=2, ensure_ascii=False))
    elif not app.store.schedules.list_schedules():
        print("no schedules yet (add one with `featherflow schedule add FLOW --interval daily`)")
    else:
        print("\n".join(schedule_admin.schedules_table(app.store, now)))
    return 0


def cmd_schedule_show(app, args) -> int:
    from featherflow import clock  # lazy: not for --help
    from featherflow.scheduler import admin as schedule_admin  # lazy: peewee

    store, now = reconciled(app), clock.now()
    s = store.schedules.get_schedule(args.name)
    if args.json:
        print(json.dumps(schedule_admin.schedule_json(store, s, now, args.limit), indent=2, ensure_ascii=False))
    else:
        print("\n".join(schedule_admin.schedule_detail(store, s, now, args.limit)))
    return 0


def cmd_schedule_remove(app, args) -> int:
    from featherflow.scheduler import control  # lazy: peewee

    s = app.store.schedules.remove_schedule(args.name)
    control.notify(app.store)  # the daemon sees it at once
    print(f"removed schedule {s.name} and its slots (its runs stay in the history)")
    return 0


def cmd_schedule_enable(app, args) -> int:
    from featherflow.scheduler import control  # lazy: peewee

    s = app.store.schedules.set_schedule_enabled(args.name, True)
    control.notify(app.store)  # the daemon sees it at once
    print(f"schedule {s.name} enabled (slots from now on; none missed while it was disabled)")
    return 0


def cmd_schedule_disable(app, args) -> int:
    from featherflow.scheduler import control  # lazy: peewee

    s = app.store.schedules.set_schedule_enabled(args.name, False)
    control.notify(app.store)  # the daemon sees it at once
    print(f"schedule {s.name} disabled")
    return 0


def cmd_scheduler_start(app, args) -> int:
    from featherflow import config  # lazy: not for --help
    from featherflow.scheduler import import_daemon  # lazy: peewee

    control, scheduler = import_daemon()  # before app.store: the daemon's memory

    fault = config.scheduler_env()["fault"]
    scheduler.check_root(args.allow_root)
    scheduler.configure_logging(args.log_level)
    if args.foreground:
        return scheduler.Scheduler(app.config, app.store, args.check_interval, args.allow_root, fault).serve()
    pid = control.start_background(app.config, args.check_interval, args.allow_root, fault, args.log_level)
    print(f"scheduler started (pid {pid}); log: {app.config.log_dir / scheduler.LOG_NAME}")
    return 0


def cmd_scheduler_stop(app, args) -> int:
    from featherflow.scheduler import control  # lazy: peewee

    pid = control.stop(app.store)
    print(f"scheduler stopped (pid {pid})" if pid else "scheduler is not running")
    return 0


def cmd_scheduler_status(app, args) -> int:
    from featherflow import clock, text  # lazy: not for --help

    if args.interactive:  # the original tool's entry point to the dashboard
        args.flow = None
        return cmd_dashboard(app, args)
    from featherflow.scheduler import admin as schedule_admin  # lazy: peewee
    from featherflow.scheduler import control  # lazy: peewee
    from featherflow.cli import format as views  # lazy: not for --help

    now = clock.now()
    st = control.status(reconciled(app), now)
    if st.running:
        print(f"scheduler: running, pid {st.row.pid}, up {views.human_seconds(views.elapsed(st.row.started_at, None, now))}, "
              f"last heartbeat {views.human_seconds(views.elapsed(st.row.heartbeat_at, None, now))} ago")
    elif st.row is not None:
        when = st.row.stopped_at or st.row.heartbeat_at
        print(f"scheduler: not running (pid {st.row.pid}, last seen {text.local(when)})")
    else:
        print("scheduler: not running (never started for this database)")
    print(f"schedules: {len(st.schedules) or 'none'}")
    for s, nxt in st.schedules:
        when = schedule_admin.in_zone(nxt, s.tz) if s.enabled else "disabled"
        print(f"  {s.name:<16} {s.flow_name:<14} {s.cron:<16} next {when}")
    print(f"queued or running runs: {len(st.runs) or 'none'}")
    for run in st.runs:
        print(f"  run {run.id} of {run.flow_name}: {run.state} ({run.trigger}"
              + (f", slot {text.local(run.scheduled_at)})" if run.scheduled_at else ")"))
    return 0 if st.running else errors.EXIT_FAILED


def cmd_scheduler_install(app, args) -> int:
    from featherflow import config  # lazy: not for --help
    from featherflow.scheduler import systemd  # lazy: peewee

    sudo_user = config.scheduler_env()["sudo_user"]
    path, text = systemd.install(app.config, system=not args.user, write=not args.print,
                                        sudo_user=sudo_user, allow_root=args.allow_root)
    if args.print:
        sys.stdout.write(text)
        if systemd.runs_as_root(sudo_user=sudo_user) and not args.allow_root:
            print("note: " + " ".join(systemd.ROOT_NOTE.split()), file=sys.stderr)
        return 0
    ctl = "systemctl --user" if args.user else "sudo systemctl"
    print(f"wrote {path}\nnext: {ctl} daemon-reload && {ctl} enable --now {systemd.UNIT_NAME}")
    if args.user:
        print("and, to start it at boot without logging in: sudo loginctl enable-linger $USER")
    return 0


def cmd_start_run(app, args) -> int:
    """Hidden: the scheduler's way to start a run it created (or resume one it was running)."""
    from featherflow.engine import launch, resume  # lazy: peewee

    if args.resume:
        prepared = resume.start_auto_resume(app.config, app.store, args.run_id)
    else:
        prepared = launch.start_queued(app.config, app.store, args.run_id, args.launcher)
    launch.exec_logged(app.store, prepared)
    return errors.EXIT_FAILED  # not reached: exec replaced this process


# -- parser -----------------------------------------------------------------

def add_commands(sub) -> None:
    """The `schedule`, `scheduler` and hidden `_start-run` commands, under `sub`."""
    _add_schedule(group(sub, "schedule", "schedules: add, list, show, remove, enable, disable",
                        "Schedules start flows at cron times; the scheduler daemon fires them."))
    _add_scheduler(group(sub, "scheduler", "the scheduler daemon: start, stop, status, install",
                         "The daemon that fires schedules; one per database."))
    p = command("_start-run", cmd_start_run, "", sub, hidden=True)  # how the scheduler starts a run
    p.add_argument("run_id", type=positive)
    p.add_argument("--launcher", type=int)
    p.add_argument("--resume", action="store_true")


def _add_schedule(schedule_sub) -> None:
    p = command("add", cmd_schedule_add, "schedule a flow: --interval [--at] or --cron, in a time zone", schedule_sub)
    p.description = ("Schedule a flow: --interval [--at] or --cron, in a time zone. A schedule is named after "
                     "its flow unless given --name, so a second schedule of the same flow needs its own --name "
                     "(the same name twice is refused, exit 3).")
    p.add_argument("flow", metavar="FLOW", help="flow name")
    p.add_argument("--interval", choices=("hourly", "daily", "weekly", "monthly"),
                   help="hourly (0 * * * *), daily (at --at, default 00:00), weekly (Sundays), monthly (the 1st)")
    p.add_argument("--at", metavar="HH:MM", help="time of day for daily/weekly/monthly; :MM for hourly")
    p.add_argument("--cron", metavar="EXPR", help="5 fields 'min hour dom month dow', or 6 with seconds last")
    p.add_argument("--tz", metavar="ZONE", help="IANA time zone, e.g. Europe/Berlin (default: the machine's)")
    p.add_argument("--name", metavar="NAME",
                   help="schedule name (default: the flow name; each further schedule of the flow needs "
                        "its own, e.g. --name etl-hourly)")
    p.add_argument("--params", metavar="JSON|FILE", help="params of every run, as a JSON object or a file holding one")
    p.add_argument("--catchup", choices=("none", "latest", "all"), default="latest",
                   help="slots missed while the scheduler was down: none, the latest (default), or all (max 100)")
    p.add_argument("--overlap", choices=("skip", "queue", "allow"), default="skip",
                   help="a slot due while a run of it is active: skip (default), queue, or allow")
    p.add_argument("--on-interrupt", choices=("resume", "leave"), default="resume",
                   help="a run killed by a crash or reboot: resume it once when the scheduler is back (default)")
    p.add_argument("--description", default="", metavar="TEXT", help="free text")
    p.add_argument("--disabled", action="store_true", help="add it disabled (enable it later)")
    p = command("list", cmd_schedule_list, "list schedules with their next fire time and last outcome", schedule_sub)
    p.add_argument("--json", action="store_true", help="print JSON (stable; see the README)")
    p = command("show", cmd_schedule_show, "a schedule and its recent slots: fired, waiting, skipped and why",
                schedule_sub)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--limit", type=positive, default=20, metavar="N", help="at most N slots (default: 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    for name, func, about in (("remove", cmd_schedule_remove, "delete a schedule and its slots (runs stay)"),
                             ("enable", cmd_schedule_enable, "enable a schedule (slots count from now)"),
                             ("disable", cmd_schedule_disable, "disable a schedule")):
        p = command(name, func, about, schedule_sub)
        p.add_argument("name", metavar="NAME")


def _add_scheduler(daemon_sub) -> None:
    p = command("start", cmd_scheduler_start, "start the daemon (detached, unless --foreground); exit 3 if it runs",
                daemon_sub)
    p.add_argument("--foreground", action="store_true", help="stay in the foreground, log to stderr (systemd)")
    p.add_argument("--check-interval", type=seconds, default=60.0, metavar="SECONDS",
                   help="longest sleep between looks at the database (default: 60)")
    p.add_argument("--allow-root", action="store_true", help="run even as root (every flow then runs as root)")
    command("stop", cmd_scheduler_stop, "stop the daemon and wait for it (running flows go on)", daemon_sub)
    p = command("status", cmd_scheduler_status, "pid, uptime, heartbeat, schedules, runs; exit 1 if not running",
                daemon_sub)
    p.add_argument("--interactive", action="store_true",
                   help="open the live dashboard instead (the same as `featherflow dashboard`)")
    p = command("install", cmd_scheduler_install,
                "write a systemd unit that starts the scheduler at boot (as you; as root only with --allow-root)",
                daemon_sub)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--system", action="store_true", help="/etc/systemd/system, User= you (default)")
    where.add_argument("--user", action="store_true", help="~/.config/systemd/user (needs loginctl enable-linger)")
    p.add_argument("--print", action="store_true", help="print the unit instead of writing it (any user, root too)")
    p.add_argument("--allow-root", action="store_true",
                   help="as root with no user behind sudo: a unit that runs the scheduler as root, "
                        "with --allow-root in its ExecStart (every flow then runs as root)")
