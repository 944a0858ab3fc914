"""The status page's HTML: pure functions of what site.py read and `now`.

Every value from the database, a flow or a log goes through `e()` (html.escape, quotes
included); the markup has no inline script or style (the Content-Security-Policy forbids
both) and links only to this server. Each page refreshes itself with <meta refresh>, so
it works without JavaScript.
"""

import html
import json
from datetime import datetime
from typing import Dict, Iterable, List, Optional, Sequence
from urllib.parse import quote

from featherflow import clock, report, states
from featherflow.dashboard.poller import RunInfo, Snapshot
from featherflow.text import duration, local

REFRESH = 10  # seconds between reloads of a page that changes
_BAD = {states.FAILED, states.INTERRUPTED, states.UPSTREAM_FAILED, states.CANCELLED}


def e(value) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def state(value: Optional[str]) -> str:
    name = value if value in states.ATTEMPT_STATES + states.RUN_STATES else "other"
    return f'<span class="st st-{e(name)}">{e(value)}</span>'


def when(moment: Optional[datetime]) -> str:
    return f'<time datetime="{e(clock.iso(moment))}">{e(local(moment))}</time>' if moment else "-"


def took(start, end, now) -> str:
    return e(duration(report.elapsed(start, end, now)))


def countdown(moment: Optional[datetime], now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = (clock.as_utc(moment) - clock.as_utc(now)).total_seconds()
    return e(f"in {duration(seconds)}" if seconds >= 0 else f"{duration(-seconds)} late")


def run_link(run_id: int) -> str:
    return f'<a href="/runs/{int(run_id)}">{int(run_id)}</a>'


def log_href(run_id: int, task_id: str, attempt: int, raw: bool = False) -> str:
    return f"/runs/{int(run_id)}/logs/{quote(task_id, safe='')}/{int(attempt)}" + ("/raw" if raw else "")


def table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escaped by the caller); the head is plain text."""
    rows = list(rows)
    if not rows:
        return '<p class="none">none</p>'
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td data-label="{e(h)}">{c}</td>' for h, c in zip(head, row)) + "</tr>"
                   for row in rows)
    return f'<table class="{e(cls)}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def layout(title: str, body: str, now: datetime, refresh: Optional[int] = REFRESH) -> str:
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"{meta}<title>{e(title)} · featherflow</title>"
            "<link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>"
            "<header><a class=\"home\" href=\"/\">featherflow</a><nav><a href=\"/runs\">runs</a> "
            "<a href=\"/api/runs\">json</a></nav></header>"
            f"<main><h1>{e(title)}</h1>{body}</main>"
            f"<footer>read {e(local(now))}; read only</footer></body></html>\n")


def problem(snap: Snapshot) -> str:
    return f'<p class="alert">{e(snap.problem)}</p>' if snap.problem else ""


# -- home -----------------------------------------------------------------------

def home(snap: Snapshot, health, failures, extras: Dict, now: datetime) -> str:
    # doctor's verdict (a stopped scheduler is fine while no schedule is enabled); /healthz is stricter
    finding = health.finding
    good = finding.status != "problem" if finding is not None else health.ok
    parts = [problem(snap),
             f'<section id="scheduler"><h2>Scheduler</h2><p class="health {"ok" if good else "bad"}">'
             f'{"ok" if good else "PROBLEM"}: {e(health.reason)}</p>']
    if finding is not None and finding.fix and not good:
        parts.append(f'<p class="fix">fix: {e(finding.fix)}</p>')
    if snap.scheduler is not None:
        parts.append(f"<p>pid {e(snap.scheduler.pid)}, started {when(snap.scheduler.started_at)}, "
                     f"last heartbeat {when(snap.scheduler.heartbeat_at)}</p>")
    parts.append("</section>")
    parts.append('<section id="running"><h2>Running</h2>' + table(
        ("run", "flow", "state", "progress", "started", "took"),
        ([run_link(r.id), e(r.flow_name), state(r.state) + (' <span class="gone">process gone</span>' if r.gone else ""),
          progress(r), when(r.started_at), took(r.started_at, r.ended_at, now)] for r in snap.running),
        "runs") + "</section>")
    parts.append('<section id="next"><h2>Next</h2>' + table(
        ("schedule", "flow", "cron", "next", "last"),
        ([f'<a href="/schedules/{quote(s.name, safe="")}">{e(s.name)}</a>', e(s.flow_name), e(f"{s.cron} ({s.tz})"),
          (countdown(s.next_at, now) + " " + when(s.next_at)) if s.enabled else "disabled" + (
              f" {e(s.next_error)}" if s.next_error else ""),
          last_slot(s)] for s in snap.schedules), "schedules") + "</section>")
    parts.append('<section id="failures"><h2>Recent failures</h2>' + failures_html(failures, now) + "</section>")
    parts.append('<section id="recent"><h2>Recent runs</h2>' + runs_table(snap.recent, now)
                 + '<p><a href="/runs">all runs</a></p></section>')
    parts.append(notifications(extras.get("outbox", {})))
    if extras.get("backfills"):
        parts.append('<section id="backfill"><h2>Backfills</h2>' + table(
            ["id", "schedule", "range", "state", "progress"],
            ([e(b.id), f'<a href="/schedules/{quote(name, safe="")}">{e(name)}</a>',
              f"{when(b.range_from)} to {when(b.range_to)}", state(b.state), backfill_progress(b)]
             for b, name in extras["backfills"])) + "</section>")
    for name, rows in extras.get("tables", {}).items():
        parts.append(f'<section id="{e(name)}"><h2>{e(name.capitalize())}s</h2>{generic(rows)}</section>')
    return layout("Status", "".join(parts), now)


def progress(r: RunInfo) -> str:
    total, done = r.counts.total, r.counts.done
    return f'<progress value="{done}" max="{max(total, 1)}"></progress> {done}/{total}' + (
        f' <span class="bad">{r.counts.failed} failed</span>' if r.counts.failed else "")


def backfill_progress(b) -> str:
    counts = b.counts or {}
    total = sum(counts.get(k, 0) for k in ("pending", "launched", "done"))
    done = counts.get("done", 0)
    return f'<progress value="{done}" max="{max(total, 1)}"></progress> {done}/{total}'


def last_slot(s) -> str:
    if s.last_slot_at is None:
        return "never fired"
    text = f"{e(s.last_state)} {when(s.last_slot_at)}"
    if s.last_run_id:
        text += f" run {run_link(s.last_run_id)} {state(s.last_run_state or 'deleted')}"
    if s.last_reason:
        text += f" ({e(s.last_reason)})"
    return text


def runs_table(runs: Sequence[RunInfo], now: datetime) -> str:
    return table(("run", "flow", "state", "trigger", "started", "took", "note"),
                 ([run_link(r.id), e(r.flow_name), state(r.state), e(r.trigger), when(r.started_at or r.created_at),
                   took(r.started_at, r.ended_at, now),
                   e(("failed: " + ", ".join(r.failed_tasks)) if r.failed_tasks else (r.reason or ""))]
                  for r in runs), "runs")


def failures_html(failures, now: datetime) -> str:
    if not failures:
        return '<p class="none">none</p>'
    out = []
    for f in failures:
        head = f"run {run_link(f.run_id)} {e(f.flow_name)} {state(f.state)} {when(f.ended_at)}"
        if f.task_id:
            head += (f' task <a href="{e(log_href(f.run_id, f.task_id, f.attempt))}">{e(f.task_id)}'
                     f"</a> attempt {int(f.attempt)}")
        lines = "".join(e(line) + "\n" for line in f.lines)
        out.append(f'<div class="failure"><p>{head}</p>' + (f"<pre>{lines}</pre>" if lines else "") + "</div>")
    return "".join(out)


def notifications(outbox: Dict[str, int]) -> str:
    waiting = {k: v for k, v in outbox.items() if k != "sent" and v}
    if not waiting:
        return ""
    text = ", ".join(f"{v} {e(k)}" for k, v in sorted(waiting.items()))
    cls = "bad" if outbox.get("failed") else ""
    return (f'<section id="notifications"><h2>Notifications</h2><p class="{cls}">{text} '
            "(<code>featherflow notify log</code> shows each)</p></section>")


def generic(rows: List[Dict]) -> str:
    if not rows:
        return '<p class="none">none</p>'
    head = list(rows[0])
    return table(head, ([e(row[k]) for k in head] for row in rows))


# -- a run ----------------------------------------------------------------------

def run_page(snap: Snapshot, run, attempts, order: List[str], depends: Dict[str, List[str]], now: datetime) -> str:
    info = snap.detail.run if snap.detail is not None else None
    by_task: Dict[str, list] = {}
    for a in attempts:
        by_task.setdefault(a.task_id, []).append(a)
    order = list(order) + sorted(set(by_task) - set(order))
    rows = []
    for task_id in order:
        mine = by_task.get(task_id) or [None]
        for a in mine:
            if a is None:
                rows.append([e(task_id), state("-"), "-", "-", "-", "-", e(", ".join(depends.get(task_id, []))), ""])
                continue
            log = (f'<a href="{e(log_href(run.id, task_id, a.attempt))}">log</a>' if a.started_at else "-")
            rows.append([e(task_id), state(a.state), e(a.attempt), when(a.started_at),
                         took(a.started_at, a.ended_at, now), e(a.exit_code),
                         e(", ".join(depends.get(task_id, [])) or "-"), log + (f" {e(a.reason)}" if a.reason else "")])
    head = [f"<p>{state(run.state)} {e(run.flow_name)}"
            + (' <span class="gone">its process is gone</span>' if info is not None and info.gone else "")
            + (f" ({e(run.reason)})" if run.reason else "") + "</p>",
            '<dl class="facts">',
            f"<dt>trigger</dt><dd>{e(run.trigger)}"
            + (f" slot {when(run.scheduled_at)}" if run.scheduled_at else "") + "</dd>",
            f"<dt>created</dt><dd>{when(run.created_at)}</dd>",
            f"<dt>started</dt><dd>{when(run.started_at)}</dd>",
            f"<dt>ended</dt><dd>{when(run.ended_at)}</dd>",
            f"<dt>took</dt><dd>{took(run.started_at, run.ended_at, now)}</dd>",
            f"<dt>params</dt><dd><code>{e(json.dumps(run.params, sort_keys=True, ensure_ascii=False))}</code></dd>",
            f"<dt>resumed</dt><dd>{e(run.resumes)} time(s)</dd>",
            "</dl>"]
    body = (problem(snap) + "".join(head) + "<h2>Tasks</h2>"
            + table(("task", "state", "try", "started", "took", "exit", "after", "log"), rows, "tasks")
            + f'<p><a href="/api/runs/{int(run.id)}">json</a></p>')
    refresh = REFRESH if run.state in (states.QUEUED, states.RUNNING) else None
    return layout(f"Run {int(run.id)}", body, now, refresh)


def log_page(run, attempt, lines, skipped: int, size: int, error: Optional[str], now: datetime) -> str:
    raw = log_href(run.id, attempt.task_id, attempt.attempt, raw=True)
    intro = (f"<p>run {run_link(run.id)} {e(run.flow_name)}, task {e(attempt.task_id)} attempt "
             f"{int(attempt.attempt)}: {state(attempt.state)}"
             + (f" exit {e(attempt.exit_code)}" if attempt.exit_code is not None else "") + "</p>")
    if error:
        body = intro + f'<p class="none">{e(error)}</p>'
    else:
        note = f"<p>the last {len(lines)} line(s) of {e(size)} bytes" + (
            f" (the first {e(skipped)} bytes not shown)" if skipped else "") + f'; <a href="{e(raw)}">whole file</a></p>'
        body = intro + note + '<pre class="log">' + "".join(e(line) + "\n" for line in lines) + "</pre>"
    refresh = REFRESH if attempt.state in (states.PENDING, states.RUNNING) else None
    return layout(f"Log of {attempt.task_id}", body, now, refresh)


# -- schedules and history ---------------------------------------------------------

def schedule_page(schedule, next_at, slots, now: datetime) -> str:
    s = schedule
    facts = ('<dl class="facts">'
             f"<dt>flow</dt><dd>{e(s.flow_name)}</dd><dt>cron</dt><dd><code>{e(s.cron)}</code> in {e(s.tz)}</dd>"
             f"<dt>state</dt><dd>{'enabled' if s.enabled else 'disabled'}</dd>"
             f"<dt>next</dt><dd>{countdown(next_at, now)} {when(next_at)}</dd>"
             f"<dt>policy</dt><dd>catchup={e(s.catchup)} overlap={e(s.overlap)} on-interrupt={e(s.on_interrupt)}</dd>"
             "</dl>" + (f"<p>{e(s.description)}</p>" if s.description else ""))
    rows = ([when(x.slot_at), e(x.state),
             (run_link(x.run_id) + " " + state(x.run_state or "deleted")) if x.run_id else "-", e(x.reason or "")]
            for x in slots)
    body = facts + "<h2>Recent slots</h2>" + table(("slot", "state", "run", "reason"), rows, "slots")
    return layout(f"Schedule {s.name}", body, now)


def history_page(runs, now: datetime, before: Optional[int], page: int) -> str:
    rows = ([run_link(r.id), e(r.flow_name), state(r.state), e(r.trigger), when(r.started_at or r.created_at),
             took(r.started_at, r.ended_at, now), e(("failed: " + ", ".join(r.failed_tasks)) if r.failed_tasks
                                                   else (r.reason or ""))] for r in runs)
    body = table(("run", "flow", "state", "trigger", "started", "took", "note"), rows, "runs")
    if len(runs) == page:
        body += f'<p><a href="/runs?before={int(runs[-1].id)}">older</a></p>'
    return layout("Runs" + (f" before {int(before)}" if before else ""), body, now)


def error_page(status: int, message: str, now: datetime) -> str:
    return layout(f"{int(status)}", f'<p class="alert">{e(message)}</p>', now, refresh=None)


def login_page(now: datetime) -> str:
    return layout("Login", "<p>Open <code>/login?token=TOKEN</code> with the token of "
                  "<code>featherflow serve --new-token</code>.</p>", now, refresh=None)
