"""The dashboard's navigation: what the person did (ViewState) and how each key changes it.

Pure: `handle_key(state, key, snapshot, page)` moves a ViewState and says
whether new data is needed, so every key path is tested without a terminal.
"""

from dataclasses import dataclass
from typing import List, Optional


@dataclass
class ViewState:
    """What the person did: the view, the selection, the filter, the scroll."""

    view: str = "main"  # main | run | log
    help: bool = False
    flow: Optional[str] = None  # filter by flow name
    prompt: Optional[str] = None  # the filter being typed, None when not typing
    run_id: Optional[int] = None  # selected run (main) / open run (run, log)
    task_id: Optional[str] = None  # selected task (run) / open task (log)
    attempt: Optional[int] = None  # the attempt whose log is open
    log_top: Optional[int] = None  # first log line shown; None follows the end
    log_left: int = 0  # columns scrolled sideways in a log


# -- keys (pure) ----------------------------------------------------------------

QUIT, REFETCH, REDRAW = "quit", "refetch", "redraw"


LOG_HEADER = 2  # rows above a log's lines: which log, and its path


def body_height(height: int) -> int:
    """Rows between the title line and the footer."""
    return max(1, height - 2)


def page_size(view: str, height: int) -> int:
    """Rows a page key moves: the list's rows, or a log's lines."""
    return max(1, body_height(height) - (LOG_HEADER if view == "log" else 0))


def selectable_runs(snapshot) -> List[int]:
    return [r.id for r in snapshot.running] + [r.id for r in snapshot.recent]


def selected(ids: List, current):
    return current if current in ids else (ids[0] if ids else None)


def handle_key(state: ViewState, key: str, snapshot, page: int) -> Optional[str]:
    """Apply one key to `state`; returns QUIT, REFETCH (needs new data), REDRAW or None.

    `key` is one character as typed, or a name for a special key: up, down,
    left, right, pgup, pgdn, home, end, enter, backspace.
    """
    if state.prompt is not None:
        return _prompt_key(state, key)
    if key == "q":
        return QUIT
    if state.help:
        state.help = False
        return None
    if key == "?":
        state.help = True
    elif key == "\x0c":  # Ctrl-L
        return REDRAW
    elif key in ("/", "f"):
        state.prompt = state.flow or ""
    elif key in ("\x1b", "backspace", "\x7f", "\x08"):
        return _back(state)
    elif key in ("enter", "\n", "\r"):
        return _open(state, snapshot)
    elif state.view == "log":
        _scroll_log(state, key, snapshot.log, page)
    else:
        _move(state, key, snapshot, page)
    return None


_MOVES = {"up": -1, "k": -1, "down": 1, "j": 1, "pgup": "-page", "pgdn": "+page", " ": "+page",
          "home": "first", "g": "first", "end": "last", "G": "last"}


def _move(state: ViewState, key: str, snapshot, page: int) -> None:
    how = _MOVES.get(key)
    if how is None:
        return
    if state.view == "main":
        ids: List = selectable_runs(snapshot)
        current = selected(ids, state.run_id)
    else:
        ids = [t.task_id for t in snapshot.detail.tasks] if snapshot.detail else []
        current = selected(ids, state.task_id)
    if not ids:
        return
    index = ids.index(current)
    step = {"-page": -page, "+page": page, "first": -len(ids), "last": len(ids)}.get(how, how)
    new = ids[min(len(ids) - 1, max(0, index + step))]
    if state.view == "main":
        state.run_id = new
    else:
        state.task_id = new


def _scroll_log(state: ViewState, key: str, log, page: int) -> None:
    if key in ("left", "h"):
        state.log_left = max(0, state.log_left - 8)
        return
    if key in ("right", "l"):
        state.log_left += 8
        return
    how = _MOVES.get(key)
    if how is None or log is None:
        return
    end = log.first + len(log.lines)
    bottom = max(log.first, end - page)  # the top line when following
    top = bottom if state.log_top is None else min(max(log.first, state.log_top), bottom)
    step = {"-page": -page, "+page": page, "first": -end, "last": end}.get(how, how)
    top = max(log.first, top + step)
    state.log_top = None if top >= bottom else top


def _back(state: ViewState) -> Optional[str]:
    if state.view == "log":
        state.view, state.log_top, state.log_left = "run", None, 0
        return REFETCH
    if state.view == "run":
        state.view = "main"
        return REFETCH
    if state.flow is not None:
        state.flow = None
        return REFETCH
    return None


def _open(state: ViewState, snapshot) -> Optional[str]:
    if state.view == "main":
        run_id = selected(selectable_runs(snapshot), state.run_id)
        if run_id is None:
            return None
        state.view, state.run_id, state.task_id = "run", run_id, None
        return REFETCH
    if state.view == "run" and snapshot.detail and snapshot.detail.tasks:
        tasks = {t.task_id: t for t in snapshot.detail.tasks}
        task_id = selected(list(tasks), state.task_id)
        state.view, state.task_id, state.attempt = "log", task_id, tasks[task_id].attempt
        state.log_top, state.log_left = None, 0
        return REFETCH
    return None


def _prompt_key(state: ViewState, key: str) -> Optional[str]:
    if key in ("enter", "\n", "\r"):
        text = state.prompt.strip()
        state.prompt, state.flow, state.run_id = None, text or None, None
        if state.view != "main":
            state.view = "main"
        return REFETCH
    if key == "\x1b":
        state.prompt = None
    elif key in ("backspace", "\x7f", "\x08"):
        state.prompt = state.prompt[:-1]
    elif key == "\x15":  # Ctrl-U
        state.prompt = ""
    elif len(key) == 1 and key.isprintable() and len(state.prompt) < 200:
        state.prompt += key
    return None
