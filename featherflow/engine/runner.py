"""Create runs, launch their scripts, reconcile orphans, resume and cancel.

`featherflow run` creates the run rows, writes the script and then *becomes*
bash (os.execv): while tasks run, no Python process sits in memory, and the
pid recorded with the run stays the pid of the process doing the work.
"""

import errno
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from featherflow import clock, flow as flowmod, graph, proc, states
from featherflow.paths import run_dir
from featherflow.engine import limits
from featherflow.engine import script
from featherflow.errors import (
    ConflictError, DatabaseError, DiskError, FeatherflowError, UsageError, ValidationError)
from featherflow.store.runs import Run

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    run: Optional[Run]
    flow: flowmod.Flow
    script_path: Path


@dataclass
class ResumePlan:
    run: Run
    flow: flowmod.Flow
    keep: List[str]
    rerun: List[str]
    definition: str  # which definition is used, in words
    snapshot: Optional[str]  # the new snapshot when the current file replaces it


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
        problem = _bad_text(value)
        if _bad_text(key):  # an undeclared name is free text too
            problem = f"(the name) {_bad_text(key)}"
        if problem:
            raise UsageError(f"--params: {key!r} {problem}")
    return {**flow.params, **given}


def _bad_text(value) -> Optional[str]:
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


def prepare(app, name: str, params: Dict, max_parallel: Optional[int] = None,
            dry_run: bool = False, keep_tmp: bool = False, trigger: str = "manual",
            schedule_id: Optional[int] = None, scheduled_at: Optional[str] = None,
            lock_wait: float = script.LOCK_WAIT, kill_grace: float = script.KILL_GRACE) -> Prepared:
    """Validate, create the run (queued, one pending attempt per task), write its script.

    `lock_wait`: seconds each state change may wait for a locked database
    before the script gives up and stops the run. `kill_grace`: seconds
    between TERM and KILL when a task is stopped (timeout, cancel).
    """
    cfg = app.config
    flow = app.load_flow(name)
    problem = _bad_text(flow.source)
    if problem:
        raise ValidationError([f"the flow {problem}"], str(flowmod.flow_path(cfg.flows_dir, flow.name)))
    merged = merge_params(flow, params)
    if params:  # the defaults were checked by load_flow
        limits.check(flow, merged, str(cfg.tasks_dir), "--params", str(flowmod.flow_path(cfg.flows_dir, flow.name)))
    parallel = max_parallel or flow.max_parallel or default_parallel()
    if parallel < 1:
        raise UsageError(f"--max-parallel must be >= 1, not {parallel}")
    order = graph.topological_order(flow.edges)
    if dry_run:
        path = Path(cfg.output_dir) / "dry-run" / flow.name / "run.sh"
        spec = _spec(app, 0, "dry-run", trigger, merged, parallel, path.parent, scheduled_at or "",
                     {}, (), keep_tmp, dry_run=True, lock_wait=lock_wait, kill_grace=kill_grace)
        _write_script(path, script.render(flow, spec), Path(cfg.output_dir))
        return Prepared(None, flow, path)
    start, boot = proc.identity(os.getpid())
    try:
        run = app.store.create_run(
            flow.name, order, flow.snapshot(), merged, trigger, str(cfg.flows_dir), str(cfg.tasks_dir),
            str(cfg.output_dir), parallel, schedule_id, scheduled_at,
            pid=os.getpid(), pid_start=start, boot_id=boot)
    except Exception as exc:  # peewee wraps sqlite3's errors ("database is locked") in its own
        if exc.__class__.__module__ != "peewee":
            raise
        raise DatabaseError(f"cannot create the run in {cfg.db_path}: {exc}") from None
    try:
        path = _script_for(app, run, flow, {t: 1 for t in order}, (), keep_tmp, lock_wait, kill_grace)
    except OSError as exc:
        # The run exists but can never start: say so in the database too.
        app.store.transition_run(run.id, states.FAILED, reason=f"could not write its script: {exc}")
        raise DiskError(f"run {run.id}: cannot write its script under {run_dir(run)}: "
                               f"{exc.strerror or exc}") from None
    return Prepared(run, flow, path)


def _spec(app, run_id, uid, trigger, params, parallel, directory, scheduled_at, attempts, keep,
          keep_tmp, dry_run=False, lock_wait=script.LOCK_WAIT,
          kill_grace=script.KILL_GRACE) -> script.RunSpec:
    from featherflow import mark

    return script.RunSpec(
        run_id=run_id, run_uid=uid, trigger=trigger, params=params, max_parallel=parallel,
        python=sys.executable, mark=os.path.abspath(mark.__file__), db=str(app.config.db_path),
        tasks_dir=str(app.config.tasks_dir), run_dir=str(directory), scheduled_at=scheduled_at,
        output_dir=str(app.config.output_dir),
        attempts=attempts, keep=tuple(keep), keep_tmp=keep_tmp, dry_run=dry_run, lock_wait=lock_wait,
        kill_grace=kill_grace)


def _script_for(app, run: Run, flow, attempts, keep, keep_tmp, lock_wait=script.LOCK_WAIT,
                kill_grace=script.KILL_GRACE) -> Path:
    directory = run_dir(run)
    scheduled = clock.iso(run.scheduled_at) or ""
    spec = _spec(app, run.id, run.uid, run.trigger, run.params, run.max_parallel, directory,
                 scheduled, attempts, keep, keep_tmp, lock_wait=lock_wait, kill_grace=kill_grace)
    spec = script.RunSpec(**{**spec.__dict__, "tasks_dir": run.tasks_dir, "output_dir": run.output_dir})
    path = directory / "run.sh"
    _write_script(path, script.render(flow, spec), Path(run.output_dir))
    return path


def _write_script(path: Path, text: str, base: Path) -> None:
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


def exec_script(app, prepared: Prepared) -> None:
    """Replace this process with bash running the script (the CLI path)."""
    shell = bash()
    sys.stdout.flush()
    sys.stderr.flush()
    app.close()
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal survives exec:
    # without this, every task would too (`producer | head` in a task would
    # fail with "Broken pipe" instead of ending quietly).
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execv(shell, [shell, str(prepared.script_path)])
    except OSError as exc:  # E2BIG, ENOEXEC, ...: the run can never start; say so, not "interrupted"
        reason = f"could not start: cannot execute {shell}: {exc.strerror or exc}"
        if prepared.run is not None:
            app.store.transition_run(prepared.run.id, states.FAILED, reason=reason)
        raise FeatherflowError(f"run {prepared.run.id if prepared.run else '-'}: {reason}") from None


def run_and_wait(app, prepared: Prepared) -> int:
    """Run the script as a child and wait for it (the Python API path).

    On KeyboardInterrupt the script is asked to cancel (it stops its tasks and
    records the run as cancelled) and waited for, never killed outright:
    a SIGKILL would leave its tasks running untracked.
    """
    child = subprocess.Popen([bash(), str(prepared.script_path)])
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        child.wait()
        raise


# -- orphans -----------------------------------------------------------------

def reconcile(store, current_boot: Optional[str] = None) -> List[Tuple[int, str]]:
    """Mark runs whose process is gone `interrupted` and kill what they left behind.

    A run is gone when the machine rebooted since (other boot id), its pid no
    longer exists, or the pid now belongs to another process (other start
    time). A live run is never touched.
    """
    current_boot = proc.boot_id() if current_boot is None else current_boot
    done = []
    for run in store.list_runs(states_in=(states.QUEUED, states.RUNNING), limit=None):
        if proc.is_alive(run.pid, run.pid_start, run.boot_id, current_boot):
            continue
        if run.boot_id and current_boot and run.boot_id != current_boot:
            reason = "the machine restarted while it ran"
        elif run.pid and proc.start_time(run.pid) is not None and not proc.is_zombie(run.pid):
            reason = f"its process {run.pid} is gone (the pid now belongs to another process)"
        else:
            reason = f"its process {run.pid} is gone (killed, crashed or out of memory)"
        new = states.INTERRUPTED
        why = _start_failure(run) if run.state == states.QUEUED else None
        if why:  # it never started, and said why: failed (resuming would fail the same way)
            new, reason = states.FAILED, why
        # Kill before recording: a leftover `_mark` call, or a task forked just
        # before the run died, could otherwise record a task `running` (or run
        # it untracked) after the run is marked interrupted. A `_mark` already
        # under way may still move the run from queued to running meanwhile:
        # then look again (bounded), as long as it is the same dead process.
        for _ in range(3):
            current = store.get_run(run.id)
            if (current.state not in (states.QUEUED, states.RUNNING)
                    or proc.is_alive(current.pid, current.pid_start, current.boot_id, current_boot)):
                break  # it ended, was reconciled, or was resumed by a live process meanwhile
            killed = kill_leftovers(current)
            if killed:
                log.warning("run %s: killed %d leftover process(es)", run.id, killed)
            if store.interrupt(run.id, current.state, reason, new):
                done.append((run.id, reason))
                break
    return done


def _start_failure(run: Run) -> Optional[str]:
    """What a run's script left in `start-failed` when it could not start and not record it."""
    try:
        with open(run_dir(run) / "start-failed", "rb") as f:
            text = f.read(4096).decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text or None


def kill_leftovers(run: Run, passes: int = 5) -> int:
    """SIGKILL every process a dead run left: task groups, `_mark` calls, forks of its script.

    Repeated until a pass finds nothing, since a process killed in one pass may
    have started another just before (bounded: `passes`).
    """
    script_path = str(run_dir(run) / "run.sh")
    killed = 0
    for _ in range(passes):
        pids = set(proc.processes_with_env("FEATHERFLOW_RUN_UID", run.uid))
        pids |= set(proc.processes_running_script(script_path))
        if not pids:
            break
        killed += proc.kill_all(sorted(pids))
    return killed


# -- resume ------------------------------------------------------------------

def plan_resume(app, run_id: int, force: bool = False, from_task: Optional[str] = None) -> ResumePlan:
    """Decide which tasks a resume keeps and which it runs again."""
    run = app.store.get_run(run_id)
    if run.state not in states.RESUMABLE:
        raise ConflictError(
            f"run {run_id} is {run.state}; only failed or interrupted runs can be resumed")
    snapshot_flow = flowmod.validate(json.loads(run.snapshot), tasks_dir=None, source=f"run {run_id} snapshot")
    try:
        current = flowmod.load(Path(run.flows_dir), run.flow_name, Path(run.tasks_dir))
    except FeatherflowError as exc:
        current, problem = None, str(exc).splitlines()[0]
    else:
        problem = None
    flow, snapshot = snapshot_flow, None
    definition = f"the definition run {run_id} started with"
    if current is None or current.snapshot() != run.snapshot:
        what = (f"flow file {run.flows_dir}/{run.flow_name}.json changed since run {run_id} started"
                if current is not None else f"the flow file cannot be used now ({problem})")
        if not force:
            raise ConflictError(f"{what}; resume with --force to proceed anyway")
        if current is not None:
            flow, snapshot = current, current.snapshot()
            definition = f"the CURRENT definition in {run.flows_dir}/{run.flow_name}.json (--force; {what})"
        else:
            definition = f"the definition run {run_id} started with (--force; {what})"
    flowmod.validate(flow.source, tasks_dir=Path(run.tasks_dir), source=f"run {run_id}")
    latest = app.store.latest_attempts(run_id)
    order = graph.topological_order(flow.edges)
    rerun: Set[str] = {t for t in order if t not in latest or latest[t].state != states.SUCCESS}
    if from_task is not None:
        if from_task not in flow.edges:
            raise UsageError(f"--from: unknown task {from_task!r} (known: {', '.join(order)})")
        rerun.add(from_task)
        rerun |= graph.descendants(flow.edges, [from_task])
    rerun |= graph.descendants(flow.edges, rerun)
    # Nothing to re-run (killed after its last task, before recording its own
    # end): the resume runs no task and records the run's success.
    return ResumePlan(run, flow, [t for t in order if t not in rerun], [t for t in order if t in rerun],
                      definition, snapshot)


def start_resume(app, plan: ResumePlan, keep_tmp: bool = False, auto: bool = False) -> Prepared:
    try:  # before the run is reopened: a refused resume leaves it resumable
        check_no_links(Path(plan.run.output_dir), run_dir(plan.run))
    except OSError as exc:
        raise FeatherflowError(f"run {plan.run.id} cannot resume: {exc.strerror}") from None
    start, boot = proc.identity(os.getpid())
    attempts = app.store.resume(plan.run.id, plan.rerun, plan.snapshot, auto=auto,
                                pid=os.getpid(), pid_start=start, boot_id=boot)
    run = app.store.get_run(plan.run.id)
    try:
        path = _script_for(app, run, plan.flow, attempts, plan.keep, keep_tmp)
    except OSError as exc:
        app.store.transition_run(run.id, states.FAILED, reason=f"could not write its script: {exc.strerror or exc}")
        raise DiskError(f"run {run.id}: cannot write its script under {run_dir(run)}: "
                               f"{exc.strerror or exc}") from None
    return Prepared(run, plan.flow, path)


# -- cancel ------------------------------------------------------------------

def cancel(app, run_id: int, wait: float = script.KILL_GRACE + 5.0) -> str:
    """Stop a queued or running run from anywhere; returns its final state."""
    run = app.store.get_run(run_id)
    if run.state not in (states.QUEUED, states.RUNNING):
        raise ConflictError(f"run {run_id} is {run.state}; only queued or running runs can be cancelled")
    if proc.is_alive(run.pid, run.pid_start, run.boot_id):
        try:
            os.kill(run.pid, signal.SIGTERM)  # the script's trap stops every task group
        except OSError:
            pass  # gone meanwhile
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            state = app.store.get_run(run_id).state
            if state in states.RUN_FINISHED:
                return state
            if not proc.is_alive(run.pid, run.pid_start, run.boot_id):
                break  # died without recording its end (e.g. still queued): finish it here
            time.sleep(0.1)
        if proc.is_alive(run.pid, run.pid_start, run.boot_id):
            os.kill(run.pid, signal.SIGKILL)
    kill_leftovers(run)
    try:
        app.store.transition_run(run_id, states.CANCELLED, reason="cancelled by `runs cancel`")
    except states.IllegalTransition:
        pass  # it ended by itself meanwhile
    return app.store.get_run(run_id).state


# -- scheduled runs --------------------------------------------------------------

def start_queued(app, run_id: int, launcher: Optional[int] = None) -> Prepared:
    """Claim a queued run the scheduler created and write its script; the caller execs it.

    The claim succeeds only while the run is queued and held by the process that
    launched us (or by us): when a scheduler dies after launching and its
    successor adopts the run, only one of the two processes runs it. A run that
    can no longer start (a task script deleted since its slot fired) ends
    `failed` with the reason instead of staying queued.
    """
    me = os.getpid()
    start, boot = proc.identity(me)
    run = app.store.claim_queued(run_id, {launcher, me} - {None}, me, start, boot)
    try:
        flow = flowmod.validate(json.loads(run.snapshot), tasks_dir=Path(run.tasks_dir),
                                source=f"run {run.id}")
        attempts = {task: a.attempt for task, a in app.store.latest_attempts(run.id).items()}
        path = _script_for(app, run, flow, attempts, (), keep_tmp=False)
    except (FeatherflowError, OSError) as exc:
        why = "; ".join(exc.errors) if isinstance(exc, ValidationError) else str(exc)
        app.store.transition_run(run.id, states.FAILED, reason=f"could not start: {why}")
        raise
    return Prepared(run, flow, path)


def start_auto_resume(app, run_id: int) -> Prepared:
    """Resume an interrupted scheduled run once, with the definition it started with.

    A flow file changed since is not resumed automatically (plan_resume refuses
    without --force): the run stays interrupted for a person to decide.
    """
    plan = plan_resume(app, run_id)
    return start_resume(app, plan, auto=True)


def exec_logged(app, prepared: Prepared) -> None:
    """Like exec_script, with stdout and stderr appended to the run's run.log (no terminal)."""
    path = run_dir(prepared.run) / "run.log"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    exec_script(app, prepared)
