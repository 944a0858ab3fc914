"""Looking after an installation: `dashboard`, `doctor`, `db backup`.

All three leave the database as it is: they never open app.store (it would
create or migrate it) and never reconcile (it writes). What they call loads
peewee, hence the imports inside the commands (`# lazy:`, see common.py).
"""

import json

from featherflow import errors
from featherflow.cli.common import command, group


def cmd_dashboard(app, args) -> int:
    """Read only: never app.store (it would migrate) and no reconcile (it writes)."""
    from featherflow.dashboard import app as dashboard  # lazy: curses, croniter, sqlite3

    return dashboard.main(app.config.db_path, flow=args.flow)


def cmd_doctor(app, args) -> int:
    """Read only, like the dashboard: never app.store (it would create or migrate)."""
    from featherflow import clock  # lazy: not for --help
    from featherflow import doctor  # lazy: peewee

    # doctor compares `now` with times read from the database, still naive UTC.
    findings = doctor.diagnose(app.config, clock.now())
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
    from featherflow import text  # lazy: not for --help
    from featherflow.store import backup  # lazy: peewee

    report = backup.backup(app.config.db_path, args.path)
    print(f"backed up {report.source} to {report.path}: {report.runs} run(s), "
          f"{text.megabytes(report.bytes)}, schema version {report.schema_version}, integrity_check {report.integrity}")
    return 0


# -- parser -----------------------------------------------------------------

def add_commands(sub) -> None:
    """`dashboard`, `doctor` and `db backup`, under `sub`."""
    p = command("dashboard", cmd_dashboard,
                "live terminal view of the scheduler, runs, tasks and logs (read only; q quits)", sub)
    p.add_argument("--flow", metavar="FLOW", help="start filtered to this flow (/ in the dashboard changes it)")

    p = command("doctor", cmd_doctor, "check the database, permissions, disk, clock, scheduler and runs; "
                "exit 1 listing each problem and its fix", sub)
    p.add_argument("--json", action="store_true", help="print JSON (healthy, problems, findings)")

    db_sub = group(sub, "db", "the database: backup", "Look after the SQLite database.")
    p = command("backup", cmd_db_backup, "copy the database to PATH while runs go on (SQLite online backup; "
                "never overwrites)", db_sub)
    p.add_argument("path", metavar="PATH", help="the new file to write (must not exist)")
