"""The dashboard's drawing: a pure function from a Snapshot to lines for a terminal.

`render(snapshot, state, width, height, now)` returns lines of at most
`width` columns, so every screen -- wide, narrow, tiny, hostile task ids --
is tested without a terminal. Nothing here reads a file or the clock.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import List, Optional, Sequence, Tuple

from featherflow import clock, states
from featherflow.text import cells, clean, duration, fit, fit_left, local, megabytes, pad, take
from featherflow.dashboard.keys import ViewState, body_height, page_size

MIN_WIDTH, MIN_HEIGHT = 40, 8
SHORT = "%m-%d %H:%M"  # how the screen shows a time


# -- rows ----------------------------------------------------------------------

Segment = Tuple[str, str]  # (text, style): "", title, head, ok, bad, warn, run, dim, key


@dataclass(frozen=True)
class Row:
    segments: Tuple[Segment, ...] = ()
    selected: bool = False

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


def _row(*segments: Segment, selected: bool = False) -> Row:
    return Row(tuple(s for s in segments if s[0]), selected)


def _clip(row: Row, width: int, ellipsis: str) -> Row:
    """At most `width` columns, with an ellipsis where content was cut; a selected row
    is padded so that its bar spans the screen."""
    cut = cells(row.text.rstrip()) > width
    room = width - cells(ellipsis) if cut else width
    out: List[Segment] = []
    used = 0
    for text, style in row.segments:
        if used >= room:
            break
        piece = take(text, room - used)
        out.append((piece, style))
        used += cells(piece)
    if cut:
        out.append((ellipsis, out[-1][1] if out else ""))
        used += cells(ellipsis)
    if row.selected and used < width:
        out.append((" " * (width - used), ""))
    return Row(tuple(seg for seg in out if seg[0]), row.selected)


@dataclass(frozen=True)
class Col:
    title: str
    width: int  # the least it gets
    flex: bool = False  # takes spare room, up to its widest cell
    right: bool = False
    drop: int = 0  # 0: always shown; when narrow, the highest number goes first


def _table(cols: Sequence[Col], cells_rows: List[List[Segment]], width: int, ellipsis: str):
    """Header and rows laid out in `width` columns: drop columns, then share spare room."""
    keep = list(range(len(cols)))

    def need(indexes):
        return sum(cols[i].width for i in indexes) + max(0, len(indexes) - 1)

    while need(keep) > width and any(cols[i].drop for i in keep):
        worst = max(cols[i].drop for i in keep)
        keep = [i for i in keep if cols[i].drop != worst]
    widths = {i: cols[i].width for i in keep}
    spare = width - need(keep)
    for i in keep:
        if cols[i].flex and spare > 0:
            widest = max([cells(cols[i].title)] + [cells(r[i][0]) for r in cells_rows])
            extra = min(spare, max(0, widest - widths[i]))
            widths[i] += extra
            spare -= extra

    def line(values: List[Segment]) -> List[Segment]:
        segs: List[Segment] = []
        for n, i in enumerate(keep):
            text, style = values[i]
            last = n == len(keep) - 1
            cell = pad(text, widths[i], cols[i].right, ellipsis)
            segs.append((cell.rstrip() if last else cell, style))
            if not last:
                segs.append((" ", ""))
        return segs

    head = line([(c.title, "head") for c in cols])
    return head, [line(r) for r in cells_rows]


def _since(start: Optional[datetime], end: Optional[datetime]) -> Optional[float]:
    if start is None or end is None:
        return None
    return (clock.as_utc(end) - clock.as_utc(start)).total_seconds()


STATE_STYLE = {states.SUCCESS: "ok", states.FAILED: "bad", states.INTERRUPTED: "bad",
               states.UPSTREAM_FAILED: "bad", states.CANCELLED: "warn", states.RUNNING: "run",
               states.QUEUED: "dim", states.PENDING: "dim", "skipped": "warn"}


# -- the screens -----------------------------------------------------------------

def render(snapshot, state: ViewState, width: int, height: int, now: datetime,
           ascii_only: bool = False) -> List[str]:
    """The screen as text lines, each at most `width` columns (pure)."""
    return [row.text for row in render_rows(snapshot, state, width, height, now, ascii_only)]


def render_rows(snapshot, state: ViewState, width: int, height: int, now: datetime,
                ascii_only: bool = False) -> List[Row]:
    """The screen as rows of styled segments: `height` rows, each at most `width` columns."""
    if width <= 0 or height <= 0:
        return []
    ell = "~" if ascii_only else "…"
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        lines = [("terminal too small", "bad"), (f"{width}x{height}, needs {MIN_WIDTH}x{MIN_HEIGHT}", ""),
                 ("q quits", "")]
        return [_row((fit(text, width, ell), style)) for text, style in lines[:height]]
    screen = _Screen(snapshot, state, width, now, ascii_only, ell)
    body_h = body_height(height)
    if state.help:
        pinned, body, sel = [], screen.help(), None
    elif state.view == "log":
        pinned, body = screen.log(page_size("log", height))
        sel = None
    elif state.view == "run":
        pinned, body, sel = screen.run()
    else:
        pinned, body, sel = screen.main()
    if snapshot is not None and snapshot.problem:
        pinned.insert(0, _row(("! " + clean(snapshot.problem, ascii_only), "bad")))
    pinned = pinned[:body_h - 1]  # tiny terminals: at least one row of the list stays
    room = body_h - len(pinned)
    if len(body) > room:  # scroll only as far as the selection (and two rows after it) needs
        margin = min(2, room // 4)
        top = 0 if sel is None else min(max(0, sel - room + 1 + margin), len(body) - room)
        body = body[top:top + room]
    body = pinned + body
    body += [Row()] * (body_h - len(body))
    rows = [screen.title()] + body + [screen.footer()]
    return [_clip(row, width, ell) for row in rows]


KEYS_HELP = [
    ("Up/Down  j/k", "move the selection; in a log, scroll a line"),
    ("PgUp/PgDn  space", "a page up / down"),
    ("Home/End  g/G", "first / last; in a log, G follows the end again"),
    ("Enter", "open the selected run; on a task, page its latest log"),
    ("Esc  Backspace", "back (on the main screen: clear the flow filter)"),
    ("/  f", "filter by flow name (Enter applies, empty shows all, Esc cancels)"),
    ("Left/Right  h/l", "scroll a log sideways"),
    ("Ctrl-L", "repaint the screen"),
    ("?", "this help (any key closes it)"),
    ("q  Ctrl-C", "quit"),
]


SHOWS = [
    "the scheduler: pid, uptime, heartbeat age (! marks a stale heartbeat or a vanished process)",
    "schedules: next fire time, countdown, last outcome",
    "running runs: tasks done/running/pending/failed, progress, elapsed time",
    "recent finished runs: outcome, duration, failed tasks",
    "read only, refreshed every second; times are local",
]


class _Screen:
    """Builds the body rows of each view; one instance per render."""

    def __init__(self, snapshot, state: ViewState, width: int, now: datetime, ascii_only: bool, ell: str):
        self.snap, self.state, self.width, self.now = snapshot, state, width, now
        self.ascii_only, self.ell = ascii_only, ell

    def c(self, text) -> str:
        return clean(text, self.ascii_only)

    # -- frame

    def title(self) -> Row:
        right = f"{local(self.now, '%H:%M:%S')} "
        left = " featherflow"
        if self.state.flow is not None:
            left += f"  flow: {self.c(self.state.flow)}"
        if self.snap is not None and self.snap.db_path:
            path = self.c(self.snap.db_path)
            room = self.width - cells(left) - cells(right) - 3
            if room >= 12:
                left += "  " + fit_left(path, room, self.ell)
        left = fit(left, max(0, self.width - cells(right) - 1), self.ell)
        gap = " " * max(1, self.width - cells(left) - cells(right))
        return _row((left + gap + right, "title"))

    def footer(self) -> Row:
        if self.state.prompt is not None:
            return _row(("filter by flow: ", "key"), (self.c(self.state.prompt) + "_", ""),
                        ("   Enter apply, empty = all, Esc cancel", "dim"))
        if self.state.help:
            keys = [("any key", "closes help"), ("q", "quit")]
        elif self.state.view == "log":
            keys = [("j/k", "scroll"), ("PgUp/PgDn", "page"), ("G", "follow"), ("h/l", "sideways"),
                    ("Esc", "back"), ("?", "help"), ("q", "quit")]
        elif self.state.view == "run":
            keys = [("j/k", "move"), ("Enter", "log"), ("Esc", "back"), ("/", "filter"),
                    ("?", "help"), ("q", "quit")]
        else:
            keys = [("j/k", "move"), ("Enter", "open"), ("/", "filter"), ("?", "help"), ("q", "quit")]
        segments: List[Segment] = []
        for key, what in keys:
            segments += [(key, "key"), (f" {what}  ", "")]
        segments[-1] = (segments[-1][0].rstrip(), "")
        return _row(*segments)

    # -- main

    def main(self) -> Tuple[List[Row], List[Row], Optional[int]]:
        """Pinned: the scheduler's health. Scrolled: schedules, running and recent runs."""
        snap = self.snap
        pinned = [self.scheduler_row(), Row()]
        if snap is None:
            return pinned, [_row(("reading the database...", "dim"))], None
        rows = self.schedule_rows()
        ids = [r.id for r in snap.running] + [r.id for r in snap.recent]
        chosen = ids[0] if ids and self.state.run_id not in ids else self.state.run_id
        sel = None
        running, sel_r = self.running_rows(chosen)
        if sel_r is not None:
            sel = len(rows) + sel_r
        rows += running + [Row()]
        recent, sel_r = self.recent_rows(chosen)
        if sel_r is not None:
            sel = len(rows) + sel_r
        rows += recent
        return pinned, rows, sel

    def scheduler_row(self) -> Row:
        text, style = self.scheduler_status()
        return _row(("SCHEDULER  ", "head"), (("! " if style == "bad" else "") + text, style))

    def scheduler_status(self) -> Tuple[str, str]:
        info = None if self.snap is None else self.snap.scheduler
        if info is None:
            return "not running (it has never run on this database)", "warn"
        if info.stopped_at is not None:
            return f"stopped {duration(_since(info.stopped_at, self.now))} ago (was pid {info.pid})", "warn"
        beat = _since(info.heartbeat_at, self.now)
        beat_text = "never" if beat is None else f"{duration(beat)} ago"
        if not info.alive:
            return (f"NOT RUNNING: pid {info.pid} is gone without stopping "
                    f"(last heartbeat {beat_text})"), "bad"
        if beat is None or beat > states.HEARTBEAT_STALE:
            return (f"STALE: pid {info.pid} has not written a heartbeat for {duration(beat)} "
                    "(stuck? see its log)"), "bad"
        up = duration(_since(info.started_at, self.now))
        return f"running  pid {info.pid}  up {up}  heartbeat {beat_text}", "ok"

    def schedule_rows(self) -> List[Row]:
        schedules = self.snap.schedules
        if not schedules:
            return [_row(("SCHEDULES  ", "head"), ("none", "dim")), Row()]
        cols = [Col("NAME", 8, flex=True), Col("FLOW", 8, flex=True, drop=3),
                Col("CRON", 9, flex=True, drop=4), Col("NEXT", 11, drop=2), Col("IN", 7, right=True),
                Col("LAST", 10, flex=True, drop=1)]
        values = []
        for s in schedules:
            if not s.enabled:
                nxt, when = ("disabled", "dim"), ("-", "dim")
            elif s.next_at is None:
                nxt, when = (self.c(s.next_error or "-"), "warn"), ("-", "")
            else:
                nxt, when = (local(s.next_at, SHORT), ""), (duration(_since(self.now, s.next_at)), "")
            values.append([(self.c(s.name), ""), (self.c(s.flow_name), ""), (self.c(s.cron), "dim"),
                           nxt, when, self.last_outcome(s)])
        head, body = _table(cols, values, self.width - 2, self.ell)
        return ([_row(("SCHEDULES  ", "head"), (str(len(schedules)), "dim")), _row(("  ", ""), *head)]
                + [_row(("  ", ""), *line) for line in body] + [Row()])

    def last_outcome(self, s) -> Segment:
        if s.last_state is None:
            return "never fired", "dim"
        text = f"{s.last_state} {local(s.last_slot_at, SHORT)}"
        if s.last_run_id is not None:
            text += f" run {s.last_run_id} {s.last_run_state or 'deleted'}"
            return self.c(text), STATE_STYLE.get(s.last_run_state or "", "")
        if s.last_reason:
            text += f": {s.last_reason}"
        return self.c(text), STATE_STYLE.get(s.last_state, "")

    def running_rows(self, chosen) -> Tuple[List[Row], Optional[int]]:
        runs = self.snap.running
        if not runs:
            return [_row(("RUNNING  ", "head"), ("none", "dim"))], None
        cols = [Col("ID", 6, right=True), Col("FLOW", 8, flex=True), Col("STATE", 7),
                Col("PROGRESS", 12, drop=5), Col("TASKS", 7, right=True, drop=1),
                Col("DONE", 4, right=True, drop=4), Col("RUN", 3, right=True, drop=4),
                Col("PEND", 4, right=True, drop=4), Col("FAIL", 4, right=True, drop=4),
                Col("ELAPSED", 7, right=True, drop=2)]
        values = []
        for r in runs:
            n = r.counts
            state = ("orphan", "bad") if r.gone else (r.state, STATE_STYLE.get(r.state, ""))
            values.append([(str(r.id), ""), (self.c(r.flow_name), ""), state, (bar(n.done, n.total), "run"),
                           (f"{n.done}/{n.total}", ""), (str(n.done), "ok"), (str(n.running), "run"),
                           (str(n.pending), ""), (str(n.failed), "bad" if n.failed else ""),
                           (duration(_since(r.started_at or r.created_at, self.now)), "")])
        return self._selectable("RUNNING", cols, values, [r.id for r in runs], chosen)

    def recent_rows(self, chosen) -> Tuple[List[Row], Optional[int]]:
        runs = self.snap.recent
        if not runs:
            what = (f"no finished runs of flow {self.c(self.state.flow)}" if self.state.flow is not None
                    else "no finished runs yet (start one with `featherflow run FLOW`)")
            return [_row(("RECENT  ", "head"), (what, "dim"))], None
        cols = [Col("ID", 6, right=True), Col("FLOW", 8, flex=True), Col("STATE", 11),
                Col("TRIGGER", 8, drop=3), Col("ENDED", 11, drop=2), Col("TOOK", 7, right=True, drop=1),
                Col("NOTE", 4, flex=True, drop=4)]
        values = []
        for r in runs:
            note = ("failed: " + ", ".join(r.failed_tasks)) if r.failed_tasks else (r.reason or "")
            values.append([(str(r.id), ""), (self.c(r.flow_name), ""), (r.state, STATE_STYLE.get(r.state, "")),
                           (self.c(r.trigger), "dim"), (local(r.ended_at, SHORT), ""),
                           (duration(_since(r.started_at, r.ended_at)), ""), (self.c(note), "dim")])
        return self._selectable("RECENT", cols, values, [r.id for r in runs], chosen)

    def _selectable(self, title, cols, values, ids, chosen) -> Tuple[List[Row], Optional[int]]:
        head, body = _table(cols, values, self.width - 2, self.ell)
        rows = [_row((f"{title}  ", "head"), (str(len(ids)), "dim")), _row(("  ", ""), *head)]
        sel = None
        for key, line in zip(ids, body):
            mark = key == chosen
            if mark:
                sel = len(rows)
            rows.append(_row(("> " if mark else "  ", ""), *line, selected=mark))
        return rows, sel

    # -- one run

    def run(self) -> Tuple[List[Row], List[Row], Optional[int]]:
        """Pinned: the run. Scrolled: its tasks in dependency order."""
        detail = None if self.snap is None else self.snap.detail
        if detail is None:
            gone = f"run {self.state.run_id} is not in the database (pruned?); Esc goes back"
            return [_row((gone, "warn"))], [], None
        r, n = detail.run, detail.run.counts
        took = (f"took {duration(_since(r.started_at, r.ended_at))}" if r.ended_at
                else f"elapsed {duration(_since(r.started_at or r.created_at, self.now))}")
        rows = [
            _row((f"run {r.id}  ", "head"), (self.c(r.flow_name), "head"), ("  ", ""),
                 (r.state.upper(), STATE_STYLE.get(r.state, ""))),
            _row((f"{self.c(r.trigger)}  started {local(r.started_at, '%m-%d %H:%M:%S')}  {took}", "")),
            _row((f"tasks {bar(n.done, n.total)} {n.done} done, {n.running} running, "
                  f"{n.pending} pending, {n.failed} failed", "")),
        ]
        if r.gone:
            rows.append(_row(("! its process is gone; the next featherflow command marks it interrupted", "bad")))
        if r.reason:
            rows.append(_row((f"reason: {self.c(r.reason)}", STATE_STYLE.get(r.state, ""))))
        rows.append(Row())
        cols = [Col("TASK", 8, flex=True), Col("STATE", 15), Col("TRY", 3, right=True),
                Col("EXIT", 4, right=True), Col("STARTED", 8, drop=2), Col("TOOK", 7, right=True),
                Col("NOTE", 4, flex=True, drop=1)]
        values = []
        for t in detail.tasks:
            took_t = _since(t.started_at, t.ended_at or (self.now if t.state == states.RUNNING else None))
            name = self.c(t.task_id) + (f" [{t.rule}]" if t.rule else "")
            values.append([(name, ""), (t.state, STATE_STYLE.get(t.state, "")),
                           (str(t.attempt) if t.attempt else "-", ""),
                           ("-" if t.exit_code is None else str(t.exit_code), ""),
                           (local(t.started_at, "%H:%M:%S"), ""), (duration(took_t), ""),
                           (self.c(t.reason or ""), "dim")])
        ids = [t.task_id for t in detail.tasks]
        chosen = self.state.task_id if self.state.task_id in ids else (ids[0] if ids else None)
        table, sel = self._selectable("TASKS", cols, values, ids, chosen)
        return rows, table, sel

    # -- a log

    def log(self, page: int) -> Tuple[List[Row], List[Row]]:
        """Pinned: which log, where in it. Then the page of lines (scrolled by ViewState.log_top)."""
        log = None if self.snap is None else self.snap.log
        if log is None:
            return [_row(("the run or the task is gone; Esc goes back", "warn"))], []
        end = log.first + len(log.lines)
        bottom = max(log.first, end - page)
        top = bottom if self.state.log_top is None else min(max(log.first, self.state.log_top), bottom)
        shown = log.lines[top - log.first:top - log.first + page]
        where = "following" if self.state.log_top is None else "paused (G follows)"
        if log.state not in (states.RUNNING, states.PENDING):
            where = "finished" if log.state != "superseded" else "a newer attempt exists"
        span_text = f"lines {top + 1}-{top + len(shown)} of {end}" if shown else "empty"
        rows = [
            _row(("log  ", "head"), (f"run {self.state.run_id} > {self.c(log.task_id)} > attempt {log.attempt}", "head"),
                 ("  ", ""), (log.state, STATE_STYLE.get(log.state, "")), (f"  {where}  {span_text}", "dim")),
            _row((fit_left(self.c(log.path), self.width - 1, self.ell)
                  + (f"  (first {megabytes(log.skipped)} not shown)" if log.skipped else ""), "dim")),
        ]
        if log.error:
            return rows, [_row((self.c(log.error), "dim"))]
        left = self.state.log_left
        return rows, [_row((self.c(line)[left:], "")) for line in shown]

    def help(self) -> List[Row]:
        rows = [_row(("Keys", "head"))]
        width = max(len(k) for k, _ in KEYS_HELP)
        rows += [_row(("  " + key.ljust(width) + "  ", "key"), (what, "")) for key, what in KEYS_HELP]
        rows += [Row(), _row(("What it shows", "head"))] + [_row(("  " + line, "")) for line in SHOWS]
        return rows


def bar(done: int, total: int, size: int = 10) -> str:
    filled = 0 if not total else min(size, round(size * done / total))
    return "[" + "#" * filled + "-" * (size - filled) + "]"
