"""Runs: `run` (start or resume one now) and `runs` (list, show, logs, resume, cancel, prune).

Each command parses, calls the engine or the store, prints through format.py.
Commands that read runs first mark orphaned ones interrupted (common.reconciled),
so the history never shows a dead run as running. What loads peewee or the store is
imported inside the commands (`# lazy:`, see common.py).
"""

import json
import sys
import time

from featherflow import errors, logcap, proc, states
from featherflow.cli.common import command, for_terminal, group, positive, reading, reconciled


def cmd_run(app, args) -> int:
    from featherflow import flow as flowmod  # lazy: not for --help
    from featherflow.engine import launch, reconcile  # lazy: peewee

    if args.resume:
        if args.params:
            raise errors.UsageError("--resume runs with the params the run started with; drop --params")
        name = flowmod.check_flow_name(args.flow)
        reconcile.reconcile(app.store)
        run = app.store.runs.latest_run(name, states.RESUMABLE)
        if run is None:
            raise errors.ConflictError(f"flow {name!r} has no failed or interrupted run to resume")
        return _resume(app, run.id, args)
    reconcile.reconcile(app.store)
    prepared = launch.prepare(app.config, app.store, args.flow, launch.parse_params(args.params),
                              args.max_parallel, args.dry_run, args.keep_tmp)
    if args.dry_run:
        print(prepared.script_path)
        return 0
    launch.exec_script(app.store, prepared)
    return errors.EXIT_FAILED  # not reached: exec replaced this process


def _resume(app, run_id, args) -> int:
    from featherflow.engine import launch, resume  # lazy: peewee

    plan = resume.plan_resume(app.store, run_id, force=args.force, from_task=args.from_task)
    print(f"resuming run {run_id} of {plan.run.flow_name} with {plan.definition}")
    print(f"  keep:   {', '.join(plan.keep) or '-'}")
    print(f"  re-run: {', '.join(plan.rerun) or '- (every task succeeded: the run is recorded as a success)'}")
    if args.dry_run:
        return 0
    prepared = resume.start_resume(app.config, app.store, plan, keep_tmp=args.keep_tmp)
    launch.exec_script(app.store, prepared)
    return errors.EXIT_FAILED


def cmd_runs_list(app, args) -> int:
    from featherflow import clock, report  # lazy: not for --help
    from featherflow.cli import format as views  # lazy: not for --help

    since = None
    if args.since:
        try:
            since = views.parse_since(args.since, clock.now())
        except ValueError as exc:
            raise errors.UsageError(f"--since: {exc}") from None
    from featherflow.store import quick  # lazy: not for --help

    # The common case without peewee (quick.py says when); else the usual store.
    listed = quick.list_runs(app.config.db_path, app.config.config_dir, flow=args.flow, state=args.state,
                             since=since, limit=args.limit, trigger=args.trigger)
    if listed is None:
        store = reading(app)
        runs = store.runs.list_runs(flow=args.flow, state=args.state, since=since, limit=args.limit,
                                    trigger=args.trigger)
        listed = runs, None if runs else store.runs.run_count()
    runs, total = listed
    now = clock.now()
    if args.json:
        print(json.dumps([report.run_json(r, now) for r in runs], indent=2, ensure_ascii=False))
    elif not runs:
        filters = [("--flow", args.flow), ("--state", args.state), ("--since", args.since),
                   ("--trigger", args.trigger)]
        print(views.no_runs([(k, v) for k, v in filters if v], total))
    else:
        print("\n".join(views.runs_table(runs, now)))
    return 0


def _run_and_attempts(app, run_id: int):
    """What `runs show` and `runs logs` read: the store, the run, its attempts, and its tasks in
    dependency order."""
    from featherflow import flow as flowmod  # lazy: not for --help

    store = reading(app)
    run = store.runs.get_run(run_id)
    attempts = store.runs.attempts(run.id)
    return store, run, attempts, flowmod.task_order(run.snapshot)


def cmd_runs_show(app, args) -> int:
    from featherflow import clock, paths, report  # lazy: not for --help
    from featherflow.cli import format as views  # lazy: not for --help

    from featherflow.rules import task_rules  # lazy: not for --help

    _, run, attempts, order = _run_and_attempts(app, args.run_id)
    rules = task_rules(run.snapshot)
    now = clock.now()
    if args.json:
        print(json.dumps(report.run_document(run, order, attempts, now, rules), indent=2, ensure_ascii=False))
        return 0
    order += sorted({a.task_id for a in attempts} - set(order))
    log_of = lambda task_id, n: paths.log_path(run, task_id, n)  # noqa: E731
    print("\n".join(views.run_detail(run, order, attempts, log_of, now, rules)))
    return 0


def cmd_runs_logs(app, args) -> int:
    from featherflow import paths  # lazy: not for --help

    store, run, attempts, order = _run_and_attempts(app, args.run_id)
    if args.task is not None and args.task not in {a.task_id for a in attempts}:
        raise errors.UsageError(f"run {run.id} has no task {args.task!r} (tasks: {', '.join(order)})")
    if args.follow and args.task is None:
        raise errors.UsageError("--follow needs a TASK (featherflow runs logs RUN_ID TASK --follow)")
    tasks = [args.task] if args.task else [t for t in order if any(a.task_id == t for a in attempts)]
    for task_id in tasks:
        mine = [a for a in attempts if a.task_id == task_id]
        if args.attempt is not None:
            chosen = [a for a in mine if a.attempt == args.attempt]
            if not chosen:
                raise errors.UsageError(
                    f"task {task_id!r} of run {run.id} has no attempt {args.attempt} "
                    f"(attempts: {', '.join(str(a.attempt) for a in mine)})")
        else:
            chosen = mine[-1:]
        attempt = chosen[0]
        path = paths.log_path(run, task_id, attempt.attempt)
        if len(tasks) > 1:
            print(f"==> {task_id} (attempt {attempt.attempt}, {attempt.state}) {path} <==")
        if args.follow:
            return _follow(store, run, attempt, path)
        try:  # a capped log whose attempt still runs has a hole: one line says what was cut
            sys.stdout.write(for_terminal(logcap.read(str(path)).decode("utf-8", "replace")))
        except FileNotFoundError:
            print(f"(no log: attempt {attempt.attempt} is {attempt.state})")
        sys.stdout.flush()
    return 0


def _follow(store, run, attempt, path) -> int:
    """Print the log as it grows until the attempt ends (or its run does: a task
    that never started, or a run whose process died, would never end it)."""
    from featherflow.engine import reconcile  # lazy: peewee

    import codecs  # lazy: only --follow decodes piece by piece

    position, decoder = 0, codecs.getincrementaldecoder("utf-8")("replace")
    while True:
        current = store.runs.get_run(run.id)
        if (current.state in (states.QUEUED, states.RUNNING)
                and not proc.is_alive(current.pid, current.pid_start, current.boot_id)):
            reconcile.reconcile(store)
            current = store.runs.get_run(run.id)
        state = next(a.state for a in store.runs.attempts(run.id)
                     if a.task_id == attempt.task_id and a.attempt == attempt.attempt)
        over = state in states.ATTEMPT_FINISHED or current.state in states.RUN_FINISHED
        try:  # a capped log: the hole is skipped, and a compacted one read from its new end
            data, position = logcap.read_from(str(path), position)
            chunk = decoder.decode(data)
        except FileNotFoundError:
            chunk = ""
        if chunk:
            sys.stdout.write(for_terminal(chunk))
            sys.stdout.flush()
        if over and not chunk:
            return 0
        if not chunk:
            time.sleep(0.25)


def cmd_runs_resume(app, args) -> int:
    reconciled(app)
    return _resume(app, args.run_id, args)


def cmd_runs_cancel(app, args) -> int:
    from featherflow.engine import reconcile  # lazy: peewee

    reconciled(app)
    state = reconcile.cancel(app.store, args.run_id)
    print(f"run {args.run_id}: {state}")
    return 0 if state == "cancelled" else errors.EXIT_CONFLICT


def cmd_runs_prune(app, args) -> int:
    from featherflow import clock, text  # lazy: not for --help
    from featherflow.cli import format as views  # lazy: not for --help
    from featherflow.store import retention  # lazy: not for --help

    try:
        older = views.parse_age(args.older_than) if args.older_than else None
    except ValueError as exc:
        raise errors.UsageError(f"--older-than: {exc}") from None
    if args.keep_last is not None and args.keep_last < 0:
        raise errors.UsageError(f"--keep-last must be a whole number >= 0, not {args.keep_last}")
    if older is None and args.keep_last is None:
        older = views.parse_age("30d")
    now = clock.now()
    report = retention.prune(reconciled(app), app.config.db_path, now, older, args.keep_last,
                             args.flow, args.dry_run, output_dir=app.config.output_dir)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(report.runs)} run(s), {report.attempts} attempt(s), "
          f"{text.size(report.files_bytes)} of scripts and logs")
    if report.orphan_dirs:
        print(f"removed {len(report.orphan_dirs)} leftover run dir(s) of runs no longer in the database")
    if not args.dry_run:
        print(f"database: {text.size(report.db_bytes_before)} -> {text.size(report.db_bytes_after)}")
    return 0


# -- parser -----------------------------------------------------------------

RUN_ID_HELP = "the run's id (see `featherflow runs list`)"


def add_commands(sub) -> None:
    """`run` and `runs ...`, under `sub`."""
    p = command("run", cmd_run, "run a flow now; exit 0 if it succeeded, 1 if it failed, 5 if cancelled", sub)
    p.add_argument("flow", metavar="FLOW", help="flow name")
    p.add_argument("--params", metavar="JSON|FILE",
                   help="params as a JSON object, or a file holding one; a flow with a 'params' block takes "
                        "only the names it declares, a flow without one takes any")
    p.add_argument("--dry-run", action="store_true", help="write the script and print its path; run nothing")
    p.add_argument("--max-parallel", type=positive, metavar="N",
                   help="tasks at once (default: the flow's max_parallel, else the number of CPUs)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the run's TMP_DIR after it ends")
    p.add_argument("--resume", action="store_true",
                   help="resume this flow's latest failed or interrupted run instead of starting one")
    p.add_argument("--force", action="store_true", help="with --resume: proceed even if the flow file changed")
    p.add_argument("--from", dest="from_task", metavar="TASK",
                   help="with --resume: re-run TASK and everything downstream even if they succeeded")
    _add_history(group(sub, "runs", "history: list, show, logs, resume, cancel, prune",
                       "The history of runs, kept in the database."))


def _add_history(runs_sub) -> None:
    p = command("list", cmd_runs_list, "list runs, newest first", runs_sub)
    p.add_argument("--flow", metavar="FLOW", help="only this flow")
    p.add_argument("--state", choices=states.RUN_STATES, help="only runs in this state")
    p.add_argument("--trigger", choices=states.TRIGGERS, help="only runs started this way (manual, schedule, backfill)")
    p.add_argument("--since", metavar="WHEN", help="only runs created since: an age (2h, 7d) or a local time (2026-11-01 03:00)")
    p.add_argument("--limit", type=positive, default=20, metavar="N", help="at most N runs (default: 20)")
    p.add_argument("--json", action="store_true", help="print JSON (stable; see the README)")

    p = command("show", cmd_runs_show, "show a run and every task attempt", runs_sub)
    p.add_argument("run_id", type=positive, metavar="RUN_ID", help=RUN_ID_HELP)
    p.add_argument("--json", action="store_true", help="print JSON (stable; see the README)")

    p = command("logs", cmd_runs_logs, "print a task's log (the latest attempt; all tasks if none named)", runs_sub)
    p.add_argument("run_id", type=positive, metavar="RUN_ID", help=RUN_ID_HELP)
    p.add_argument("task", nargs="?", metavar="TASK", help="task id")
    p.add_argument("--attempt", type=positive, metavar="N", help="this attempt instead of the latest")
    p.add_argument("--follow", action="store_true", help="keep printing while the attempt runs")

    p = command("resume", cmd_runs_resume, "run a failed or interrupted run again, keeping what succeeded", runs_sub)
    p.add_argument("run_id", type=positive, metavar="RUN_ID", help=RUN_ID_HELP)
    p.add_argument("--dry-run", action="store_true", help="show which tasks are kept and which re-run; run nothing")
    p.add_argument("--force", action="store_true", help="resume even if the flow file changed since (uses the current file)")
    p.add_argument("--from", dest="from_task", metavar="TASK",
                   help="re-run TASK and everything downstream even if they succeeded")
    p.add_argument("--keep-tmp", action="store_true", help="keep the run's TMP_DIR after it ends")

    p = command("cancel", cmd_runs_cancel, "stop a running run (all its tasks); it ends cancelled", runs_sub)
    p.add_argument("run_id", type=positive, metavar="RUN_ID", help=RUN_ID_HELP)

    p = command("prune", cmd_runs_prune, "delete old finished runs with their logs and scripts", runs_sub)
    p.add_argument("--older-than", metavar="AGE", help="runs that ended longer ago than AGE, e.g. 30d, 12h (default: 30d)")
    p.add_argument("--keep-last", type=int, metavar="N", help="always keep the newest N runs of each flow")
    p.add_argument("--flow", metavar="FLOW", help="only runs of this flow")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
