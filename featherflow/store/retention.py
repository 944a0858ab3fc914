"""`runs prune` and the retention policy: delete old runs, their attempts and their files,
and keep the database small.

Order matters for a crash at any point: database rows first (one transaction
per chunk), then the run directories, then run directories this database no
longer knows (left by an earlier interrupted prune). A queued or running run
is never deleted.
"""

import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import List, Optional

from featherflow import states
from featherflow.errors import UsageError
from featherflow.paths import run_dir
from featherflow.store.db import chunks
from featherflow.store.rules import GLOBAL, Rule, effective

RUN_DIR_RE = re.compile(r"(\d+)-([0-9a-f]{8})")


@dataclass
class PruneReport:
    runs: List[int] = field(default_factory=list)
    attempts: int = 0
    files_bytes: int = 0
    orphan_dirs: List[str] = field(default_factory=list)
    db_bytes_before: int = 0
    db_bytes_after: int = 0


def select(runs, now: datetime, older_than: Optional[timedelta], keep_last: Optional[int]) -> list:
    """Finished runs to delete: older than `older_than`, beyond the newest `keep_last` per flow.

    `runs` is newest first. With both limits a run goes only when both say so.
    """
    seen = {}
    chosen = []
    for run in runs:
        seen[run.flow_name] = seen.get(run.flow_name, 0) + 1
        if run.state not in states.RUN_FINISHED:
            continue
        if keep_last is not None and seen[run.flow_name] <= keep_last:
            continue
        if older_than is not None and (run.ended_at or run.created_at) > now - older_than:
            continue
        chosen.append(run)
    return chosen


def prune(store, db_path: Path, now: datetime, older_than: Optional[timedelta] = None,
          keep_last: Optional[int] = None, flow: Optional[str] = None,
          dry_run: bool = False, output_dir: Optional[Path] = None) -> PruneReport:
    """Delete the runs `select` chooses; `output_dir` (the current one) is also
    searched for leftover run dirs, even when no run of this database uses it."""

    report = PruneReport(db_bytes_before=_size(db_path))
    doomed = select(store.runs.list_runs(flow=flow, limit=None), now, older_than, keep_last)
    output_dirs = {Path(r.output_dir) for r in doomed}
    for batch in chunks(doomed):
        _remove(store, batch, report, dry_run)
    events_before = now - older_than if older_than is not None else None
    return _finish(store, db_path, report, output_dirs, output_dir, events_before, dry_run, vacuum=True)


BATCH = 500  # runs the policy deletes at a time: its memory stays that of one batch


def apply_policy(store, db_path: Path, now: datetime, flow: Optional[str] = None,
                 dry_run: bool = False, output_dir: Optional[Path] = None, vacuum: bool = True) -> PruneReport:
    """Delete what the stored retention policy lets go (`runs prune --policy`, and the
    scheduler once a day): for each flow with runs, the runs its rule (store/rules.py)
    chooses, oldest first, BATCH at a time. Queued and running runs are never chosen;
    failed and interrupted ones (the ones a resume or a backfill may still want) are kept
    as long as the rule keeps any run of their age. Run-less notification events go after
    the longest `older_than` of the policy, once delivered. `vacuum`: False for the daemon,
    which only checkpoints (the pages freed are reused by the next day's runs; a VACUUM
    would rewrite the whole file every day, on an SD card, and hold memory for it)."""
    report = PruneReport(db_bytes_before=_size(db_path))
    rules = store.rules.rules()
    output_dirs = set()
    for name in [flow] if flow else store.rules.flow_names():
        rule = effective(rules, name)
        after = 0
        while rule is not None:
            batch = store.rules.candidates(name, rule, now, after, BATCH)
            if not batch:
                break
            after = batch[-1].id
            output_dirs |= {Path(r.output_dir) for r in batch}
            _remove(store, batch, report, dry_run)
    ages = [r.older_than for r in rules.values() if r.active and r.older_than is not None]
    return _finish(store, db_path, report, output_dirs, output_dir, now - max(ages) if ages else None,
                   dry_run, vacuum)


def set_policy(store, now: datetime, flow: Optional[str], older_than: Optional[timedelta],
               keep_last: Optional[int], off: bool = False) -> Rule:
    """Store the global rule (`flow` None) or a flow's own one, replacing what was there."""
    if off and (older_than is not None or keep_last is not None):
        raise UsageError("--off takes no --older-than or --keep-last (valid: --off alone, or limits)")
    if not off and older_than is None and keep_last is None:
        raise UsageError("say what to keep: --older-than AGE and/or --keep-last N, or --off")
    if keep_last is not None and keep_last < 0:
        raise UsageError(f"--keep-last must be a whole number >= 0, not {keep_last}")
    if older_than is not None and older_than <= timedelta(0):
        raise UsageError("--older-than must be more than 0 (e.g. 30d)")
    return store.rules.set_rule(flow or GLOBAL, older_than, keep_last, not off, now)


def _remove(store, doomed: list, report: PruneReport, dry_run: bool) -> None:
    """One batch: its rows (their events and deliveries go with them, ON DELETE CASCADE),
    then its directories. A run resumed since it was chosen is not deleted (delete_runs
    checks the state in its transaction): its files stay, and it is left out of the report."""
    ids = [r.id for r in doomed]
    attempts = store.runs.attempt_count(ids)
    if not dry_run:
        store.runs.delete_runs(ids)
        left = store.rules.uids_of(ids)
        if left:
            attempts -= store.runs.attempt_count(list(left))
            doomed = [r for r in doomed if r.id not in left]
            ids = [r.id for r in doomed]
    report.runs += ids
    report.attempts += attempts
    for run in doomed:
        directory = run_dir(run)
        report.files_bytes += _tree_size(directory)
        if not dry_run:
            shutil.rmtree(directory, ignore_errors=True)


def _finish(store, db_path: Path, report: PruneReport, output_dirs, output_dir: Optional[Path],
            events_before: Optional[datetime], dry_run: bool, vacuum: bool) -> PruneReport:
    """After the runs: old run-less events, leftover dirs of runs this database no longer
    has (in every output dir its runs used, and the current one), then compact."""
    if dry_run:
        report.db_bytes_after = report.db_bytes_before
        return report
    if events_before is not None:
        store.outbox.prune_events(events_before)
    dirs = set(output_dirs) | {Path(d) for d in store.runs.output_dirs()}
    if output_dir is not None:
        dirs.add(Path(output_dir))
    for output in sorted(dirs):
        for orphan in _orphans(output / "runs", store.rules.uids_of, str(db_path)):
            report.files_bytes += _tree_size(orphan)
            shutil.rmtree(orphan, ignore_errors=True)
            report.orphan_dirs.append(str(orphan))
    store.compact(vacuum)
    report.db_bytes_after = _size(db_path)
    return report


def _orphans(runs_dir: Path, uids_of, db_path: str) -> List[Path]:
    """Run dirs written by this database for runs it no longer has.

    Read a chunk of entries at a time, each chunk listed before the database is asked
    (`uids_of(ids)`): a run's row is committed before its dir is made, so a run started
    meanwhile is known and its dir is never taken for a leftover.
    """
    found = []
    try:
        entries = os.scandir(runs_dir)
    except OSError:
        return found
    marker = f"FF_DB={_quote(db_path)}"
    with entries:
        while True:
            chunk = []
            for entry in entries:
                match = RUN_DIR_RE.fullmatch(entry.name)
                if match:
                    chunk.append((Path(entry.path), int(match.group(1)), match.group(2)))
                    if len(chunk) >= BATCH:
                        break
            if not chunk:
                return found
            known = uids_of([run_id for _, run_id, _ in chunk])
            for path, run_id, prefix in chunk:
                if known.get(run_id, "")[:8] == prefix or path.is_symlink() or not path.is_dir():
                    continue
                try:
                    text = (path / "run.sh").read_text(errors="replace")
                except OSError:
                    continue
                if marker in text.splitlines():
                    found.append(path)


def _quote(value: str) -> str:
    return shlex.quote(value)


def _size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += Path(str(path) + suffix).stat().st_size
        except OSError:
            pass
    return total


def _tree_size(path: Path) -> int:
    total = 0
    try:
        for item in path.rglob("*"):
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_size
    except OSError:
        pass
    return total
