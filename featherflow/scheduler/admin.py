"""Managing schedules and the daemon from outside it: add/list/show, the systemd unit, the Python API.

The CLI's schedule commands and `scheduler install` call these; the daemon
itself is scheduler.py. The Python API (compatible with the original tool):

    from featherflow.scheduler import daemon as scheduler
    s = scheduler.get_scheduler(flows_dir="flows", tasks_dir="tasks", output_dir="out")
    s.schedule_manager.add_schedule("etl", "30 3 * * *", description="nightly")  # True / False
    s.schedule_manager.get_all_schedules()  # [ScheduleEntry(name, flow_name, cron_expression, ...)]
    s.start(); s.is_running(); s.stop()
"""

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

from featherflow import config as configmod, flow as flowmod
from featherflow.engine import limits
from featherflow.engine import launch
from featherflow.scheduler import slots as schedules
from featherflow.errors import ConflictError, FeatherflowError, UsageError
from featherflow.scheduler.daemon import START_DEADLINE, _failure, _iso, _row_alive, next_fire, notify, stop, utcnow

log = logging.getLogger(__name__)

UNIT_NAME = "featherflow-scheduler.service"


# -- schedules: add, list, show ---------------------------------------------------------

def add_schedule(app, flow_name: str, cron: Optional[str] = None, interval: Optional[str] = None,
                 at: Optional[str] = None, tz: Optional[str] = None, name: Optional[str] = None,
                 params: Optional[Dict] = None, catchup: str = "latest", overlap: str = "skip",
                 on_interrupt: str = "resume", description: str = "", enabled: bool = True,
                 now: Optional[datetime] = None):
    """Validate a schedule (flow, params, cron or interval, zone, policies) and record it
    with the flows/tasks/output dirs it was added from."""
    if cron and interval:
        raise UsageError("give --cron or --interval, not both")
    if cron and at:
        raise UsageError("--at goes with --interval; with --cron put the time in the expression (e.g. '30 3 * * *')")
    for option, value, valid in (("--catchup", catchup, schedules.CATCHUP), ("--overlap", overlap, schedules.OVERLAP),
                                 ("--on-interrupt", on_interrupt, schedules.ON_INTERRUPT)):
        if value not in valid:
            raise UsageError(f"bad {option} {value!r} (valid: {', '.join(valid)})")
    try:
        if cron:
            expr = schedules.parse_cron(cron)
        elif interval or at:
            expr = schedules.interval_cron(interval or "daily", at)
        else:
            raise UsageError("say when: --interval hourly|daily|weekly|monthly [--at HH:MM], or --cron EXPR")
        tz = tz or schedules.local_zone_name(configmod.scheduler_env()["tz"])
        schedules.zone(tz)
    except schedules.ScheduleError as exc:
        raise UsageError(str(exc)) from None
    flow = app.load_flow(flow_name)
    merged = launch.merge_params(flow, params or {})
    if params:
        limits.check(flow, merged, str(app.config.tasks_dir), "--params",
                     str(flowmod.flow_path(app.config.flows_dir, flow.name)))
    name = name or flow.name
    if not flowmod.NAME_RE.fullmatch(name):
        raise UsageError(f"bad schedule name {name!r} (valid: letters, digits, '_', '-', '.', "
                         "not starting with '.' or '-')")
    cfg = app.config
    schedule = app.store.add_schedule(
        name, flow.name, expr, tz, params or {}, str(cfg.flows_dir), str(cfg.tasks_dir), str(cfg.output_dir),
        catchup=catchup, overlap=overlap, on_interrupt=on_interrupt, enabled=enabled,
        description=description or "", now=now)
    notify(app.store)
    return schedule


def in_zone(moment: Optional[datetime], tz: str) -> str:
    if moment is None:
        return "-"
    return schedules.as_utc(moment).astimezone(schedules.zone(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def schedule_json(store, schedule, now: datetime, slots: int = 1) -> Dict:
    """The stable JSON form of a schedule, with its next fire time and latest slots."""
    recent = store.recent_slots(schedule.id, slots)
    data = {key: getattr(schedule, key) for key in (
        "name", "flow_name", "cron", "tz", "params", "catchup", "overlap", "on_interrupt", "enabled",
        "description", "flows_dir", "tasks_dir", "output_dir")}
    data.update(id=schedule.id, created_at=_iso(schedule.created_at), updated_at=_iso(schedule.updated_at),
                next_at=_iso(next_fire(store, schedule, now)))
    data["slots"] = [{"slot_at": _iso(s.slot_at), "state": s.state, "reason": s.reason, "run_id": s.run_id,
                      "run_state": s.run_state} for s in recent]
    return data


def _outcome(slot) -> str:
    if slot is None:
        return "never fired"
    if slot.state == "fired":
        return f"run {slot.run_id} {slot.run_state or 'deleted'}" if slot.run_id else "fired (run deleted)"
    return slot.state


def schedules_table(store, now: datetime, width: int = 80) -> List[str]:
    """`schedule list`: one line a schedule: name, flow, when, next fire time, last outcome."""
    lines = [f"{'NAME':<16} {'FLOW':<14} {'WHEN':<18} {'NEXT':<16} LAST"]
    for s in store.list_schedules():
        recent = store.recent_slots(s.id, 1)
        nxt = next_fire(store, s, now)
        when = s.cron if len(s.cron) <= 18 else s.cron[:17] + "…"
        shown = (schedules.as_utc(nxt).astimezone(schedules.zone(s.tz)).strftime("%m-%d %H:%M:%S")
                 if nxt else "disabled")
        line = f"{s.name[:16]:<16} {s.flow_name[:14]:<14} {when:<18} {shown:<16} {_outcome(recent[0] if recent else None)}"
        lines.append(line[:width])
    return lines


def schedule_detail(store, schedule, now: datetime, limit: int = 20) -> List[str]:
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
    slots = store.recent_slots(s.id, limit)
    lines.append("")
    lines.append(f"  {'SLOT':<24} {'STATE':<8} {'RUN':<18} REASON" if slots else "  no slots yet")
    for slot in slots:
        run = f"{slot.run_id} {slot.run_state or 'deleted'}" if slot.run_id else "-"
        lines.append(f"  {in_zone(slot.slot_at, s.tz):<24} {slot.state:<8} {run:<18} {slot.reason or ''}".rstrip())
    return lines


# -- systemd -------------------------------------------------------------------------------

def _systemd_quote(word: str) -> str:
    word = word.replace("%", "%%").replace("$", "$$")
    if word and all(c.isalnum() or c in "/._-+:=@," for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(cfg, user: Optional[str], system: bool = True, check_interval: Optional[float] = None,
              python: str = sys.executable, allow_root: bool = False) -> str:
    """A systemd unit that starts the scheduler at boot, once the clock is synchronised.

    `allow_root`: the unit runs the scheduler as root and passes --allow-root on.
    """
    argv = [python, "-m", "featherflow", "--config-dir", str(cfg.config_dir), "--db", str(cfg.db_path),
            "--log-dir", str(cfg.log_dir), "scheduler", "start", "--foreground"]
    if check_interval:
        argv += ["--check-interval", f"{check_interval:g}"]
    if allow_root:
        argv.append("--allow-root")
    path = os.pathsep.join([str(Path(python).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    unit = [
        "# Featherflow scheduler; written by `featherflow scheduler install`.",
        "[Unit]",
        f"Description=Featherflow scheduler{f' of {user}' if user else ''}",
    ]
    if system:
        unit += [
            "# Slots are wall-clock times: wait for NTP (a Pi has no RTC) when",
            "# systemd-time-wait-sync.service (or chrony's equivalent) is enabled.",
            "After=time-sync.target network-online.target",
            "Wants=time-sync.target",
        ]
    else:
        unit += ["# A user unit cannot wait for time-sync.target: use --system on a machine without RTC."]
    unit += ["", "[Service]", "Type=simple"]
    if user == "root" and allow_root:
        unit.append("# As root, with --allow-root: every scheduled flow runs as root.")
    elif user == "root":
        unit += [f"# {line}" for line in (ROOT_NOTE[0].upper() + ROOT_NOTE[1:]).split("\n")]
    if system and user:
        unit.append(f"User={user}")
    unit += [
        f"ExecStart={' '.join(_systemd_quote(a) for a in argv)}",
        f"Environment={_systemd_quote('PATH=' + path)}",
        "Restart=on-failure",
        "RestartSec=10",
        "# Stop (or restart) only the scheduler: the flows it started keep running.",
        "KillMode=process",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if system else 'default.target'}",
        "",
    ]
    return "\n".join(unit)


ROOT_NOTE = ("this unit runs the scheduler as root, and the scheduler refuses root without --allow-root:\n"
             "run `featherflow scheduler install --print` as the user it should run as, or\n"
             "add --allow-root (every scheduled flow then runs as root).")


def runs_as_root(euid: Optional[int] = None, sudo_user: Optional[str] = None) -> bool:
    """True when `scheduler install` makes a unit for root: root with no other user behind sudo."""
    euid = os.geteuid() if euid is None else euid
    return euid == 0 and (not sudo_user or sudo_user == "root")


def install(cfg, system: bool = True, write: bool = True, euid: Optional[int] = None,
            sudo_user: Optional[str] = None, home: Optional[str] = None, allow_root: bool = False):
    """(path or None, unit text): the unit for the invoking user, written unless `write` is False.

    As root with no user behind sudo (a container, a t2.nano with only root), the unit runs
    the scheduler as root: printing it is harmless, writing it needs `allow_root`, the
    same explicit choice as `scheduler start --allow-root`, which the unit then passes on.
    """
    import pwd

    euid = os.geteuid() if euid is None else euid
    if euid == 0 and not runs_as_root(euid, sudo_user):
        if not system:
            raise UsageError("a --user unit is installed by the user it runs as: run it without sudo")
        root_home = home or os.path.expanduser("~")
        if str(cfg.config_dir).startswith(root_home.rstrip("/") + "/"):
            raise UsageError(f"under sudo the config dir is root's ({cfg.config_dir}); pass --config-dir, or run "
                             f"`featherflow scheduler install --print | sudo tee /etc/systemd/system/{UNIT_NAME}` "
                             f"as {sudo_user}")
        user = sudo_user
    elif runs_as_root(euid, sudo_user):
        user = "root"
        if write and not allow_root:
            raise UsageError("a unit that runs the scheduler as root (every scheduled flow with it) needs "
                             "--allow-root, which its ExecStart then passes on (or, as the user it should run "
                             f"as: `featherflow scheduler install --print | sudo tee /etc/systemd/system/{UNIT_NAME}`)")
    else:
        user = pwd.getpwuid(euid).pw_name
    text = unit_text(cfg, user, system, allow_root=allow_root and user == "root")
    if not write:
        return None, text
    if system:
        path = Path("/etc/systemd/system") / UNIT_NAME
    else:
        path = Path(home or os.path.expanduser("~")) / ".config" / "systemd" / "user" / UNIT_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror}); print it instead: "
                         f"`featherflow scheduler install --print | sudo tee {path}`") from None
    return path, text


# -- the Python API (compatible with the original tool) -------------------------------------

@dataclass
class ScheduleEntry:
    name: str
    flow_name: str
    cron_expression: str
    tz: str
    enabled: bool
    description: str
    next_run: Optional[datetime]  # UTC
    last_run: Optional[datetime]  # the latest fired slot, UTC

    def to_dict(self) -> Dict:
        data = dict(self.__dict__)
        data["next_run"], data["last_run"] = _iso(self.next_run), _iso(self.last_run)
        return data


class ScheduleManager:
    """add/remove/list schedules in the database (errors are logged and return False, as before)."""

    def __init__(self, app):
        self.app = app

    def add_schedule(self, flow_name: str, cron_expression: str, enabled: bool = True,
                     description: Optional[str] = None, **options) -> bool:
        try:
            add_schedule(self.app, flow_name, cron=cron_expression, enabled=enabled,
                         description=description or "", **options)
        except FeatherflowError as exc:
            log.error("cannot add a schedule for %s: %s", flow_name, exc)
            return False
        return True

    def remove_schedule(self, name: str) -> bool:
        try:
            self.app.store.remove_schedule(name)
        except FeatherflowError as exc:
            log.warning("%s", exc)
            return False
        notify(self.app.store)
        return True

    def get_schedule(self, name: str) -> Optional[ScheduleEntry]:
        return next((s for s in self.get_all_schedules() if s.name == name), None)

    def get_all_schedules(self) -> List[ScheduleEntry]:
        store, now = self.app.store, utcnow()
        entries = []
        for s in store.list_schedules():
            fired = [slot for slot in store.recent_slots(s.id, 50) if slot.state == "fired"]
            entries.append(ScheduleEntry(s.name, s.flow_name, s.cron, s.tz, s.enabled, s.description,
                                         next_fire(store, s, now), schedules.as_utc(fired[0].slot_at) if fired else None))
        return entries


class SchedulerHandle:
    """start()/stop()/is_running() of the daemon for one database; schedules via .schedule_manager."""

    def __init__(self, app, check_interval: float = 60.0, allow_root: bool = False):
        self.app = app
        self.check_interval = check_interval
        self.allow_root = allow_root
        self.schedule_manager = ScheduleManager(app)

    def _cli(self, *argv) -> subprocess.CompletedProcess:
        cfg = self.app.config
        base = [sys.executable, "-m", "featherflow", "-f", str(cfg.flows_dir), "-t", str(cfg.tasks_dir),
                "-o", str(cfg.output_dir), "--config-dir", str(cfg.config_dir), "--db", str(cfg.db_path),
                "--log-dir", str(cfg.log_dir)]
        return subprocess.run(base + list(argv), capture_output=True, text=True, timeout=START_DEADLINE + 30)

    def start(self) -> bool:
        """Start the daemon detached; False if one already runs for this database."""
        argv = ["scheduler", "start", "--check-interval", f"{self.check_interval:g}"]
        done = self._cli(*argv + (["--allow-root"] if self.allow_root else []))
        if done.returncode == ConflictError.exit_code:
            return False
        if done.returncode:
            raise _failure(done.stderr.strip().removeprefix("error: ") or "scheduler start failed", done.returncode)
        return True

    def stop(self) -> bool:
        """Stop the daemon and wait for it; False if none ran."""
        return stop(self.app.store) is not None

    def is_running(self) -> bool:
        return _row_alive(self.app.store.scheduler_row())
