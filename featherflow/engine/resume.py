"""Resume a failed or interrupted run: decide what it keeps and what runs again, then reopen it.

The tasks that succeeded are kept (their files are in the run's temp dir, their
outputs in the database); every other task and everything downstream of one runs
again, in the same run, with the next attempt numbers, and so does every cleanup
task (after the tasks it follows). The definition is the one the run started
with, unless the flow file changed and --force takes the current one.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Set

from featherflow import flow as flowmod, graph, proc, states
from featherflow.config import Config
from featherflow.engine import launch
from featherflow.errors import ConflictError, DiskError, FeatherflowError, UsageError
from featherflow.paths import run_dir
from featherflow.store import Store
from featherflow.store.records import Run


@dataclass
class ResumePlan:
    run: Run
    flow: flowmod.Flow
    keep: List[str]
    rerun: List[str]
    definition: str  # which definition is used, in words
    snapshot: Optional[str]  # the new snapshot when the current file replaces it


def plan_resume(store: Store, run_id: int, force: bool = False, from_task: Optional[str] = None,
                every: bool = False) -> ResumePlan:
    """Decide which tasks a resume keeps and which it runs again (`every`: all of them, and a
    finished run may run again: a backfill's --reprocess all)."""
    run = store.runs.get_run(run_id)
    if run.state not in states.RESUMABLE + (states.RERUNNABLE if every else ()):
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
    latest = store.runs.latest_attempts(run_id)
    edges = flow.run_edges
    order = graph.topological_order(edges)
    rerun: Set[str] = {t for t in order if every or t not in latest or latest[t].state != states.SUCCESS}
    if from_task is not None:
        if from_task not in edges:
            raise UsageError(f"--from: unknown task {from_task!r} (known: {', '.join(order)})")
        rerun.add(from_task)
        rerun |= graph.descendants(edges, [from_task])
    rerun |= graph.descendants(edges, rerun)
    if rerun:  # the cleanup tasks clean up after the tasks that run again: they run again too
        cleanup = {t.id for t in flow.tasks if t.cleanup}
        rerun |= cleanup | graph.descendants(edges, cleanup)
    # Nothing to re-run (killed after its last task, before recording its own
    # end): the resume runs no task and records the run's success.
    return ResumePlan(run, flow, [t for t in order if t not in rerun], [t for t in order if t in rerun],
                      definition, snapshot)


def start_resume(config: Config, store: Store, plan: ResumePlan, keep_tmp: bool = False,
                 auto: bool = False, expect_resumes: Optional[int] = None) -> launch.Prepared:
    """Reopen the run with the next attempt of each task to re-run, and write its script."""
    try:  # before the run is reopened: a refused resume leaves it resumable
        launch.check_no_links(Path(plan.run.output_dir), run_dir(plan.run))
    except OSError as exc:
        raise FeatherflowError(f"run {plan.run.id} cannot resume: {exc.strerror}") from None
    pools = launch.pool_slots(store, plan.flow)  # before the run is reopened, like the check above
    start, boot = proc.identity(os.getpid())
    attempts = store.runs.resume(plan.run.id, plan.rerun, plan.snapshot, auto=auto,
                            pid=os.getpid(), pid_start=start, boot_id=boot,
                            finished=plan.run.state in states.RERUNNABLE, expect_resumes=expect_resumes)
    run = store.runs.get_run(plan.run.id)
    try:
        path = launch.script_for(config, run, plan.flow, attempts, plan.keep, keep_tmp,
                                 pools=pools)
    except OSError as exc:
        store.runs.transition_run(run.id, states.FAILED, reason=f"could not write its script: {exc.strerror or exc}")
        raise DiskError(f"run {run.id}: cannot write its script under {run_dir(run)}: "
                        f"{exc.strerror or exc}") from None
    return launch.Prepared(run, plan.flow, path)


def start_auto_resume(config: Config, store: Store, run_id: int) -> launch.Prepared:
    """Resume an interrupted scheduled run once, with the definition it started with.

    A flow file changed since is not resumed automatically (plan_resume refuses
    without --force): the run stays interrupted for a person to decide.
    """
    plan = plan_resume(store, run_id)
    return start_resume(config, store, plan, auto=True)


def start_backfill_resume(config: Config, store: Store, run_id: int, resumes: int,
                          every: bool = False) -> launch.Prepared:
    """A backfill's --reprocess: resume a failed or interrupted run of a slot (`every`: re-run
    every task, of a finished run too), with the CURRENT flow file (one reprocesses after a
    fix) or, when that cannot be used, the definition the run started with.

    `resumes` is the run's resume count when the backfill launched this: a run resumed
    since (a second launch after a driver crash) is refused, so it never runs twice.
    """
    plan = plan_resume(store, run_id, force=True, every=every)
    return start_resume(config, store, plan, expect_resumes=resumes)
