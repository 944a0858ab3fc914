"""One clock: aware UTC datetimes in Python, one text form in the database.

Every decision that depends on time takes `now` as an argument; `now()` here is
the one place that reads the wall clock for them. The database stores UTC as
`YYYY-MM-DD HH:MM:SS.ffffff` (what peewee's DateTimeField writes and reads);
`to_text` and `from_text` are the only conversions. The `_mark` fast path keeps
its own datetime-free stamp (`states.stamp`), in the same text form.
"""

from datetime import datetime, timezone
from typing import Optional

UTC = timezone.utc
STORED = "%Y-%m-%d %H:%M:%S.%f"


def now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken as UTC (that is how the database stores times)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def maybe_utc(moment: Optional[datetime]) -> Optional[datetime]:
    return None if moment is None else as_utc(moment)


def to_text(moment: datetime) -> str:
    """The stored text form of `moment` (UTC)."""
    return as_utc(moment).strftime(STORED)


def from_text(text) -> Optional[datetime]:
    """A stored time (text, or the naive datetime peewee made of it) as aware UTC; None if absent
    or unreadable."""
    if text is None or text == "":
        return None
    if isinstance(text, datetime):
        return as_utc(text)
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def iso(moment: Optional[datetime]) -> Optional[str]:
    """`2026-01-01T03:00:00Z` (JSON output): UTC, with microseconds only when there are any."""
    if moment is None:
        return None
    return as_utc(moment).isoformat().replace("+00:00", "Z")
