"""The pools' part of the store: pool rows (name, slots), and who uses each pool now.

A slot is not a row: it is a `flock` on a file beside the database, held by the
run's engine (engine.bash); what is recorded is the attempts, so "in use" is a
running attempt of a pool task in a running run, and "waiting" a pending one
whose reason says it waits for a slot (WAITING, written by engine.bash).
"""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Dict, Iterable, List, Optional

from peewee import SqliteDatabase

from featherflow import clock, rules, states
from featherflow.errors import UsageError
from featherflow.store.models import FlowRun, Pool as PoolModel, RunSnapshot, TaskAttempt
from featherflow.store.records import parse_times

DEFAULT_SLOTS = 1  # a pool that has no row: one task at a time
MAX_SLOTS = 1000  # a waiting task tries each slot file in turn: keep that short
MAX_SLOTS = 1000  # a waiting task tries each slot file in turn: keep that short
WAITING = "waiting for a slot of pool "  # the reason engine.bash gives a pending attempt


@dataclass
class Pool:
    name: str
    slots: int
    defined: bool  # False: named by a task only, with DEFAULT_SLOTS
    created_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None


@dataclass
class PoolUse:
    """An attempt of a pool task in a running run: holding a slot or waiting for one."""
    pool: str
    run_id: int
    flow_name: str
    task_id: str
    attempt: int
    state: str  # "running" (holds a slot) or "waiting"
    since: Optional[datetime]


@dataclass
class PoolView:
    """A pool as `pool list` shows it: its slots and who holds or waits for them."""
    pool: Pool
    running: List[PoolUse]
    waiting: List[PoolUse]


def check_name(name: str) -> str:
    if not rules.POOL_RE.fullmatch(name or ""):
        raise UsageError(f"invalid pool name {name!r} (valid: {rules.POOL_VALID})")
    return name


def check_slots(slots) -> int:
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
        raise UsageError(f"invalid number of slots {slots!r} (valid: a whole number from 1 to {MAX_SLOTS})")
    return slots


class PoolStore:
    def __init__(self, db: SqliteDatabase):
        self.db = db

    def set_pool(self, name: str, slots: int, now: datetime) -> Pool:
        """Create pool `name` or change its number of slots."""
        check_name(name)
        check_slots(slots)
        stamp = clock.to_text(now)
        with self.db.atomic("IMMEDIATE"):
            updated = PoolModel.update(slots=slots, updated_at=stamp).where(PoolModel.name == name).execute()
            if not updated:
                PoolModel.insert(name=name, slots=slots, created_at=stamp, updated_at=stamp).execute()
        return self.get_pool(name)

    def get_pool(self, name: str) -> Pool:
        """The pool's row, or the default of a pool that has none."""
        row = PoolModel.select().where(PoolModel.name == name).dicts().first()
        if row is None:
            return Pool(name, DEFAULT_SLOTS, False)
        row = parse_times(row, "created_at", "updated_at")
        return Pool(row["name"], row["slots"], True, row["created_at"], row["updated_at"])

    def list_pools(self) -> List[Pool]:
        rows = PoolModel.select().order_by(PoolModel.name).dicts()
        return [Pool(r["name"], r["slots"], True, r["created_at"], r["updated_at"])
                for r in (parse_times(row, "created_at", "updated_at") for row in rows)]

    def remove_pool(self, name: str) -> Pool:
        """Drop the row: the pool's tasks go back to DEFAULT_SLOTS in the runs that start next."""
        pool = self.get_pool(check_name(name))
        if not pool.defined:
            known = ", ".join(p.name for p in self.list_pools()) or "none"
            raise UsageError(f"no pool named {name!r} (defined pools: {known})")
        with self.db.atomic("IMMEDIATE"):
            PoolModel.delete().where(PoolModel.name == name).execute()
        return pool

    def slots(self, names: Iterable[str]) -> Dict[str, int]:
        """Name -> slots for these pools (DEFAULT_SLOTS for those without a row)."""
        names = sorted(set(names))
        found = {name: DEFAULT_SLOTS for name in names}
        if names:
            query = PoolModel.select(PoolModel.name, PoolModel.slots).where(PoolModel.name.in_(names))
            found.update({name: slots for name, slots in query.tuples()})
        return found

    def usage(self) -> List[PoolUse]:
        """Every open attempt of a pool task in a running run, oldest first.

        The pool of a task is read from the run's stored definition, since that
        is what its engine runs (a flow file edited meanwhile changes nothing).
        """
        runs = (FlowRun.select(FlowRun.id, FlowRun.flow_name, RunSnapshot.snapshot)
                .join(RunSnapshot, on=(RunSnapshot.run == FlowRun.id))
                .where(FlowRun.state == states.RUNNING).tuples())
        found = []
        for run_id, flow_name, snapshot in runs:
            try:
                pools = rules.pools_of(json.loads(snapshot))
            except (ValueError, AttributeError, TypeError):
                continue
            if not pools:
                continue
            query = (TaskAttempt.select(TaskAttempt.task_id, TaskAttempt.attempt, TaskAttempt.state,
                                        TaskAttempt.reason, TaskAttempt.created_at, TaskAttempt.started_at)
                     .where(TaskAttempt.run == run_id,
                            TaskAttempt.state.in_([states.PENDING, states.RUNNING])).tuples())
            for task_id, attempt, state, reason, created, started in query:
                pool = pools.get(task_id)
                if pool is None:
                    continue
                if state == states.RUNNING:
                    found.append(PoolUse(pool, run_id, flow_name, task_id, attempt, "running",
                                         clock.from_text(started)))
                elif (reason or "").startswith(WAITING):
                    found.append(PoolUse(pool, run_id, flow_name, task_id, attempt, "waiting",
                                         clock.from_text(created)))
        found.sort(key=lambda u: (u.pool, u.state != "running", u.run_id, u.task_id))
        return found

    def overview(self) -> List[PoolView]:
        """Every defined pool, and every pool a running task names, with its users."""
        use = self.usage()
        pools = {p.name: p for p in self.list_pools()}
        for u in use:
            pools.setdefault(u.pool, Pool(u.pool, DEFAULT_SLOTS, False))
        return [PoolView(pools[name], [u for u in use if u.pool == name and u.state == "running"],
                         [u for u in use if u.pool == name and u.state == "waiting"])
                for name in sorted(pools)]
