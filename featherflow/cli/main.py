"""The `featherflow` command: build the parser from the command modules, run one, exit.

The commands live in flows.py, runs.py, admin.py, schedules.py, backfill.py, notify.py,
serve.py, export.py and retention.py (what they share in common.py); COMMANDS below says which module holds which command, with its
help line, so that only the module of the command given is imported and builds its
parser: `featherflow --help` imports none of them (a new command is one line there;
tests/test_cli.py checks the table against the modules). This module is the one place
where an error becomes an exit code: a FeatherflowError becomes one `error:` line on
stderr and its documented exit code (see errors.py and the README); a traceback is
shown only with `--log-level DEBUG`.
"""

import argparse
import importlib
import sys
from typing import List, Optional

from featherflow import __version__, errors
from featherflow.cli.common import for_terminal, global_options
from featherflow.errors import FeatherflowError

# Every top-level command, in the order `featherflow --help` lists them: (name, module
# under featherflow.cli whose add_commands() registers it, its help line; None: hidden).
# A module's commands stay together, in the order its add_commands() adds them.
COMMANDS = (
    ("init", "flows", "create a project: flows/ with a sample flow, tasks/, a README (never overwrites)"),
    ("list", "flows", "list the flows in the flows dir (a broken file shows its first error)"),
    ("validate", "flows", "check flow files and print every problem (all flows if none named)"),
    ("graph", "flows", "draw a flow's task graph"),
    ("run", "runs", "run a flow now; exit 0 if it succeeded, 1 if it failed, 5 if cancelled"),
    ("runs", "runs", "history: list, show, logs, resume, cancel, prune"),
    ("dashboard", "admin", "live terminal view of the scheduler, runs, tasks and logs (read only; q quits)"),
    ("doctor", "admin", "check the database, permissions, disk, clock, scheduler and runs; "
                        "exit 1 listing each problem and its fix"),
    ("db", "admin", "the database: backup"),
    ("schedule", "schedules", "schedules: add, list, show, remove, enable, disable"),
    ("scheduler", "schedules", "the scheduler daemon: start, stop, status, install"),
    ("_start-run", "schedules", None),
    ("backfill", "backfill", "fill a schedule's slots over a date range (and: list, show ID, cancel ID, resume ID)"),
    ("_backfill-resume", "backfill", None),
    ("notify", "notify", "notifications: channels, test, log, flush"),
    ("pool", "pools", "pools: limits on how many tasks run at once across runs"),
    ("serve", "serve", "a read-only status page and JSON API over HTTP (loopback unless a token is configured)"),
    ("export", "export", "write a flow as an Airflow DAG or an Argo CronWorkflow, listing what does not carry over"),
    ("retention", "retention", "the retention policy: which finished runs the scheduler deletes daily"),
)
# The global options that take a value (global_options): a word after one is not a command.
_VALUED = ("-f", "-t", "-o", "-l", "--flows-dir", "--tasks-dir", "--output-dir", "--log-level", "--log-dir",
           "--config-dir", "--db")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_mark"]:
        # The hot path dispatches before anything else; mark imports the standard library only.
        from featherflow import mark

        return mark.main(argv[1:])
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
        if getattr(args, "_unloaded", False):  # the command was not the one guessed: every module then
            parser = build_parser()
            args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse printed already
        return exc.code if isinstance(exc.code, int) else errors.EXIT_USAGE
    import logging  # lazy: 3-8 ms, not for --help

    log = logging.getLogger(__name__)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return errors.EXIT_USAGE
    from featherflow.api import Featherflow  # lazy: not for --help (see common.py)

    app = Featherflow(args.flows_dir, args.tasks_dir, args.output_dir, args.config_dir, args.db, args.log_dir)
    try:
        return args.func(app, args) or 0
    except FeatherflowError as exc:
        if args.log_level == "DEBUG":
            log.exception("error")
        for line in _error_lines(exc):
            print(f"error: {for_terminal(line, sys.stderr)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return errors.EXIT_OK
    except Exception as exc:
        # A database error outside the paths that translate their own (locked past
        # the busy timeout, disk full, I/O error): one line, not a traceback.
        if not errors.is_database_error(exc):
            raise
        if args.log_level == "DEBUG":
            log.exception("error")
        # The advice depends on the fault: retry a lock, free space or remount a full or
        # read-only disk (nothing is damaged), restore a backup only for damage.
        print(f"error: {errors.database_error(app.config.db_path, exc)}", file=sys.stderr)
        return errors.EXIT_DATABASE
    finally:
        _deliver_written_events(app, args)
        app.close()


def _deliver_written_events(app, args) -> None:
    """A command that wrote a notification event (an orphan found interrupted, a run
    cancelled) starts its delivery in the background, as a run's end does."""
    notify = sys.modules.get("featherflow.cli.notify")
    if app.opened is None or app.read_only or notify is not None and args.func is notify.cmd_flush:
        return
    try:
        from featherflow import clock, mark  # lazy: only after a command that opened the store

        if app.store.outbox.has_due(clock.now()):
            mark.flush_outbox(str(app.config.db_path))
    except Exception as exc:  # telling someone must never turn a command's success into an error
        import logging

        logging.getLogger(__name__).debug("could not start the notification delivery: %s", exc)


def _error_lines(exc: FeatherflowError) -> List[str]:
    if isinstance(exc, errors.ValidationError):
        prefix = f"{exc.source}: " if exc.source else ""
        return [prefix + e for e in exc.errors]
    return [str(exc)]


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """Every command, in the order `featherflow --help` lists them.

    Given `argv`, only the module of the command it names builds its parsers; every
    other command is a stand-in with its help line, which takes any words and sets
    `_unloaded` (main then builds the whole parser: a guess can only cost time).
    """
    parser = argparse.ArgumentParser(
        prog="featherflow",
        description="An ultra-light workflow orchestrator: JSON flows run as bash scripts, "
                    "with every run recorded in one SQLite file.",
        epilog="Exit codes: 0 ok, 1 run failed / check failed, 2 invalid input, "
               "3 conflict with the current state, 4 database problem, 5 run cancelled or interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"featherflow {__version__}")
    global_options(parser, suppress=False)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    wanted = None if argv is None else _module_named(argv)
    added = set()
    for name, module, help_text in COMMANDS:
        if argv is None or module == wanted:
            if module not in added:
                importlib.import_module(f"featherflow.cli.{module}").add_commands(sub)
                added.add(module)
            continue
        stand_in = sub.add_parser(name, add_help=False, **({} if help_text is None else {"help": help_text}))
        stand_in.add_argument("words", nargs=argparse.REMAINDER)
        stand_in.set_defaults(_unloaded=True)
    return parser


def _module_named(argv: List[str]) -> Optional[str]:
    """The module of the first word of `argv` that names a command (None: no such word)."""
    modules = {name: module for name, module, _ in COMMANDS}
    for before, word in zip([""] + argv, argv):
        if word in modules and before not in _VALUED:
            return modules[word]
    return None
