"""Concurrency: many processes recording transitions at once through the real `_mark` path.

16 workers (bash loops, like the scripts of 16 runs) start together and each
calls `python -I -S featherflow/mark.py DB RUN_ID TASK:N:STATE...` once per
transition, one process per call, exactly as a run's script does. Every call
must succeed (no "database is locked", whatever the contention: BEGIN
IMMEDIATE + busy timeout + retry) and every transition must be in the
database afterwards.
"""

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from featherflow import mark
from helpers import fake_run, integrity, this_process

SOAK = os.environ.get("FEATHERFLOW_SOAK") == "1"
WORKERS = int(os.environ.get("FEATHERFLOW_MARK_WORKERS", "16"))
# 4 calls a task: 100 calls a worker, 1,600 in all (FEATHERFLOW_SOAK=1: 152 a worker, 2,432).
# Each call is a Python start (~25 ms of CPU): on a shared 2-core machine 1,600 take ~35 s.
TASKS_PER_WORKER = int(os.environ.get("FEATHERFLOW_MARK_TASKS", "38" if SOAK else "25"))

WORKER = r"""
set -u
while [ ! -e "$GO" ]; do sleep 0.01; done
for task in $TASKS; do
  for spec in "$task:1:running" "$task:1:failed:7:boom $task" "$task:2:running" "$task:2:success:0"; do
    "$PY" -I -S "$MARK" "$DB" "$RUN" "$spec" 2>>"$ERR"
    rc=$?
    echo "$rc $spec" >>"$CODES"
  done
done
"""


@pytest.mark.slow
def test_16_processes_marking_at_once_lose_nothing_and_never_hit_a_lock(project, tmp_path):
    tasks = [[f"w{w}t{i}" for i in range(TASKS_PER_WORKER)] for w in range(WORKERS)]
    app = project.app()
    run = fake_run(app.store, "busy", [t for group in tasks for t in group], **this_process(),
                   flows_dir=project.flows, tasks_dir=project.tasks, output=project.output,
                   max_parallel=WORKERS)
    app.close()

    go = tmp_path / "go"
    workers = []
    for w, group in enumerate(tasks):
        env = dict(os.environ, GO=str(go), TASKS=" ".join(group), PY=sys.executable,
                   MARK=os.path.abspath(mark.__file__), DB=str(project.db), RUN=str(run.id),
                   ERR=str(tmp_path / f"err.{w}"), CODES=str(tmp_path / f"codes.{w}"))
        workers.append(subprocess.Popen(["bash", "-c", WORKER], env=env))
    began = time.monotonic()
    go.touch()  # all start together
    for worker in workers:
        assert worker.wait(timeout=600) == 0
    took = time.monotonic() - began

    codes = []
    for w in range(WORKERS):
        codes += [line.split(" ", 1) for line in (tmp_path / f"codes.{w}").read_text().splitlines()]
    errors = "".join((tmp_path / f"err.{w}").read_text() for w in range(WORKERS)
                     if (tmp_path / f"err.{w}").exists())
    calls = len(codes)
    failed = [c for c in codes if c[0] != "0"]
    locked = errors.count("locked")

    con = sqlite3.connect(str(project.db))
    rows = con.execute("SELECT task_id, attempt, state, exit_code, reason FROM task_attempt "
                       "WHERE run_id = ? ORDER BY task_id, attempt", (run.id,)).fetchall()
    con.close()
    check = integrity(project.db)
    expected = sorted(row for group in tasks for t in group
                      for row in ((t, 1, "failed", 7, f"boom {t}"), (t, 2, "success", 0, None)))
    lost = len(set(expected) - set(rows))
    print(f"\nconcurrency: workers={WORKERS} calls={calls} failed={len(failed)} locked={locked} "
          f"lost={lost} seconds={took:.1f} ({calls / took:.0f} marks/s on this machine)")

    assert calls == WORKERS * TASKS_PER_WORKER * 4
    assert locked == 0, errors[:2000]
    assert failed == [], (failed[:10], errors[:2000])
    assert errors == ""
    assert sorted(rows) == expected
    assert check == "ok"
