"""The `featherflow` command: argparse, one small function per command.

Each command parses, calls the library, prints. A FeatherflowError becomes one
`error:` line on stderr and its documented exit code (see errors.py and the
README); a traceback is shown only with `--log-level DEBUG`.
"""

import argparse
import json
import logging
import sys
from typing import List, Optional

from featherflow import __version__, errors, flow as flowmod, paths, text
from featherflow.errors import FeatherflowError

log = logging.getLogger(__name__)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_mark"]:  # the hot path: no argparse, no peewee
        from featherflow import mark

        return mark.main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse printed already
        return exc.code if isinstance(exc.code, int) else errors.EXIT_USAGE
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return errors.EXIT_USAGE
    from featherflow.api import Featherflow

    app = Featherflow(args.flows_dir, args.tasks_dir, args.output_dir, args.config_dir, args.db, args.log_dir)
    try:
        return args.func(app, args) or 0
    except FeatherflowError as exc:
        if args.log_level == "DEBUG":
            log.exception("error")
        for line in _error_lines(exc):
            print(f"error: {_text(line, sys.stderr)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return errors.EXIT_OK
    except Exception as exc:
        # A database error outside the paths that translate their own (locked past
        # the busy timeout, disk full, I/O error): one line, not a traceback.
        if not _is_database_error(exc):
            raise
        if args.log_level == "DEBUG":
            log.exception("error")
        # The advice depends on the fault: retry a lock, free space or remount a full or
        # read-only disk (nothing is damaged), restore a backup only for damage.
        print(f"error: {errors.database_error(app.config.db_path, exc)}", file=sys.stderr)
        return errors.EXIT_DATABASE
    finally:
        app.close()


def _is_database_error(exc: BaseException) -> bool:
    import sqlite3

    return isinstance(exc, sqlite3.Error) or (
        exc.__class__.__module__ == "peewee" and "Error" in exc.__class__.__name__)


def _error_lines(exc: FeatherflowError) -> List[str]:
    if isinstance(exc, errors.ValidationError):
        prefix = f"{exc.source}: " if exc.source else ""
        return [prefix + e for e in exc.errors]
    return [str(exc)]


# -- commands ---------------------------------------------------------------

def cmd_init(app, args) -> int:
    import os
    import shlex

    from featherflow import scaffold

    report = scaffold.init(args.directory)
    shown = lambda rel: rel if args.directory in (".", "./") else os.path.join(args.directory, rel)  # noqa: E731
    for rel in report.created:
        print(f"created {shown(rel)}")
    for rel in report.skipped:
        print(f"skipped {shown(rel)} (it exists; left unchanged)")
    if not report.created:
        print("nothing created: every file init writes already exists")
    cd = "" if args.directory in (".", "./") else f"cd {shlex.quote(args.directory)} && "
    print(f"next: {cd}featherflow validate && featherflow run {scaffold.SAMPLE_FLOW}")
    return 0


def cmd_list(app, args) -> int:
    infos = app.flow_infos()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    if not infos:
        print(f"no flows in {app.config.flows_dir}")
        return 0
    # Names, descriptions and errors come from flow files: escaped on a terminal, like task output.
    width = max(len(_text(i.name)) for i in infos)
    for info in infos:
        name = _text(info.name).ljust(width)
        if info.error:
            print(f"{name}  INVALID  {_text(info.error)}")
        else:
            tasks = f"{info.tasks} task{'s' if info.tasks != 1 else ''}"
            print(f"{name}  {tasks:>9}  {_text(info.description)}".rstrip())
    return 0


def cmd_validate(app, args) -> int:
    problems = app.validate(args.flows)
    bad = 0
    for name, errs in problems.items():
        if errs:
            bad += 1
            for e in errs:
                print(f"error: {_text(f'{name}: {e}', sys.stderr)}", file=sys.stderr)
        else:
            print(f"{name}: valid")
    return errors.EXIT_USAGE if bad else 0


def cmd_graph(app, args) -> int:
    from featherflow import graph

    flow = app.load_flow(args.flow)
    draw = {"text": graph.draw_text, "dot": graph.draw_dot, "mermaid": graph.draw_mermaid}[args.format]
    print(draw(flow.name, flow.edges))
    return 0


def cmd_run(app, args) -> int:
    from featherflow.engine import runner

    if args.resume:
        if args.params:
            raise errors.UsageError("--resume runs with the params the run started with; drop --params")
        from featherflow import flow as flowmod, states

        name = flowmod.check_flow_name(args.flow)
        runner.reconcile(app.store)
        run = app.store.latest_run(name, states.RESUMABLE)
        if run is None:
            raise errors.ConflictError(f"flow {name!r} has no failed or interrupted run to resume")
        return _resume(app, runner, run.id, args)
    runner.reconcile(app.store)
    prepared = runner.prepare(app, args.flow, runner.parse_params(args.params), args.max_parallel,
                              args.dry_run, args.keep_tmp)
    if args.dry_run:
        print(prepared.script_path)
        return 0
    runner.exec_script(app, prepared)
    return errors.EXIT_FAILED  # not reached: exec replaced this process


def _resume(app, runner, run_id, args) -> int:
    plan = runner.plan_resume(app, run_id, force=args.force, from_task=args.from_task)
    print(f"resuming run {run_id} of {plan.run.flow_name} with {plan.definition}")
    print(f"  keep:   {', '.join(plan.keep) or '-'}")
    print(f"  re-run: {', '.join(plan.rerun) or '- (every task succeeded: the run is recorded as a success)'}")
    if args.dry_run:
        return 0
    prepared = runner.start_resume(app, plan, keep_tmp=args.keep_tmp)
    runner.exec_script(app, prepared)
    return errors.EXIT_FAILED


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).replace(tzinfo=None)


def _reconciled(app):
    """Every command that reads runs first marks orphaned ones interrupted."""
    from featherflow.engine import runner

    for run_id, reason in runner.reconcile(app.store):
        print(f"note: run {run_id} is now interrupted: {reason}", file=sys.stderr)
    return app.store


def _reading(app):
    """The store for a command that only reads: reconciled as usual, or, on a read-only
    disk, read as it is (with a note: nothing can be marked interrupted there)."""
    store = app.read_store()
    if app.read_only:
        print(f"note: {app.config.db_path} is on a read-only filesystem: runs are shown as last recorded "
              "(a run whose process died is marked interrupted once it can be written)", file=sys.stderr)
        return store
    return _reconciled(app)


def _text(value: str, stream=None) -> str:
    """Text from files or tasks, for a terminal: control characters escaped, so no
    escape sequence acts. `stream` (default stdout) is where it is printed."""
    return text.escape(value) if (stream or sys.stdout).isatty() else value


def cmd_runs_list(app, args) -> int:
    from featherflow.cli import format as views

    since = None
    if args.since:
        try:
            since = views.parse_since(args.since, _now())
        except ValueError as exc:
            raise errors.UsageError(f"--since: {exc}") from None
    store = _reading(app)
    runs = store.list_runs(flow=args.flow, state=args.state, since=since, limit=args.limit)
    now = _now()
    if args.json:
        print(json.dumps([views.run_json(r, now) for r in runs], indent=2, ensure_ascii=False))
    elif not runs:
        filters = [("--flow", args.flow), ("--state", args.state), ("--since", args.since)]
        print(views.no_runs([(k, v) for k, v in filters if v], store.run_count()))
    else:
        print("\n".join(views.runs_table(runs, now)))
    return 0


def cmd_runs_show(app, args) -> int:
    from featherflow.engine import runner
    from featherflow.cli import format as views

    store = _reading(app)
    run = store.get_run(args.run_id)
    attempts = store.attempts(run.id)
    order = flowmod.task_order(run.snapshot)
    order += sorted({a.task_id for a in attempts} - set(order))
    now = _now()
    if args.json:
        data = views.run_json(run, now)
        data["tasks"] = [
            {"id": task_id,
             "state": ([a.state for a in attempts if a.task_id == task_id] or ["-"])[-1],
             "attempts": [views.attempt_json(a, str(paths.log_path(run, a.task_id, a.attempt)), now)
                          for a in attempts if a.task_id == task_id]}
            for task_id in order]
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    log_of = lambda task_id, n: paths.log_path(run, task_id, n)  # noqa: E731
    print("\n".join(views.run_detail(run, order, attempts, log_of, now)))
    return 0


def cmd_runs_logs(app, args) -> int:
    from featherflow.engine import runner
    from featherflow.cli import format as views

    store = _reading(app)
    run = store.get_run(args.run_id)
    attempts = store.attempts(run.id)
    order = flowmod.task_order(run.snapshot)
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
        try:
            with open(path, "r", errors="replace", newline="") as f:  # a task's \r stays \r
                sys.stdout.write(_text(f.read()))
        except FileNotFoundError:
            print(f"(no log: attempt {attempt.attempt} is {attempt.state})")
        sys.stdout.flush()
    return 0


def _follow(store, run, attempt, path) -> int:
    """Print the log as it grows until the attempt ends (or its run does: a task
    that never started, or a run whose process died, would never end it)."""
    import time

    from featherflow import proc, states
    from featherflow.engine import runner

    position = 0
    while True:
        current = store.get_run(run.id)
        if (current.state in (states.QUEUED, states.RUNNING)
                and not proc.is_alive(current.pid, current.pid_start, current.boot_id)):
            runner.reconcile(store)
            current = store.get_run(run.id)
        state = next(a.state for a in store.attempts(run.id)
                     if a.task_id == attempt.task_id and a.attempt == attempt.attempt)
        over = state in states.ATTEMPT_FINISHED or current.state in states.RUN_FINISHED
        try:
            with open(path, "r", errors="replace", newline="") as f:
                f.seek(position)
                chunk = f.read()
                position = f.tell()
        except FileNotFoundError:
            chunk = ""
        if chunk:
            sys.stdout.write(_text(chunk))
            sys.stdout.flush()
        if over and not chunk:
            return 0
        if not chunk:
            time.sleep(0.25)


def cmd_runs_resume(app, args) -> int:
    from featherflow.engine import runner

    _reconciled(app)
    return _resume(app, runner, args.run_id, args)


def cmd_runs_cancel(app, args) -> int:
    from featherflow.engine import runner

    _reconciled(app)
    state = runner.cancel(app, args.run_id)
    print(f"run {args.run_id}: {state}")
    return 0 if state == "cancelled" else errors.EXIT_CONFLICT


def cmd_runs_prune(app, args) -> int:
    from featherflow.store import retention
    from featherflow.cli import format as views

    try:
        older = views.parse_age(args.older_than) if args.older_than else None
    except ValueError as exc:
        raise errors.UsageError(f"--older-than: {exc}") from None
    if args.keep_last is not None and args.keep_last < 0:
        raise errors.UsageError(f"--keep-last must be a whole number >= 0, not {args.keep_last}")
    if older is None and args.keep_last is None:
        older = views.parse_age("30d")
    report = retention.prune(_reconciled(app), app.config.db_path, _now(), older, args.keep_last,
                             args.flow, args.dry_run, output_dir=app.config.output_dir)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(report.runs)} run(s), {report.attempts} attempt(s), "
          f"{text.size(report.files_bytes)} of scripts and logs")
    if report.orphan_dirs:
        print(f"removed {len(report.orphan_dirs)} leftover run dir(s) of runs no longer in the database")
    if not args.dry_run:
        print(f"database: {text.size(report.db_bytes_before)} -> {text.size(report.db_bytes_after)}")
    return 0


def cmd_dashboard(app, args) -> int:
    """Read only: never app.store (it would migrate) and no reconcile (it writes)."""
    from featherflow.dashboard import app as dashboard

    return dashboard.main(app.config.db_path, flow=args.flow)


def cmd_doctor(app, args) -> int:
    """Read only, like the dashboard: never app.store (it would create or migrate)."""
    from featherflow import doctor

    findings = doctor.diagnose(app.config, _now())
    bad = doctor.problems(findings)
    if args.json:
        print(json.dumps({"healthy": not bad, "problems": len(bad),
                          "findings": [f.as_dict() for f in findings]}, indent=2, ensure_ascii=False))
        return errors.EXIT_FAILED if bad else 0
    width = max(len(f.name) for f in findings)
    for f in findings:
        print(f"{f.status.upper() if f.status == doctor.PROBLEM else f.status:8} {f.name.ljust(width)}  {f.detail}")
        if f.fix and f.status != doctor.OK:
            print(f"{'':8} {'':{width}}  fix: {f.fix}")
    warnings = sum(f.status == doctor.WARNING for f in findings)
    print(f"{len(bad)} problem(s), {warnings} warning(s)" if bad or warnings else "healthy")
    return errors.EXIT_FAILED if bad else 0


def cmd_db_backup(app, args) -> int:
    from featherflow.store import backup

    report = backup.backup(app.config.db_path, args.path)
    print(f"backed up {report.source} to {report.path}: {report.runs} run(s), "
          f"{report.bytes / 1e6:.1f} MB, schema version {report.schema_version}, integrity_check {report.integrity}")
    return 0


# -- parser -----------------------------------------------------------------

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The same options before or after the command; after wins."""
    d = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("-f", "--flows-dir", default=d(None), metavar="DIR",
                        help="where flow JSON files are (default: ./flows)")
    parser.add_argument("-t", "--tasks-dir", default=d(None), metavar="DIR",
                        help="where task scripts are (default: ./tasks)")
    parser.add_argument("-o", "--output-dir", default=d(None), metavar="DIR",
                        help="scripts, logs and temp dirs of runs (default: ./featherflow_output)")
    parser.add_argument("-l", "--log-level", default=d("INFO"), type=str.upper, choices=LOG_LEVELS,
                        help="logging detail; DEBUG also shows tracebacks (default: INFO)")
    parser.add_argument("--log-dir", default=d(None), metavar="DIR",
                        help="where the scheduler writes its log (default: <config dir>/logs)")
    parser.add_argument("--config-dir", default=d(None), metavar="DIR",
                        help="database, scheduler lock and logs (default: $FEATHERFLOW_HOME or ~/.featherflow)")
    parser.add_argument("--db", default=d(None), metavar="PATH",
                        help="the SQLite database (default: $FEATHERFLOW_DB or <config dir>/featherflow.db)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    parser = argparse.ArgumentParser(
        prog="featherflow",
        description="An ultra-light workflow orchestrator: JSON flows run as bash scripts, "
                    "with every run recorded in one SQLite file.",
        epilog="Exit codes: 0 ok, 1 run failed / check failed, 2 invalid input, "
               "3 conflict with the current state, 4 database problem, 5 run cancelled or interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"featherflow {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name, func, help_text, parent=sub):
        p = parent.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = command("init", cmd_init, "create a project: flows/ with a sample flow, tasks/, a README (never overwrites)")
    p.add_argument("directory", nargs="?", default=".", metavar="DIR", help="the project folder (default: the current dir)")

    p = command("list", cmd_list, "list the flows in the flows dir (a broken file shows its first error)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command("validate", cmd_validate, "check flow files and print every problem (all flows if none named)")
    p.add_argument("flows", nargs="*", metavar="FLOW", help="flow names (files <flows-dir>/<FLOW>.json)")

    p = command("graph", cmd_graph, "draw a flow's task graph")
    p.add_argument("flow", metavar="FLOW", help="flow name")
    p.add_argument("--format", choices=("text", "dot", "mermaid"), default="text",
                   help="text for the terminal (default), dot for Graphviz, mermaid for Markdown")

    p = command("run", cmd_run, "run a flow now; exit 0 if it succeeded, 1 if it failed, 5 if cancelled")
    p.add_argument("flow", metavar="FLOW", help="flow name")
    p.add_argument("--params", metavar="JSON|FILE",
                   help="params as a JSON object, or a file holding one; a flow with a 'params' block takes "
                        "only the names it declares, a flow without one takes any")
    p.add_argument("--dry-run", action="store_true", help="write the script and print its path; run nothing")
    p.add_argument("--max-parallel", type=_positive, metavar="N",
                   help="tasks at once (default: the flow's max_parallel, else the number of CPUs)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the run's TMP_DIR after it ends")
    p.add_argument("--resume", action="store_true",
                   help="resume this flow's latest failed or interrupted run instead of starting one")
    p.add_argument("--force", action="store_true", help="with --resume: proceed even if the flow file changed")
    p.add_argument("--from", dest="from_task", metavar="TASK",
                   help="with --resume: re-run TASK and everything downstream even if they succeeded")
    runs = sub.add_parser("runs", help="history: list, show, logs, resume, cancel, prune",
                          description="The history of runs, kept in the database.")
    runs_sub = runs.add_subparsers(title="commands", metavar="COMMAND")
    runs.set_defaults(func=lambda app, args: runs.print_help() or errors.EXIT_USAGE)

    p = command("list", cmd_runs_list, "list runs, newest first", runs_sub)
    p.add_argument("--flow", metavar="FLOW", help="only this flow")
    p.add_argument("--state", choices=("queued", "running", "success", "failed", "cancelled", "interrupted"),
                   help="only runs in this state")
    p.add_argument("--since", metavar="WHEN", help="only runs created since: an age (2h, 7d) or a local time (2026-11-01 03:00)")
    p.add_argument("--limit", type=_positive, default=20, metavar="N", help="at most N runs (default: 20)")
    p.add_argument("--json", action="store_true", help="print JSON (stable; see the README)")

    p = command("show", cmd_runs_show, "show a run and every task attempt", runs_sub)
    p.add_argument("run_id", type=_positive, metavar="RUN_ID", help="the run's id (see `featherflow runs list`)")
    p.add_argument("--json", action="store_true", help="print JSON (stable; see the README)")

    p = command("logs", cmd_runs_logs, "print a task's log (the latest attempt; all tasks if none named)", runs_sub)
    p.add_argument("run_id", type=_positive, metavar="RUN_ID", help="the run's id (see `featherflow runs list`)")
    p.add_argument("task", nargs="?", metavar="TASK", help="task id")
    p.add_argument("--attempt", type=_positive, metavar="N", help="this attempt instead of the latest")
    p.add_argument("--follow", action="store_true", help="keep printing while the attempt runs")

    p = command("resume", cmd_runs_resume, "run a failed or interrupted run again, keeping what succeeded", runs_sub)
    p.add_argument("run_id", type=_positive, metavar="RUN_ID", help="the run's id (see `featherflow runs list`)")
    p.add_argument("--dry-run", action="store_true", help="show which tasks are kept and which re-run; run nothing")
    p.add_argument("--force", action="store_true", help="resume even if the flow file changed since (uses the current file)")
    p.add_argument("--from", dest="from_task", metavar="TASK",
                   help="re-run TASK and everything downstream even if they succeeded")
    p.add_argument("--keep-tmp", action="store_true", help="keep the run's TMP_DIR after it ends")

    p = command("cancel", cmd_runs_cancel, "stop a running run (all its tasks); it ends cancelled", runs_sub)
    p.add_argument("run_id", type=_positive, metavar="RUN_ID", help="the run's id (see `featherflow runs list`)")

    p = command("prune", cmd_runs_prune, "delete old finished runs with their logs and scripts", runs_sub)
    p.add_argument("--older-than", metavar="AGE", help="runs that ended longer ago than AGE, e.g. 30d, 12h (default: 30d)")
    p.add_argument("--keep-last", type=int, metavar="N", help="always keep the newest N runs of each flow")
    p.add_argument("--flow", metavar="FLOW", help="only runs of this flow")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")

    p = command("dashboard", cmd_dashboard,
                "live terminal view of the scheduler, runs, tasks and logs (read only; q quits)")
    p.add_argument("--flow", metavar="FLOW", help="start filtered to this flow (/ in the dashboard changes it)")

    p = command("doctor", cmd_doctor, "check the database, permissions, disk, clock, scheduler and runs; "
                "exit 1 listing each problem and its fix")
    p.add_argument("--json", action="store_true", help="print JSON (healthy, problems, findings)")
    dbcmd = sub.add_parser("db", help="the database: backup", description="Look after the SQLite database.")
    db_sub = dbcmd.add_subparsers(title="commands", metavar="COMMAND")
    dbcmd.set_defaults(func=lambda app, args: dbcmd.print_help() or errors.EXIT_USAGE)
    p = command("backup", cmd_db_backup, "copy the database to PATH while runs go on (SQLite online backup; "
                "never overwrites)", db_sub)
    p.add_argument("path", metavar="PATH", help="the new file to write (must not exist)")

    from featherflow.cli import schedules as cli_schedules

    cli_schedules.add_commands(sub, command, common)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value
