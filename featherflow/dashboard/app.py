"""The terminal dashboard: a live, read-only view of the scheduler, runs, tasks and logs.

On a headless Pi over SSH this is how a person watches Featherflow. It holds no
state of its own: about once a second `Poller.poll` reads a `Snapshot` in one
short read-only transaction; `render` (dashboard_view.py) turns snapshot +
`ViewState` + terminal size + time into lines and `handle_key`
(dashboard_keys.py) moves the `ViewState`, both pure; the curses loop here
only reads keys and paints.
"""

import curses
import locale
import os
import signal
import sqlite3
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from featherflow import proc, states
from featherflow.dashboard.keys import QUIT, REDRAW, REFETCH, ViewState, handle_key, page_size
from featherflow.dashboard.screen import render, render_rows
from featherflow.errors import UsageError

__all__ = ["Snapshot", "SchedulerInfo", "ScheduleInfo", "RunInfo", "Counts", "TaskInfo", "RunDetail",
           "LogInfo", "ViewState", "Poller", "LogTail", "render", "render_rows", "handle_key", "main",
           "check_terminal", "QUIT", "REFETCH", "REDRAW"]

try:  # the scheduler's cron logic; the dashboard works without it (no countdowns)
    from featherflow.scheduler.slots import next_slot as _next_slot
except ImportError:  # pragma: no cover - depends on what is installed
    _next_slot = None

INTERVAL = 1.0  # seconds between refreshes
MAX_SCHEDULES, MAX_RUNNING, MAX_RECENT = 100, 50, 30
LOG_LINES = 10_000  # lines of a log kept in memory (the newest)
LOG_FIRST_READ = 1 << 20  # bytes read from the end when a log is opened
LOG_READ = 4 << 20  # bytes read per refresh at most; further behind, skip ahead

DONE, RUNNING_, PENDING_, FAILED_ = "done", "running", "pending", "failed"
_COUNT_OF = {states.SUCCESS: DONE, states.RUNNING: RUNNING_, states.PENDING: PENDING_,
             states.FAILED: FAILED_, states.UPSTREAM_FAILED: FAILED_, states.INTERRUPTED: FAILED_,
             states.CANCELLED: FAILED_}


# -- what is shown ------------------------------------------------------------

@dataclass(frozen=True)
class SchedulerInfo:
    pid: int
    started_at: Optional[datetime]
    heartbeat_at: Optional[datetime]
    stopped_at: Optional[datetime]
    alive: bool  # the recorded process (pid + start time + boot) still exists


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    flow_name: str
    cron: str
    tz: str
    enabled: bool
    next_at: Optional[datetime] = None  # UTC
    next_error: Optional[str] = None
    last_slot_at: Optional[datetime] = None
    last_state: Optional[str] = None  # fired | skipped
    last_reason: Optional[str] = None
    last_run_id: Optional[int] = None
    last_run_state: Optional[str] = None


@dataclass(frozen=True)
class Counts:
    done: int = 0
    running: int = 0
    pending: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.done + self.running + self.pending + self.failed


@dataclass(frozen=True)
class RunInfo:
    id: int
    flow_name: str
    state: str
    trigger: str
    created_at: Optional[datetime]
    started_at: Optional[datetime] = None
    ended_at: Optional[datetime] = None
    reason: Optional[str] = None
    counts: Counts = Counts()
    gone: bool = False  # queued/running, but its process no longer exists
    failed_tasks: Tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskInfo:
    task_id: str
    state: str  # of the latest attempt; "-" when it has none
    attempt: int = 0
    started_at: Optional[datetime] = None
    ended_at: Optional[datetime] = None
    exit_code: Optional[int] = None
    reason: Optional[str] = None


@dataclass(frozen=True)
class RunDetail:
    run: RunInfo
    tasks: Tuple[TaskInfo, ...]
    uid: str = ""
    output_dir: str = ""


@dataclass(frozen=True)
class LogInfo:
    task_id: str
    attempt: int
    state: str
    path: str
    lines: Tuple[str, ...] = ()
    first: int = 0  # line number (0-based) of lines[0] among the lines read
    skipped: int = 0  # bytes at the start of the file not read
    error: Optional[str] = None  # e.g. no log yet


@dataclass(frozen=True)
class Snapshot:
    taken_at: datetime  # UTC, naive like every stored time
    db_path: str = ""
    scheduler: Optional[SchedulerInfo] = None
    schedules: Tuple[ScheduleInfo, ...] = ()
    running: Tuple[RunInfo, ...] = ()
    recent: Tuple[RunInfo, ...] = ()
    detail: Optional[RunDetail] = None
    log: Optional[LogInfo] = None
    problem: Optional[str] = None  # shown on every view, e.g. the database could not be read


# -- reading (the only I/O besides the terminal) -------------------------------

def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class LogTail:
    """A log file read incrementally: only new bytes each refresh, the newest lines kept."""

    def __init__(self, path: Path, keep: int = LOG_LINES):
        self.path = path
        self.lines: deque = deque(maxlen=keep)
        self.count = 0  # lines read so far (the number after lines[-1])
        self.partial = b""
        self.position: Optional[int] = None
        self.skipped = 0

    def poll(self) -> Tuple[Tuple[str, ...], int, int, Optional[str]]:
        """(lines, number of the first, bytes skipped at the start, error)."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if self.position is None or size < self.position:  # first read, or truncated
                    self._reset(f, size, LOG_FIRST_READ)
                elif size - self.position > LOG_READ:  # far behind: skip ahead
                    self._reset(f, size, LOG_FIRST_READ)
                f.seek(self.position)
                chunk = f.read(min(size - self.position, LOG_READ))
        except FileNotFoundError:
            return (), 0, 0, "no log file (yet)"
        except OSError as exc:
            return (), 0, 0, f"cannot read the log: {exc.strerror}"
        self.position += len(chunk)
        data = self.partial + chunk
        *complete, self.partial = data.split(b"\n")
        for raw in complete:
            self.lines.append(raw.rstrip(b"\r").decode("utf-8", "replace"))
        self.count += len(complete)
        lines = tuple(self.lines)
        if self.partial:
            lines += (self.partial.decode("utf-8", "replace"),)
        return lines, self.count - len(self.lines), self.skipped, None

    def _reset(self, f, size: int, keep_bytes: int) -> None:
        self.lines.clear()
        self.count, self.partial = 0, b""
        start = max(0, size - keep_bytes)
        if start:
            f.seek(start)
            start += len(f.readline())  # begin at a line start
        self.position = self.skipped = start


class Poller:
    """Reads Snapshots: each refresh is one short read transaction, nothing held between.

    `alive` and `next_slot` are parameters so tests decide what is alive and
    when schedules fire.
    """

    def __init__(self, store, db_path: str = "", alive: Callable = proc.is_alive,
                 next_slot: Optional[Callable] = None):
        self.store = store
        self.db_path = str(db_path)
        self.alive = alive
        self.next_slot = next_slot if next_slot is not None else _next_slot
        # (cron, tz) -> (computed at, next slot, error)
        self._next_cache: Dict[Tuple[str, str], Tuple[datetime, Optional[datetime], Optional[str]]] = {}
        self._tail: Optional[Tuple[Tuple, LogTail]] = None
        self._last: Optional[Snapshot] = None

    def poll(self, state: ViewState, now: datetime) -> Snapshot:
        import peewee

        want_detail = state.view in ("run", "log") and state.run_id is not None
        try:
            with self.store.read_transaction():
                version = self.store.read_schema_version()
                if version == 0:
                    return Snapshot(now, self.db_path, problem="the database is empty (nothing has run yet)")
                raw_scheduler = self.store.dashboard_scheduler()
                raw_schedules = self.store.dashboard_schedules(state.flow, MAX_SCHEDULES)
                raw_running = self.store.dashboard_runs(True, state.flow, MAX_RUNNING)
                raw_recent = self.store.dashboard_runs(False, state.flow, MAX_RECENT)
                attempts = self.store.dashboard_attempt_states(
                    [r["id"] for r in raw_running]
                    + [r["id"] for r in raw_recent if r["state"] in states.RESUMABLE])
                run = self.store.dashboard_run(state.run_id) if want_detail else None
                run_attempts = self.store.dashboard_attempts(run.id) if run else []
        except (sqlite3.Error, peewee.PeeweeException) as exc:
            last = self._last or Snapshot(now, self.db_path)
            when = last.taken_at.replace(tzinfo=timezone.utc).astimezone().strftime("%H:%M:%S")
            return replace(last, problem=f"cannot read the database ({exc}); showing {when}")
        # Outside the transaction: /proc, cron arithmetic and the log file.
        latest = _latest_states(attempts)
        snap = Snapshot(
            taken_at=now, db_path=self.db_path,
            scheduler=self._scheduler(raw_scheduler),
            schedules=tuple(self._schedule(row, now) for row in raw_schedules),
            running=tuple(self._run(row, latest.get(row["id"], {})) for row in raw_running),
            recent=tuple(self._run(row, latest.get(row["id"], {})) for row in raw_recent),
            detail=_detail(run, run_attempts, self._run) if run else None,
        )
        if state.view == "log" and snap.detail is not None:
            snap = replace(snap, log=self._log(snap.detail, state, run))
        else:
            self._tail = None
        self._last = snap
        return snap

    def _scheduler(self, row: Optional[Dict]) -> Optional[SchedulerInfo]:
        if row is None:
            return None
        alive = row["stopped_at"] is None and bool(self.alive(row["pid"], row["pid_start"], row["boot_id"]))
        return SchedulerInfo(row["pid"], row["started_at"], row["heartbeat_at"], row["stopped_at"], alive)

    def _schedule(self, row: Dict, now: datetime) -> ScheduleInfo:
        next_at = error = None
        if row["enabled"]:
            next_at, error = self._next_fire(row["cron"], row["tz"], now)
        return ScheduleInfo(row["name"], row["flow_name"], row["cron"], row["tz"], bool(row["enabled"]),
                            next_at, error, row["last_slot_at"], row["last_state"], row["last_reason"],
                            row["last_run_id"], row["last_run_state"])

    def _next_fire(self, cron: str, tz: str, now: datetime) -> Tuple[Optional[datetime], Optional[str]]:
        """Cached until the slot passes: cron arithmetic for every schedule every second is not light."""
        if self.next_slot is None:
            return None, "unknown (featherflow.schedules missing)"
        cached = self._next_cache.get((cron, tz))
        if cached and cached[0] <= now and (cached[1] is None or now < cached[1]):
            return cached[1], cached[2]
        try:
            moment = self.next_slot(cron, tz, now.replace(tzinfo=timezone.utc))
            if moment is not None and moment.tzinfo is not None:
                moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
            result = (moment, None)
        except Exception as exc:  # a bad cron or zone in the database must not stop the screen
            result = (None, f"invalid: {exc}")
        self._next_cache[(cron, tz)] = (now,) + result
        return result

    def _run(self, row: Dict, latest: Dict[str, str]) -> RunInfo:
        counts: Dict[str, int] = {}
        for task_state in latest.values():
            kind = _COUNT_OF.get(task_state, PENDING_)
            counts[kind] = counts.get(kind, 0) + 1
        gone = (row["state"] in (states.QUEUED, states.RUNNING)
                and not self.alive(row["pid"], row["pid_start"], row["boot_id"]))
        failed = tuple(t for t, s in latest.items() if s in (states.FAILED, states.INTERRUPTED))
        return RunInfo(row["id"], row["flow_name"], row["state"], row["trigger"], row["created_at"],
                       row["started_at"], row["ended_at"], row["reason"], Counts(**counts), gone,
                       failed if row["state"] in states.RESUMABLE else ())

    def _log(self, detail: RunDetail, state: ViewState, run) -> LogInfo:
        from featherflow.engine import runner

        task = next((t for t in detail.tasks if t.task_id == state.task_id), None)
        attempt = state.attempt or (task.attempt if task else 0)
        task_state = task.state if task and task.attempt == attempt else "?"
        if task is not None and attempt and task.attempt != attempt:
            task_state = "superseded"  # a newer attempt started; this log is final
        path = runner.log_path(run, state.task_id, attempt)
        key = (run.id, state.task_id, attempt)
        if self._tail is None or self._tail[0] != key:
            self._tail = (key, LogTail(path))
        lines, first, skipped, error = self._tail[1].poll()
        if error and task_state in (states.PENDING, "-"):
            error = f"no log yet: attempt {attempt} is {task_state}"
        return LogInfo(state.task_id, attempt, task_state, str(path), lines, first, skipped, error)


def _latest_states(rows: List[Dict]) -> Dict[int, Dict[str, str]]:
    """{run: {task: state of its latest attempt}} from rows ordered by run, task, attempt."""
    latest: Dict[int, Dict[str, str]] = {}
    for row in rows:
        latest.setdefault(row["run_id"], {})[row["task_id"]] = row["state"]
    return latest


def _detail(run, attempts, make_run) -> RunDetail:
    """The run's tasks in dependency order (its stored definition), each with its latest attempt."""
    from featherflow.cli import format as views

    latest = {a.task_id: a for a in attempts}  # ordered by attempt number
    try:
        order = views.task_order(run.snapshot)
    except Exception:  # a definition we cannot read still shows its attempts
        order = []
    order += sorted(set(latest) - set(order))
    tasks = tuple(
        TaskInfo(t, latest[t].state, latest[t].attempt, latest[t].started_at, latest[t].ended_at,
                 latest[t].exit_code, latest[t].reason) if t in latest else TaskInfo(t, "-")
        for t in order)
    row = {"id": run.id, "flow_name": run.flow_name, "state": run.state, "trigger": run.trigger,
           "created_at": run.created_at, "started_at": run.started_at, "ended_at": run.ended_at,
           "reason": run.reason, "pid": run.pid, "pid_start": run.pid_start, "boot_id": run.boot_id}
    info = make_run(row, {a.task_id: a.state for a in latest.values()})
    return RunDetail(info, tasks, run.uid, run.output_dir)


# -- the terminal ----------------------------------------------------------------

_KEY_NAMES = {
    curses.KEY_UP: "up", curses.KEY_DOWN: "down", curses.KEY_LEFT: "left", curses.KEY_RIGHT: "right",
    curses.KEY_PPAGE: "pgup", curses.KEY_NPAGE: "pgdn", curses.KEY_HOME: "home", curses.KEY_END: "end",
    curses.KEY_ENTER: "enter", curses.KEY_BACKSPACE: "backspace", curses.KEY_RESIZE: "resize",
}


def check_terminal(stdin=None, stdout=None, env=None) -> None:
    """Refuse before touching the terminal: curses needs a real one on both ends."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    env = os.environ if env is None else env
    for name, stream in (("stdout", stdout), ("stdin", stdin)):
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        if not tty:
            raise UsageError(f"the dashboard needs a terminal, and {name} is not one "
                             "(for plain output use `featherflow runs list` / `runs show`)")
    term = env.get("TERM", "")
    if not term:
        raise UsageError("TERM is not set (set it to your terminal, e.g. TERM=xterm or TERM=vt100)")
    try:
        curses.setupterm(term, stdout.fileno())
    except curses.error:
        raise UsageError(f"unknown terminal type TERM={term!r} (try TERM=vt100 or TERM=xterm)") from None
    if not curses.tigetstr("cup"):
        raise UsageError(f"the terminal TERM={term!r} cannot move the cursor "
                         "(set TERM to your terminal, e.g. xterm or vt100)")


def main(db_path: Path, flow: Optional[str] = None) -> int:
    """Run the dashboard until `q` (or Ctrl-C); the terminal is restored on every way out."""
    from featherflow.store import db
    from featherflow.store.runs import Store

    # An exported LINES/COLUMNS (bash keeps them up to date once they are in its
    # environment) would pin ncurses to that size and every resize would be ignored;
    # without them ncurses asks the terminal (curses.use_env(False) would use terminfo's 80x24).
    for name in ("LINES", "COLUMNS"):
        os.environ.pop(name, None)
    check_terminal()
    store = Store(db.open_read_only(db_path))
    stop = {"signal": None}

    def on_signal(signum, frame):  # only a flag: the loop notices within a refresh
        stop["signal"] = signum

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, on_signal)
        os.environ.setdefault("ESCDELAY", "25")  # a lone Esc is "back", not the start of a sequence
        _with_screen(_loop, Poller(store, str(db_path)), ViewState(flow=flow), _ascii_only(), stop)
    except KeyboardInterrupt:
        pass  # Ctrl-C is a way to quit; _with_screen has restored the terminal
    finally:
        store.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _ascii_only() -> bool:
    """Whether the terminal's locale can show more than ASCII ("…", "日本").

    curses writes in the C library's codeset, which Python's UTF-8 mode does not
    change: in the C locale that is ASCII, and anything else comes out garbled.
    """
    try:
        locale.setlocale(locale.LC_ALL, "")
        codeset = locale.nl_langinfo(locale.CODESET)
    except (locale.Error, AttributeError, ValueError):  # LANG names a locale that is not installed
        return True
    return "utf" not in codeset.lower().replace("-", "")


def _with_screen(func, *args) -> None:
    """curses.wrapper without its start_color(), which would force white on black under NO_COLOR:
    the terminal is restored however `func` ends (return, exception, Ctrl-C)."""
    screen = curses.initscr()
    try:
        curses.noecho()
        curses.cbreak()
        screen.keypad(True)
        func(screen, *args)
    finally:
        screen.keypad(False)
        curses.echo()
        curses.nocbreak()
        curses.endwin()


def _loop(screen, poller: Poller, state: ViewState, ascii_only: bool, stop: Dict) -> None:
    try:
        _serve(screen, poller, state, ascii_only, stop)
    finally:  # a terminal without an alternate screen (vt100) would keep the last frame
        try:
            screen.erase()
            screen.refresh()
        except curses.error:
            pass


def _serve(screen, poller: Poller, state: ViewState, ascii_only: bool, stop: Dict) -> None:
    attrs = _attributes(color=not os.environ.get("NO_COLOR"))
    try:
        curses.curs_set(0)
    except curses.error:
        pass  # a terminal that cannot hide the cursor
    snapshot, painted, due = None, None, 0.0
    while stop["signal"] is None:
        if time.monotonic() >= due:
            snapshot = poller.poll(state, utcnow())
            due = time.monotonic() + INTERVAL
        height, width = screen.getmaxyx()
        rows = render_rows(snapshot, state, width, height, utcnow(), ascii_only=ascii_only)
        if (rows, width, height) != painted:
            _paint(screen, rows, width, height, attrs)
            painted = (rows, width, height)
        screen.timeout(max(1, int((due - time.monotonic()) * 1000)))
        try:
            key = screen.get_wch()
        except curses.error:  # no key before the next refresh is due
            continue
        name = _KEY_NAMES.get(key, key) if isinstance(key, int) else key
        if not isinstance(name, str):
            continue  # a special key we do not use
        if name == "resize":
            screen.clear()  # repaint everything once at the new size
            painted = None
            continue
        action = handle_key(state, name, snapshot, page_size(state.view, height))
        if action == QUIT:
            return
        if action == REFETCH:
            due = 0.0
        elif action == REDRAW:
            screen.clear()
            painted = None


def _attributes(color: bool) -> Dict[str, int]:
    attrs = {"": curses.A_NORMAL, "title": curses.A_REVERSE, "head": curses.A_BOLD,
             "ok": curses.A_NORMAL, "bad": curses.A_BOLD, "warn": curses.A_BOLD,
             "run": curses.A_NORMAL, "dim": curses.A_DIM, "key": curses.A_BOLD}
    if color and curses.has_colors():
        try:
            curses.start_color()
            curses.use_default_colors()
            background = -1
        except curses.error:
            background = curses.COLOR_BLACK
        try:
            for number, (name, fg, extra) in enumerate(
                    [("ok", curses.COLOR_GREEN, 0), ("bad", curses.COLOR_RED, curses.A_BOLD),
                     ("warn", curses.COLOR_YELLOW, 0), ("run", curses.COLOR_CYAN, 0)], start=1):
                curses.init_pair(number, fg, background)
                attrs[name] = curses.color_pair(number) | extra
        except curses.error:
            pass  # fewer colours than we asked for: keep the plain attributes
    return attrs


def _paint(screen, rows, width: int, height: int, attrs: Dict[str, int]) -> None:
    """Draw the rows; ncurses sends only what changed (no flicker)."""
    screen.erase()
    for y, row in enumerate(rows[:height]):
        extra = curses.A_REVERSE if row.selected else 0
        try:
            screen.move(y, 0)
            for text, style in row.segments:
                screen.addstr(text, attrs.get(style, 0) | extra)
        except curses.error:
            pass  # writing the bottom-right cell moves the cursor off screen: harmless
    screen.noutrefresh()
    curses.doupdate()
