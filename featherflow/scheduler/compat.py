"""The original tool's Python API for schedules and the daemon, over this package's services.

    from featherflow import scheduler
    s = scheduler.get_scheduler(flows_dir="flows", tasks_dir="tasks", output_dir="out")
    s.schedule_manager.add_schedule("etl", "30 3 * * *", description="nightly")  # True / False
    s.schedule_manager.get_all_schedules()  # [ScheduleEntry(name, flow_name, cron_expression, ...)]
    s.start(); s.is_running(); s.stop()

Kept so scripts written for the original tool run unchanged: its errors are logged and
answered with False, as before. It builds its own config and store (as the CLI does)
and calls the same functions as the CLI: admin for schedules, control for the daemon.
"""

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Dict, List, Optional

from featherflow import clock, config as configmod
from featherflow.config import Config
from featherflow.errors import ConflictError, FeatherflowError
from featherflow.scheduler import admin, control
from featherflow.store.db import open_database
from featherflow.store import Store

log = logging.getLogger(__name__)


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
        data["next_run"], data["last_run"] = clock.iso(self.next_run), clock.iso(self.last_run)
        return data


class ScheduleManager:
    """add/remove/list schedules in the database (errors are logged and return False, as before)."""

    def __init__(self, config: Config, store: Store):
        self.config = config
        self.store = store

    def add_schedule(self, flow_name: str, cron_expression: str, enabled: bool = True,
                     description: Optional[str] = None, **options) -> bool:
        try:
            admin.add_schedule(self.config, self.store, flow_name, cron=cron_expression, enabled=enabled,
                               description=description or "", **options)
        except FeatherflowError as exc:
            log.error("cannot add a schedule for %s: %s", flow_name, exc)
            return False
        return True

    def remove_schedule(self, name: str) -> bool:
        try:
            self.store.schedules.remove_schedule(name)
        except FeatherflowError as exc:
            log.warning("%s", exc)
            return False
        control.notify(self.store)
        return True

    def get_schedule(self, name: str) -> Optional[ScheduleEntry]:
        return next((s for s in self.get_all_schedules() if s.name == name), None)

    def get_all_schedules(self) -> List[ScheduleEntry]:
        store, now = self.store, clock.now()
        entries = []
        for s in store.schedules.list_schedules():
            fired = [slot for slot in store.schedules.recent_slots(s.id, 50) if slot.state == "fired"]
            entries.append(ScheduleEntry(s.name, s.flow_name, s.cron, s.tz, s.enabled, s.description,
                                         control.next_fire(store, s, now),
                                         clock.as_utc(fired[0].slot_at) if fired else None))
        return entries


class SchedulerHandle:
    """start()/stop()/is_running() of the daemon for one database; schedules via .schedule_manager."""

    def __init__(self, config: Config, store: Store, check_interval: float = 60.0, allow_root: bool = False):
        self.config = config
        self.store = store
        self.check_interval = check_interval
        self.allow_root = allow_root
        self.schedule_manager = ScheduleManager(config, store)

    def start(self) -> bool:
        """Start the daemon detached, as `featherflow scheduler start` does; False if one already
        runs for this database (any other FeatherflowError is raised)."""
        # Forked from this process: no connection of ours crosses the fork (the store reopens
        # on its next use), as none does when the CLI starts it.
        self.store.close()
        try:
            control.start_background(self.config, self.check_interval, self.allow_root,
                                     configmod.scheduler_env()["fault"])
        except FeatherflowError as exc:
            if exc.exit_code == ConflictError.exit_code:  # the daemon's "already runs", through its pipe
                return False
            raise
        return True

    def stop(self) -> bool:
        """Stop the daemon and wait for it; False if none ran."""
        return control.stop(self.store) is not None

    def is_running(self) -> bool:
        return control.is_running(self.store)

    def close(self) -> None:
        """Close the database connection (the daemon, if started, keeps running)."""
        self.store.close()


def get_scheduler(flows_dir="./flows", tasks_dir="./tasks", output_dir="./featherflow_output",
                  config_dir=None, log_dir=None, check_interval=60, db=None, allow_root=False) -> SchedulerHandle:
    """The scheduler of the database these dirs resolve to (config_dir/db as for the CLI):
    start()/stop()/is_running(), and schedules through .schedule_manager."""
    config = configmod.resolve(flows_dir, tasks_dir, output_dir, config_dir, db, log_dir)
    return SchedulerHandle(config, Store(open_database(config.db_path, config.config_dir)),
                           check_interval, allow_root)
