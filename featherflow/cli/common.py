"""What every command module shares: argument types, the global options, how a command
is registered, the store a command reads, and text made safe for a terminal.

The command modules (flows, runs, admin, schedules) import this, never main.py: main
builds the parser from them and turns their errors into exit codes.

Imports are at the top of a module except what only running a command needs, which the
command imports itself so that `featherflow --help` and a usage error stay fast:
`# lazy: peewee` marks the modules that load peewee (engine.launch, .resume, .reconcile,
scheduler.*, store.backup, doctor, the dashboard: some 40-70 ms), `# lazy: not for --help` the facade, scaffold, the
store's retention and format.py (which takes the store's records): together some 10 ms more
on `--help` when imported at the top (measured). tests/test_cli.py keeps parsing peewee-free.
"""

import argparse
import sys

from featherflow import errors

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


# -- argument types ---------------------------------------------------------

def positive(value: str) -> int:
    """A whole number >= 1 (run ids, attempt numbers, limits)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1")
    return number


def seconds(value: str) -> float:
    """A finite number of seconds > 0 (NaN and infinity are refused, they would never wake)."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0 or number != number or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds > 0")
    return number


# -- registration -----------------------------------------------------------

def global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The same options before or after the command; after wins (`suppress`: the copy every
    command takes, which leaves the value given before the command alone when absent)."""
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


_AFTER_COMMAND = argparse.ArgumentParser(add_help=False)
global_options(_AFTER_COMMAND, suppress=True)


def command(name: str, func, help_text: str, parent, hidden: bool = False) -> argparse.ArgumentParser:
    """Add command `name` under `parent` (a subparsers action), run by `func(app, args)`.

    Its help is its description too, and it takes the global options after its name.
    A `hidden` command (an internal one, `_start-run`) is left out of every help list.
    """
    if hidden:
        p = parent.add_parser(name, parents=[_AFTER_COMMAND])
    else:
        p = parent.add_parser(name, parents=[_AFTER_COMMAND], help=help_text, description=help_text)
    p.set_defaults(func=func)
    return p


def group(parent, name: str, help_text: str, description: str):
    """A command of commands (`runs`, `db`, ...): alone, it prints its help, exit 2.
    Returns the subparsers action to add its commands to."""
    p = parent.add_parser(name, help=help_text, description=description)
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    p.set_defaults(func=lambda app, args: p.print_help() or errors.EXIT_USAGE)
    return sub


# -- the store a command reads ----------------------------------------------

def reconciled(app):
    """The store, after orphaned runs are marked interrupted: every command that reads
    runs does this first, so a run whose process died is not shown as running."""
    from featherflow.engine import reconcile  # lazy: peewee

    for run_id, reason in reconcile.reconcile(app.store):
        print(f"note: run {run_id} is now interrupted: {reason}", file=sys.stderr)
    return app.store


def reading(app):
    """The store for a command that only reads: reconciled as usual, or, on a read-only
    disk, read as it is (with a note: nothing can be marked interrupted there)."""
    store = app.read_store()
    if app.read_only:
        print(f"note: {app.config.db_path} is on a read-only filesystem: runs are shown as last recorded "
              "(a run whose process died is marked interrupted once it can be written)", file=sys.stderr)
        return store
    return reconciled(app)


# -- output -----------------------------------------------------------------

def for_terminal(value: str, stream=None) -> str:
    """Text from files or tasks, for a terminal: control characters escaped, so no
    escape sequence acts. `stream` (default stdout) is where it is printed."""
    from featherflow import text  # lazy: not for --help
    return text.escape(value) if (stream or sys.stdout).isatty() else value
