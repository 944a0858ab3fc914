"""Start a run: check its params, create it, write its script, and become (or wait for) bash.

`featherflow run` creates the run rows, writes the script and then *becomes*
bash (os.execv): while tasks run, no Python process sits in memory, and the
pid recorded with the run stays the pid of the process doing the work. The
functions take what they use, a Config and a Store; the caller closes what it opened.
"""

import errno
import json
import os
import signal
import shutil
import stat
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Optional

from featherflow import clock, flow as flowmod, graph, mark, proc, states
from featherflow.config import Config
from featherflow.engine import limits, script
from featherflow.errors import (
    DatabaseError, DiskError, FeatherflowError, UsageError, ValidationError, is_database_error)
from featherflow.paths import run_dir
from featherflow.store import Store
from featherflow.store.records import Run
from featherflow.store.records import NewRun


@dataclass
class Prepared:
    """A run whose script is written, ready for bash (`run` is None for a dry run)."""

    run: Optional[Run]
    flow: flowmod.Flow
    script_path: Path


def parse_params(text: Optional[str]) -> Dict:
    """`--params` is a JSON object, or the path of a file holding one."""
    if not text:
        return {}
    source = "--params"
    if not text.lstrip().startswith("{"):
        try:
            source = f"--params file {text!r}"
            text = Path(text).read_bytes().decode("utf-8")
        except OSError as exc:
            raise UsageError(f"--params {text!r}: not a JSON object and not a readable file ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise UsageError(f"{source}: not valid JSON: nested too deeply") from None
    if not isinstance(params, dict):
        raise UsageError(f"{source}: must be a JSON object like {{\"day\": \"2026-01-01\"}}")
    return params


def merge_params(flow: flowmod.Flow, given: Dict) -> Dict:
    """The params of a run: the flow's defaults, overridden by `given`.

    A flow with a `params` block takes only the names it declares, so a misspelt
    key is refused instead of silently doing nothing. A flow without one (the
    original format, whose tasks read FEATHERFLOW_PARAMS) takes any; its runs
    name the undeclared ones on their first line.
    """
    unknown = sorted(set(given) - set(flow.params))
    if unknown and flow.declares_params:
        known = ", ".join(flow.params) or ("none: its 'params' block is empty (declare them there, "
                                           "or remove the block to accept any)")
        raise UsageError(f"unknown param {', '.join(map(repr, unknown))} for flow {flow.name!r} (known: {known})")
    for key, value in given.items():
        problem = bad_text(value)
        if bad_text(key):  # an undeclared name is free text too
            problem = f"(the name) {bad_text(key)}"
        if problem:
            raise UsageError(f"--params: {key!r} {problem}")
    return {**flow.params, **given}


def bad_text(value) -> Optional[str]:
    """Why a JSON value cannot reach a task (NUL, lone surrogate), or None.

    A NUL cannot be in an argument or an environment variable; a lone
    surrogate (JSON "\\ud800") cannot be written as UTF-8.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += list(item.keys()) + list(item.values())
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str):
            if "\x00" in item:
                return "contains a NUL byte (not allowed)"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "contains text that is not valid Unicode (a lone surrogate such as \\ud800)"
    return None


def default_parallel() -> int:
    return os.cpu_count() or 2


def prepare(config: Config, store: Optional[Store], name: str, params: Dict, max_parallel: Optional[int] = None,
            dry_run: bool = False, keep_tmp: bool = False, trigger: str = "manual",
            schedule_id: Optional[int] = None, scheduled_at: Optional[str] = None,
            lock_wait: float = script.LOCK_WAIT, kill_grace: float = script.KILL_GRACE) -> Prepared:
    """Validate, create the run (queued, one pending attempt per task), write its script.

    A dry run writes its script under <output>/dry-run/<flow>/ and records
    nothing: `store` may be None then. `lock_wait`: seconds each state change
    may wait for a locked database before the script gives up and stops the
    run. `kill_grace`: seconds between TERM and KILL when a task is stopped
    (timeout, cancel).
    """
    flow = limits.load_flow(config.flows_dir, name, config.tasks_dir)
    source = str(flowmod.flow_path(config.flows_dir, flow.name))
    problem = bad_text(flow.source)
    if problem:
        raise ValidationError([f"the flow {problem}"], source)
    merged = merge_params(flow, params)
    if params:  # the defaults were checked by load_flow
        limits.check(flow, merged, str(config.tasks_dir), "--params", source)
    parallel = max_parallel or flow.max_parallel or default_parallel()
    if parallel < 1:
        raise UsageError(f"--max-parallel must be >= 1, not {parallel}")
    order = graph.topological_order(flow.run_edges)
    if dry_run:
        path = Path(config.output_dir) / "dry-run" / flow.name / "run.sh"
        spec = run_spec(config, 0, "dry-run", trigger, merged, parallel, path.parent, scheduled_at or "",
                        {}, (), keep_tmp, dry_run=True, lock_wait=lock_wait, kill_grace=kill_grace,
                        pools=pool_slots(store, flow))
        write_script(path, script.render(flow, spec), Path(config.output_dir))
        return Prepared(None, flow, path)
    pools = pool_slots(store, flow)
    start, boot = proc.identity(os.getpid())
    try:
        run = store.runs.create_run(NewRun(
            flow.name, order, flow.snapshot(), merged, trigger, str(config.flows_dir), str(config.tasks_dir),
            str(config.output_dir), parallel, schedule_id, scheduled_at,
            pid=os.getpid(), pid_start=start, boot_id=boot))
    except Exception as exc:  # peewee wraps sqlite3's errors ("database is locked") in its own
        if not is_database_error(exc):
            raise
        raise DatabaseError(f"cannot create the run in {config.db_path}: {exc}") from None
    try:
        path = script_for(config, run, flow, {t: 1 for t in order}, (), keep_tmp, lock_wait, kill_grace,
                          pools=pools)
    except OSError as exc:
        # The run exists but can never start: say so in the database too.
        store.runs.transition_run(run.id, states.FAILED, reason=f"could not write its script: {exc}")
        raise DiskError(f"run {run.id}: cannot write its script under {run_dir(run)}: "
                        f"{exc.strerror or exc}") from None
    return Prepared(run, flow, path)


def pool_slots(store: Optional[Store], flow) -> Dict[str, int]:
    """The slots of each pool the flow's tasks name, as defined now (`pool set`); a run
    keeps them to its end (README "Pools"). No store (a dry run without one): 1 each."""
    names = {t.pool for t in flow.tasks if t.pool}
    if names and shutil.which("flock") is None:
        raise UsageError(f"flow {flow.name} names pool(s) {', '.join(sorted(names))}, and a task holds its "
                         "pool's slot with `flock`, which is not on PATH (install util-linux)")
    if store is None or not names:  # no pool: no query (nor import) on a run's path
        return {name: 1 for name in names}
    return store.pools.slots(names)


def run_spec(config: Config, run_id, uid, trigger, params, parallel, directory, scheduled_at, attempts, keep,
             keep_tmp, dry_run=False, lock_wait=script.LOCK_WAIT,
             kill_grace=script.KILL_GRACE, pools=None) -> script.RunSpec:
    """What script.render needs of a run, with this process's Python and `_mark`."""
    return script.RunSpec(
        run_id=run_id, run_uid=uid, trigger=trigger, params=params, max_parallel=parallel,
        python=sys.executable, mark=mark.LAUNCHER, db=str(config.db_path),
        tasks_dir=str(config.tasks_dir), run_dir=str(directory), scheduled_at=scheduled_at,
        output_dir=str(config.output_dir),
        attempts=attempts, keep=tuple(keep), keep_tmp=keep_tmp, dry_run=dry_run, lock_wait=lock_wait,
        kill_grace=kill_grace, max_log_bytes=config.max_log_bytes, pools=dict(pools or {}),
        pool_dir=str(pool_dir(config)))


def pool_dir(config: Config) -> Path:
    """Where pools' slot files are: beside the database, so runs of one database share them."""
    return Path(config.db_path).parent / "pools"


def script_for(config: Config, run: Run, flow, attempts, keep, keep_tmp, lock_wait=script.LOCK_WAIT,
               kill_grace=script.KILL_GRACE, pools=None) -> Path:
    """Write the script of a recorded run into its run dir; its tasks and output dirs are the run's own."""
    directory = run_dir(run)
    scheduled = clock.iso(run.scheduled_at) or ""  # naive (UTC) or aware: the store may give either
    spec = run_spec(config, run.id, run.uid, run.trigger, run.params, run.max_parallel, directory,
                    scheduled, attempts, keep, keep_tmp, lock_wait=lock_wait, kill_grace=kill_grace,
                    pools=pools)
    spec = replace(spec, tasks_dir=run.tasks_dir, output_dir=run.output_dir)
    path = directory / "run.sh"
    write_script(path, script.render(flow, spec), Path(run.output_dir))
    for name in ("logs", "tmp"):  # made here, the script spares a `mkdir` process for each
        _private_dirs(Path(run.output_dir), directory / name)
    return path


def write_script(path: Path, text: str, base: Path) -> None:
    """Write atomically (temp file + rename) into a private directory under `base`."""
    _private_dirs(base, path.parent)
    check_no_links(base, path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "w", encoding="utf-8") as f:  # whatever the locale (cron: C)
        f.write(text)
    os.replace(tmp, path)


def _private_dirs(base: Path, directory: Path) -> None:
    """Create `directory` below the output dir `base` one level at a time, each 0700
    (whatever the umask: logs may hold secrets), never through a symlink."""
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    current = base
    for part in directory.relative_to(base).parts:
        current = current / part
        try:
            os.mkdir(current, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise _planted(current) from None


def check_no_links(base: Path, directory: Path) -> None:
    """Refuse a symlink where a run writes: a dir from `base` down to its run dir,
    the run dir's logs/, tmp/ and run.log, a log file. The script's shell would
    follow a planted link and write (truncate, append) where it points."""
    current = base
    for part in directory.relative_to(base).parts:
        current = current / part
        if current.is_symlink():
            raise _planted(current)
    for name in ("logs", "tmp", "run.log"):
        if (directory / name).is_symlink():
            raise _planted(directory / name)
    try:
        entries = list(os.scandir(directory / "logs"))
    except OSError:
        entries = []
    for entry in entries:
        if entry.is_symlink():
            raise _planted(Path(entry.path))


def _planted(path: Path) -> OSError:
    return OSError(errno.ELOOP, f"{path} is a symlink or not a directory; refusing to write through it "
                                "(remove it; to keep runs elsewhere use --output-dir)")


def bash() -> str:
    found = shutil.which("bash") or "/bin/bash"
    if not os.path.exists(found):
        raise FeatherflowError("bash not found (Featherflow runs flows with bash >= 5.1)")
    return found


def exec_script(store: Optional[Store], prepared: Prepared) -> None:
    """Replace this process with bash running the script (the CLI path).

    `store` is closed first (bash must not inherit the database's file); it
    reopens by itself only if the exec fails, to record why. (Leaving it to the exec
    to drop would spare the close's WAL checkpoint; it was tried together with a POSIX
    lock bug that damaged a database, and taken out untested on its own.)
    """
    shell = bash()
    sys.stdout.flush()
    sys.stderr.flush()
    if store is not None:
        store.close()
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal survives exec:
    # without this, every task would too (`producer | head` in a task would
    # fail with "Broken pipe" instead of ending quietly).
    before = {}
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            before[name] = signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execv(shell, [shell, str(prepared.script_path)])
    except OSError as exc:  # E2BIG, ENOEXEC, ...: the run can never start; say so, not "interrupted"
        for name, handler in before.items():  # this process lives on: a closed pipe must not kill it
            signal.signal(getattr(signal, name), handler)
        reason = f"could not start: cannot execute {shell}: {exc.strerror or exc}"
        if prepared.run is not None and store is not None:
            store.runs.transition_run(prepared.run.id, states.FAILED, reason=reason)
        raise FeatherflowError(f"run {prepared.run.id if prepared.run else '-'}: {reason}") from None


def exec_logged(store: Store, prepared: Prepared) -> None:
    """Like exec_script, with stdout and stderr appended to the run's run.log (no terminal)."""
    path = run_dir(prepared.run) / "run.log"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    exec_script(store, prepared)


def run_and_wait(prepared: Prepared) -> int:
    """Run the script as a child and wait for it (the Python API path).

    On KeyboardInterrupt the script is asked to cancel (it stops its tasks and
    records the run as cancelled) and waited for, never killed outright:
    a SIGKILL would leave its tasks running untracked.
    """
    import subprocess  # lazy: not on the CLI's path, which execs bash

    child = subprocess.Popen([bash(), str(prepared.script_path)])
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        child.wait()
        raise


def start_queued(config: Config, store: Store, run_id: int, launcher: Optional[int] = None) -> Prepared:
    """Claim a queued run the scheduler created and write its script; the caller execs it.

    The claim succeeds only while the run is queued and held by the process that
    launched us (or by us): when a scheduler dies after launching and its
    successor adopts the run, only one of the two processes runs it. A run that
    can no longer start (a task script deleted since its slot fired) ends
    `failed` with the reason instead of staying queued.
    """
    me = os.getpid()
    start, boot = proc.identity(me)
    run = store.runs.claim_queued(run_id, {launcher, me} - {None}, me, start, boot)
    try:
        flow = flowmod.validate(json.loads(run.snapshot), tasks_dir=Path(run.tasks_dir),
                                source=f"run {run.id}")
        attempts = {task: a.attempt for task, a in store.runs.latest_attempts(run.id).items()}
        path = script_for(config, run, flow, attempts, (), keep_tmp=False, pools=pool_slots(store, flow))
    except (FeatherflowError, OSError) as exc:
        why = "; ".join(exc.errors) if isinstance(exc, ValidationError) else str(exc)
        store.runs.transition_run(run.id, states.FAILED, reason=f"could not start: {why}")
        raise
    return Prepared(run, flow, path)
