"""`featherflow export`: write a flow for Airflow or Argo and say what does not carry over.

The library writes the files and collects the lines; this prints them: one `warning:` line
per approximation and one `not carried over:` line per lost semantic (on stderr), then the
files written and any command to run once on the target (on stdout).
"""

import sys

from featherflow import errors
from featherflow.cli.common import command, for_terminal


def cmd_export(app, args) -> int:
    from featherflow import export  # lazy: not for --help

    # A flow alone needs no database; one that exists gives the pools their `pool set` sizes.
    store = app.store if args.schedule or app.config.db_path.exists() else None
    result = export.export_flow(app.config, args.flow, args.to, args.out, store=store,
                                schedule_name=args.schedule, start_date=args.start_date,
                                image=args.image, strict=args.strict)
    for line in result.warnings:
        print(f"warning: {for_terminal(line, sys.stderr)}", file=sys.stderr)
    for line in result.lost:
        print(f"not carried over: {for_terminal(line, sys.stderr)}", file=sys.stderr)
    for path in result.files:
        print(f"wrote {for_terminal(str(path))}")
    if result.refused:
        print(f"error: --strict: {len(result.lost)} semantic(s) not carried over to {args.to}, nothing "
              "written (valid: export without --strict to accept them)", file=sys.stderr)
        return errors.EXIT_FAILED
    for line in result.commands:
        print(f"run once on {args.to}: {for_terminal(line)}")
    return 0


def add_commands(sub) -> None:
    """`export`, under `sub`."""
    p = command("export", cmd_export,
                "write a flow as an Airflow DAG or an Argo CronWorkflow, listing what does not carry over", sub)
    p.add_argument("flow", metavar="FLOW", help="flow name")
    p.add_argument("--to", required=True, choices=("airflow", "argo"),
                   help="airflow: DIR/FLOW.py, the task scripts and an .airflowignore; argo: DIR/FLOW.yaml")
    p.add_argument("--schedule", metavar="NAME",
                   help="the schedule to carry over (cron, zone, catch-up, overlap, params; default: none, "
                        "manual runs only)")
    p.add_argument("--out", default="featherflow_export", metavar="DIR",
                   help="the folder to write into (default: ./featherflow_export)")
    p.add_argument("--start-date", metavar="WHEN",
                   help="the DAG's fixed start_date, an ISO date or date-time (default: when the schedule "
                        "was added or last enabled; 2000-01-01 without one)")
    p.add_argument("--image", metavar="IMAGE",
                   help="argo: the container image that holds the tasks dir at /featherflow/tasks (required)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 and write nothing when any semantic is not carried over")
