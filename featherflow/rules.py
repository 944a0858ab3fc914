"""When a task runs (`run_if`, `cleanup`, `pool`) and which outputs it may use: the checks
flow.py makes of these fields, and what a stored definition says of them.

Pure and standard library only, like flow.py (which imports this, never the reverse).
The engine (engine.bash) is where the rules act; README "Run rules and cleanup tasks".
"""

import json
import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from featherflow import graph

# {{ tasks.ID.outputs.KEY }}: an output of an upstream task, put in when the task starts.
OUTPUT_REF_RE = re.compile(r"tasks\.([A-Za-z0-9_-]{1,64})\.outputs\.([A-Za-z_][A-Za-z0-9_]*)")
# When a task with dependencies runs; the first is the default (and the original behaviour).
RUN_IF = ("all_success", "all_done", "any_failed", "none_failed")
# A pool's name: also a directory name beside the database (<db dir>/pools/NAME), so
# never "." or "..".
POOL_RE = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9_.-]{1,64}")
POOL_VALID = "1-64 of A-Z a-z 0-9 _ . -, not . or .."


def check_rule(item: Mapping, path: str, deps) -> Tuple[str, bool, List[str]]:
    """A task's `run_if` and `cleanup`, and the problems with them (JSON path first)."""
    run_if, cleanup = item.get("run_if"), item.get("cleanup", False)
    problems = []
    if not isinstance(cleanup, bool):
        problems.append(f"{path}.cleanup: must be true or false, not {_kind(cleanup)}")
    if run_if is None:
        return RUN_IF[0], cleanup is True, problems
    if not isinstance(run_if, str):
        problems.append(f"{path}.run_if: must be a string, not {_kind(run_if)}")
    elif run_if not in RUN_IF:
        problems.append(f"{path}.run_if: unknown rule {run_if!r} (valid: {', '.join(RUN_IF)})")
    elif cleanup is True:
        problems.append(f"{path}.run_if: a cleanup task runs whatever happened: leave out run_if "
                        "(valid: run_if or \"cleanup\": true, not both)")
    elif not (isinstance(deps, list) and deps):
        problems.append(f"{path}.run_if: needs depends_on: a task without dependencies always runs "
                        "(valid: run_if on a task that has depends_on)")
    return (run_if if run_if in RUN_IF else RUN_IF[0]), cleanup is True, problems


def upstream_problems(edges: Mapping[str, Sequence[str]],
                      refs: Mapping[str, List[Tuple[str, str]]]) -> List[str]:
    """An output placeholder must name an ancestor of its task (in the edges a run follows):
    only an upstream task has ended when the task starts. `refs`: {task: [(path, task it names)]}."""
    problems = []
    for task_id, found in refs.items():
        if not found:
            continue
        above = graph.ancestors(edges, task_id)
        for where, ref_id in found:
            if ref_id not in above:
                valid = ", ".join(t for t in edges if t in above) or "none: it has no dependencies"
                problems.append(f"{where}: {{{{ tasks.{ref_id}.outputs.* }}}}: task {ref_id!r} is not upstream "
                                f"of task {task_id!r} (valid: the tasks it depends on, directly or not: {valid})")
    return problems


def task_rules(snapshot: str) -> Dict[str, str]:
    """{task: rule} of the tasks of a stored definition that have one (a run_if other than
    all_success, or `cleanup`): what `runs show` and the dashboard show beside a task."""
    rules = {}
    for task in json.loads(snapshot).get("tasks", []):
        if task.get("cleanup") is True:
            rules[task["id"]] = "cleanup"
        elif task.get("run_if", RUN_IF[0]) != RUN_IF[0]:
            rules[task["id"]] = str(task["run_if"])
    return rules


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)


def pools_of(source: Dict[str, Any]) -> Dict[str, str]:
    """Task id -> pool, read from a (validated) definition as stored with a run: a task's
    own "pool" (null: none), else the flow's. Tasks without a pool are left out."""
    default = source.get("pool")
    found = {}
    for task in source.get("tasks") or ():
        pool = task.get("pool") if "pool" in task else default
        if isinstance(pool, str):
            found[task.get("id")] = pool
    return found
