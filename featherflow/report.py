"""The stable JSON documents of runs, attempts and schedules (README, "JSON output").

One code path for every reader: the CLI's `--json` and the status page's `/api/...`
build their documents here, from plain records (store/records.py) and `now`. Pure
functions: no store, no I/O.
"""

from datetime import datetime
from typing import Dict, List, Optional, Sequence

from featherflow import clock, paths

BACKFILLS_SHOWN = 5  # the newest backfills a schedule's document lists


def elapsed(start: Optional[datetime], end: Optional[datetime], now: datetime) -> Optional[float]:
    """Seconds from `start` to `end` (or to `now` while it lasts); None before it started."""
    if start is None:
        return None
    return max(0.0, (clock.as_utc(end or now) - clock.as_utc(start)).total_seconds())


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)


def run_json(run, now: datetime) -> Dict:
    """A run (`runs list --json`, `/api/runs`)."""
    return {
        "id": run.id, "uid": run.uid, "flow": run.flow_name, "state": run.state,
        "trigger": run.trigger, "params": run.params, "schedule_id": run.schedule_id,
        "scheduled_at": clock.iso(run.scheduled_at), "created_at": clock.iso(run.created_at),
        "started_at": clock.iso(run.started_at), "ended_at": clock.iso(run.ended_at),
        "duration_seconds": _round(elapsed(run.started_at, run.ended_at, now)),
        "reason": run.reason, "failed_tasks": run.failed_tasks, "resumes": run.resumes,
        "flows_dir": run.flows_dir, "tasks_dir": run.tasks_dir, "output_dir": run.output_dir,
        "max_parallel": run.max_parallel, "pid": run.pid,
    }


def attempt_json(attempt, log: str, now: datetime) -> Dict:
    return {
        "attempt": attempt.attempt, "state": attempt.state, "exit_code": attempt.exit_code,
        "reason": attempt.reason, "started_at": clock.iso(attempt.started_at),
        "ended_at": clock.iso(attempt.ended_at),
        "duration_seconds": _round(elapsed(attempt.started_at, attempt.ended_at, now)),
        "log": log, "outputs": shown_outputs(attempt.outputs),
    }


def shown_outputs(outputs: Optional[Dict[str, str]]) -> Optional[Dict[str, str]]:
    """Outputs as printable text: bytes that were not UTF-8 (kept as they are for the
    tasks) shown as U+FFFD."""
    if outputs is None:
        return None
    return {key: value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            for key, value in outputs.items()}


def run_document(run, order: Sequence[str], attempts: List, now: datetime,
                 rules: Optional[Dict[str, str]] = None) -> Dict:
    """A run with its tasks in `order` (dependency order), each with its attempts and its
    rule (`runs show --json`, `/api/runs/ID`); `rules` defaults to the run's snapshot's."""
    if rules is None:
        from featherflow.rules import task_rules  # lazy: `runs list` needs no rules

        rules = task_rules(run.snapshot)
    order = list(order) + sorted({a.task_id for a in attempts} - set(order))
    data = run_json(run, now)
    data["tasks"] = [
        {"id": task_id,
         "state": ([a.state for a in attempts if a.task_id == task_id] or ["-"])[-1],
         "attempts": [attempt_json(a, str(paths.log_path(run, a.task_id, a.attempt)), now)
                      for a in attempts if a.task_id == task_id],
         "rule": rules.get(task_id, "all_success")}
        for task_id in order]
    return data


def schedule_document(schedule, recent: List, next_at: Optional[datetime], backfills: Sequence = ()) -> Dict:
    """A schedule with its next fire time, its latest slots and its newest backfills, newest
    first (`schedule list/show --json`, `/api/schedules`)."""
    data = {key: getattr(schedule, key) for key in (
        "name", "flow_name", "cron", "tz", "params", "catchup", "overlap", "on_interrupt", "enabled",
        "description", "flows_dir", "tasks_dir", "output_dir")}
    data.update(id=schedule.id, created_at=clock.iso(schedule.created_at), updated_at=clock.iso(schedule.updated_at),
                next_at=clock.iso(next_at))
    data["slots"] = [{"slot_at": clock.iso(s.slot_at), "state": s.state, "reason": s.reason, "run_id": s.run_id,
                      "run_state": s.run_state} for s in recent]
    data["backfills"] = [{"id": b.id, "state": b.state, "from": clock.iso(b.range_from), "to": clock.iso(b.range_to),
                          "progress": b.counts} for b in backfills]
    return data
