"""The project's flows: `init`, `list`, `validate`, `graph`.

None of them touches the database: they read (or, for `init`, write) the flows
and tasks dirs only, so they work before anything was ever run.
"""

import json
import os
import shlex
import sys

from featherflow import errors, graph
from featherflow.cli.common import command, for_terminal


def cmd_init(app, args) -> int:
    from featherflow import scaffold  # lazy: not for --help (see common.py)

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
    width = max(len(for_terminal(i.name)) for i in infos)
    for info in infos:
        name = for_terminal(info.name).ljust(width)
        if info.error:
            print(f"{name}  INVALID  {for_terminal(info.error)}")
        else:
            tasks = f"{info.tasks} task{'s' if info.tasks != 1 else ''}"
            print(f"{name}  {tasks:>9}  {for_terminal(info.description)}".rstrip())
    return 0


def cmd_validate(app, args) -> int:
    problems = app.validate(args.flows)
    bad = 0
    for name, errs in problems.items():
        if errs:
            bad += 1
            for e in errs:
                print(f"error: {for_terminal(f'{name}: {e}', sys.stderr)}", file=sys.stderr)
        else:
            print(f"{name}: valid")
    return errors.EXIT_USAGE if bad else 0


def cmd_graph(app, args) -> int:
    flow = app.load_flow(args.flow)
    draw = {"text": graph.draw_text, "dot": graph.draw_dot, "mermaid": graph.draw_mermaid}[args.format]
    rules = {t.id: t.rule + (" after every task" if t.cleanup and not t.depends_on else "")
             for t in flow.tasks if t.rule != "all_success"}
    print(draw(flow.name, flow.edges, rules))
    return 0


# -- parser -----------------------------------------------------------------

def add_commands(sub) -> None:
    """`init`, `list`, `validate` and `graph`, under `sub`."""
    p = command("init", cmd_init, "create a project: flows/ with a sample flow, tasks/, a README (never overwrites)", sub)
    p.add_argument("directory", nargs="?", default=".", metavar="DIR", help="the project folder (default: the current dir)")

    p = command("list", cmd_list, "list the flows in the flows dir (a broken file shows its first error)", sub)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command("validate", cmd_validate, "check flow files and print every problem (all flows if none named)", sub)
    p.add_argument("flows", nargs="*", metavar="FLOW", help="flow names (files <flows-dir>/<FLOW>.json)")

    p = command("graph", cmd_graph, "draw a flow's task graph", sub)
    p.add_argument("flow", metavar="FLOW", help="flow name")
    p.add_argument("--format", choices=("text", "dot", "mermaid"), default="text",
                   help="text for the terminal (default), dot for Graphviz, mermaid for Markdown")
