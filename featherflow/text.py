"""Text for a terminal: escaping what came from outside, display widths, fitting, local
times, durations and sizes. One toolkit for the CLI's output and the dashboard's screen.

Task ids, descriptions and log lines come from users and scripts: an ESC, a carriage return
or a bidi override must show as text (`\\x1b`) and never act on the terminal.
"""

import unicodedata
from datetime import datetime
from typing import Optional

from featherflow import clock

_ESCAPED = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}  # controls, format (bidi), separators, unassigned
TAB = 8


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text, keep: str = "\t\n", ascii_only: bool = False) -> str:
    """Every control, format or unassigned character as a visible escape, except those in
    `keep` (a log line printed by the CLI keeps its tabs); non-ASCII letters stay unless
    `ascii_only` (a terminal that cannot show them gets `?`)."""
    text = "" if text is None else str(text)
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 32 <= code < 127 or ch in keep:
            out.append(ch)
        elif code < 128 or unicodedata.category(ch) in _ESCAPED:
            out.append(_escape_char(ch))
        else:
            out.append("?" if ascii_only else ch)
    return "".join(out)


def clean(text, ascii_only: bool = False) -> str:
    """One screen line from outside text: tabs expanded, every control character escaped."""
    text = "" if text is None else str(text)
    if text.isascii() and text.isprintable():
        return text
    return escape(text.expandtabs(TAB), keep="", ascii_only=ascii_only)


def _cell(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def cells(text: str) -> int:
    """Columns `text` takes on a terminal (wide East Asian characters take two)."""
    return len(text) if text.isascii() else sum(_cell(ch) for ch in text)


def take(text: str, width: int) -> str:
    """The longest start of `text` that fits in `width` columns."""
    if cells(text) <= width:
        return text
    out, room = [], width
    for ch in text:
        room -= _cell(ch)
        if room < 0:
            break
        out.append(ch)
    return "".join(out)


def fit(text: str, width: int, ellipsis: str = "…") -> str:
    """`text` cut to `width` columns, ending in an ellipsis when it was cut."""
    if cells(text) <= width:
        return text
    return take(text, width - cells(ellipsis)) + ellipsis if width > 0 else ""


def fit_left(text: str, width: int, ellipsis: str = "…") -> str:
    """Like fit, but keeps the end (paths: the file name matters most)."""
    if cells(text) <= width:
        return text
    return fit(text[::-1], width, ellipsis)[::-1] if width > 0 else ""


def pad(text: str, width: int, right: bool = False, ellipsis: str = "…") -> str:
    text = fit(text, width, ellipsis)
    gap = " " * max(0, width - cells(text))
    return gap + text if right else text + gap


def local(moment: Optional[datetime], fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A time (aware, or naive UTC as stored) in the machine's local time; `-` when absent."""
    if moment is None:
        return "-"
    return clock.as_utc(moment).astimezone().strftime(fmt)


def duration(seconds: Optional[float], tenths: bool = False) -> str:
    """12s (1.5s with `tenths`), 5m12s, 3h12m, 2d03h; `-` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if tenths else f"{int(seconds)}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def megabytes(count: int) -> str:
    """`12.3 MB`, whatever the size: for lines that are compared at a glance (doctor, backups)."""
    return f"{count / 1e6:.1f} MB"


def size(count: int) -> str:
    """1234567 -> `1.2 MB` (powers of 1000, like `df -H`); small sizes stay exact."""
    if count < 1000:
        return f"{count} B"
    value = float(count)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"
