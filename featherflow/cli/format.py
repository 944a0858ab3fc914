"""Turn runs and attempts into text for a terminal (their JSON is report.py's).

Pure functions: times are stored in UTC and shown in local time here;
anything that came from a task (ids, log lines) is made safe for a terminal.
"""

import json
import re
import shlex
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional, Tuple

from featherflow.report import elapsed, shown_outputs
from featherflow.store.records import Attempt, Run
from featherflow.text import duration, escape as safe, fit, local


def human_seconds(seconds: Optional[float]) -> str:
    """A duration for the CLI's tables: tenths of a second under a minute."""
    return duration(seconds, tenths=True)


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `15m`, `90s`, `2w` -> timedelta (ValueError otherwise)."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not match:
        raise ValueError(f"{text!r} is not an age (valid: a number and a unit s, m, h, d or w, e.g. 30d)")
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    return timedelta(**{units[match.group(2)]: int(match.group(1))})


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an age (`2h`, `7d`) or a local date/time (`2026-11-01`, `2026-11-01 03:00`); -> UTC."""
    try:
        return now - parse_age(text)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            moment = datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
        return moment.astimezone(timezone.utc)
    raise ValueError(f"{text!r} is not a time (valid: an age like 2h or 7d, or YYYY-MM-DD[ HH:MM[:SS]] local time)")


def outputs_line(outputs: Dict[str, str], width: int = 100) -> str:
    """`KEY=value, KEY=value` on one line, each value cut and escaped."""
    shown = shown_outputs(outputs) or {}
    return fit(safe(", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(shown.items()))),
               width)


def runs_table(runs: List[Run], now: datetime, width: int = 80) -> List[str]:
    """`runs list`: one line a run, newest first, fitting `width` columns."""
    head = f"{'ID':>6}  {'FLOW':<18} {'STATE':<11} {'TRIGGER':<8} {'STARTED':<11} {'TOOK':>7}"
    lines = [head]
    for run in runs:
        note = ""
        if run.failed_tasks:
            note = "failed: " + ", ".join(run.failed_tasks)
        elif run.state == "interrupted" and run.reason:
            note = run.reason
        line = (f"{run.id:>6}  {fit(safe(run.flow_name), 18):<18} {run.state:<11} {run.trigger:<8} "
                f"{local(run.started_at or run.created_at, '%m-%d %H:%M'):<11} "
                f"{human_seconds(elapsed(run.started_at, run.ended_at, now)):>7}")
        if note:
            line += "  " + fit(safe(note), max(0, width - len(line) - 2))
        lines.append(line[:width] if len(line) > width else line)
    return lines


def no_runs(filters: List[Tuple[str, str]], total: int) -> str:
    """What `runs list` says when it lists nothing: an empty history is not a filter that
    matched nothing (`filters`: the (option, value) pairs given; `total`: runs in the history)."""
    if not total:
        return "no runs yet (start one with `featherflow run FLOW`)"
    given = " ".join(f"{option} {shlex.quote(safe(value))}" for option, value in filters) or "the filters"
    return (f"no run matches {given} ({total} run(s) in the history; "
            "`featherflow runs list` without filters shows the latest)")


def run_detail(run: Run, order: List[str], attempts: List[Attempt], log_path, now: datetime,
               rules: Optional[Dict[str, str]] = None) -> List[str]:
    """`runs show`: the run, then every task in dependency order with its attempts, the rule
    of a task that has one (run_if, cleanup) and the outputs of an attempt that wrote some."""
    rules = rules or {}
    took = human_seconds(elapsed(run.started_at, run.ended_at, now))
    lines = [
        f"run {run.id}  {safe(run.flow_name)}  {run.state.upper()}" + (f"  ({safe(run.reason)})" if run.reason else ""),
        f"  trigger    {run.trigger}" + (f"  slot {local(run.scheduled_at)}" if run.scheduled_at else ""),
        f"  created    {local(run.created_at)}",
        f"  started    {local(run.started_at)}",
        f"  ended      {local(run.ended_at)}   took {took}",
        f"  params     {json.dumps(run.params, sort_keys=True, ensure_ascii=False)}",
        f"  flows dir  {run.flows_dir}",
        f"  tasks dir  {run.tasks_dir}",
        f"  output dir {run.output_dir}",
    ]
    if run.resumes:
        lines.append(f"  resumed    {run.resumes} time(s)")
    by_task: Dict[str, List[Attempt]] = {}
    for attempt in attempts:
        by_task.setdefault(attempt.task_id, []).append(attempt)
    width = max([len(t) for t in order] + [4])
    lines.append("")
    lines.append(f"  {'TASK':<{width}}  {'STATE':<15} {'TRY':>3} {'EXIT':>4} {'STARTED':<14} {'TOOK':>7}  NOTE")
    for task_id in order:
        if task_id in rules:
            lines.append(f"  {safe(task_id):<{width}}  rule: {rules[task_id]}")
        for attempt in by_task.get(task_id, []):
            lines.append(
                f"  {safe(task_id):<{width}}  {attempt.state:<15} {attempt.attempt:>3} "
                f"{'-' if attempt.exit_code is None else attempt.exit_code:>4} "
                f"{local(attempt.started_at, '%m-%d %H:%M:%S'):<14} "
                f"{human_seconds(elapsed(attempt.started_at, attempt.ended_at, now)):>7}  "
                f"{safe(attempt.reason or '')}".rstrip())
            if attempt.started_at:
                lines.append(f"  {'':<{width}}  log: {log_path(task_id, attempt.attempt)}")
            if attempt.outputs:
                lines.append(f"  {'':<{width}}  outputs: {outputs_line(attempt.outputs)}")
    return lines
