"""`featherflow export`: a flow (and its schedule) for a distributed engine, with what is lost.

Featherflow is for one machine. The day a flow needs many workers, export writes it for an
existing engine (an Airflow DAG or an Argo CronWorkflow) that runs the same task scripts with
the same environment contract, and lists, line by line, each approximation (`warning:`) and
each promise the target does not keep (`not carried over:`). The output is deterministic:
the start date comes from the schedule (when it was added or last enabled) or --start-date,
never from the clock at export time, so exporting twice gives the same bytes.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

from featherflow import clock
from featherflow.flow import Flow, check_flow_name
from featherflow.config import Config
from featherflow.errors import UsageError
from featherflow.export import airflow, argo
from featherflow.export.common import (
    CATCHUPS, OVERLAPS, Plan, ScheduleFacts, dst_warnings, task_facts, tmp_users, write_files,
)

TARGETS = ("airflow", "argo")
DEFAULT_START = datetime(2000, 1, 1, tzinfo=timezone.utc)  # a flow exported without a schedule


@dataclass
class Exported:
    files: List[Path]
    warnings: List[str]
    lost: List[str]
    commands: List[str]
    refused: bool = False  # --strict and something is lost: nothing was written


def export_flow(config: Config, flow_name: str, target: str, out_dir: Path, store=None,
                schedule_name: Optional[str] = None, start_date: Optional[str] = None,
                image: Optional[str] = None, strict: bool = False) -> Exported:
    """Write `flow_name` (with schedule `schedule_name`, read from `store`) for `target` into
    `out_dir`. Under `strict`, when anything is lost nothing is written (`refused`)."""
    from featherflow.engine import limits  # the flow as `run` would load it

    if target not in TARGETS:
        raise UsageError(f"unknown export target {target!r} (valid: {', '.join(TARGETS)})")
    flow_name = check_flow_name(flow_name)
    schedule, start, on_interrupt = None, DEFAULT_START, None
    flows_dir, tasks_dir = config.flows_dir, config.tasks_dir
    if schedule_name:
        record = store.schedules.get_schedule(schedule_name)
        if record.flow_name != flow_name:
            raise UsageError(f"schedule {schedule_name!r} runs flow {record.flow_name!r}, not {flow_name!r} "
                             f"(valid: a schedule of {flow_name})")
        # The flow its runs would run: from the dirs the schedule recorded.
        flows_dir, tasks_dir = Path(record.flows_dir), Path(record.tasks_dir)
        schedule = ScheduleFacts(record.name, record.cron, record.tz, record.catchup, record.overlap,
                                 dict(record.params or {}))
        start = clock.as_utc(record.updated_at).replace(microsecond=0)
        on_interrupt = record.on_interrupt
    flow = limits.load_flow(flows_dir, flow_name, tasks_dir)
    if start_date:
        start = parse_start(start_date)
    pool_slots = {p.name: p.slots for p in store.pools.list_pools()} if store is not None else {}
    plan = plan_export(flow, target, tasks_dir, schedule, start, image, on_interrupt, pool_slots)
    refused = strict and bool(plan.lost)
    _keep_ignore_lines(Path(out_dir), plan)
    written = [] if refused else write_files(Path(out_dir), plan.files)
    return Exported(written, plan.warnings, plan.lost, plan.commands, refused)


def plan_export(flow: Flow, target: str, tasks_dir: Path, schedule: Optional[ScheduleFacts] = None,
                start: datetime = DEFAULT_START, image: Optional[str] = None,
                on_interrupt: Optional[str] = None, pool_slots: Optional[Dict[str, int]] = None) -> Plan:
    """What exporting `flow` writes and reports, without writing it (pure but for reading the
    task scripts, which are copied and searched for TMP_DIR)."""
    if target not in TARGETS:
        raise UsageError(f"unknown export target {target!r} (valid: {', '.join(TARGETS)})")
    tasks = task_facts(flow)
    plan = Plan(pool_slots=dict(pool_slots or {}))
    if schedule is not None:
        if schedule.params:
            plan.warnings.append(f"the schedule's params ({', '.join(sorted(schedule.params))}) are the "
                                 "exported defaults: a manual run gets them too")
        _schedule_losses(schedule, on_interrupt, target, plan)
        plan.warnings += dst_warnings(schedule.cron, schedule.tz, start.year,
                                      "Airflow" if target == "airflow" else "Argo")
    users = tmp_users(tasks, tasks_dir)
    if users:
        plan.lost.append(
            f"TMP_DIR/TEMP_DIR is not shared between workers (a per-run folder under "
            f"$FEATHERFLOW_TMP_ROOT on each one): tasks {', '.join(users)} use it")
    if target == "airflow":
        airflow.build(flow, tasks, schedule, start, tasks_dir, plan)
    else:
        argo.build(flow, tasks, schedule, tasks_dir, image, plan)
    return plan


def _keep_ignore_lines(out_dir: Path, plan: Plan) -> None:
    """An .airflowignore already in `out_dir` keeps its lines; ours is added once."""
    ours = plan.files.get(".airflowignore")
    path = out_dir / ".airflowignore"
    if ours is None or not path.is_file():
        return
    try:
        old = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    lines = old.splitlines()
    if ours[0].strip() not in lines:
        old = old + (b"" if old.endswith(b"\n") or not old else b"\n") + ours[0]
    plan.files[".airflowignore"] = (old, ours[1])


def parse_start(text: str) -> datetime:
    """--start-date: an ISO date or date-time (UTC unless it names an offset)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"bad --start-date {text!r} (valid: an ISO date such as 2026-01-01 "
                         "or 2026-01-01T03:00:00Z)") from None
    return clock.as_utc(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).replace(microsecond=0)


def _schedule_losses(schedule: ScheduleFacts, on_interrupt: Optional[str], target: str, plan: Plan) -> None:
    """What of the schedule's policies the target keeps: the part both targets share."""
    if schedule.catchup not in CATCHUPS or schedule.overlap not in OVERLAPS:
        raise UsageError(f"schedule {schedule.name!r}: catch-up {schedule.catchup!r} / overlap "
                         f"{schedule.overlap!r} cannot be exported (valid: {'/'.join(CATCHUPS)}, {'/'.join(OVERLAPS)})")
    name = "Airflow" if target == "airflow" else "Argo"
    if on_interrupt == "resume":
        plan.lost.append(f"on_interrupt {on_interrupt}: a run interrupted by a crash is not resumed by "
                         f"Featherflow's rules; {name} handles lost tasks its own way (retries, then failed)")
