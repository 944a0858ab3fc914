"""Schedules from outside the daemon: add one (validated), list them, show one with its slots.

The CLI's `schedule add/list/show` and the Python API (compat.py) call these;
they take a config (the dirs a schedule is added from) and a store, and return
records or lines of text: the CLI prints them. The daemon (daemon.py) reads what
they record; `add_schedule` wakes it (control.notify) so a new schedule counts at once.
"""

import json
from datetime import datetime
from typing import Dict, List, Optional

from featherflow import clock, config as configmod, flow as flowmod, report
from featherflow.config import Config
from featherflow.engine import limits
from featherflow.engine import launch
from featherflow.errors import UsageError
from featherflow.scheduler import backfill, policy, slots
from featherflow.scheduler.control import next_fire, notify
from featherflow.store import Store


def add_schedule(cfg: Config, store: Store, flow_name: str, cron: Optional[str] = None,
                 interval: Optional[str] = None, at: Optional[str] = None, tz: Optional[str] = None,
                 name: Optional[str] = None,
                 params: Optional[Dict] = None, catchup: str = "latest", overlap: str = "skip",
                 on_interrupt: str = "resume", description: str = "", enabled: bool = True,
                 now: Optional[datetime] = None):
    """Validate a schedule (flow, params, cron or interval, zone, policies) and record it
    with the flows/tasks/output dirs it was added from."""
    if cron and interval:
        raise UsageError("give --cron or --interval, not both")
    if cron and at:
        raise UsageError("--at goes with --interval; with --cron put the time in the expression (e.g. '30 3 * * *')")
    for option, value, valid in (("--catchup", catchup, policy.CATCHUP), ("--overlap", overlap, policy.OVERLAP),
                                 ("--on-interrupt", on_interrupt, policy.ON_INTERRUPT)):
        if value not in valid:
            raise UsageError(f"bad {option} {value!r} (valid: {', '.join(valid)})")
    try:
        if cron:
            expr = slots.parse_cron(cron)
        elif interval or at:
            expr = slots.interval_cron(interval or "daily", at)
        else:
            raise UsageError("say when: --interval hourly|daily|weekly|monthly [--at HH:MM], or --cron EXPR")
        tz = tz or slots.local_zone_name(configmod.scheduler_env()["tz"])
        slots.zone(tz)
    except slots.ScheduleError as exc:
        raise UsageError(str(exc)) from None
    flow = limits.load_flow(cfg.flows_dir, flow_name, cfg.tasks_dir)
    merged = launch.merge_params(flow, params or {})
    if params:
        limits.check(flow, merged, str(cfg.tasks_dir), "--params", str(flowmod.flow_path(cfg.flows_dir, flow.name)))
    name = name or flow.name
    if not flowmod.NAME_RE.fullmatch(name):
        raise UsageError(f"bad schedule name {name!r} (valid: letters, digits, '_', '-', '.', "
                         "not starting with '.' or '-')")
    schedule = store.schedules.add_schedule(
        name, flow.name, expr, tz, params or {}, str(cfg.flows_dir), str(cfg.tasks_dir), str(cfg.output_dir),
        catchup=catchup, overlap=overlap, on_interrupt=on_interrupt, enabled=enabled,
        description=description or "", now=now)
    notify(store)
    return schedule




def in_zone(moment: Optional[datetime], tz: str) -> str:
    if moment is None:
        return "-"
    return clock.as_utc(moment).astimezone(slots.zone(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def schedule_json(store: Store, schedule, now: datetime, limit: int = 1) -> Dict:
    """The stable JSON form of a schedule, with its next fire time and latest `limit` slots."""
    return report.schedule_document(schedule, store.schedules.recent_slots(schedule.id, limit),
                                    next_fire(store, schedule, now),
                                    store.backfills.list(schedule_id=schedule.id, limit=report.BACKFILLS_SHOWN))


def _outcome(slot) -> str:
    if slot is None:
        return "never fired"
    if slot.state == "fired":
        return f"run {slot.run_id} {slot.run_state or 'deleted'}" if slot.run_id else "fired (run deleted)"
    return slot.state


def schedules_table(store: Store, now: datetime, width: int = 80) -> List[str]:
    """`schedule list`: one line a schedule: name, flow, when, next fire time, last outcome."""
    lines = [f"{'NAME':<16} {'FLOW':<14} {'WHEN':<18} {'NEXT':<16} LAST"]
    for s in store.schedules.list_schedules():
        recent = store.schedules.recent_slots(s.id, 1)
        nxt = next_fire(store, s, now)
        when = s.cron if len(s.cron) <= 18 else s.cron[:17] + "…"
        shown = (clock.as_utc(nxt).astimezone(slots.zone(s.tz)).strftime("%m-%d %H:%M:%S")
                 if nxt else "disabled")
        line = f"{s.name[:16]:<16} {s.flow_name[:14]:<14} {when:<18} {shown:<16} {_outcome(recent[0] if recent else None)}"
        lines.append(line[:width])
    return lines


def schedule_detail(store: Store, schedule, now: datetime, limit: int = 20) -> List[str]:
    """`schedule show`: the schedule, then its recent slots (fired, waiting, skipped and why)."""
    s = schedule
    lines = [
        f"schedule {s.name}  flow {s.flow_name}  {'enabled' if s.enabled else 'DISABLED'}",
        f"  cron       {s.cron}   zone {s.tz}",
        f"  next       {in_zone(next_fire(store, s, now), s.tz)}",
        f"  policy     catchup={s.catchup} overlap={s.overlap} on-interrupt={s.on_interrupt}",
        f"  params     {json.dumps(s.params, sort_keys=True, ensure_ascii=False)}",
        f"  dirs       flows {s.flows_dir}, tasks {s.tasks_dir}, output {s.output_dir}",
    ]
    if s.description:
        lines.insert(1, f"  {s.description}")
    slots = store.schedules.recent_slots(s.id, limit)
    lines.append("")
    lines.append(f"  {'SLOT':<24} {'STATE':<8} {'RUN':<18} REASON" if slots else "  no slots yet")
    for slot in slots:
        run = f"{slot.run_id} {slot.run_state or 'deleted'}" if slot.run_id else "-"
        lines.append(f"  {in_zone(slot.slot_at, s.tz):<24} {slot.state:<8} {run:<18} {slot.reason or ''}".rstrip())
    found = store.backfills.list(schedule_id=s.id, limit=report.BACKFILLS_SHOWN)
    if found:
        lines += ["", "  backfills (newest first; see `featherflow backfill show ID`)"]
    for b in found:
        lines.append(f"  {b.id:>4}  {b.state:<10} {in_zone(b.range_from, s.tz)} to {in_zone(b.range_to, s.tz)}  "
                     f"{backfill.progress_text(b.counts)}")
    return lines
