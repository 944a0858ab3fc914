"""The JSON document a notification carries, and its one-line summary.

Built once per event, outside every transaction (it reads log files), from the
records the store gives. Only ever extended: a receiver may rely on every field
listed in the README's payload reference.
"""

import socket
from collections import deque
from datetime import datetime
from typing import Dict, List, Optional

from featherflow import clock, states, text
from featherflow.paths import log_path

TAIL_LINES = 20
TAIL_LINE_CHARS = 500
FIELDS = ("event", "flow", "run_id", "run_uid", "state", "reason", "trigger", "schedule", "scheduled_at",
          "started_at", "ended_at", "duration_seconds", "failed_tasks", "host", "command", "key",
          "summary", "test", "failures_since_last_alert", "detail")


def hostname() -> str:
    return socket.gethostname() or "localhost"


def log_tail(path, lines: int = TAIL_LINES) -> List[str]:
    """The last `lines` lines of a log, control characters escaped, each line bounded."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            tail = deque(handle.read().splitlines(), maxlen=lines)
    except OSError:
        return []
    return [text.escape(line.decode("utf-8", "replace"), keep="\t")[:TAIL_LINE_CHARS] for line in tail]


def _blank(kind: str, host: str) -> Dict:
    doc = {name: None for name in FIELDS}
    doc.update(event=kind, host=host, failed_tasks=[], test=False, failures_since_last_alert=0, detail={})
    return doc


def for_run(kind: str, run, attempts: Dict, schedule_name: Optional[str], host: str) -> Dict:
    """A run's event: its times, and for each failed task its exit code and log tail."""
    doc = _blank(kind, host)
    duration = ((run.ended_at - run.started_at).total_seconds()
                if run.ended_at and run.started_at else None)
    doc.update(flow=run.flow_name, run_id=run.id, run_uid=run.uid, state=run.state, reason=run.reason,
               trigger=run.trigger, schedule=schedule_name, scheduled_at=clock.iso(run.scheduled_at),
               started_at=clock.iso(run.started_at), ended_at=clock.iso(run.ended_at),
               duration_seconds=round(duration, 3) if duration is not None else None,
               command=f"featherflow runs show {run.id}")
    for attempt in attempts.values():
        if attempt.state in (states.FAILED, states.INTERRUPTED):
            doc["failed_tasks"].append({
                "task_id": attempt.task_id, "attempt": attempt.attempt, "exit_code": attempt.exit_code,
                "reason": attempt.reason, "log_tail": log_tail(log_path(run, attempt.task_id, attempt.attempt))})
    return doc


def for_schedule(kind: str, schedule_name: Optional[str], slot_at: Optional[datetime],
                 detail: Dict, host: str) -> Dict:
    doc = _blank(kind, host)
    doc.update(schedule=schedule_name, scheduled_at=clock.iso(slot_at), reason=detail.get("reason"),
               detail=detail, flow=detail.get("flow"))
    if schedule_name:
        doc["command"] = f"featherflow schedule show {schedule_name}"
    return doc


def summary(doc: Dict) -> str:
    """`nightly failed on pi4 at 03:00:12: transform_a exit 7`, local time."""
    kind, host = doc["event"], doc["host"]
    when = doc.get("ended_at") or doc.get("started_at") or doc.get("scheduled_at")
    at = f" at {text.local(clock.from_text(when), '%H:%M:%S')}" if when else ""
    if kind == "test":
        return f"featherflow test notification from {host}"
    if kind == "missed":
        slot = text.local(clock.from_text(doc["scheduled_at"]), "%Y-%m-%d %H:%M") if doc["scheduled_at"] else "?"
        return f"schedule {doc['schedule']} missed its {slot} slot on {host}: {doc['reason']}"
    if kind == "scheduler":
        detail = doc["detail"]
        return (f"featherflow scheduler on {host} is back after {text.duration(detail.get('down_seconds'))} "
                f"down; {detail.get('missed_count', 0)} slot(s) fell in that time")
    if kind == "heartbeat":
        return f"featherflow scheduler on {host} is alive"
    words = {"succeeded": "succeeded", "recovered": "recovered", "failed": "failed", "started": "started",
             "interrupted": "was interrupted", "cancelled": "was cancelled"}
    line = f"{doc['flow']} {words.get(kind, kind)} on {host}{at}"
    failed = doc.get("failed_tasks") or []
    if failed:
        line += ": " + ", ".join(
            f"{t['task_id']} exit {t['exit_code']}" if t["exit_code"] is not None else f"{t['task_id']} {t['reason'] or 'failed'}"
            for t in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
    elif kind in ("failed", "interrupted", "cancelled") and doc.get("reason"):
        line += f": {doc['reason']}"
    if doc.get("failures_since_last_alert", 0) > 1:
        line += f" ({doc['failures_since_last_alert']} failures since the last alert)"
    return text.escape(line, keep="")


def test_payload(host: str, now: datetime) -> Dict:
    doc = _blank("test", host)
    doc.update(test=True, key=f"test/{clock.iso(now)}", ended_at=clock.iso(now))
    doc["summary"] = summary(doc)
    return doc
