# shellcheck shell=bash disable=SC2317
# The engine of every Featherflow run, the same for every flow. script.py embeds
# it, from the "# ----" line below on, into each run.sh after the run's settings
# (FF_*, RUN_ID, LOG_TAIL_*, EXIT_*, ...) and task functions (T_*, task_N): a
# run.sh holds all it runs, so a run goes on as it started when Featherflow is
# upgraded meanwhile, and reads top to bottom. The lines above that one are for
# this file alone (tests/test_script.py lints it by itself, where the traps and
# functions called indirectly look unreachable: SC2317).
# ---------------------------------------------------------------------------
# The engine: the same for every flow.

# A task's state (T_STATE) uses the database's words for attempts (states.py):
# pending, running, success, failed, upstream_failed, cancelled. One has no
# database word: retry_wait, a failed attempt whose retry waits for its timer
# (the database has the next attempt pending meanwhile).

# fd 9 and 8 keep the terminal for our own report and _mark's errors; bash's
# own chatter ("Terminated", ...) goes to run.log.
exec 9>&1 8>&2
# A run that cannot start says why: recorded now if _mark can run, else left in
# $RUN_DIR/start-failed (bash builtins only) for the next command's orphan check.
start_failed() {
  echo "featherflow: $1" >&2
  "$FF_PYTHON" -I -S "$FF_MARK" "$FF_DB" "$RUN_ID" --run "failed:$1" 2>/dev/null ||
    printf '%s\n' "$1" >"$RUN_DIR/start-failed"
  exit "$EXIT_DATABASE"
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
declare -A PID_POOL=()  # the subshells of tasks with a pool (pools.bash), by pid
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
# A pool task's subshell is no group leader: it passes TERM on to its task, and
# KILL, which it could not trap, is sent to it as USR1.
signal_tasks() {  # signal
  local pid
  for pid in "${!PID_TASK[@]}"; do
    if [[ -n ${PID_POOL[$pid]:-} ]]; then
      kill "-${1/#KILL/USR1}" "$pid" 2>/dev/null
    else
      kill "-$1" -- "-$pid" 2>/dev/null || kill "-$1" "$pid" 2>/dev/null
    fi
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

# Record MARKS, then the start of each task index given (for a pool task, that
# it waits for a slot), in one _mark call (one transaction). Returns non-zero if
# that failed: then the tasks given must not start, and the other marks are kept
# in LOST for a last try at the end.
flush() {
  local i starting=()
  for i; do
    if [[ -n ${T_POOL[i]:-} ]]; then  # it waits for a slot; its subshell records its start
      starting+=("${T_ID[i]}:${T_ATTEMPT[i]}:waiting::waiting for a slot of pool ${T_POOL[i]}")
    else
      starting+=("${T_ID[i]}:${T_ATTEMPT[i]}:running")
    fi
  done
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
    if [[ ${T_STATE[i]} == retry_wait ]]; then
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

# In the subshell of one attempt: its environment, then the task (its function execs it).
run_task() {  # index
  export FEATHERFLOW_TASK_ID="${T_ID[$1]}" FEATHERFLOW_ATTEMPT="${T_ATTEMPT[$1]}"
  "task_$1"
}

launch() {  # index
  local i=$1 n=${T_ATTEMPT[$1]}
  now_ms
  START_MS[i]=$NOW_MS
  if [[ -n ${T_POOL[i]:-} ]]; then  # its subshell waits for a slot, then runs it (see pool_task)
    (pool_task "$i") >/dev/null </dev/null 6<&- 7>&- 8>&- &
    PID_POOL[$!]=1
  else
    (run_task "$i") >"$LOG_DIR/${T_ID[i]}.$n.log" 2>&1 </dev/null 6<&- 7>&- 8>&- 9>&- &
  fi
  PID_TASK[$!]=$i
  T_STATE[i]=running
  RUNNING=$((RUNNING + 1))
  if [[ -n ${T_POOL[i]:-} ]]; then
    say "wait    ${T_ID[i]} (attempt $n) for a slot of pool ${T_POOL[i]}"
  else
    say "start   ${T_ID[i]} (attempt $n)"
  fi
  # A signal whose trap ran between the fork and the line above missed this task.
  if ((CANCELLED || BROKEN)); then stop_tasks; fi
}

# How an attempt ended: V_STATE (success, cancelled or failed) and V_REASON.
verdict() {  # index exit-code took-ms stopped
  V_REASON=
  if (($2 == 0)); then
    V_STATE=success
  elif (($4)); then
    V_STATE=cancelled V_REASON="run cancelled"
    ((CANCELLED || !BROKEN)) || V_REASON="run stopped: a state change could not be recorded"
  # timeout exits 124 (137 if it had to KILL); `took` is measured to 10 ms, hence the margin
  elif ((T_TIMEOUT_MS[$1] > 0 && ($2 == 124 || $2 == 137) && $3 + 100 >= T_TIMEOUT_MS[$1])); then
    V_STATE=failed V_REASON="timeout after ${T_TIMEOUT[$1]}s"
  else
    V_STATE=failed V_REASON="exit code $2"
  fi
}

finished() {  # pid exit-code
  local pid=$1 rc=$2 i=${PID_TASK[$1]} n took d recorded=0
  n=${T_ATTEMPT[i]}
  unset "PID_TASK[$pid]"
  RUNNING=$((RUNNING - 1))
  now_ms
  took=$((NOW_MS - START_MS[i]))
  if [[ -n ${PID_POOL[$pid]:-} ]]; then
    unset "PID_POOL[$pid]"
    pool_ended "$i" "$rc" || return  # sets recorded, took, V_*; fails if the task never started
  else
    verdict "$i" "$rc" "$took" $((CANCELLED || BROKEN))
  fi
  duration "$took"
  if [[ $V_STATE == success ]]; then
    ((recorded)) || MARKS+=("${T_ID[i]}:$n:success:0")
    T_STATE[i]=success
    say "ok      ${T_ID[i]} (attempt $n) in $TOOK"
    for d in ${T_NEXT[i]}; do
      T_WAIT[d]=$((T_WAIT[d] - 1))
      if ((T_WAIT[d] == 0)) && [[ ${T_STATE[d]} == pending ]]; then ready "$d"; fi
    done
    return
  fi
  if [[ $V_STATE == cancelled ]]; then
    kill -KILL -- "-$pid" 2>/dev/null  # nothing of a stopped task outlives it
    ((recorded)) || MARKS+=("${T_ID[i]}:$n:cancelled:$rc:$V_REASON")
    T_STATE[i]=cancelled
    say "stopped ${T_ID[i]} (attempt $n) after $TOOK"
    if ((!CANCELLED && !BROKEN)); then  # a pool task's subshell stopped from outside: a failure
      T_STATE[i]=failed
      FAILED=$((FAILED + 1))
      skip_below "$i"
    fi
    return
  fi
  [[ $V_REASON == timeout* ]] && kill -KILL -- "-$pid" 2>/dev/null  # children that ignored TERM
  ((recorded)) || MARKS+=("${T_ID[i]}:$n:failed:$rc:$V_REASON")
  say "FAILED  ${T_ID[i]} (attempt $n) after $TOOK: $V_REASON"
  # Each line cut to LOG_TAIL_WIDTH bytes (never inside a UTF-8 character): a task that
  # prints 10 kB lines must not flood the terminal. The log file keeps every byte.
  tail -n "$LOG_TAIL_LINES" -- "$LOG_DIR/${T_ID[i]}.$n.log" 2>/dev/null | tr -d '\000-\010\013-\037\177' |
    LC_ALL=C awk -v w="$LOG_TAIL_WIDTH" '{
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
      T_STATE[i]=retry_wait
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
# T_NEXT. An upstream_failed task's own descendants were walked when it was marked,
# so the walk stops there: each task is visited at most once per run.
skip_below() {  # index
  local d k todo=() at=0
  local -A seen=()
  for k in ${T_NEXT[$1]}; do todo+=("$k"); done
  while ((at < ${#todo[@]})); do
    d=${todo[at]}
    at=$((at + 1))
    [[ -n ${seen[$d]:-} || ${T_STATE[d]} == upstream_failed ]] && continue
    seen[$d]=1
    if [[ ${T_STATE[d]} == pending ]]; then
      T_STATE[d]=upstream_failed
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
  ((rc == EXIT_CONFLICT)) && exit "$EXIT_CONFLICT"
  exit "$EXIT_DATABASE"
fi
if ! mkdir -p -- "$TMP_DIR"; then
  say "error: cannot create the run's temp dir $TMP_DIR; no task ran"
  mark --run "failed:cannot create its temp dir" 2>&8
  exit "$EXIT_FAILED"
fi
FIRST="run $RUN_ID of $FEATHERFLOW_FLOW_NAME: $TOTAL task(s), up to $MAX_PARALLEL at once; logs in $LOG_DIR"
say "$FIRST${UNDECLARED:+; params the flow does not declare: $UNDECLARED}"
for ((i = 0; i < TOTAL; i++)); do
  [[ ${T_STATE[i]} == success ]] && say "kept    ${T_ID[i]} (succeeded before)"
  T_WAIT[i]=0
  for d in ${T_DEPS[i]}; do
    [[ ${T_STATE[d]} == success ]] || T_WAIT[i]=$((T_WAIT[i] + 1))
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
      [[ ${T_STATE[i]} == pending ]] || continue
      [[ -z ${T_POOL[i]:-} ]] || pool_place "$i" || continue
      starts+=("$i")
    done
  fi
  if flush "${starts[@]}"; then
    for i in "${starts[@]}"; do
      if ((CANCELLED)); then  # the signal came after their start was recorded
        MARKS+=("${T_ID[i]}:${T_ATTEMPT[i]}:cancelled::run cancelled before the task started")
        T_STATE[i]=cancelled
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
  exit "$EXIT_DATABASE"
fi
if ((CANCELLED)); then
  MARKS+=(--run cancelled)
  outcome="cancelled" code=$EXIT_CANCELLED
elif ((FAILED)); then
  MARKS+=(--run "failed:$FAILED task(s) failed")
  outcome="failed: $FAILED task(s) failed" code=$EXIT_FAILED
else
  MARKS+=(--run success)
  outcome="succeeded" code=$EXIT_OK
fi
if ! mark "${MARKS[@]}" 2>&8; then
  say "error: could not record the end of run $RUN_ID in $FF_DB"
  exit "$EXIT_DATABASE"
fi
say "run $RUN_ID $outcome"
exit "$code"
