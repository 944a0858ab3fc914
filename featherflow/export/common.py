"""What every export target shares: the plan of one export and the facts read from a flow.

A flow is read here once into plain facts (each task's rule, cleanup flag, pool, argument
words split into literal text and placeholders, the outputs other tasks read), so that
airflow.py and argo.py only translate. Fields that issue 16 adds to flows (`run_if`,
`cleanup`, `pool`) are read with their defaults when a flow does not know them yet.

Nothing here reads the wall clock: an export is a pure function of the flow, the
schedule and the start date, so the same inputs give the same bytes.
"""

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from featherflow import flow as flowmod
from featherflow.errors import UsageError

# `{{ tasks.ID.outputs.KEY }}` (issue 16): a value a task wrote to $FEATHERFLOW_OUTPUT_FILE.
OUTPUT_REF_RE = re.compile(r"tasks\.([A-Za-z0-9_-]{1,64})\.outputs\.([A-Za-z_][A-Za-z0-9_]*)")
# A script that names these shares files through the run's tmp dir, which workers do not share.
TMP_USE_RE = re.compile(rb"\b(?:TMP_DIR|TEMP_DIR)\b")
RULES = {"all_success": "all_success", "all_done": "all_done", "none_failed": "none_failed",
         "one_failed": "one_failed", "any_failed": "one_failed"}
CATCHUPS = ("latest", "all", "none")
OVERLAPS = ("skip", "queue", "allow")


@dataclass(frozen=True)
class Piece:
    """One part of a flow value: literal `text`, or a placeholder of `kind` param/builtin/output."""

    kind: str  # "text", "param", "builtin", "output"
    text: str = ""  # the literal text, the param name or the builtin's name
    task: str = ""  # for an output: the producing task
    key: str = ""  # for an output: its key


@dataclass(frozen=True)
class TaskFacts:
    id: str
    script: str
    depends_on: Tuple[str, ...]
    args: Tuple[Tuple[Piece, ...], ...]  # one argument word per item
    env: Tuple[Tuple[str, Tuple[Piece, ...]], ...]
    retries: int
    retry_delay: float
    retry_backoff: float
    timeout: Optional[float]
    rule: str  # a key of RULES' values (Airflow trigger rule names)
    cleanup: bool
    pool: str  # "" when none


@dataclass(frozen=True)
class ScheduleFacts:
    name: str
    cron: str
    tz: str
    catchup: str
    overlap: str
    params: Dict = field(default_factory=dict)  # the schedule's own, over the flow's defaults


@dataclass
class Plan:
    """One export: what to write (relative path -> bytes, mode) and what to tell the user."""

    files: Dict[str, Tuple[bytes, int]] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)  # approximations
    lost: List[str] = field(default_factory=list)  # semantics the target does not keep
    commands: List[str] = field(default_factory=list)  # to run once on the target (pools)
    pool_slots: Dict[str, int] = field(default_factory=dict)  # `pool set` sizes; a pool not set has 1


def pieces(value: str) -> Tuple[Piece, ...]:
    """Split a flow value into literal text and placeholders (validated before)."""
    out: List[Piece] = []
    pos = 0
    for match in flowmod.PLACEHOLDER_RE.finditer(value):
        ref = match.group(1)
        output = OUTPUT_REF_RE.fullmatch(ref)
        if ref.startswith("params."):
            piece = Piece("param", ref[len("params."):])
        elif ref in flowmod.BUILTIN_PLACEHOLDERS:
            piece = Piece("builtin", ref)
        elif output:
            piece = Piece("output", task=output.group(1), key=output.group(2))
        else:
            continue  # not a placeholder Featherflow knows: it stays literal text
        if match.start() > pos:
            out.append(Piece("text", value[pos:match.start()]))
        out.append(piece)
        pos = match.end()
    if pos < len(value) or not out:
        out.append(Piece("text", value[pos:]))
    return tuple(out)


def arg_words(args) -> List[str]:
    """A task's arguments as words, placeholders left in (script.task_argv's rules)."""
    if not isinstance(args, dict):
        return list(args)
    words = []
    for key, value in args.items():
        if value is None or value is False:
            continue
        flag = f"-{key}" if len(key) == 1 else f"--{key}"
        if value is True:
            words.append(flag)
        elif len(key) == 1:
            words += [flag, flowmod.scalar_text(value)]
        else:
            words.append(f"{flag}={flowmod.scalar_text(value)}")
    return words


def task_facts(flow: flowmod.Flow) -> List[TaskFacts]:
    """Every task of `flow`, in the flow's order, with issue 16's fields defaulted."""
    flow_pool = getattr(flow, "pool", None) or ""
    facts = []
    for task in flow.tasks:
        rule = getattr(task, "run_if", None) or "all_success"
        if rule not in RULES:
            raise UsageError(f"task {task.id!r}: run_if {rule!r} cannot be exported "
                             f"(valid: {', '.join(sorted(RULES))})")
        env = tuple((name, pieces(value)) for name, value in task.env.items())
        for name, _ in env:
            if name.startswith("_FF_"):
                raise UsageError(f"task {task.id!r}: env {name!r} cannot be exported "
                                 "(names starting with _FF_ are the exported wrapper's own)")
        facts.append(TaskFacts(
            id=task.id, script=task.script, depends_on=tuple(task.depends_on),
            args=tuple(pieces(w) for w in arg_words(task.args)), env=env,
            retries=task.retries, retry_delay=task.retry_delay, retry_backoff=task.retry_backoff,
            timeout=task.timeout, rule=RULES[rule], cleanup=bool(getattr(task, "cleanup", False)),
            pool=getattr(task, "pool", None) or flow_pool))
    return facts


def read_outputs(tasks: List[TaskFacts]) -> Dict[str, List[str]]:
    """{producing task: [keys other tasks read]}, keys sorted."""
    found: Dict[str, set] = {}
    for task in tasks:
        for words in list(task.args) + [value for _, value in task.env]:
            for piece in words:
                if piece.kind == "output":
                    found.setdefault(piece.task, set()).add(piece.key)
    return {task: sorted(keys) for task, keys in sorted(found.items())}


def upstream(tasks: List[TaskFacts]) -> Dict[str, Tuple[str, ...]]:
    """Each task's upstream in the target: its deps; a cleanup task without deps runs after
    every non-cleanup task (Featherflow runs it at the end)."""
    work = tuple(t.id for t in tasks if not t.cleanup)
    return {t.id: (t.depends_on if t.depends_on or not t.cleanup else work) for t in tasks}


def tmp_users(tasks: List[TaskFacts], tasks_dir: Path) -> List[str]:
    """Ids of the tasks whose script mentions TMP_DIR or TEMP_DIR."""
    users = []
    for task in tasks:
        try:
            text = (Path(tasks_dir) / task.script).read_bytes()
        except OSError:
            continue
        if TMP_USE_RE.search(text):
            users.append(task.id)
    return users


def script_files(tasks: List[TaskFacts], tasks_dir: Path, prefix: str) -> Dict[str, Tuple[bytes, int]]:
    """The task scripts, copied under `prefix/` with their modes (read once, sorted)."""
    files = {}
    for script in sorted({t.script for t in tasks}):
        path = Path(tasks_dir) / script
        try:
            files[f"{prefix}/{script}"] = (path.read_bytes(), path.stat().st_mode & 0o755 | 0o644)
        except OSError as exc:
            raise UsageError(f"cannot read task script {path}: {exc.strerror}") from None
    return files


def fixed_times(cron: str) -> List[Tuple[int, int]]:
    """(hour, minute) pairs of a cron whose minute and hour fields are plain numbers or lists
    of them; [] for a cron with ranges, steps or `*` there (it runs on the clock as it is)."""
    fields = cron.split()
    if len(fields) < 5 or not all(re.fullmatch(r"\d+(,\d+)*", f) for f in fields[:2]):
        return []
    minutes = [int(m) for m in fields[0].split(",")]
    hours = [int(h) for h in fields[1].split(",")]
    return [(h, m) for h in hours for m in minutes]


def dst_warnings(cron: str, tz: str, year: int, target: str) -> List[str]:
    """A warning per fixed cron time that falls in a daylight-saving transition hour of `tz`
    in `year` or the next: Airflow fires such slots where Featherflow does not."""
    try:
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(tz)
    except Exception:  # an unknown zone was refused when the schedule was added
        return []
    times = fixed_times(cron)
    if not times:
        return []
    warnings = []
    moment = datetime(year, 1, 1, tzinfo=timezone.utc)
    end = datetime(year + 2, 1, 1, tzinfo=timezone.utc)
    before = moment.astimezone(zone).utcoffset()
    seen = set()
    while moment < end:
        nxt = moment + timedelta(hours=1)
        after = nxt.astimezone(zone).utcoffset()
        if after != before:
            # The wall clock at the transition reads `start` in the old offset; it jumps by `shift`.
            instant = _transition(moment, nxt, zone, after)
            wall = (instant + before).replace(tzinfo=None)
            shift = after - before
            lo, hi = (wall, wall + shift) if shift > timedelta(0) else (wall + shift, wall)
            for hour, minute in times:
                at = wall.replace(hour=hour % 24, minute=minute % 60, second=0)
                if lo <= at < hi and (shift > timedelta(0), hour, minute) not in seen:
                    seen.add((shift > timedelta(0), hour, minute))
                    warnings.append(_dst_text(hour, minute, tz, at.date(), shift, target))
            before = after
        moment = nxt
    return warnings


def _transition(lo: datetime, hi: datetime, zone, new_offset) -> datetime:
    """The UTC instant in [lo, hi) where the offset becomes `new_offset` (to the minute)."""
    while hi - lo > timedelta(minutes=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == new_offset:
            hi = mid
        else:
            lo = mid
    return hi.replace(second=0, microsecond=0, tzinfo=None)


def _dst_text(hour: int, minute: int, tz: str, day, shift: timedelta, target: str) -> str:
    at = f"{hour:02d}:{minute:02d}"
    if shift > timedelta(0):
        later = hour * 60 + minute + int(shift.total_seconds() // 60)
        there = (f"Airflow at {later // 60 % 24:02d}:{later % 60:02d}" if target == "Airflow"
                 else f"{target} may fire it at another time or not at all")
        return (f"the schedule's {at} does not exist in {tz} on {day} (clocks go forward): Featherflow "
                f"fires that slot when the gap ends, {there}")
    there = "Airflow at the second" if target == "Airflow" else f"{target} may fire at the second"
    return (f"the schedule's {at} happens twice in {tz} on {day} (clocks go back): Featherflow fires "
            f"at the first, {there}")


def write_files(out_dir: Path, files: Dict[str, Tuple[bytes, int]]) -> List[Path]:
    """Write every file under `out_dir`, each through a temporary file renamed into place:
    a reader never sees half a file. Returns the paths written."""
    written = []
    out_dir = Path(out_dir)
    for rel, (data, mode) in sorted(files.items()):
        path = out_dir / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror} (valid: --out a folder you can write)") from None
        written.append(path)
    return written
