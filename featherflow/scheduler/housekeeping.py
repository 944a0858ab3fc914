"""The scheduler's daily chore: apply the retention policy once a day, across restarts.

"Once a day" is kept in the database (`retention_applied`, written when a pass ends),
not in the daemon: a daemon restarted ten times a day still prunes once, and one that
was down for a week prunes at its first tick. A pass that fails (a full disk, a locked
file) is not recorded, so the next tick tries again.
"""

import logging
from datetime import datetime, timedelta
from typing import Optional

from featherflow import clock
from featherflow.store import retention

log = logging.getLogger(__name__)

RETENTION_EVERY = timedelta(days=1)


def retention_due(store, now: datetime) -> bool:
    """True when the policy has not been applied in the last RETENTION_EVERY (or never);
    a record from the future (the clock went back) counts as due, not as "done for years"."""
    last = store.rules.last_applied()
    if last is None:
        return True
    age = clock.as_utc(now) - last.at
    return age >= RETENTION_EVERY or age < timedelta(0)


def daily_retention(store, db_path, now: datetime) -> Optional[retention.PruneReport]:
    """Apply the policy if it is due at `now`; the report of what went, or None if not due."""
    if not retention_due(store, now):
        return None
    report = retention.apply_policy(store, db_path, now, vacuum=False)  # see apply_policy: no daily VACUUM
    store.rules.record_applied(now, len(report.runs), report.files_bytes)
    if report.runs or report.orphan_dirs:
        log.info("retention: deleted %s run(s) and %s byte(s) of their files", len(report.runs), report.files_bytes)
    return report
