"""Find runs whose process is gone and end them, kill what they left, and cancel runs.

A run's script records its own end; when it cannot (killed, crashed, the
machine restarted), the next command that reads runs finds it here and marks it
interrupted, after killing every process it left behind, so that nothing runs
untracked and the history never shows a dead run as running.
"""

import logging
import os
import signal
import time
from typing import List, Optional, Tuple

from featherflow import clock, proc, states
from featherflow.engine import script
from featherflow.errors import ConflictError
from featherflow.paths import run_dir
from featherflow.store import Store
from featherflow.store.records import Run

log = logging.getLogger(__name__)


def reconcile(store: Store, current_boot: Optional[str] = None) -> List[Tuple[int, str]]:
    """Mark runs whose process is gone `interrupted` and kill what they left behind.

    A run is gone when the machine rebooted since (other boot id), its pid no
    longer exists, or the pid now belongs to another process (other start
    time). A live run is never touched.
    """
    current_boot = proc.boot_id() if current_boot is None else current_boot
    done = []
    for run in store.runs.list_runs(states_in=(states.QUEUED, states.RUNNING), limit=None):
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
            current = store.runs.get_run(run.id)
            if (current.state not in (states.QUEUED, states.RUNNING)
                    or proc.is_alive(current.pid, current.pid_start, current.boot_id, current_boot)):
                break  # it ended, was reconciled, or was resumed by a live process meanwhile
            # Stamped before the kill: a task it kills ends then, not a moment later, so
            # the next holder of its pool's slot never looks as if it overlapped.
            killed_at = clock.now()
            killed = kill_leftovers(current)
            if killed:
                log.warning("run %s: killed %d leftover process(es)", run.id, killed)
            if store.runs.interrupt(run.id, current.state, reason, new, now=killed_at):
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


def cancel(store: Store, run_id: int, wait: float = script.KILL_GRACE + 5.0) -> str:
    """Stop a queued or running run from anywhere; returns its final state."""
    run = store.runs.get_run(run_id)
    if run.state not in (states.QUEUED, states.RUNNING):
        raise ConflictError(f"run {run_id} is {run.state}; only queued or running runs can be cancelled")
    if proc.is_alive(run.pid, run.pid_start, run.boot_id):
        try:
            os.kill(run.pid, signal.SIGTERM)  # the script's trap stops every task group
        except OSError:
            pass  # gone meanwhile
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            state = store.runs.get_run(run_id).state
            if state in states.RUN_FINISHED:
                return state
            if not proc.is_alive(run.pid, run.pid_start, run.boot_id):
                break  # died without recording its end (e.g. still queued): finish it here
            time.sleep(0.1)
        if proc.is_alive(run.pid, run.pid_start, run.boot_id):
            os.kill(run.pid, signal.SIGKILL)
    kill_leftovers(run)
    try:
        store.runs.transition_run(run_id, states.CANCELLED, reason="cancelled by `runs cancel`")
    except states.IllegalTransition:
        pass  # it ended by itself meanwhile
    return store.runs.get_run(run_id).state
