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

from featherflow import __version__, errors
from featherflow.errors import FeatherflowError

log = logging.getLogger(__name__)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_mark"]:  # the hot path: no argparse, no peewee
        from featherflow import mark

        return mark.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
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
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return errors.EXIT_OK
    finally:
        app.close()


def _error_lines(exc: FeatherflowError) -> List[str]:
    if isinstance(exc, errors.ValidationError):
        prefix = f"{exc.source}: " if exc.source else ""
        return [prefix + e for e in exc.errors]
    return [str(exc)]


# -- commands ---------------------------------------------------------------

def cmd_list(app, args) -> int:
    infos = app.flow_infos()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    if not infos:
        print(f"no flows in {app.config.flows_dir}")
        return 0
    width = max(len(i.name) for i in infos)
    for info in infos:
        if info.error:
            print(f"{info.name.ljust(width)}  INVALID  {info.error}")
        else:
            tasks = f"{info.tasks} task{'s' if info.tasks != 1 else ''}"
            print(f"{info.name.ljust(width)}  {tasks:>9}  {info.description}".rstrip())
    return 0


def cmd_validate(app, args) -> int:
    problems = app.validate(args.flows)
    bad = 0
    for name, errs in problems.items():
        if errs:
            bad += 1
            for e in errs:
                print(f"error: {name}: {e}", file=sys.stderr)
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
    from featherflow import runner

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
    print(f"  re-run: {', '.join(plan.rerun)}")
    if args.dry_run:
        return 0
    prepared = runner.start_resume(app, plan, keep_tmp=args.keep_tmp)
    runner.exec_script(app, prepared)
    return errors.EXIT_FAILED


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
    p.add_argument("--params", metavar="JSON|FILE", help="params as a JSON object, or a file holding one")
    p.add_argument("--dry-run", action="store_true", help="write the script and print its path; run nothing")
    p.add_argument("--max-parallel", type=_positive, metavar="N",
                   help="tasks at once (default: the flow's max_parallel, else the number of CPUs)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the run's TMP_DIR after it ends")
    p.add_argument("--resume", action="store_true",
                   help="resume this flow's latest failed or interrupted run instead of starting one")
    p.add_argument("--force", action="store_true", help="with --resume: proceed even if the flow file changed")
    p.add_argument("--from", dest="from_task", metavar="TASK",
                   help="with --resume: re-run TASK and everything downstream even if they succeeded")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value
