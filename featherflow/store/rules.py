"""The retention policy's rows (migration 0007): the rules, when the policy last ran, and
the queries that find what a rule lets go. What to do with them is store/retention.py.

A rule's scope is `*` (the global rule) or a flow name: a flow's own rule replaces the
global one for that flow, both of its limits together (an `off` rule exempts the flow).
With no global rule, nothing is deleted by itself except flows with a rule of their own.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Dict, List, Optional, Sequence

from peewee import SqliteDatabase, fn

from featherflow import clock, states
from featherflow.store.db import chunks
from featherflow.store.models import FlowRun, RetentionApplied, RetentionRule

GLOBAL = "*"


@dataclass(frozen=True)
class Rule:
    scope: str  # GLOBAL or a flow name
    older_than: Optional[timedelta]
    keep_last: Optional[int]
    enabled: bool = True
    updated_at: Optional[datetime] = None

    @property
    def active(self) -> bool:
        """Deletes something: on, with at least one limit."""
        return self.enabled and (self.older_than is not None or self.keep_last is not None)


@dataclass(frozen=True)
class Doomed:
    """What deleting a run needs, and no more (a batch of these stays small): its id, and
    what its directory is made of (paths.run_dir)."""
    id: int
    uid: str
    output_dir: str


@dataclass(frozen=True)
class Applied:
    at: datetime
    runs: int
    bytes: int


def effective(rules: Dict[str, Rule], flow: str) -> Optional[Rule]:
    """The rule that governs `flow`: its own, else the global one, else None."""
    return rules.get(flow) or rules.get(GLOBAL)


def age_text(age: timedelta) -> str:
    """`30d`, `12h`, `90m`, `45s`: the largest unit that divides it (what --older-than takes)."""
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe(rule: Optional[Rule]) -> str:
    """`older than 30d, keeping the newest 100 per flow`; `off` for no rule or an off one."""
    if rule is None or not rule.active:
        return "off"
    parts = []
    if rule.older_than is not None:
        parts.append(f"older than {age_text(rule.older_than)}")
    if rule.keep_last is not None:
        each = "per flow" if rule.scope == GLOBAL else "of the flow"
        parts.append(f"keeping the newest {rule.keep_last} {each}" if parts else
                     f"beyond the newest {rule.keep_last} {each}")
    return ", ".join(parts)


def as_rule(row: dict) -> Rule:
    seconds = row["older_than_seconds"]
    return Rule(scope=row["scope"], older_than=None if seconds is None else timedelta(seconds=seconds),
                keep_last=row["keep_last"], enabled=bool(row["enabled"]),
                updated_at=clock.from_text(row["updated_at"]))


class RuleStore:
    """The retention rules and the record of the latest application, in one database."""

    def __init__(self, db: SqliteDatabase):
        self.db = db

    def rules(self) -> Dict[str, Rule]:
        """{scope: rule}, the global one under GLOBAL."""
        return {row["scope"]: as_rule(row) for row in RetentionRule.select().order_by(RetentionRule.scope).dicts()}

    def set_rule(self, scope: str, older_than: Optional[timedelta], keep_last: Optional[int], enabled: bool,
                 now: datetime) -> Rule:
        """Replace the rule of `scope` (both limits: one not given is no limit)."""
        seconds = None if older_than is None else int(older_than.total_seconds())
        with self.db.atomic("IMMEDIATE"):
            RetentionRule.replace(scope=scope, older_than_seconds=seconds, keep_last=keep_last,
                                  enabled=enabled, updated_at=clock.to_text(now)).execute()
        return self.rules()[scope]

    def clear_rule(self, scope: str) -> bool:
        with self.db.atomic("IMMEDIATE"):
            return RetentionRule.delete().where(RetentionRule.scope == scope).execute() > 0

    def last_applied(self) -> Optional[Applied]:
        row = RetentionApplied.select().where(RetentionApplied.id == 1).dicts().first()
        if row is None:
            return None
        return Applied(at=clock.from_text(row["at"]), runs=row["runs"], bytes=row["bytes"])

    def record_applied(self, now: datetime, runs: int, size: int) -> None:
        with self.db.atomic("IMMEDIATE"):
            RetentionApplied.replace(id=1, at=clock.to_text(now), runs=runs, bytes=size).execute()

    def flow_names(self) -> List[str]:
        """Every flow that has runs in the database."""
        return [name for (name,) in FlowRun.select(FlowRun.flow_name).distinct().tuples()]

    def candidates(self, flow: str, rule: Rule, now: datetime, after: int = 0,
                   limit: Optional[int] = None) -> List[Doomed]:
        """The finished runs of `flow` that `rule` lets go, oldest first, with ids above `after`
        (at most `limit`): beyond its newest `keep_last` runs (every state counted, as `runs
        prune` counts them) and ended (or, never started, created) longer than `older_than`
        before `now`; with both limits a run goes only when both say so. Read through the
        (flow_name, id) index, a batch at a time, never by loading the flow's whole history."""
        if not rule.active:
            return []
        query = (FlowRun.select(FlowRun.id, FlowRun.uid, FlowRun.output_dir)
                 .where(FlowRun.flow_name == flow, FlowRun.id > after,
                        FlowRun.state.in_(list(states.RUN_FINISHED))))
        if rule.keep_last is not None and rule.keep_last > 0:
            newest = (FlowRun.select(FlowRun.id).where(FlowRun.flow_name == flow).order_by(FlowRun.id.desc())
                      .offset(rule.keep_last - 1).limit(1).scalar())
            if newest is None:  # fewer runs than it keeps
                return []
            query = query.where(FlowRun.id < newest)
        if rule.older_than is not None:
            cutoff = clock.to_text(now - rule.older_than)
            query = query.where(fn.COALESCE(FlowRun.ended_at, FlowRun.created_at) <= cutoff)
        query = query.order_by(FlowRun.id)
        if limit:
            query = query.limit(limit)
        return [Doomed(*row) for row in query.tuples()]

    def uids_of(self, ids: Sequence[int]) -> Dict[int, str]:
        """{id: uid} of those of `ids` still in the database."""
        found = {}
        for chunk in chunks(list(ids)):
            found.update(FlowRun.select(FlowRun.id, FlowRun.uid).where(FlowRun.id.in_(chunk)).tuples())
        return found
