# shellcheck shell=bash disable=SC2317,SC2034
# The pools' part of the engine (README "Pools"). script.py embeds it, from the
# "# ----" line below on, into the run.sh of a flow whose tasks name a pool,
# before engine.bash, whose functions (say, now_ms, ready, verdict) and variables it
# uses: a flow without pools pays nothing for them. The lines above that one
# are for this file alone (tests/test_pools.py lints it by itself, where the
# engine's variables it sets look unused: SC2034).
# ---------------------------------------------------------------------------
# Pools (README "Pools"): at most T_SLOTS[i] tasks of pool T_POOL[i] run at once,
# across every run of the database. A slot is an exclusive `flock` on one of the
# files $POOL_DIR/POOL/slot.0 .. slot.N-1, held by a subshell of this script that
# waits for the task and records its start and end itself: the kernel frees the
# slot when that subshell dies, and never before its task's end is recorded, so
# two runs never show two of a pool's tasks running at once. The slot's fd is
# closed in the task and in every other process the subshell starts, so a
# daemonised grandchild of a task never keeps it. Waiting does not spin: one
# `flock -n` per slot file, then a blocking `flock -w` on one of them (a freed
# slot is taken at once), and round again. A TERM stops the wait (the run is
# cancelled) or is passed on to the task's group; USR1 stands for the KILL
# that a signal to this subshell would not pass on.

# A run starts at most T_SLOTS of a pool's tasks at once (waiting or running):
# more could not run anyway, and the places of MAX_PARALLEL go to other tasks.
# POOL_BUSY counts them by pool; POOL_LATER holds the ready ones held back.
declare -A POOL_BUSY=() POOL_LATER=()
pool_place() {  # index; fails (and holds the task back) when its pool's share is taken
  local p=${T_POOL[$1]}
  if ((${POOL_BUSY[$p]:-0} >= T_SLOTS[$1])); then
    POOL_LATER[$p]+=" $1"
    return 1
  fi
  POOL_BUSY[$p]=$((${POOL_BUSY[$p]:-0} + 1))
}
pool_done() {  # index: its subshell ended; the first task held back in its pool is ready
  local p=${T_POOL[$1]} later
  POOL_BUSY[$p]=$((POOL_BUSY[$p] - 1))
  read -r -a later <<<"${POOL_LATER[$p]:-}"
  ((${#later[@]})) || return 0
  POOL_LATER[$p]=" ${later[*]:1}"
  ready "${later[0]}"
}
# In finished(), for a pool task's subshell that ended: what it recorded and measured from
# the slot on (recorded, took, V_RC, V_STATE, V_REASON: finished's own), from the file it
# left. No file: its task never started; that is handled here, and it fails.
pool_ended() {  # index exit-code
  local i=$1 n=${T_ATTEMPT[$1]}
  pool_done "$i"
  read -r recorded took V_RC V_STATE V_REASON <"$RUN_DIR/pool-${T_ID[i]}.$n" 2>/dev/null && return 0
  if (($2 == POOL_NOT_STARTED && STOPPING)); then
    MARKS+=("${T_ID[i]}:$n:cancelled::run cancelled while it waited for a slot of pool ${T_POOL[i]}")
    T_STATE[i]=cancelled
    say "stopped ${T_ID[i]} (attempt $n) while it waited for a slot of pool ${T_POOL[i]}"
  elif (($2 == POOL_CANNOT)); then  # no flock, no slot file: it fails without running
    MARKS+=("${T_ID[i]}:$n:cancelled::could not take a slot of pool ${T_POOL[i]} (see $RUN_DIR/run.log)")
    say "FAILED  ${T_ID[i]} (attempt $n): could not take a slot of pool ${T_POOL[i]} (see $RUN_DIR/run.log)"
    gave_up "$i"
  else  # its start could not be recorded, or it died: nothing runs untracked
    T_STATE[i]=cancelled
    broken
  fi
  return 1
}

POOL_BACKOFF=(0.2 0.4 0.8 1.6 2)
# The subshell's exit codes when it ended before its task started: stopped (the
# run was cancelled), could not record the start, could not wait for a slot.
POOL_NOT_STARTED=90 POOL_UNRECORDED=91 POOL_CANNOT=92
P_STOP=0 P_TASK='' P_WAITER='' P_FD=''
pool_task() {  # index; runs in its own subshell, to the end of the attempt
  local i=$1 n=${T_ATTEMPT[$1]} id=${T_ID[$1]} pool=${T_POOL[$1]} slots=${T_SLOTS[$1]}
  local dir="$POOL_DIR/${T_POOL[$1]}" k round=0 rc took=0 secs
  trap 'P_STOP=1; [[ -n $P_WAITER ]] && kill "$P_WAITER" 2>/dev/null
        [[ -n $P_TASK ]] && kill -TERM -- "-$P_TASK" 2>/dev/null' INT TERM HUP
  trap '[[ -n $P_TASK ]] && kill -KILL -- "-$P_TASK" 2>/dev/null' USR1
  trap : PIPE  # our report to the terminal must not kill us (and free the slot) when its reader is gone
  [[ -d $dir ]] || mkdir -p -- "$dir" || pool_cannot "cannot create $dir"
  while :; do
    if ((P_STOP)) || pool_orphaned; then exit "$POOL_NOT_STARTED"; fi
    for ((k = 0; k < slots; k++)); do
      exec {P_FD}<>"$dir/slot.$k" || pool_cannot "cannot open $dir/slot.$k"
      flock -n "$P_FD"
      rc=$?
      ((rc == 0)) && break 2
      ((rc == 1)) || pool_cannot "flock -n failed (exit code $rc)"  # 1: taken
      exec {P_FD}>&-
    done
    k=$((round % slots)) round=$((round + 1))
    # One slot: wait on it (5 s, then look again whether the run still goes on);
    # several: wait on one of them for 0.2 s, doubling to 2 s, then try them all.
    secs=5
    ((slots == 1)) || secs=${POOL_BACKOFF[round < 5 ? round - 1 : 4]}
    exec {P_FD}<>"$dir/slot.$k" || pool_cannot "cannot open $dir/slot.$k"
    flock -w "$secs" "$P_FD" 2>/dev/null 5>&- 9>&- &
    P_WAITER=$!
    while :; do
      wait "$P_WAITER"
      rc=$?
      ((P_STOP)) && exit "$POOL_NOT_STARTED"
      kill -0 "$P_WAITER" 2>/dev/null || break
    done
    P_WAITER=
    ((rc == 0)) && break
    ((rc == 1)) || pool_cannot "flock -w failed (exit code $rc)"  # 1: still taken
    exec {P_FD}>&-
  done
  if ((P_STOP)) || pool_orphaned; then exit "$POOL_NOT_STARTED"; fi
  # The slot is ours: the task starts now, and so do its timeout and its recorded start.
  pool_mark "$id:$n:running" || exit "$POOL_UNRECORDED"
  now_ms
  local start=$NOW_MS
  say "start   $id (attempt $n) in pool $pool (slot $k)"
  if ((!P_STOP)); then
    (run_task "$i") >>"$LOG_DIR/$id.$n.log" 2>&1 </dev/null {P_FD}>&- 5>&- 6<&- 7>&- 9>&- &
    P_TASK=$!
    logcap_note "+$LOG_DIR/$id.$n.log"  # the script tells the watcher its end (finished)
    exec 5>&-  # a kill -9 of the script ends the watcher, whatever this subshell waits for
    while :; do  # a trapped signal ends `wait` early: wait again while the task is there
      wait "$P_TASK"
      rc=$?
      kill -0 "$P_TASK" 2>/dev/null || break
    done
    now_ms
    took=$((NOW_MS - start))
  else
    rc=143
  fi
  verdict "$i" "$rc" "$took" "$P_STOP"
  if [[ $V_STATE == cancelled || $V_REASON == timeout* ]] && [[ -n $P_TASK ]]; then
    kill -KILL -- "-$P_TASK" 2>/dev/null  # nothing of it outlives it, nor keeps running past its end
  fi
  [[ -n $P_TASK ]] || V_REASON="run cancelled before the task started"
  local recorded=1
  if [[ $V_STATE == success ]]; then  # its outputs are stored with it (_mark --outputs)
    pool_mark "$id:$n:success:0" || recorded=0
  else
    pool_mark "$id:$n:$V_STATE:$V_RC:$V_REASON" || recorded=0
  fi
  printf '%s %s %s %s %s\n' "$recorded" "$took" "$V_RC" "$V_STATE" "$V_REASON" >"$RUN_DIR/pool-$id.$n"
  exit "$rc"  # and the slot is free
}
pool_cannot() {  # what: the task cannot wait for a slot: it fails without running (finished)
  echo "featherflow: task ${T_ID[$i]} cannot take a slot of pool ${T_POOL[$i]}: $1" >&2
  exit "$POOL_CANNOT"
}
# Transitions recorded by this subshell (the script's co-process is the script's own):
# the task's start starts a `_mark --serve` of the subshell's, which records its end
# too when the task ends within the co-process's idle seconds (one Python start for
# both); else, or when it does not answer, a `_mark` of its own (repeating is harmless).
# Its fds are 6 and 7 here too (the script's were closed at the fork), closed in every child.
P_MARKER=''
pool_mark() {  # transition...
  local IFS=$'\t' reply=''
  if [[ -z $P_MARKER ]]; then
    coproc PMARK { exec "$FF_PYTHON" -I -S "$FF_MARK" "$FF_DB" "$RUN_ID" --wait "$LOCK_WAIT" \
      --outputs "$OUT_DIR" --serve {P_FD}>&- 5>&- 9>&-; }
    P_MARKER=$PMARK_PID
    exec 6<&"${PMARK[0]}" 7>&"${PMARK[1]}"
  fi
  if printf '%s\n' "$*" >&7 2>/dev/null && read -r -u 6 reply && [[ $reply == [0-9] ]]; then
    return "$reply"
  fi
  "$FF_PYTHON" -I -S "$FF_MARK" "$FF_DB" "$RUN_ID" --wait "$LOCK_WAIT" --outputs "$OUT_DIR" "$@" \
    {P_FD}>&- 5>&- 6<&- 7>&- 9>&-
}
# Whether the script that started this subshell is gone (killed): then no task starts.
pool_orphaned() {
  local stat
  [[ -r /proc/$BASHPID/stat ]] || return 1
  read -r -a stat <"/proc/$BASHPID/stat"
  [[ ${stat[3]} != "$$" ]]
}
