"""What the machine says about itself: the filesystem under a path, free space, and
whether the clock is set and synchronised; and the Finding every doctor check returns.

Schedules fire by the clock and the database lives on a disk: on a Pi with no RTC
and an SD card these are the first things to check. No database here.
"""

import os
import subprocess
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from featherflow import clock, states
from featherflow.text import megabytes

OK, WARNING, PROBLEM = "ok", "warning", "problem"
PRUNE = "featherflow runs prune --older-than 30d"  # the fix for a disk filling with logs
MIN_FREE_BYTES = 100 * 1024 * 1024  # below this a run can fail on its next write
MIN_FREE_RATIO = 0.05  # ... or below 5 % free, unless more than LOTS_FREE remain
LOTS_FREE = 1024 ** 3
EARLIEST_PLAUSIBLE = datetime(2024, 1, 1, tzinfo=clock.UTC)  # a clock before this was never set (no RTC, no network)
# SQLite's locking (and WAL's shared memory) does not work over these: two
# machines, or even two processes, can corrupt the database.
NETWORK_FILESYSTEMS = {
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "sshfs", "fuse.sshfs", "9p", "afs",
    "ceph", "fuse.ceph", "glusterfs", "fuse.glusterfs", "lustre", "gpfs", "davfs", "fuse.davfs2",
    "fuse.rclone", "fuse.s3fs", "ncpfs", "coda",
}


@dataclass
class Finding:
    name: str
    status: str  # ok | warning | problem
    detail: str
    fix: str = ""

    def as_dict(self) -> Dict:
        return asdict(self)


def read_mountinfo() -> str:
    for source in ("/proc/self/mountinfo", "/proc/mounts"):
        try:
            with open(source) as f:
                return f.read()
        except OSError:
            continue
    return ""


def filesystem_of(path: str, mountinfo: str) -> Optional[Tuple[str, str]]:
    """(mount point, filesystem type) holding `path`, from /proc/self/mountinfo
    (or /proc/mounts) text: the longest mount point that contains it."""
    best = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " in line:  # mountinfo: ... mount_point options [optional...] - fstype source ...
            head, _, tail = line.partition(" - ")
            parts = head.split()
            if len(parts) < 5 or not tail.split():
                continue
            point, fstype = _unescape(parts[4]), tail.split()[0]
        elif len(fields) >= 3:  # /proc/mounts: source mount_point fstype ...
            point, fstype = _unescape(fields[1]), fields[2]
        else:
            continue
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    return best


def _unescape(text: str) -> str:
    """Mount tables write space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(code, char)
    return text


def check_filesystem(db_path: Path, mountinfo: str) -> Finding:
    name = "database filesystem"
    real = os.path.realpath(db_path if db_path.exists() else db_path.parent)
    found = filesystem_of(real, mountinfo)
    if found is None:
        return Finding(name, WARNING, f"cannot tell which filesystem holds {real} (no mount table)")
    point, fstype = found
    if fstype in NETWORK_FILESYSTEMS or fstype.split(".")[-1] in NETWORK_FILESYSTEMS:
        return Finding(name, PROBLEM,
                       f"{real} is on a network filesystem ({fstype} at {point}): SQLite's locking and WAL "
                       "do not work there and the database can be corrupted",
                       "keep the database on a local disk: --db / FEATHERFLOW_DB /var/lib/... "
                       "or FEATHERFLOW_HOME on a local path")
    return Finding(name, OK, f"local ({fstype} at {point})")


def free_spaces(paths: Sequence[Path]) -> List[Tuple[str, int, int]]:
    """(path, free bytes, total bytes) once per filesystem, for the nearest existing dir."""
    seen, found = set(), []
    for path in paths:
        existing = Path(os.path.abspath(path))
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            st = os.statvfs(existing)
            dev = os.stat(existing).st_dev
        except OSError:
            continue
        if dev in seen:
            continue
        seen.add(dev)
        found.append((str(existing), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
    return found


def check_free_space(spaces: Sequence[Tuple[str, int, int]]) -> List[Finding]:
    """A problem under 100 MB free, or under 5 % free unless over 1 GB remain
    (5 % of a 4 TB disk is plenty; 5 % of an 8 GB SD card is not)."""
    found = []
    for path, free, total in spaces:
        low = free < MIN_FREE_BYTES or (total and free < total * MIN_FREE_RATIO and free < LOTS_FREE)
        share = f" ({free / total:.0%})" if total else ""
        if low:
            found.append(Finding("free disk space", PROBLEM, f"{megabytes(free)} free on the filesystem of {path}{share}",
                                 f"free space: `{PRUNE}` deletes old runs' logs; a run stops (and can be "
                                 "resumed) when the database cannot be written"))
        else:
            found.append(Finding("free disk space", OK, f"{megabytes(free)} free on the filesystem of {path}{share}"))
    return found


def clock_synchronised() -> Optional[bool]:
    """True/False from systemd (timedatectl, or timesyncd's flag file); None when unknown."""
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized"], capture_output=True,
                             text=True, timeout=3)
        if out.returncode == 0:
            value = out.stdout.strip().partition("=")[2]
            if value in ("yes", "no"):
                return value == "yes"
    except (OSError, subprocess.SubprocessError):
        pass
    if os.path.exists("/run/systemd/timesync/synchronized"):
        return True
    return None


def check_clock(synchronised: Optional[bool], now: datetime) -> Finding:
    """Schedules fire by the clock: a Pi has no RTC and boots in the past until NTP answers."""
    name = "clock"
    if clock.as_utc(now) < EARLIEST_PLAUSIBLE:
        return Finding(name, PROBLEM, f"the clock says {now:%Y-%m-%d %H:%M} UTC: it was never set",
                       "connect the machine to the network and enable time sync "
                       "(timedatectl set-ntp true), or set it by hand (date -s)")
    if synchronised:
        return Finding(name, OK, "synchronised (NTP)")
    fix = "enable time sync: timedatectl set-ntp true (or install chrony); schedules fire by this clock"
    if synchronised is False:
        return Finding(name, WARNING, "not synchronised: schedules may fire at the wrong time", fix)
    return Finding(name, WARNING, "synchronisation unknown (no timedatectl, no timesyncd flag)", fix)


# -- scheduler and runs -----------------------------------------------------------------


# -- the scheduler (doctor, the status page) ------------------------------------------

def parse_time(value) -> Optional[datetime]:
    """A time read from a database row: a datetime as it is, stored text parsed, None for none."""
    return clock.from_text(value if isinstance(value, datetime) else str(value) if value else None)


def check_scheduler(row: Optional[Dict], alive: bool, enabled_schedules: int, now: datetime,
                    stale_after: float = states.HEARTBEAT_STALE) -> Finding:
    """Needed only when an enabled schedule exists; alive means the recorded process
    (pid, start time, boot id) still exists, fresh means a heartbeat within `stale_after`."""
    name = "scheduler"
    start = "featherflow scheduler start (or start its systemd unit)"
    if row is None or row.get("stopped_at") or not alive:
        why = ("never started" if row is None else
               "stopped" if row.get("stopped_at") else f"not running (its process {row['pid']} is gone)")
        if enabled_schedules:
            return Finding(name, PROBLEM, f"{why}, and {enabled_schedules} schedule(s) are enabled: none will fire",
                           start)
        return Finding(name, OK, f"{why} (no enabled schedule needs it)")
    value = row.get("heartbeat_at")
    beat = parse_time(value)
    age = (clock.as_utc(now) - beat).total_seconds() if beat else None
    if age is None or age > stale_after:
        said = "no heartbeat" if age is None else f"last heartbeat {age:.0f}s ago"
        return Finding(name, PROBLEM, f"pid {row['pid']} is alive but hung ({said}; limit {stale_after:.0f}s)",
                       f"kill {row['pid']} and {start}; its log is in <config dir>/logs")
    return Finding(name, OK, f"running (pid {row['pid']}, heartbeat {max(age, 0):.0f}s ago)")
