"""Create runs, launch their scripts, reconcile orphans, resume and cancel.

`featherflow run` creates the run rows, writes the script and then *becomes*
bash (os.execv): while tasks run, no Python process sits in memory, and the
pid recorded with the run stays the pid of the process doing the work.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from featherflow import flow as flowmod, graph, proc, script, states
from featherflow.errors import ConflictError, FeatherflowError, UsageError, ValidationError
from featherflow.store import Run

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
            text = Path(text).read_text()
            source = f"--params file {text!r}"
        except OSError as exc:
            raise UsageError(f"--params {text!r}: not a JSON object and not a readable file ({exc.strerror})") from None
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(params, dict):
        raise UsageError(f"{source}: must be a JSON object like {{\"day\": \"2026-01-01\"}}")
    return params


def merge_params(flow: flowmod.Flow, given: Dict) -> Dict:
    unknown = sorted(set(given) - set(flow.params))
    if unknown:
        known = ", ".join(flow.params) or "none: declare them in the flow's 'params'"
        raise UsageError(f"unknown param {', '.join(map(repr, unknown))} for flow {flow.name!r} (known: {known})")
    if any("\x00" in json.dumps(v) for v in given.values()) or any("\x00" in k for k in given):
        raise UsageError("--params: NUL bytes are not allowed")
    return {**flow.params, **given}


def default_parallel() -> int:
    return os.cpu_count() or 2


def run_dir(run: Run) -> Path:
    """`<output>/runs/<id>-<uid prefix>`: found by run id, and never shared by two
    databases that write to the same output dir."""
    return Path(run.output_dir) / "runs" / f"{run.id}-{run.uid[:8]}"


def log_path(run: Run, task_id: str, attempt: int) -> Path:
    return run_dir(run) / "logs" / f"{task_id}.{attempt}.log"


def prepare(app, name: str, params: Dict, max_parallel: Optional[int] = None,
            dry_run: bool = False, keep_tmp: bool = False, trigger: str = "manual",
            schedule_id: Optional[int] = None, scheduled_at: Optional[str] = None) -> Prepared:
    """Validate, create the run (queued, one pending attempt per task), write its script."""
    cfg = app.config
    flow = app.load_flow(name)
    merged = merge_params(flow, params)
    parallel = max_parallel or flow.max_parallel or default_parallel()
    if parallel < 1:
        raise UsageError(f"--max-parallel must be >= 1, not {parallel}")
    order = graph.topological_order(flow.edges)
    if dry_run:
        path = Path(cfg.output_dir) / "dry-run" / flow.name / "run.sh"
        spec = _spec(app, 0, "dry-run", trigger, merged, parallel, path.parent, scheduled_at or "",
                     {}, (), keep_tmp, dry_run=True)
        _write_script(path, script.render(flow, spec))
        return Prepared(None, flow, path)
    start, boot = proc.identity(os.getpid())
    run = app.store.create_run(
        flow.name, order, flow.snapshot(), merged, trigger, str(cfg.flows_dir), str(cfg.tasks_dir),
        str(cfg.output_dir), parallel, schedule_id, scheduled_at,
        pid=os.getpid(), pid_start=start, boot_id=boot)
    path = _script_for(app, run, flow, {t: 1 for t in order}, (), keep_tmp)
    return Prepared(run, flow, path)


def _spec(app, run_id, uid, trigger, params, parallel, directory, scheduled_at, attempts, keep,
          keep_tmp, dry_run=False) -> script.RunSpec:
    from featherflow import mark

    return script.RunSpec(
        run_id=run_id, run_uid=uid, trigger=trigger, params=params, max_parallel=parallel,
        python=sys.executable, mark=os.path.abspath(mark.__file__), db=str(app.config.db_path),
        tasks_dir=str(app.config.tasks_dir), run_dir=str(directory), scheduled_at=scheduled_at,
        output_dir=str(app.config.output_dir),
        attempts=attempts, keep=tuple(keep), keep_tmp=keep_tmp, dry_run=dry_run)


def _script_for(app, run: Run, flow, attempts, keep, keep_tmp) -> Path:
    directory = run_dir(run)
    scheduled = states.format_time(run.scheduled_at) + "Z" if run.scheduled_at else ""
    spec = _spec(app, run.id, run.uid, run.trigger, run.params, run.max_parallel, directory,
                 scheduled, attempts, keep, keep_tmp)
    spec = script.RunSpec(**{**spec.__dict__, "tasks_dir": run.tasks_dir, "output_dir": run.output_dir})
    path = directory / "run.sh"
    _write_script(path, script.render(flow, spec))
    return path


def _write_script(path: Path, text: str) -> None:
    """Write atomically (temp file + rename) into a private directory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def bash() -> str:
    found = shutil.which("bash") or "/bin/bash"
    if not os.path.exists(found):
        raise FeatherflowError("bash not found (Featherflow runs flows with bash >= 5.1)")
    return found


def exec_script(app, prepared: Prepared) -> None:
    """Replace this process with bash running the script (the CLI path)."""
    sys.stdout.flush()
    sys.stderr.flush()
    app.close()
    os.execv(bash(), [bash(), str(prepared.script_path)])


def run_and_wait(app, prepared: Prepared) -> int:
    """Run the script as a child and wait for it (the Python API path)."""
    return subprocess.run([bash(), str(prepared.script_path)]).returncode


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
        elif run.pid and proc.start_time(run.pid) is not None:
            reason = f"its process {run.pid} is gone (the pid now belongs to another process)"
        else:
            reason = f"its process {run.pid} is gone (killed, crashed or out of memory)"
        if store.interrupt(run.id, run.state, reason):
            leftovers = proc.processes_with_env("FEATHERFLOW_RUN_UID", run.uid)
            if leftovers:
                proc.kill_all(leftovers)
                log.warning("run %s: killed %d leftover task process(es)", run.id, len(leftovers))
            done.append((run.id, reason))
    return done


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
    if not rerun:
        raise ConflictError(f"run {run_id}: every task already succeeded; nothing to resume")
    return ResumePlan(run, flow, [t for t in order if t not in rerun], [t for t in order if t in rerun],
                      definition, snapshot)


def start_resume(app, plan: ResumePlan, keep_tmp: bool = False, auto: bool = False) -> Prepared:
    start, boot = proc.identity(os.getpid())
    attempts = app.store.resume(plan.run.id, plan.rerun, plan.snapshot, auto=auto,
                                pid=os.getpid(), pid_start=start, boot_id=boot)
    run = app.store.get_run(plan.run.id)
    path = _script_for(app, run, plan.flow, attempts, plan.keep, keep_tmp)
    return Prepared(run, plan.flow, path)


# -- cancel ------------------------------------------------------------------

def cancel(app, run_id: int, wait: float = script.KILL_GRACE + 5.0) -> str:
    """Stop a queued or running run from anywhere; returns its final state."""
    run = app.store.get_run(run_id)
    if run.state not in (states.QUEUED, states.RUNNING):
        raise ConflictError(f"run {run_id} is {run.state}; only queued or running runs can be cancelled")
    if proc.is_alive(run.pid, run.pid_start, run.boot_id):
        os.kill(run.pid, signal.SIGTERM)  # the script's trap stops every task group
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            state = app.store.get_run(run_id).state
            if state in states.RUN_FINISHED:
                return state
            time.sleep(0.1)
        if proc.is_alive(run.pid, run.pid_start, run.boot_id):
            os.kill(run.pid, signal.SIGKILL)
    proc.kill_all(proc.processes_with_env("FEATHERFLOW_RUN_UID", run.uid))
    try:
        app.store.transition_run(run_id, states.CANCELLED, reason="cancelled by `runs cancel`")
    except states.IllegalTransition:
        pass  # it ended by itself meanwhile
    return app.store.get_run(run_id).state
