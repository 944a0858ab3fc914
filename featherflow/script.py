"""Render a flow run as a readable bash script: a pure function, no I/O.

The script is the run's only process while tasks execute: it starts each task
as soon as its own dependencies succeeded (up to MAX_PARALLEL at once), each in
its own process group under `timeout`, and reports every transition through
`_mark`, batching a task's end with its dependents' start into one call. It
stops the run if a transition cannot be recorded: nothing runs untracked.

Every value that comes from JSON, params or the command line is quoted with
shlex.quote; no string from a flow is ever interpreted by the shell.
"""

import json
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from featherflow import flow as flowmod, graph

KILL_GRACE = 10  # seconds between TERM and KILL when a task is stopped
LOG_TAIL = 20  # lines of a failed task's log shown on the terminal


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


def q(value) -> str:
    return shlex.quote(str(value))


def substitute(value: str, spec: RunSpec, flow_name: str) -> str:
    """Replace {{ params.X }}, {{ run_id }}, {{ flow }}, {{ scheduled_at }} (validated before)."""
    def one(match):
        ref = match.group(1)
        if ref.startswith("params."):
            found = spec.params[ref[len("params."):]]
            return found if isinstance(found, str) else json.dumps(found)
        return {"run_id": str(spec.run_id), "flow": flow_name, "scheduled_at": spec.scheduled_at}[ref]

    return flowmod.PLACEHOLDER_RE.sub(one, value)


def task_argv(task: flowmod.Task, spec: RunSpec, flow_name: str) -> List[str]:
    """The task's argument list. Object form: `k` gives -k VALUE, `key` gives
    --key=VALUE, true gives a bare --key, false and null leave it out."""
    if isinstance(task.args, dict):
        argv = []
        for key, value in task.args.items():
            if value is None or value is False:
                continue
            flag = f"-{key}" if len(key) == 1 else f"--{key}"
            if value is True:
                argv.append(flag)
            elif len(key) == 1:
                argv += [flag, substitute(flowmod._scalar(value), spec, flow_name)]
            else:
                argv.append(f"{flag}={substitute(flowmod._scalar(value), spec, flow_name)}")
        return argv
    return [substitute(arg, spec, flow_name) for arg in task.args]


def task_command(task: flowmod.Task, spec: RunSpec, flow_name: str) -> List[str]:
    path = f"{spec.tasks_dir.rstrip('/')}/{task.script}"
    if task.script.endswith(".py"):
        head = ["$FF_PYTHON", "-u", q(path)]
    elif task.script.endswith(".sh"):
        head = ["$BASH", q(path)]
    else:
        head = [q(path)]
    return head + [q(a) for a in task_argv(task, spec, flow_name)]


def render(flow: flowmod.Flow, spec: RunSpec) -> str:
    order = graph.topological_order(flow.edges)
    index = {task_id: i for i, task_id in enumerate(order)}
    down = graph.children(flow.edges)
    out = [_HEADER.format(
        flow=flow.name, run_id=spec.run_id,
        note=("# DRY RUN: a preview. It records nothing: its first _mark fails and it stops.\n"
              if spec.dry_run else ""),
    )]
    settings = [
        ("FF_PYTHON", spec.python), ("FF_MARK", spec.mark), ("FF_DB", spec.db),
        ("RUN_ID", spec.run_id), ("RUN_DIR", spec.run_dir), ("MAX_PARALLEL", spec.max_parallel),
        ("KILL_GRACE", KILL_GRACE), ("KEEP_TMP", int(spec.keep_tmp)),
    ]
    out += [f"{name}={q(value)}" for name, value in settings]
    out.append("LOG_DIR=$RUN_DIR/logs")
    out.append("export TMP_DIR=$RUN_DIR/tmp TEMP_DIR=$RUN_DIR/tmp")
    contract = [
        ("FEATHERFLOW_RUN_ID", spec.run_id), ("FEATHERFLOW_RUN_UID", spec.run_uid),
        ("FEATHERFLOW_FLOW_NAME", flow.name),
        ("FEATHERFLOW_OUTPUT_DIR", spec.output_dir),
        ("FEATHERFLOW_PARAMS", json.dumps(spec.params, sort_keys=True, ensure_ascii=False)),
        ("FEATHERFLOW_TRIGGER", spec.trigger), ("FEATHERFLOW_SCHEDULED_AT", spec.scheduled_at),
    ]
    out += [f"export {name}={q(value)}" for name, value in contract]
    out.append("")
    out.append("# The tasks, in dependency order. Each function runs one attempt of one task.")
    out.append("declare -a T_ID T_DEPS T_DOWN T_RETRY_DELAYS T_TIMEOUT T_TIMEOUT_MS T_ATTEMPT T_STATE")
    for i, task_id in enumerate(order):
        task = flow.task(task_id)
        deps = " ".join(str(index[d]) for d in task.depends_on)
        below = " ".join(str(index[d]) for d in sorted(graph.descendants(flow.edges, [task_id]), key=index.get))
        delays = " ".join(_seconds(task.retry_delay * task.retry_backoff ** n) for n in range(task.retries))
        kept = task_id in spec.keep
        out.append("")
        title = f"# [{i}] {task_id}" + (f": {_comment(task.description)}" if task.description else "")
        out.append(title)
        facts = []
        if task.depends_on:
            facts.append("after " + ", ".join(task.depends_on))
        if down[task_id]:
            facts.append("before " + ", ".join(down[task_id]))
        if task.retries:
            facts.append(f"{task.retries} retries")
        if task.timeout:
            facts.append(f"timeout {_seconds(task.timeout)}s")
        if kept:
            facts.append("already succeeded: kept")
        if facts:
            out.append("#     " + "; ".join(facts))
        out.append(f"T_ID[{i}]={q(task_id)} T_DEPS[{i}]={q(deps)} T_DOWN[{i}]={q(below)}")
        out.append(f"T_RETRY_DELAYS[{i}]={q(delays)} T_TIMEOUT[{i}]={q(_seconds(task.timeout or 0))} "
                   f"T_TIMEOUT_MS[{i}]={int((task.timeout or 0) * 1000)} "
                   f"T_ATTEMPT[{i}]={spec.attempts.get(task_id, 1)} T_STATE[{i}]={'ok' if kept else 'wait'}")
        out.append(f"task_{i}() {{")
        for name, value in task.env.items():
            out.append(f"  export {name}={q(substitute(value, spec, flow.name))}")
        timeout = _seconds(task.timeout or 0)
        out.append(f'  exec timeout --verbose -k "$KILL_GRACE" {timeout} ' + " ".join(task_command(task, spec, flow.name)))
        out.append("}")
    out.append(_ENGINE)
    return "\n".join(out) + "\n"


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")


def _comment(text: str) -> str:
    return " ".join(text.split())[:200]


_HEADER = """\
#!/usr/bin/env bash
# Featherflow run {run_id} of flow {flow!r}, generated by `featherflow run`.
# It can be read, and run again by hand (bash run.sh) while the run is queued.
# Every state change is recorded in the database through `_mark`; if one
# cannot be recorded, the run stops. Exit codes: 0 success, 1 failed,
# 3 refused by the state machine, 4 database problem, 5 cancelled.
{note}set -u
umask 077  # logs and temp files are private to the user
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501)); then
  echo "featherflow: bash >= 5.1 is needed to run flows (this is $BASH_VERSION)" >&2
  exit 4
fi
"""

_ENGINE = r"""
# ---------------------------------------------------------------------------
# The engine: the same for every flow.

exec 9>&1 8>&2  # our own report goes to the terminal; bash's job chatter to run.log
mkdir -p "$LOG_DIR" && exec 2>>"$RUN_DIR/run.log"

say() { printf '%(%H:%M:%S)T  %s\n' -1 "$*" >&9; }
now_ms() { local t=${EPOCHREALTIME/[.,]/}; NOW_MS=$((10#$t / 1000)); }
seconds() { printf '%d.%02ds' $(($1 / 1000)) $(($1 % 1000 / 10)); }
mark() { "$FF_PYTHON" -I -S "$FF_MARK" "$FF_DB" "$RUN_ID" "$@"; }

declare -A PID_TASK=()
declare -a START_MS=() MARKS=()
RUNNING=0 CANCELLED=0 FAILED=0 BROKEN=0

stop_tasks() {
  local pid
  for pid in "${!PID_TASK[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  done
}

on_signal() {
  trap '' INT TERM HUP
  CANCELLED=1
  say "cancelling run $RUN_ID: stopping $RUNNING running task(s)"
  stop_tasks
}

cleanup() {
  if ((KEEP_TMP)); then say "temp dir kept: $TMP_DIR"; else rm -rf -- "$TMP_DIR"; fi
}

# Record MARKS (and any extra arguments) in one transaction; stop the run if we cannot.
flush() {
  ((${#MARKS[@]} + $#)) || return 0
  if ! mark "$@" "${MARKS[@]}" 2>&8; then
    say "error: could not record a state change in $FF_DB; stopping the run (nothing runs untracked)"
    BROKEN=1
    stop_tasks
  fi
  MARKS=()
}

deps_ok() {
  local d
  for d in ${T_DEPS[$1]}; do [[ ${T_STATE[d]} == ok ]] || return 1; done
}

launch() {  # index attempt delay
  local i=$1 n=$2 delay=$3
  local log="$LOG_DIR/${T_ID[i]}.$n.log"
  (
    if [[ $delay != 0 ]]; then
      sleep "$delay"
      mark "${T_ID[i]}:$n:running" 2>&8 || exit 250
    fi
    export FEATHERFLOW_TASK_ID="${T_ID[i]}" FEATHERFLOW_ATTEMPT="$n"
    "task_$i"
  ) >"$log" 2>&1 </dev/null &
  PID_TASK[$!]=$i
  T_ATTEMPT[i]=$n
  T_STATE[i]=run
  now_ms; START_MS[i]=$NOW_MS
  RUNNING=$((RUNNING + 1))
  if [[ $delay == 0 ]]; then say "start   ${T_ID[i]} (attempt $n)"; else say "retry   ${T_ID[i]} (attempt $n) in ${delay}s"; fi
}

finished() {  # index exit-code
  local i=$1 rc=$2 n=${T_ATTEMPT[$1]} took reason=
  now_ms; took=$((NOW_MS - START_MS[i]))
  RUNNING=$((RUNNING - 1))
  if ((CANCELLED || BROKEN)); then
    MARKS+=("${T_ID[i]}:$n:cancelled:$rc:run cancelled")
    T_STATE[i]=stopped
    say "stopped ${T_ID[i]} (attempt $n) after $(seconds "$took")"
    return
  fi
  if ((rc == 0)); then
    MARKS+=("${T_ID[i]}:$n:success:0")
    T_STATE[i]=ok
    say "ok      ${T_ID[i]} (attempt $n) in $(seconds "$took")"
    return
  fi
  if ((rc == 250)); then
    BROKEN=1
    return
  fi
  if ((T_TIMEOUT_MS[i] > 0 && (rc == 124 || rc == 137) && took >= T_TIMEOUT_MS[i])); then
    reason="timeout after ${T_TIMEOUT[i]}s"
  else
    reason="exit code $rc"
  fi
  MARKS+=("${T_ID[i]}:$n:failed:$rc:$reason")
  say "FAILED  ${T_ID[i]} (attempt $n) after $(seconds "$took"): $reason"
  tail -n LOG_TAIL_LINES -- "$LOG_DIR/${T_ID[i]}.$n.log" 2>/dev/null | tr -d '\000-\010\013-\037\177' | sed 's/^/        | /' >&9
  local delays=(${T_RETRY_DELAYS[i]})
  local used=$((n - T_FIRST_ATTEMPT[i]))
  if ((used < ${#delays[@]})); then
    local delay=${delays[used]}
    if [[ $delay == 0 ]]; then
      T_STATE[i]=wait T_ATTEMPT[i]=$((n + 1))  # started by the main loop with its mark
    else
      MARKS+=("${T_ID[i]}:$((n + 1)):pending")
      flush
      ((BROKEN)) || launch "$i" $((n + 1)) "$delay"
    fi
    return
  fi
  T_STATE[i]=failed
  FAILED=$((FAILED + 1))
  local d
  for d in ${T_DOWN[i]}; do
    if [[ ${T_STATE[d]} == wait ]]; then
      T_STATE[d]=skipped
      MARKS+=("${T_ID[d]}:${T_ATTEMPT[d]}:upstream_failed::upstream ${T_ID[i]} failed")
      say "skip    ${T_ID[d]} (upstream ${T_ID[i]} failed)"
    fi
  done
}

declare -a T_FIRST_ATTEMPT=("${T_ATTEMPT[@]}")
TOTAL=${#T_ID[@]}

if ! mark --pid $$ --run running 2>&8; then
  say "error: run $RUN_ID could not be started (see the message above)"
  exit 3
fi
trap on_signal INT TERM HUP
mkdir -p -m 700 "$TMP_DIR"
say "run $RUN_ID of $FEATHERFLOW_FLOW_NAME: $TOTAL task(s), up to $MAX_PARALLEL at once; logs in $LOG_DIR"
for ((i = 0; i < TOTAL; i++)); do
  [[ ${T_STATE[i]} == ok ]] && say "kept    ${T_ID[i]} (succeeded before)"
done

while :; do
  starts=()
  if ((!CANCELLED && !BROKEN)); then
    for ((i = 0; i < TOTAL && RUNNING + ${#starts[@]} < MAX_PARALLEL; i++)); do
      if [[ ${T_STATE[i]} == wait ]] && deps_ok "$i"; then
        starts+=("$i")
        MARKS+=("${T_ID[i]}:${T_ATTEMPT[i]}:running")
      fi
    done
  fi
  flush
  if ((!BROKEN)); then
    for i in "${starts[@]}"; do launch "$i" "${T_ATTEMPT[i]}" 0; done
  fi
  ((RUNNING > 0)) || break
  pid=
  wait -n -p pid
  rc=$?
  [[ -n $pid && -n ${PID_TASK[$pid]:-} ]] || continue  # a signal woke us; the trap acted
  i=${PID_TASK[$pid]}
  unset "PID_TASK[$pid]"
  finished "$i" "$rc"
done

cleanup
if ((BROKEN)); then
  mark --run "failed:a state change could not be recorded" 2>&8
  say "run $RUN_ID stopped: the database could not record its progress"
  exit 4
elif ((CANCELLED)); then
  MARKS+=(--run cancelled)
  flush
  say "run $RUN_ID cancelled"
  exit 5
elif ((FAILED)); then
  MARKS+=(--run "failed:$FAILED task(s) failed")
  flush
  say "run $RUN_ID failed: $FAILED task(s) failed"
  exit 1
fi
MARKS+=(--run success)
flush
((BROKEN)) && exit 4
say "run $RUN_ID succeeded"
exit 0
""".replace("LOG_TAIL_LINES", str(LOG_TAIL))
