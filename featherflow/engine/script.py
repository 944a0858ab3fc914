"""Render a flow run as a readable bash script: a pure function, no I/O.

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

import json
import shlex
from dataclasses import dataclass, field
from typing import Dict, List

from featherflow import flow as flowmod, graph

KILL_GRACE = 10  # seconds between TERM and KILL when a task is stopped
LOG_TAIL = 20  # lines of a failed task's log shown on the terminal
LOG_TAIL_WIDTH = 200  # bytes shown of each of those lines (the log keeps them whole)
LOCK_WAIT = 30.0  # seconds a transition waits for a locked database before the run stops


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
    A param that is not a string is written as JSON (1, true, [1, 2]).
    """
    def one(match):
        ref = match.group(1)
        if ref.startswith("params."):
            found = spec.params[ref[len("params."):]]
            return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)
        return {"run_id": str(spec.run_id), "flow": flow_name, "scheduled_at": spec.scheduled_at}[ref]

    return flowmod.PLACEHOLDER_RE.sub(one, value)


def task_argv(task: flowmod.Task, spec: RunSpec, flow_name: str) -> List[str]:
    """The task's argument list. Object form: `k` gives -k VALUE, `key` gives
    --key=VALUE, true gives a bare --key (or -k), false and null leave it out."""
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
    return head + [q(a) for a in task_argv(task, spec, flow_name)]


def render(flow: flowmod.Flow, spec: RunSpec) -> str:
    edges = flow.edges  # built once: a flow's edges and children are walked once per render
    order = graph.topological_order(edges)
    index = {task_id: i for i, task_id in enumerate(order)}
    down = graph.children(edges)
    out = [_HEADER.format(
        flow=flow.name, run_id=spec.run_id,
        note=("# DRY RUN: a preview. It records nothing: its first _mark fails and it stops.\n"
              if spec.dry_run else ""),
    )]
    settings = [
        ("FF_PYTHON", spec.python), ("FF_MARK", spec.mark), ("FF_DB", spec.db),
        ("RUN_ID", spec.run_id), ("RUN_DIR", spec.run_dir), ("MAX_PARALLEL", spec.max_parallel),
        ("KILL_GRACE", _seconds(spec.kill_grace)), ("LOCK_WAIT", _seconds(spec.lock_wait)),
        ("KEEP_TMP", int(spec.keep_tmp)),
        # Named once on the first line: a flow without a `params` block takes any.
        ("UNDECLARED", ", ".join(_name(p) for p in flow.undeclared(spec.params))),
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
    out.append("# T_DEPS: the tasks it depends on; T_NEXT: the tasks that depend on it (indexes,")
    out.append("# named in the comment above). T_RETRY_MS: the wait before each retry, in milliseconds.")
    out.append("declare -a T_ID T_DEPS T_NEXT T_RETRY_MS T_TIMEOUT T_TIMEOUT_MS T_ATTEMPT T_STATE")
    for i, task_id in enumerate(order):
        task = flow.task(task_id)
        deps = " ".join(str(index[d]) for d in task.depends_on)
        below = " ".join(str(index[d]) for d in sorted(down[task_id], key=index.__getitem__))
        delays = [task.retry_delay * task.retry_backoff ** n for n in range(task.retries)]
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
            waits = ", ".join(f"{_seconds(d)}s" for d in delays)
            facts.append(f"{task.retries} retries (after {waits})")
        if task.timeout:
            facts.append(f"timeout {_seconds(task.timeout)}s")
        if kept:
            facts.append("already succeeded: kept")
        if facts:
            out.append("#     " + "; ".join(facts))
        out.append(f"T_ID[{i}]={q(task_id)} T_DEPS[{i}]={q(deps)} T_NEXT[{i}]={q(below)}")
        out.append(f"T_RETRY_MS[{i}]={q(' '.join(str(round(d * 1000)) for d in delays))} "
                   f"T_TIMEOUT[{i}]={q(_seconds(task.timeout or 0))} "
                   f"T_TIMEOUT_MS[{i}]={round((task.timeout or 0) * 1000)} "
                   f"T_ATTEMPT[{i}]={spec.attempts.get(task_id, 1)} T_STATE[{i}]={'ok' if kept else 'pending'}")
        out.append(f"task_{i}() {{")
        # `timeout` leads the task's group when there is a timeout; otherwise
        # setsid makes the task itself the leader (no extra process per task).
        if task.timeout:
            words = ["exec timeout --verbose -k \"$KILL_GRACE\"", _seconds(task.timeout)]
        else:
            words = ["exec setsid -w"]
        env = task_env(task, spec, flow.name)
        if env:
            words.append("env")
            lines = [" ".join(words)] + [f"{name}={q(value)}" for name, value in env.items()]
            lines.append(" ".join(task_command(task, spec, flow.name)))
            out.append("  " + " \\\n    ".join(lines))
        else:
            out.append("  " + " ".join(words + task_command(task, spec, flow.name)))
        out.append("}")
    out.append(_ENGINE)
    return "\n".join(out) + "\n"


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")


def _name(name: str) -> str:
    """A param name for the run's first line: as it is when plain, else as JSON (no
    newline or control character from --params reaches the terminal)."""
    return name if flowmod.ENV_RE.fullmatch(name) else json.dumps(name)


def _comment(text: str) -> str:
    return " ".join(text.split())[:200]


_HEADER = """\
#!/usr/bin/env bash
# Featherflow run {run_id} of flow {flow!r}, generated by `featherflow run`.
# It can be read, and run again by hand (bash run.sh) while the run is queued.
# Every state change is recorded in the database through `_mark`; if one
# cannot be recorded, the run stops. Exit codes: 0 success, 1 failed,
# 3 refused by the state machine, 4 database problem, 5 cancelled.
{note}#
# Values from the flow are single-quoted on purpose (data, never expanded:
# SC1003, SC2016, SC2088 would take them for mistakes), and
# the task_N functions and traps are called indirectly:
# shellcheck disable=SC1003,SC2016,SC2088,SC2317
set -u
umask 077  # logs and temp files are private to the user
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501)); then
  echo "featherflow: bash >= 5.1 is needed to run flows (this is $BASH_VERSION)" >&2
  exit 4
fi
"""

_ENGINE = r"""
# ---------------------------------------------------------------------------
# The engine: the same for every flow.

# fd 9 and 8 keep the terminal for our own report and _mark's errors; bash's
# own chatter ("Terminated", ...) goes to run.log.
exec 9>&1 8>&2
# A run that cannot start says why: recorded now if _mark can run, else left in
# $RUN_DIR/start-failed (bash builtins only) for the next command's orphan check.
start_failed() {
  echo "featherflow: $1" >&2
  "$FF_PYTHON" -I -S "$FF_MARK" "$FF_DB" "$RUN_ID" --run "failed:$1" 2>/dev/null ||
    printf '%s\n' "$1" >"$RUN_DIR/start-failed"
  exit 4
}
if ! START_ERR=$(mkdir -p -- "$LOG_DIR" 2>&1); then
  start_failed "could not start: cannot create $LOG_DIR: ${START_ERR##*: }"
fi
exec 2>>"$RUN_DIR/run.log"
# A reader that goes away (`featherflow run F | head`) must not kill the run:
# a trap, unlike '', is not inherited, so tasks still get the default SIGPIPE.
trap : PIPE

say() { printf '%(%H:%M:%S)T  %s\n' -1 "$*" >&9; }

# A long-lived _mark, a co-process on fds 6 (its answers) and 7 (our calls),
# records the transitions: one line of tab-separated words per call, answered
# with the exit code once committed. It ends after a few idle seconds (no
# Python waits in memory while tasks run for minutes) and is started again on
# the next call. Repeating a transition is harmless, so a call whose answer was
# lost is simply made again; if a fresh co-process cannot answer either, every
# later call starts a _mark of its own. Fds 6 and 7 are closed in every child,
# so that the co-process sees the end of its input when we are gone.
MARKD_UP=0 MARKD_OFF=0 MARKER=
start_marker() {
  coproc MARKD { exec "$FF_PYTHON" -I -S "$FF_MARK" "$FF_DB" "$RUN_ID" --wait "$LOCK_WAIT" --serve 8>&- 9>&-; }
  MARKER=$MARKD_PID  # bash unsets MARKD_PID once the co-process is gone
  exec 6<&"${MARKD[0]}" 7>&"${MARKD[1]}"
  MARKD_UP=1
}
stop_marker() {
  exec 6<&- 7>&-
  MARKD_UP=0
  kill -KILL "$MARKER" 2>/dev/null  # it has ended or is ending; never leave a stuck one
  wait "$MARKER" 2>/dev/null
}
mark() {
  local IFS=$'\t' reply='' rc _
  for _ in 1 2; do  # a fresh co-process gets one more chance
    ((MARKD_OFF)) && break
    ((MARKD_UP)) || start_marker
    if printf '%s\n' "$*" >&7 2>/dev/null; then
      while :; do
        read -r -u 6 reply && break
        rc=$?
        ((rc > 128)) || break  # > 128: a signal (its trap has run); anything else: end of input
      done
      if [[ $reply == [0-9] ]]; then return "$reply"; fi
    fi
    stop_marker
  done
  if ((!MARKD_OFF)); then
    MARKD_OFF=1
    echo "featherflow: the _mark co-process does not answer; one _mark process per call from now on" >&2
  fi
  "$FF_PYTHON" -I -S "$FF_MARK" "$FF_DB" "$RUN_ID" --wait "$LOCK_WAIT" "$@" 6<&- 7>&-
}
if [[ -r /proc/uptime ]]; then  # time since boot: does not jump when the clock is set
  now_ms() { local up rest; read -r up rest </proc/uptime; NOW_MS=$((10#${up/./} * 10)); }
else
  now_ms() { local t=${EPOCHREALTIME/[.,]/}; NOW_MS=$((10#$t / 1000)); }
fi
duration() { printf -v TOOK '%d.%02ds' $(($1 / 1000)) $(($1 % 1000 / 10)); }

declare -A PID_TASK=() PID_TIMER=()  # running tasks and retry timers, by pid
TICK=5 TICKER=  # a timer that bounds how long a task's end can go unnoticed (see collect)
GRACE=  # the timer after which stopped tasks that are still there are killed
declare -a START_MS=() MARKS=() LOST=() starts=()
declare -a T_FIRST_ATTEMPT=("${T_ATTEMPT[@]}")
RUNNING=0 CANCELLED=0 FAILED=0 BROKEN=0 TOTAL=${#T_ID[@]} TOOK=

# What may start: T_WAIT[i] counts the dependencies of task i that have not
# succeeded yet; a pending task whose count is 0 is in READY, a queue (first
# in, first out; READY_HEAD is its first entry). Each task's end only touches
# its own T_NEXT, so a run's cost per task does not grow with the flow.
declare -a T_WAIT=() READY=()
READY_HEAD=0 READY_TAIL=0
ready() {  # index
  READY[READY_TAIL]=$1
  READY_TAIL=$((READY_TAIL + 1))
}

# Send a signal to every running task's process group.
signal_tasks() {  # signal
  local pid
  for pid in "${!PID_TASK[@]}"; do
    kill "-$1" -- "-$pid" 2>/dev/null || kill "-$1" "$pid" 2>/dev/null
  done
}

# TERM every task's process group, KILL what is left KILL_GRACE seconds later
# (the GRACE timer), and drop the timers of retries that wait.
stop_tasks() {
  local pid
  signal_tasks TERM
  for pid in "${!PID_TIMER[@]}"; do kill "$pid" 2>/dev/null; done
  if ((RUNNING)) && [[ -z $GRACE ]]; then
    sleep "$KILL_GRACE" >/dev/null 2>&1 6<&- 7>&- 8>&- 9>&- &
    GRACE=$!
  fi
}

on_signal() {
  trap '' INT TERM HUP
  CANCELLED=1
  say "cancelling run $RUN_ID: stopping $RUNNING running task(s)"
  stop_tasks
}

# A transition could not be recorded: stop every task, start nothing more.
broken() {
  ((BROKEN)) && return
  BROKEN=1
  say "error: could not record a state change in $FF_DB; stopping the run (nothing runs untracked)"
  stop_tasks
}

# Record MARKS, then the start of each task index given, in one _mark call (one
# transaction). Returns non-zero if that failed: then the tasks given must not
# start, and the other marks are kept in LOST for a last try at the end.
flush() {
  local i starting=()
  for i; do starting+=("${T_ID[i]}:${T_ATTEMPT[i]}:running"); done
  ((${#MARKS[@]} + ${#starting[@]})) || return 0
  if ((!BROKEN)) && mark "${MARKS[@]}" "${starting[@]}" 2>&8; then
    MARKS=()
    return 0
  fi
  LOST+=("${MARKS[@]}")
  MARKS=()
  broken
  return 1
}

# Handle every task and timer that has ended; fails if there was none.
# `wait -n` alone is not enough: bash forgets a background job that a signal
# killed while it ran another command (a cancelled task, a timeout's KILL), and
# only `wait PID` still reports it. So each pid is checked, and while several
# are running a TICK timer (or the co-process's idle exit) makes sure the loop looks again.
collect() {
  local pid none=1
  for pid in "${!PID_TASK[@]}" "${!PID_TIMER[@]}" ${GRACE:+"$GRACE"}; do
    kill -0 "$pid" 2>/dev/null && continue
    wait "$pid"
    ended "$pid" $?
    none=0
  done
  return "$none"
}

ended() {  # pid exit-code
  local i
  if [[ -n ${PID_TASK[$1]:-} ]]; then
    finished "$1" "$2"
  elif [[ -n ${PID_TIMER[$1]:-} ]]; then  # a retry's wait is over
    i=${PID_TIMER[$1]}
    unset "PID_TIMER[$1]"
    if [[ ${T_STATE[i]} == delay ]]; then
      T_STATE[i]=pending
      ready "$i"
    fi
  elif [[ $1 == "$MARKER" ]] && ((MARKD_UP)); then  # it ended (idle): the next call starts one
    exec 6<&- 7>&-
    MARKD_UP=0
  elif [[ $1 == "$TICKER" ]]; then
    TICKER=
  elif [[ $1 == "$GRACE" ]]; then
    GRACE=
    signal_tasks KILL
  fi
}

launch() {  # index
  local i=$1 n=${T_ATTEMPT[$1]}
  now_ms
  START_MS[i]=$NOW_MS
  (
    export FEATHERFLOW_TASK_ID="${T_ID[i]}" FEATHERFLOW_ATTEMPT="$n"
    "task_$i"
  ) >"$LOG_DIR/${T_ID[i]}.$n.log" 2>&1 </dev/null 6<&- 7>&- 8>&- 9>&- &
  PID_TASK[$!]=$i
  T_STATE[i]=running
  RUNNING=$((RUNNING + 1))
  say "start   ${T_ID[i]} (attempt $n)"
  # A signal whose trap ran between the fork and the line above missed this task.
  if ((CANCELLED || BROKEN)); then stop_tasks; fi
}

finished() {  # pid exit-code
  local pid=$1 rc=$2 i=${PID_TASK[$1]} n took reason d
  n=${T_ATTEMPT[i]}
  unset "PID_TASK[$pid]"
  RUNNING=$((RUNNING - 1))
  now_ms
  took=$((NOW_MS - START_MS[i]))
  duration "$took"
  if ((rc == 0)); then
    MARKS+=("${T_ID[i]}:$n:success:0")
    T_STATE[i]=ok
    say "ok      ${T_ID[i]} (attempt $n) in $TOOK"
    for d in ${T_NEXT[i]}; do
      T_WAIT[d]=$((T_WAIT[d] - 1))
      if ((T_WAIT[d] == 0)) && [[ ${T_STATE[d]} == pending ]]; then ready "$d"; fi
    done
    return
  fi
  if ((CANCELLED || BROKEN)); then
    kill -KILL -- "-$pid" 2>/dev/null  # nothing of a stopped task outlives it
    reason="run cancelled"
    ((CANCELLED)) || reason="run stopped: a state change could not be recorded"
    MARKS+=("${T_ID[i]}:$n:cancelled:$rc:$reason")
    T_STATE[i]=stopped
    say "stopped ${T_ID[i]} (attempt $n) after $TOOK"
    return
  fi
  # timeout exits 124 (137 if it had to KILL); `took` is measured to 10 ms, hence the margin
  if ((T_TIMEOUT_MS[i] > 0 && (rc == 124 || rc == 137) && took + 100 >= T_TIMEOUT_MS[i])); then
    reason="timeout after ${T_TIMEOUT[i]}s"
    kill -KILL -- "-$pid" 2>/dev/null  # children that ignored TERM
  else
    reason="exit code $rc"
  fi
  MARKS+=("${T_ID[i]}:$n:failed:$rc:$reason")
  say "FAILED  ${T_ID[i]} (attempt $n) after $TOOK: $reason"
  # Each line cut to LOG_TAIL_WIDTH bytes (never inside a UTF-8 character): a task that
  # prints 10 kB lines must not flood the terminal. The log file keeps every byte.
  tail -n LOG_TAIL_LINES -- "$LOG_DIR/${T_ID[i]}.$n.log" 2>/dev/null | tr -d '\000-\010\013-\037\177' |
    LC_ALL=C awk -v w=LOG_TAIL_WIDTH '{
      n = length($0); k = w
      if (n <= w) { print "        | " $0; next }
      while (k > 0 && substr($0, k + 1, 1) ~ /^[\200-\277]$/) k--
      printf "        | %s… [+%d bytes]\n", substr($0, 1, k), n - k
    }' >&9
  local delays used=$((n - T_FIRST_ATTEMPT[i]))
  read -r -a delays <<<"${T_RETRY_MS[i]}"
  if ((used < ${#delays[@]})); then
    n=$((n + 1))
    T_ATTEMPT[i]=$n
    MARKS+=("${T_ID[i]}:$n:pending")
    if ((delays[used] > 0)); then  # a timer; the main loop starts the task when it ends
      local secs
      printf -v secs '%d.%03d' $((delays[used] / 1000)) $((delays[used] % 1000))
      sleep "$secs" >/dev/null 2>&1 6<&- 7>&- 8>&- 9>&- &
      PID_TIMER[$!]=$i
      T_STATE[i]=delay
      say "retry   ${T_ID[i]} (attempt $n) in ${secs}s"
    else
      T_STATE[i]=pending
      ready "$i"
    fi
    return
  fi
  T_STATE[i]=failed
  FAILED=$((FAILED + 1))
  skip_below "$i"
}

# Mark every pending task downstream of task $1 upstream_failed, walking
# T_NEXT. A skipped task's own descendants were walked when it was skipped,
# so the walk stops there: each task is visited at most once per run.
skip_below() {  # index
  local d k todo=() at=0
  local -A seen=()
  for k in ${T_NEXT[$1]}; do todo+=("$k"); done
  while ((at < ${#todo[@]})); do
    d=${todo[at]}
    at=$((at + 1))
    [[ -n ${seen[$d]:-} || ${T_STATE[d]} == skipped ]] && continue
    seen[$d]=1
    if [[ ${T_STATE[d]} == pending ]]; then
      T_STATE[d]=skipped
      MARKS+=("${T_ID[d]}:${T_ATTEMPT[d]}:upstream_failed::upstream ${T_ID[$1]} failed")
      say "skip    ${T_ID[d]} (upstream ${T_ID[$1]} failed)"
    fi
    for k in ${T_NEXT[d]}; do todo+=("$k"); done
  done
}

trap on_signal INT TERM HUP
mark --pid $$ --run running 2>&8
rc=$?
if ((rc)); then
  say "error: run $RUN_ID could not be started (see the message above); no task ran"
  ((rc == 3)) && exit 3
  exit 4
fi
if ! mkdir -p -- "$TMP_DIR"; then
  say "error: cannot create the run's temp dir $TMP_DIR; no task ran"
  mark --run "failed:cannot create its temp dir" 2>&8
  exit 1
fi
FIRST="run $RUN_ID of $FEATHERFLOW_FLOW_NAME: $TOTAL task(s), up to $MAX_PARALLEL at once; logs in $LOG_DIR"
say "$FIRST${UNDECLARED:+; params the flow does not declare: $UNDECLARED}"
for ((i = 0; i < TOTAL; i++)); do
  [[ ${T_STATE[i]} == ok ]] && say "kept    ${T_ID[i]} (succeeded before)"
  T_WAIT[i]=0
  for d in ${T_DEPS[i]}; do
    [[ ${T_STATE[d]} == ok ]] || T_WAIT[i]=$((T_WAIT[i] + 1))
  done
  if ((T_WAIT[i] == 0)) && [[ ${T_STATE[i]} == pending ]]; then ready "$i"; fi
done

while :; do
  starts=()
  if ((!CANCELLED && !BROKEN)); then
    while ((READY_HEAD < READY_TAIL && RUNNING + ${#starts[@]} < MAX_PARALLEL)); do
      i=${READY[READY_HEAD]}
      unset "READY[READY_HEAD]"  # the queue stays as short as what waits in it
      READY_HEAD=$((READY_HEAD + 1))
      [[ ${T_STATE[i]} == pending ]] && starts+=("$i")
    done
  fi
  if flush "${starts[@]}"; then
    for i in "${starts[@]}"; do
      if ((CANCELLED)); then  # the signal came after their start was recorded
        MARKS+=("${T_ID[i]}:${T_ATTEMPT[i]}:cancelled::run cancelled before the task started")
        T_STATE[i]=stopped
      else
        launch "$i"
      fi
    done
  fi
  ((RUNNING + ${#PID_TIMER[@]} > 0)) || break
  collect && continue  # something ended meanwhile: record it, start what follows
  # A co-process that lives ends within its idle seconds and wakes `wait -n`
  # just as the TICK timer would: no timer process beside it.
  if ((RUNNING + ${#PID_TIMER[@]} > 1)) && [[ -z $TICKER ]] &&
    ! { ((MARKD_UP)) && kill -0 "$MARKER" 2>/dev/null; }; then
    sleep "$TICK" >/dev/null 2>&1 6<&- 7>&- 8>&- 9>&- &
    TICKER=$!
  fi
  wait -n -p pid
  rc=$?
  [[ -n ${pid:-} ]] && ended "$pid" "$rc"  # no pid: a signal woke us, and the trap acted
done
[[ -n $TICKER ]] && kill "$TICKER" 2>/dev/null
[[ -n $GRACE ]] && kill "$GRACE" 2>/dev/null

trap '' INT TERM HUP  # the outcome is decided: record it
# A failed run keeps its temp dir: what the kept tasks left there is needed by
# `runs resume`; `runs prune` removes it with the run.
if ((KEEP_TMP)); then
  say "temp dir kept: $TMP_DIR"
elif ((FAILED || BROKEN)); then
  say "temp dir kept for \`featherflow runs resume $RUN_ID\`: $TMP_DIR"
else
  rm -rf -- "$TMP_DIR"
fi
if ((BROKEN)); then
  mark "${LOST[@]}" "${MARKS[@]}" --run "failed:a state change could not be recorded" 2>&8
  say "run $RUN_ID stopped: the database could not record its progress"
  exit 4
fi
if ((CANCELLED)); then
  MARKS+=(--run cancelled)
  outcome="cancelled" code=5
elif ((FAILED)); then
  MARKS+=(--run "failed:$FAILED task(s) failed")
  outcome="failed: $FAILED task(s) failed" code=1
else
  MARKS+=(--run success)
  outcome="succeeded" code=0
fi
if ! mark "${MARKS[@]}" 2>&8; then
  say "error: could not record the end of run $RUN_ID in $FF_DB"
  exit 4
fi
say "run $RUN_ID $outcome"
exit "$code"
""".replace("LOG_TAIL_LINES", str(LOG_TAIL)).replace("LOG_TAIL_WIDTH", str(LOG_TAIL_WIDTH))
