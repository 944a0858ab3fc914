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
# pending, running, success, failed, upstream_failed, skipped, cancelled. One has no
# database word: retry_wait, a failed attempt whose retry waits for its timer
# (the database has the next attempt pending meanwhile). T_RULE is when a task
# runs once its dependencies ended: all_success, all_done, any_failed, none_failed
# (the flow's run_if) or cleanup (like all_done, and also when the run is cancelled).

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
# (`featherflow run` made LOG_DIR, OUT_DIR and TMP_DIR already: no mkdir process then.)
if [[ ! -d $LOG_DIR || ! -d $OUT_DIR ]] && ! START_ERR=$(mkdir -p -- "$LOG_DIR" "$OUT_DIR" 2>&1); then
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
# so that the co-process sees the end of its input when we are gone (and fd 5,
# the log cap's watcher's input, below, for the same reason).
MARKD_UP=0 MARKD_OFF=0 MARKER=
start_marker() {
  coproc MARKD { exec "$FF_PYTHON" -I -S "$FF_MARK" "$FF_DB" "$RUN_ID" --wait "$LOCK_WAIT" --outputs "$OUT_DIR" --serve 5>&- 8>&- 9>&-; }
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
  "$FF_PYTHON" -I -S "$FF_MARK" "$FF_DB" "$RUN_ID" --wait "$LOCK_WAIT" --outputs "$OUT_DIR" "$@" 6<&- 7>&-
}
if [[ -r /proc/uptime ]]; then  # time since boot: does not jump when the clock is set
  now_ms() { local up rest; read -r up rest </proc/uptime; NOW_MS=$((10#${up/./} * 10)); }
else
  now_ms() { local t=${EPOCHREALTIME/[.,]/}; NOW_MS=$((10#$t / 1000)); }
fi
duration() { printf -v TOOK '%d.%02ds' $(($1 / 1000)) $(($1 % 1000 / 10)); }

# The log cap (featherflow/logcap.py), when MAX_LOG_BYTES > 0: one watcher per run, a
# subshell reading "+LOG" (an attempt started) and "-LOG" (it ended) on fd 5. About once a
# second (a quarter second after an attempt starts, and 4 times a second while a log grows
# by more than an eighth of the cap, 64 KiB at least, between two looks) it stats the
# running attempts' logs, one `stat` for all, and has logcap.py punch the middle out of a
# log that is past the cap by that much; an ended log over the cap is compacted (head, one
# marker line, tail). Tasks write straight into their logs, never through it; "." ends it,
# and the run's end waits for it: a finished run's logs are exact.
LOGCAP=
logcap_watch() {
  trap '' INT TERM HUP  # a Ctrl-C cancels the run; the watcher still compacts its logs
  local -A live=() ended=() last=() seen=()
  local line next=0 quick=0 slack=$((MAX_LOG_BYTES / 8 > 65536 ? MAX_LOG_BYTES / 8 : 65536))
  while :; do
    if read -r -t "$((quick ? 0 : 1)).$((quick ? 25 : 0))" line; then
      case $line in
        +*) live[${line:1}]=0 ;;
        -*) unset "live[${line:1}]" && ended[${line:1}]=1 ;;
        *) break ;;
      esac
      now_ms
      if [[ $line == +* ]] && ((next <= NOW_MS || next > NOW_MS + 250)); then
        next=$((NOW_MS + 250)) quick=1  # a new attempt is looked at a quarter second in
      fi
      ((NOW_MS < next)) && continue
    elif (($? <= 128)); then
      break  # the script is gone: compact what ended, leave the rest to the readers
    fi
    logcap_check
    now_ms
    next=$((NOW_MS + (quick ? 250 : 1000)))
  done
  live=()
  logcap_check
}
logcap_check() {  # uses logcap_watch's live, ended, last, seen, slack and quick
  local line size path stats=() cuts=() ends=()
  quick=0
  ((${#live[@]} + ${#ended[@]})) || return 0
  mapfile -t stats < <(stat -c '%s %n' -- "${!live[@]}" "${!ended[@]}" 2>/dev/null)
  for line in "${stats[@]}"; do
    size=${line%% *} path=${line#* }
    if [[ -n ${ended[$path]:-} ]]; then
      ((size > MAX_LOG_BYTES || ${last[$path]:-0})) && ends+=("$path")
    else
      ((size > ${seen[$path]:-0} + slack)) && quick=1
      seen[$path]=$size
      if ((size > MAX_LOG_BYTES + slack && size > ${last[$path]:-0} + slack)); then
        cuts+=("$path")
        last[$path]=$size
      fi
    fi
  done
  ((${#cuts[@]})) && "$FF_PYTHON" -I -S "$FF_LOGCAP" cut "$MAX_LOG_BYTES" "${cuts[@]}"
  ((${#ends[@]})) && "$FF_PYTHON" -I -S "$FF_LOGCAP" end "$MAX_LOG_BYTES" "${ends[@]}"
  for path in "${!ended[@]}"; do unset "last[$path]" "seen[$path]"; done
  ended=()
}
logcap_note() {  # +LOG | -LOG
  [[ -n $LOGCAP ]] && printf '%s\n' "$1" >&5 2>/dev/null
  return 0
}

declare -A PID_TASK=() PID_TIMER=()  # running tasks and retry timers, by pid
declare -A PID_POOL=()  # the subshells of tasks with a pool (pools.bash), by pid
TICK=5 TICKER=  # a timer that bounds how long a task's end can go unnoticed (see collect)
GRACE=  # the timer after which stopped tasks that are still there are killed
declare -a START_MS=() MARKS=() LOST=() starts=()
declare -a T_FIRST_ATTEMPT=("${T_ATTEMPT[@]}")
RUNNING=0 CANCELLED=0 FAILED=0 BROKEN=0 TOTAL=${#T_ID[@]} TOOK=
# STOPPING: running tasks are being stopped and nothing starts (a cancel, until the
# cleanup tasks start: SWEPT; a second signal stops those too). FAILED counts the
# tasks that failed for good and FAILED_IDS names them; cleanup tasks apart (CLEANUP_FAILED).
STOPPING=0 SWEPT=0 FAILED_IDS='' CLEANUP_FAILED=''

# What may start: T_LEFT[i] counts the dependencies of task i that have not
# ended yet, T_BAD[i] those that failed (or were upstream_failed), T_SKIPS[i] those
# skipped; T_CAUSE[i] the failed task behind an upstream_failed one. A pending task
# its rule lets run is in READY, a queue (first in, first out; READY_HEAD is its
# first entry). Each task's end only touches its own T_NEXT, so a run's cost per
# task does not grow with the flow.
declare -a T_LEFT=() T_BAD=() T_SKIPS=() T_CAUSE=() READY=()
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
    sleep "$KILL_GRACE" >/dev/null 2>&1 5>&- 6<&- 7>&- 8>&- 9>&- &
    GRACE=$!
  fi
}

# A cancel stops the running tasks, then runs the cleanup tasks (sweep). The
# trap stays (a '' would be inherited by the cleanup tasks): a second signal while
# the cleanup tasks run stops them too; others are ignored.
on_signal() {
  if ((CANCELLED)); then
    ((SWEPT && !STOPPING)) || return
    trap '' INT TERM HUP
    STOPPING=1
    say "stopping $RUNNING cleanup task(s)"
    stop_tasks
    return
  fi
  CANCELLED=1 STOPPING=1
  say "cancelling run $RUN_ID: stopping $RUNNING running task(s)"
  stop_tasks
}

# The run was cancelled and its running tasks have ended: every other task that
# has not run is cancelled, and the cleanup tasks start (in their order, each once
# the cleanup tasks it depends on ended).
sweep() {
  local i d
  SWEPT=1 STOPPING=0
  [[ -n $GRACE ]] && kill "$GRACE" 2>/dev/null
  GRACE=
  for ((i = 0; i < TOTAL; i++)); do
    [[ ${T_STATE[i]} == pending || ${T_STATE[i]} == retry_wait ]] || continue
    [[ ${T_RULE[i]} == cleanup ]] && continue
    T_STATE[i]=cancelled
    MARKS+=("${T_ID[i]}:${T_ATTEMPT[i]}:cancelled::run cancelled before the task started")
  done
  for ((i = 0; i < TOTAL; i++)); do
    [[ ${T_RULE[i]} == cleanup && ${T_STATE[i]} == pending ]] || continue
    T_LEFT[i]=0
    for d in ${T_DEPS[i]}; do
      [[ ${T_STATE[d]} == pending || ${T_STATE[d]} == running || ${T_STATE[d]} == retry_wait ]] &&
        T_LEFT[i]=$((T_LEFT[i] + 1))
    done
    ((T_LEFT[i] == 0)) && ready "$i"
  done
  say "cleanup: starting the cleanup tasks of cancelled run $RUN_ID"
}

# A transition could not be recorded: stop every task, start nothing more.
broken() {
  ((BROKEN)) && return
  BROKEN=1 STOPPING=1
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

# In the subshell of one attempt (of either kind): its environment, then the task
# (its function execs it). A cleanup task is told what the run would end as without
# it, as the run stood when the attempt was launched.
run_task() {  # index
  export FEATHERFLOW_TASK_ID="${T_ID[$1]}" FEATHERFLOW_ATTEMPT="${T_ATTEMPT[$1]}" \
    FEATHERFLOW_OUTPUT_FILE="$OUT_DIR/${T_ID[$1]}.${T_ATTEMPT[$1]}"
  if [[ ${T_RULE[$1]} == cleanup ]]; then
    FEATHERFLOW_RUN_STATE=success
    ((FAILED)) && FEATHERFLOW_RUN_STATE=failed
    ((CANCELLED)) && FEATHERFLOW_RUN_STATE=cancelled
    export FEATHERFLOW_RUN_STATE FEATHERFLOW_FAILED_TASKS="${FAILED_IDS# }"
  fi
  "task_$1"
}

launch() {  # index
  local i=$1 n=${T_ATTEMPT[$1]}
  now_ms
  START_MS[i]=$NOW_MS
  if [[ -n ${T_POOL[i]:-} ]]; then  # its subshell waits for a slot, then runs it (see pool_task)
    # It keeps fd 9 (its report) and fd 5 until its task starts (it tells the watcher).
    (pool_task "$i") >/dev/null </dev/null 6<&- 7>&- 8>&- &
    PID_POOL[$!]=1
  else
    (run_task "$i") >>"$LOG_DIR/${T_ID[i]}.$n.log" 2>&1 </dev/null 5>&- 6<&- 7>&- 8>&- 9>&- &
    logcap_note "+$LOG_DIR/${T_ID[i]}.$n.log"
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
  if ((STOPPING)); then stop_tasks; fi
}

# How an attempt ended: V_STATE (success, cancelled or failed), V_REASON, and V_RC, its
# exit code (1 for a task that exited 0 but wrote outputs that cannot be stored: one
# Python start, only for a task that wrote some; _mark reads them again with the success).
verdict() {  # index exit-code took-ms stopped
  local out="$OUT_DIR/${T_ID[$1]}.${T_ATTEMPT[$1]}"
  V_REASON='' V_RC=$2
  if (($2 == 0)) && [[ -s $out ]] &&
    ! V_REASON=$("$FF_PYTHON" -I -S "$FF_OUTPUTS" --check "$out" 2>&1 5>&- 6<&- 7>&-); then
    V_RC=1 V_REASON=${V_REASON:-"its outputs file cannot be read"}
    V_REASON=${V_REASON//$'\n'/ }
  fi
  if ((V_RC == 0)); then
    V_STATE=success
  elif (($4)); then
    V_STATE=cancelled V_REASON="run cancelled"
    ((CANCELLED || !BROKEN)) || V_REASON="run stopped: a state change could not be recorded"
  elif [[ -n $V_REASON ]]; then
    V_STATE=failed
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
  logcap_note "-$LOG_DIR/${T_ID[i]}.$n.log"
  unset "PID_TASK[$pid]"
  RUNNING=$((RUNNING - 1))
  now_ms
  took=$((NOW_MS - START_MS[i]))
  if [[ -n ${PID_POOL[$pid]:-} ]]; then
    unset "PID_POOL[$pid]"
    pool_ended "$i" "$rc" || return  # sets recorded, took, V_*; fails if the task never started
  else
    verdict "$i" "$rc" "$took" "$STOPPING"
  fi
  rc=$V_RC
  duration "$took"
  if [[ $V_STATE == success ]]; then
    ((recorded)) || MARKS+=("${T_ID[i]}:$n:success:0")
    T_STATE[i]=success
    say "ok      ${T_ID[i]} (attempt $n) in $TOOK"
    settle "$i" success
    return
  fi
  if [[ $V_STATE == cancelled ]]; then
    kill -KILL -- "-$pid" 2>/dev/null  # nothing of a stopped task outlives it
    ((recorded)) || MARKS+=("${T_ID[i]}:$n:cancelled:$rc:$V_REASON")
    T_STATE[i]=cancelled
    say "stopped ${T_ID[i]} (attempt $n) after $TOOK"
    ((STOPPING)) || gave_up "$i"  # a pool task's subshell stopped from outside: a failure
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
      sleep "$secs" >/dev/null 2>&1 5>&- 6<&- 7>&- 8>&- 9>&- &
      PID_TIMER[$!]=$i
      T_STATE[i]=retry_wait
      say "retry   ${T_ID[i]} (attempt $n) in ${secs}s"
    else
      T_STATE[i]=pending
      ready "$i"
    fi
    return
  fi
  gave_up "$i"
}

# Task $1 failed for good (no retry left): counted, and told below it.
gave_up() {  # index
  T_STATE[$1]=failed
  T_CAUSE[$1]=${T_ID[$1]}
  if [[ ${T_RULE[$1]} == cleanup ]]; then
    CLEANUP_FAILED+=" ${T_ID[$1]}"
  else
    FAILED=$((FAILED + 1))
    FAILED_IDS+=" ${T_ID[$1]}"
  fi
  settle "$1" failed
}

# Task $1 ended as $2: tell the tasks below it, and decide each one whose rule now
# can: it starts (READY), or it is recorded upstream_failed or skipped with its
# reason, and that end is told below in turn (a queue, not recursion: a chain of
# thousands of tasks). Each task ends once, so each edge is walked once per run.
settle() {  # index outcome
  local todo=("$1") how=("$2") at=0 i out d rule verdict why
  while ((at < ${#todo[@]})); do
    i=${todo[at]} out=${how[at]}
    at=$((at + 1))
    for d in ${T_NEXT[i]}; do
      T_LEFT[d]=$((T_LEFT[d] - 1))
      case $out in
        failed | upstream_failed) T_BAD[d]=$((T_BAD[d] + 1)) T_CAUSE[d]=${T_CAUSE[d]:-${T_CAUSE[i]}} ;;
        skipped) T_SKIPS[d]=$((T_SKIPS[d] + 1)) ;;
      esac
      [[ ${T_STATE[d]} == pending ]] || continue
      verdict='' rule=${T_RULE[d]}
      case $rule in
        all_success | none_failed)
          if ((T_BAD[d])); then
            verdict=upstream_failed why="upstream ${T_CAUSE[d]} failed"
          elif [[ $rule == all_success ]] && ((T_SKIPS[d])); then
            verdict=skipped why="upstream ${T_ID[i]} was skipped (run_if all_success)"
          elif ((T_LEFT[d] == 0)); then
            verdict=ready
          fi
          ;;
        any_failed)
          if ((T_LEFT[d] == 0)); then
            verdict=ready
            ((T_BAD[d])) || verdict=skipped why="no dependency failed (run_if any_failed)"
          fi
          ;;
        *) ((T_LEFT[d] == 0)) && verdict=ready ;;  # all_done, cleanup
      esac
      case $verdict in
        ready) ready "$d" ;;
        upstream_failed | skipped)
          T_STATE[d]=$verdict
          MARKS+=("${T_ID[d]}:${T_ATTEMPT[d]}:$verdict::$why")
          say "skip    ${T_ID[d]} ($why)"
          todo+=("$d") how+=("$verdict")
          ;;
      esac
    done
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
if [[ ! -d $TMP_DIR ]] && ! mkdir -p -- "$TMP_DIR"; then
  say "error: cannot create the run's temp dir $TMP_DIR; no task ran"
  mark --run "failed:cannot create its temp dir" 2>&8
  exit "$EXIT_FAILED"
fi
FIRST="run $RUN_ID of $FEATHERFLOW_FLOW_NAME: $TOTAL task(s), up to $MAX_PARALLEL at once; logs in $LOG_DIR"
say "$FIRST${UNDECLARED:+; params the flow does not declare: $UNDECLARED}"
for ((i = 0; i < TOTAL; i++)); do
  [[ ${T_STATE[i]} == success ]] && say "kept    ${T_ID[i]} (succeeded before)"
  T_LEFT[i]=0 T_BAD[i]=0 T_SKIPS[i]=0
  for d in ${T_DEPS[i]}; do
    [[ ${T_STATE[d]} == success ]] || T_LEFT[i]=$((T_LEFT[i] + 1))
  done
done
# A task whose dependencies were all kept is decided now: any_failed has nothing to
# run for (skipped), every other rule starts it. (After the counts: a skip is told below.)
for ((i = 0; i < TOTAL; i++)); do
  if ((T_LEFT[i] > 0)) || [[ ${T_STATE[i]} != pending ]]; then continue; fi
  if [[ ${T_RULE[i]} == any_failed ]]; then
    T_STATE[i]=skipped
    MARKS+=("${T_ID[i]}:${T_ATTEMPT[i]}:skipped::no dependency failed (run_if any_failed)")
    say "skip    ${T_ID[i]} (no dependency failed (run_if any_failed))"
    settle "$i" skipped
  else
    ready "$i"
  fi
done

if ((MAX_LOG_BYTES > 0)); then
  exec 5> >(logcap_watch 6<&- 7>&- 8>&- 9>&-)
  LOGCAP=$!
fi
while :; do
  starts=()
  if ((CANCELLED && !SWEPT && !BROKEN && RUNNING == 0)); then sweep; fi
  if ((!STOPPING)); then
    while ((READY_HEAD < READY_TAIL && RUNNING + ${#starts[@]} < MAX_PARALLEL)); do
      i=${READY[READY_HEAD]}
      unset "READY[READY_HEAD]"  # the queue stays as short as what waits in it
      READY_HEAD=$((READY_HEAD + 1))
      [[ ${T_STATE[i]} == pending ]] || continue
      [[ -z ${T_POOL[i]:-} ]] || pool_place "$i" || continue
      starts+=("$i")
    done
  fi
  # Nothing starts and nothing runs: the run ends, and its end records MARKS (one commit).
  # (Not a cancel whose cleanup tasks have yet to be swept in: the next round sweeps.)
  if ((!${#starts[@]} && !RUNNING && !${#PID_TIMER[@]})) && ! ((CANCELLED && !SWEPT && !BROKEN)); then break; fi
  if flush "${starts[@]}"; then
    for i in "${starts[@]}"; do
      if ((STOPPING)); then  # the signal came after their start was recorded
        MARKS+=("${T_ID[i]}:${T_ATTEMPT[i]}:cancelled::run cancelled before the task started")
        T_STATE[i]=cancelled
        [[ -z ${T_POOL[i]:-} ]] || pool_done "$i"  # its place in its pool is free again
      else
        launch "$i"
      fi
    done
  fi
  if ((RUNNING + ${#PID_TIMER[@]} == 0)); then
    # a cancel whose cleanup has not started yet, or what the sweep made ready
    ((CANCELLED && !SWEPT && !BROKEN || READY_HEAD < READY_TAIL && !STOPPING)) && continue
    break
  fi
  collect && continue  # something ended meanwhile: record it, start what follows
  # A co-process that lives ends within its idle seconds and wakes `wait -n`
  # just as the TICK timer would: no timer process beside it.
  if ((RUNNING + ${#PID_TIMER[@]} > 1)) && [[ -z $TICKER ]] &&
    ! { ((MARKD_UP)) && kill -0 "$MARKER" 2>/dev/null; }; then
    sleep "$TICK" >/dev/null 2>&1 5>&- 6<&- 7>&- 8>&- 9>&- &
    TICKER=$!
  fi
  wait -n -p pid
  rc=$?
  [[ -n ${pid:-} ]] && ended "$pid" "$rc"  # no pid: a signal woke us, and the trap acted
done
[[ -n $TICKER ]] && kill "$TICKER" 2>/dev/null
[[ -n $GRACE ]] && kill "$GRACE" 2>/dev/null
if [[ -n $LOGCAP ]]; then  # the last logs are compacted before the run's end is recorded
  logcap_note .
  exec 5>&-
  wait "$LOGCAP"
fi

trap '' INT TERM HUP  # the outcome is decided: record it
# A failed run keeps its temp dir: what the kept tasks left there is needed by
# `runs resume`; `runs prune` removes it with the run.
if ((KEEP_TMP)); then
  say "temp dir kept: $TMP_DIR"
elif ((FAILED || BROKEN)) || [[ -n $CLEANUP_FAILED ]]; then
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
elif [[ -n $CLEANUP_FAILED ]]; then  # the work succeeded, its cleanup did not
  MARKS+=(--run "failed:cleanup task(s) failed:$CLEANUP_FAILED")
  outcome="failed: cleanup task(s) failed:$CLEANUP_FAILED" code=$EXIT_FAILED
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
