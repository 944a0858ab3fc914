"""The `featherflow` command: build the parser from the command modules, run one, exit.

The commands live in flows.py, runs.py, admin.py, schedules.py, backfill.py and notify.py (what they share in
common.py). This module is the one place where an error becomes an exit code: a
FeatherflowError becomes one `error:` line on stderr and its documented exit code
(see errors.py and the README); a traceback is shown only with `--log-level DEBUG`.
"""

import argparse
import logging
import sys
from typing import List, Optional

from featherflow import __version__, errors
from featherflow.cli import admin, backfill, flows, notify, pools, runs, schedules
from featherflow.cli.common import for_terminal, global_options
from featherflow.errors import FeatherflowError

log = logging.getLogger(__name__)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_mark"]:
        # The hot path dispatches before anything else; mark imports the standard library only.
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
    if app.opened is None or app.read_only or args.func is notify.cmd_flush:
        return
    try:
        from featherflow import clock, mark  # lazy: only after a command that opened the store

        if app.store.outbox.has_due(clock.now()):
            mark.flush_outbox(str(app.config.db_path))
    except Exception as exc:  # telling someone must never turn a command's success into an error
        log.debug("could not start the notification delivery: %s", exc)


def _error_lines(exc: FeatherflowError) -> List[str]:
    if isinstance(exc, errors.ValidationError):
        prefix = f"{exc.source}: " if exc.source else ""
        return [prefix + e for e in exc.errors]
    return [str(exc)]


def build_parser() -> argparse.ArgumentParser:
    """Every command, in the order `featherflow --help` lists them."""
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
    for module in (flows, runs, admin, schedules, backfill, notify, pools):
        module.add_commands(sub)
    return parser
