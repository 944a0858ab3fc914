"""Render a flow run as a readable bash script: the flow's part, then engine.bash
(after pools.bash when a task names a pool).

render() is pure but for one read of engine.bash per process. The engine's text is
embedded, not sourced: a run.sh holds everything it runs, so it reads top to
bottom and a run goes on unchanged when Featherflow is upgraded while it runs.

The script is the run's only process while tasks execute (with, during bursts
of transitions, one `_mark --serve` co-process): it starts each task as soon as
its own dependencies succeeded (up to MAX_PARALLEL at once), each in a process
group (a session) of its own, under `timeout` when it has one, and reports
every transition through `_mark`, batching a task's end with its dependents'
start into one call. It stops the run if a transition cannot be recorded:
nothing runs untracked.

Every value that comes from JSON, params or the command line is quoted with
shlex.quote; no string from a flow is ever interpreted by the shell. A task's
own `env` is passed through `env NAME=VALUE`, never `export`, so a name that
bash treats specially (UID, SHELLOPTS, the script's own variables) reaches the
task as it is and cannot change what the script runs.
"""

import functools
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from featherflow import errors, flow as flowmod, graph, rules, states

KILL_GRACE = 10  # seconds between TERM and KILL when a task is stopped
LOG_TAIL = 20  # lines of a failed task's log shown on the terminal
LOG_TAIL_WIDTH = 200  # bytes shown of each of those lines (the log keeps them whole)
LOCK_WAIT = 30.0  # seconds a transition waits for a locked database before the run stops
ENGINE_PATH = Path(__file__).with_name("engine.bash")  # installed with the package (pyproject.toml)
POOLS_PATH = Path(__file__).with_name("pools.bash")  # the engine's part for tasks with a pool


@dataclass(frozen=True)
class RunSpec:
    """Everything about one run the script needs, besides the flow."""

    run_id: int
    run_uid: str
    trigger: str
    params: Dict
    max_parallel: int
    python: str
    mark: str
    db: str
    tasks_dir: str
    run_dir: str
    output_dir: str = ""
    scheduled_at: str = ""
    attempts: Dict[str, int] = field(default_factory=dict)  # next attempt per task to run
    keep: tuple = ()  # tasks that already succeeded (resume)
    keep_tmp: bool = False
    dry_run: bool = False
    lock_wait: float = LOCK_WAIT
    kill_grace: float = KILL_GRACE
    max_log_bytes: int = 0  # the cap on each attempt's log unless the flow sets one; 0: none
    pools: Dict[str, int] = field(default_factory=dict)  # slots of each pool its tasks name
    pool_dir: str = ""  # where the slot files are: <database dir>/pools


# Bash's reserved words: harmless as arguments, but quoted anyway so that
# nobody (shellcheck included) reads `done` or `fi` as syntax.
_KEYWORDS = frozenset("! case coproc do done elif else esac fi for function if in select "
                      "then time until while { } [[ ]]".split())


def q(value) -> str:
    """shlex.quote, which also quotes bash's reserved words."""
    text = shlex.quote(str(value))
    return f"'{text}'" if text in _KEYWORDS else text


def substitute(value: str, spec: RunSpec, flow_name: str) -> str:
    """Replace {{ params.X }}, {{ run_id }}, {{ flow }}, {{ scheduled_at }} (validated before).

    One pass: a param value that itself looks like a placeholder stays as it is.
    A param that is not a string is written as JSON (1, true, [1, 2]). An output
    placeholder stays as it is (`outputs.py` puts the value in when the task starts).
    """
    return "".join(part if isinstance(part, str) else f"{{{{ tasks.{part[0]}.outputs.{part[1]} }}}}"
                   for part in template(value, spec, flow_name))


def template(value: str, spec: RunSpec, flow_name: str) -> list:
    """`value` as parts: text (placeholders other than outputs replaced) and [TASK, KEY]
    for each {{ tasks.TASK.outputs.KEY }} (the word format of outputs.py's SPEC)."""
    parts: list = []

    def text(piece):
        if not piece:
            return
        if parts and isinstance(parts[-1], str):
            parts[-1] += piece
        else:
            parts.append(piece)

    at = 0
    for match in flowmod.PLACEHOLDER_RE.finditer(value):
        text(value[at:match.start()])
        at = match.end()
        ref = match.group(1)
        output = rules.OUTPUT_REF_RE.fullmatch(ref)
        if output:
            parts.append(list(output.groups()))
        elif ref.startswith("params."):
            found = spec.params[ref[len("params."):]]
            text(found if isinstance(found, str) else json.dumps(found, ensure_ascii=False))
        else:
            text({"run_id": str(spec.run_id), "flow": flow_name, "scheduled_at": spec.scheduled_at}[ref])
    text(value[at:])
    return parts or [""]


def task_argv(task: flowmod.Task, spec: RunSpec, flow_name: str) -> List[str]:
    """The task's argument list. Object form: `k` gives -k VALUE, `key` gives
    --key=VALUE, true gives a bare --key (or -k), false and null leave it out."""
    return ["".join(p if isinstance(p, str) else f"{{{{ tasks.{p[0]}.outputs.{p[1]} }}}}" for p in word)
            for word in argv_words(task, spec, flow_name)]


def argv_words(task: flowmod.Task, spec: RunSpec, flow_name: str) -> List[list]:
    """task_argv's words as template() parts."""
    if isinstance(task.args, dict):
        argv = []
        for key, value in task.args.items():
            if value is None or value is False:
                continue
            flag = f"-{key}" if len(key) == 1 else f"--{key}"
            if value is True:
                argv.append([flag])
            elif len(key) == 1:
                argv += [[flag], template(flowmod.scalar_text(value), spec, flow_name)]
            else:
                argv.append([f"{flag}="] + template(flowmod.scalar_text(value), spec, flow_name))
        return argv
    return [template(arg, spec, flow_name) for arg in task.args]


def task_env(task: flowmod.Task, spec: RunSpec, flow_name: str) -> Dict[str, str]:
    """The task's own `env`, placeholders replaced."""
    return {name: substitute(value, spec, flow_name) for name, value in task.env.items()}


def task_command(task: flowmod.Task, spec: RunSpec, flow_name: str) -> List[str]:
    """The words (already quoted) that run the task: `.py` with the Python that
    runs Featherflow, `.sh` with the bash that runs the script, others directly."""
    path = f"{spec.tasks_dir.rstrip('/')}/{task.script}"
    if task.script.endswith(".py"):
        head = ['"$FF_PYTHON"', "-u", q(path)]
    elif task.script.endswith(".sh"):
        head = ['"$BASH"', q(path)]
    else:
        head = [q(path)]
    if task.output_refs():
        # Args and env go to outputs.py, which puts the outputs in and execs the task.
        words = {"argv": argv_words(task, spec, flow_name),
                 "env": [[name, template(value, spec, flow_name)] for name, value in task.env.items()]}
        lead = ['"$FF_PYTHON"', "-I", "-S", '"$FF_OUTPUTS"', '"$FF_DB"', '"$RUN_ID"',
                q(json.dumps(words, ensure_ascii=False))]
        return lead + head
    return head + [q(a) for a in task_argv(task, spec, flow_name)]


def render(flow: flowmod.Flow, spec: RunSpec) -> str:
    """The run's whole script: header, settings, one function per task, the engine."""
    edges = flow.run_edges  # built once: a flow's edges and children are walked once per render
    if spec.keep:
        edges = resume_edges(flow, edges, set(spec.keep))
    order = graph.topological_order(edges)
    index = {task_id: i for i, task_id in enumerate(order)}
    down = graph.children(edges)
    out = [header(flow, spec)] + settings(flow, spec)
    if spec.dry_run:
        out += _dry_run_stop(flow)
    out.append("")
    out.append("# The tasks, in dependency order. Each function runs one attempt of one task.")
    out.append("# T_DEPS: the tasks it depends on; T_NEXT: the tasks that depend on it (indexes,")
    out.append("# named in the comment above). T_RETRY_MS: the wait before each retry, in milliseconds.")
    out.append("# T_RULE: when it runs once its dependencies ended (run_if, or cleanup).")
    pooled = any(t.pool for t in flow.tasks)
    if pooled:
        out.append("# T_POOL, T_SLOTS: the pool of a task that has one, and its number of slots.")
    out.append("declare -a T_ID T_DEPS T_NEXT T_RETRY_MS T_TIMEOUT T_TIMEOUT_MS T_ATTEMPT T_STATE T_RULE T_POOL"
               + (" T_SLOTS" if pooled else ""))
    for i, task_id in enumerate(order):
        out.append("")
        out += _task_block(flow, spec, i, task_id, index, down, edges)
    out.append("")
    if pooled:
        out.append(pools_engine().rstrip("\n"))
        out.append("")
    out.append(engine().rstrip("\n"))
    return "\n".join(out) + "\n"


def resume_edges(flow: flowmod.Flow, edges: Dict[str, tuple], keep: set) -> Dict[str, tuple]:
    """A resume runs its cleanup tasks after the tasks it runs again: each cleanup task
    also waits for every re-run task that is not a cleanup task nor below it."""
    work = [t.id for t in flow.tasks if not t.cleanup and t.id not in keep]
    out = dict(edges)
    for task in flow.tasks:
        if task.cleanup and task.id not in keep:
            below = graph.descendants(edges, [task.id])
            extra = [t for t in work if t not in below and t not in edges[task.id]]
            out[task.id] = tuple(edges[task.id]) + tuple(extra)
    # Work below two cleanup tasks could make a cycle of the waits: then only the flow's own edges.
    return edges if graph.find_cycle(out) else out


def header(flow: flowmod.Flow, spec: RunSpec) -> str:
    """The script's opening comment, shell options, exit codes and bash version check."""
    return _HEADER.format(
        flow=flow.name, run_id=spec.run_id,
        note=("# DRY RUN: a preview. It records nothing: run by hand, it says so and stops.\n"
              if spec.dry_run else ""),
        codes=" ".join(f"{name}={getattr(errors, name)}" for name in EXIT_CODES),
        ok=errors.EXIT_OK, failed=errors.EXIT_FAILED, conflict=errors.EXIT_CONFLICT,
        database=errors.EXIT_DATABASE, cancelled=errors.EXIT_CANCELLED)


def settings(flow: flowmod.Flow, spec: RunSpec) -> List[str]:
    """The run's variables, and the environment every task gets (the task contract)."""
    values = [
        ("FF_PYTHON", spec.python), ("FF_MARK", spec.mark), ("FF_DB", spec.db),
        ("FF_OUTPUTS", str(Path(spec.mark).with_name("outputs.py"))),
        ("RUN_ID", spec.run_id), ("RUN_DIR", spec.run_dir), ("MAX_PARALLEL", spec.max_parallel),
        ("KILL_GRACE", _seconds(spec.kill_grace)), ("LOCK_WAIT", _seconds(spec.lock_wait)),
        ("MAX_LOG_BYTES", spec.max_log_bytes if flow.max_log_bytes is None else flow.max_log_bytes),
        ("FF_LOGCAP", str(Path(spec.mark).with_name("logcap.py"))),
        ("KEEP_TMP", int(spec.keep_tmp)), ("LOG_TAIL_LINES", LOG_TAIL), ("LOG_TAIL_WIDTH", LOG_TAIL_WIDTH),
        # Named once on the first line: a flow without a `params` block takes any.
        ("UNDECLARED", ", ".join(_name(p) for p in flow.undeclared(spec.params))),
    ]
    if any(t.pool for t in flow.tasks):
        values.append(("POOL_DIR", spec.pool_dir))  # where the slot files are (pools.bash)
    out = [f"{name}={q(value)}" for name, value in values]
    out.append("LOG_DIR=$RUN_DIR/logs OUT_DIR=$RUN_DIR/outputs")
    out.append("export TMP_DIR=$RUN_DIR/tmp TEMP_DIR=$RUN_DIR/tmp")
    contract = [
        ("FEATHERFLOW_RUN_ID", spec.run_id), ("FEATHERFLOW_RUN_UID", spec.run_uid),
        ("FEATHERFLOW_FLOW_NAME", flow.name),
        ("FEATHERFLOW_OUTPUT_DIR", spec.output_dir),
        ("FEATHERFLOW_PARAMS", json.dumps(spec.params, sort_keys=True, ensure_ascii=False)),
        ("FEATHERFLOW_TRIGGER", spec.trigger), ("FEATHERFLOW_SCHEDULED_AT", spec.scheduled_at),
    ]
    return out + [f"export {name}={q(value)}" for name, value in contract]


def _dry_run_stop(flow: flowmod.Flow) -> List[str]:
    """A dry run's script, run by hand, says what it is and stops before it touches anything
    (no run 0 exists to record; its first `_mark` would only fail with a puzzling error)."""
    message = (f"dry run of {flow.name}: nothing is recorded and no task runs (this script is a preview; "
               f"`featherflow run {flow.name}` runs the flow)")
    return ["", "# A preview: it stops here.", f"echo {q(message)}", 'exit "$EXIT_CONFLICT"']


def _task_block(flow: flowmod.Flow, spec: RunSpec, i: int, task_id: str, index: Dict[str, int],
                down: Dict[str, List[str]], edges: Dict[str, tuple]) -> List[str]:
    """Task `task_id` as index `i`: its comment (named dependencies), its T_* values, its function."""
    task = flow.task(task_id)
    deps = " ".join(str(index[d]) for d in edges[task_id])
    below = " ".join(str(index[d]) for d in sorted(down[task_id], key=index.__getitem__))
    delays = [task.retry_delay * task.retry_backoff ** n for n in range(task.retries)]
    kept = task_id in spec.keep
    out = [f"# [{i}] {task_id}" + (f": {_comment(task.description)}" if task.description else "")]
    facts = _facts(task, down[task_id], delays, kept, spec)
    if facts:
        out.append("#     " + "; ".join(facts))
    state = states.SUCCESS if kept else states.PENDING
    out.append(f"T_ID[{i}]={q(task_id)} T_DEPS[{i}]={q(deps)} T_NEXT[{i}]={q(below)}")
    out.append(f"T_RETRY_MS[{i}]={q(' '.join(str(round(d * 1000)) for d in delays))} "
               f"T_TIMEOUT[{i}]={q(_seconds(task.timeout or 0))} "
               f"T_TIMEOUT_MS[{i}]={round((task.timeout or 0) * 1000)} "
               f"T_ATTEMPT[{i}]={spec.attempts.get(task_id, 1)} T_STATE[{i}]={state} T_RULE[{i}]={task.rule}")
    if task.pool:
        out.append(f"T_POOL[{i}]={q(task.pool)} T_SLOTS[{i}]={pool_slots(spec, task.pool)}")
    out.append(f"task_{i}() {{")
    # `timeout` leads the task's group when there is a timeout; otherwise
    # setsid makes the task itself the leader (no extra process per task).
    if task.timeout:
        words = ["exec timeout --verbose -k \"$KILL_GRACE\"", _seconds(task.timeout)]
    else:
        words = ["exec setsid -w"]
    env = task_env(task, spec, flow.name)
    if env and not task.output_refs():
        words.append("env")
        lines = [" ".join(words)] + [f"{name}={q(value)}" for name, value in env.items()]
        lines.append(" ".join(task_command(task, spec, flow.name)))
        out.append("  " + " \\\n    ".join(lines))
    else:
        out.append("  " + " ".join(words + task_command(task, spec, flow.name)))
    out.append("}")
    return out


def pool_slots(spec: RunSpec, pool: str) -> int:
    """The slots of a pool as the run starts (1 for a pool that is not defined)."""
    return spec.pools.get(pool, 1)


def _facts(task: flowmod.Task, below: List[str], delays: List[float], kept: bool,
           spec: RunSpec) -> List[str]:
    """What the comment above a task's values says of it, in words."""
    facts = []
    if task.depends_on:
        facts.append("after " + ", ".join(task.depends_on))
    if task.cleanup:
        facts.append("cleanup: runs once its dependencies ended, whatever happened, and when the run is "
                     "cancelled" + ("" if task.depends_on else "; after every other task"))
    elif task.run_if != "all_success":
        facts.append(f"run_if {task.run_if}")
    if below:
        facts.append("before " + ", ".join(below))
    if task.retries:
        waits = ", ".join(f"{_seconds(d)}s" for d in delays)
        facts.append(f"{task.retries} retries (after {waits})")
    if task.timeout:
        facts.append(f"timeout {_seconds(task.timeout)}s")
    if task.pool:
        slots = pool_slots(spec, task.pool)
        facts.append(f"pool {task.pool} ({slots} slot{'s' if slots != 1 else ''})")
    if kept:
        facts.append("already succeeded: kept")
    return facts


@functools.lru_cache(maxsize=None)
def engine() -> str:
    """The engine's text (engine.bash from its "# ----" line on), read once per process."""
    return _embedded(ENGINE_PATH)


@functools.lru_cache(maxsize=None)
def pools_engine() -> str:
    """The pools' part of the engine (pools.bash from its "# ----" line on), for flows with pools."""
    return _embedded(POOLS_PATH)


def _embedded(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text[text.index("\n# ----") + 1:]


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")


def _name(name: str) -> str:
    """A param name for the run's first line: as it is when plain, else as JSON (no
    newline or control character from --params reaches the terminal)."""
    return name if flowmod.ENV_RE.fullmatch(name) else json.dumps(name)


def _comment(text: str) -> str:
    return " ".join(text.split())[:200]


# The exit codes of the script, the same as featherflow's own (errors.py).
EXIT_CODES = ("EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_CONFLICT", "EXIT_DATABASE", "EXIT_CANCELLED")

_HEADER = """\
#!/usr/bin/env bash
# Featherflow run {run_id} of flow {flow!r}, generated by `featherflow run`.
# It can be read, and run again by hand (bash run.sh) while the run is queued.
# Every state change is recorded in the database through `_mark`; if one
# cannot be recorded, the run stops. Exit codes: {ok} success, {failed} failed,
# {conflict} refused by the state machine, {database} database problem, {cancelled} cancelled.
{note}#
# Values from the flow are single-quoted on purpose (data, never expanded:
# SC1003, SC2016, SC2088 would take them for mistakes), and
# the task_N functions and traps are called indirectly:
# shellcheck disable=SC1003,SC2016,SC2088,SC2317
set -u
umask 077  # logs and temp files are private to the user
# shellcheck disable=SC2034  # featherflow's exit codes (errors.py); not every one is used here
{codes}
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501)); then
  echo "featherflow: bash >= 5.1 is needed to run flows (this is $BASH_VERSION)" >&2
  exit "$EXIT_DATABASE"
fi
"""
