"""The terminal dashboard: a live, read-only view of the scheduler, runs, tasks and logs.

On a headless Pi over SSH this is how a person watches Featherflow. It holds no
state of its own: about once a second `Poller.poll` (poller.py) reads a `Snapshot`
in one short read-only transaction; `render` (screen.py) turns snapshot +
`ViewState` + terminal size + time into lines and `handle_key` (keys.py) moves the
`ViewState`, both pure; the curses loop here only reads keys and paints.
"""

import curses
import locale
import os
import signal
import sys
import time
from pathlib import Path
from typing import Dict, Optional

from featherflow import clock
from featherflow.dashboard.keys import QUIT, REDRAW, REFETCH, ViewState, handle_key, page_size
from featherflow.dashboard.poller import Poller
from featherflow.dashboard.screen import render_rows
from featherflow.errors import UsageError
from featherflow.store.readonly import Reader

INTERVAL = 1.0  # seconds between refreshes


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
    # An exported LINES/COLUMNS (bash keeps them up to date once they are in its
    # environment) would pin ncurses to that size and every resize would be ignored;
    # without them ncurses asks the terminal (curses.use_env(False) would use terminfo's 80x24).
    for name in ("LINES", "COLUMNS"):
        os.environ.pop(name, None)
    check_terminal()
    reader = Reader.open(db_path)
    stop = {"signal": None}

    def on_signal(signum, frame):  # only a flag: the loop notices within a refresh
        stop["signal"] = signum

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, on_signal)
        os.environ.setdefault("ESCDELAY", "25")  # a lone Esc is "back", not the start of a sequence
        _with_screen(_loop, Poller(reader, str(db_path)), ViewState(flow=flow), _ascii_only(), stop)
    except KeyboardInterrupt:
        pass  # Ctrl-C is a way to quit; _with_screen has restored the terminal
    finally:
        reader.close()
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
            snapshot = poller.poll(state, clock.now())
            due = time.monotonic() + INTERVAL
        height, width = screen.getmaxyx()
        rows = render_rows(snapshot, state, width, height, clock.now(), ascii_only=ascii_only)
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
