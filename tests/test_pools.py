"""Pools: "pool" on a task or a flow, `featherflow pool`, and the limit across runs.

The limit is checked twice: from the attempts' recorded start and end times (no
two attempts of a one-slot pool overlap), and by the tasks themselves, which
take an flock of their own with `flock -n` and fail if another task of the pool
holds it. Waiting is done on process exit or by polling the database with a
deadline; tasks that must overlap meet at a barrier file instead of sleeping.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from featherflow import doctor, flow as flowmod, mark, rules, states
from featherflow.engine import script
from featherflow.errors import ValidationError
from featherflow.store.pools import WAITING
from helpers import fake_run, this_process, wait_for

WAIT = 30  # seconds: the bound on every wait in this file

# Holds its own lock while it works: a second task of the pool running at the same
# time fails (exit 9) and says so in its log and in the trace.
HOLD = """\
exec 3>"$1"
if ! flock -n 3; then echo "OVERLAP $FEATHERFLOW_RUN_ID $FEATHERFLOW_TASK_ID" | tee -a "$1.trace"; exit 9; fi
echo "$FEATHERFLOW_RUN_ID $FEATHERFLOW_TASK_ID" >>"$1.trace"
sleep "$2"
"""
# Waits until the file $2 exists (the test's gate), holding its slot meanwhile.
GATE = """\
touch "$1"
end=$((SECONDS + 60))
until [ -e "$2" ]; do [ $SECONDS -lt $end ] || exit 7; sleep 0.02; done
"""
# Meets the others at a barrier: marks itself there, then waits until $2 tasks have.
BARRIER = """\
touch "$1/$FEATHERFLOW_RUN_ID-$FEATHERFLOW_TASK_ID"
end=$((SECONDS + 20))
until [ "$(ls "$1" | wc -l)" -ge "$2" ]; do [ $SECONDS -lt $end ] || exit 8; sleep 0.02; done
"""


def start(project, flow):
    return subprocess.Popen([sys.executable, "-m", "featherflow", *project.args(), "run", flow],
                            cwd=project.root, env=project.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, out + err


def pool_attempts(project, pool_tasks=None):
    """(run, task, attempt, state, started, ended) of every attempt that started."""
    app = project.app()
    try:
        found = []
        for run in app.store.runs.list_runs(limit=None):
            for a in app.store.runs.attempts(run.id):
                if a.started_at is not None and (pool_tasks is None or a.task_id in pool_tasks):
                    found.append((run.id, a.task_id, a.attempt, a.state, a.started_at, a.ended_at))
        return found
    finally:
        app.close()


def overlaps(attempts):
    """Pairs of attempts whose recorded [start, end] intervals meet."""
    spans = sorted(attempts, key=lambda a: a[4])
    bad = []
    for before, after in zip(spans, spans[1:]):
        assert before[5] is not None, f"attempt still open: {before}"
        if after[4] < before[5]:
            bad.append((before, after))
    return bad


def most_at_once(attempts) -> int:
    edges = sorted([(a[4], 1) for a in attempts] + [(a[5], -1) for a in attempts], key=lambda e: (e[0], e[1]))
    now = top = 0
    for _, step in edges:
        now += step
        top = max(top, now)
    return top


def latest(project, run_id, task):
    app = project.app()
    try:
        return app.store.runs.latest_attempts(run_id).get(task)
    finally:
        app.close()


# -- flows and scripts -------------------------------------------------------------------

def test_a_task_takes_its_own_pool_or_the_flows_and_null_opts_out():
    flow = flowmod.validate({"name": "f", "pool": "heavy", "tasks": [
        {"id": "a", "script": "a.sh"},
        {"id": "b", "script": "b.sh", "pool": "gpu.0"},
        {"id": "c", "script": "c.sh", "pool": None},
    ]})
    assert [t.pool for t in flow.tasks] == ["heavy", "gpu.0", None]
    assert flow.pool == "heavy"
    assert rules.pools_of(flow.source) == {"a": "heavy", "b": "gpu.0"}


@pytest.mark.parametrize("bad", ["", ".", "..", "a b", "x/y", "a" * 65, 5, True, ["x"]])
def test_a_bad_pool_name_is_a_validation_error_that_names_the_field(bad):
    for data in ({"name": "f", "pool": bad, "tasks": [{"id": "a", "script": "a.sh"}]},
                 {"name": "f", "tasks": [{"id": "a", "script": "a.sh", "pool": bad}]}):
        with pytest.raises(ValidationError) as info:
            flowmod.validate(data)
        where = "pool" if "pool" in data else "tasks[0].pool"
        assert any(e.startswith(f"{where}: ") for e in info.value.errors), info.value.errors


def test_only_pool_tasks_get_pool_settings_in_the_script():
    flow = flowmod.validate({"name": "f", "tasks": [
        {"id": "plain", "script": "a.sh"}, {"id": "heavy", "script": "a.sh", "pool": "big"}]})
    spec = script.RunSpec(run_id=1, run_uid="u", trigger="manual", params={}, max_parallel=2, python="python3",
                          mark="/m.py", db="/d/featherflow.db", tasks_dir="/t", run_dir="/r",
                          pools={"big": 3}, pool_dir="/d/pools")
    text = script.render(flow, spec)
    assert "T_POOL[1]=big T_SLOTS[1]=3" in text
    assert "T_POOL[0]" not in text
    assert "pool big (3 slots)" in text and "POOL_DIR=/d/pools" in text
    plain = script.render(flowmod.validate({"name": "f", "tasks": [{"id": "a", "script": "a.sh"}]}), spec)
    assert "T_POOL[" not in plain.split("# ----")[0]
    assert "pool_task()" not in plain  # a flow without pools gets none of their code


# -- the database ------------------------------------------------------------------------

def test_a_waiting_note_gives_a_pending_attempt_its_reason_until_it_starts(store):
    run = fake_run(store, tasks=["a", "b"], outcomes={"b": ["success"]}, **this_process())
    db = str(store.db.database)
    why = WAITING + "heavy"
    assert mark.call([db, str(run.id), f"a:1:waiting::{why}", f"b:1:waiting::{why}"], states) == 0
    attempts = store.runs.latest_attempts(run.id)
    assert (attempts["a"].state, attempts["a"].reason) == ("pending", why)
    assert (attempts["b"].state, attempts["b"].reason) == ("success", None)  # no longer pending: untouched
    assert mark.call([db, str(run.id), "a:1:running"], states) == 0
    attempts = store.runs.latest_attempts(run.id)
    assert (attempts["a"].state, attempts["a"].reason) == ("running", None)


def test_usage_reads_each_runs_stored_definition(store):
    snapshot = json.dumps({"name": "f", "pool": "heavy", "tasks": [
        {"id": "a", "script": "a.sh"}, {"id": "b", "script": "b.sh"}, {"id": "c", "script": "c.sh", "pool": None}]})
    run = fake_run(store, tasks=["a", "b", "c"], outcomes={"a": ["running"], "c": ["running"]},
                   snapshot=snapshot, **this_process())
    store.runs.transition_attempt(run.id, "b", 1, "pending")
    with store.db.atomic("IMMEDIATE"):
        states.note_waiting(store.db.cursor(), run.id, "b", 1, WAITING + "heavy")
    store.pools.set_pool("idle", 4, store_now())
    [heavy, idle] = store.pools.overview()
    assert (heavy.pool.name, heavy.pool.slots, heavy.pool.defined) == ("heavy", 1, False)
    assert [(u.task_id, u.state) for u in heavy.running] == [("a", "running")]
    assert [(u.task_id, u.state) for u in heavy.waiting] == [("b", "waiting")]
    assert (idle.pool.name, idle.pool.slots, idle.running, idle.waiting) == ("idle", 4, [], [])


def store_now():
    from featherflow import clock
    return clock.now()


# -- the CLI -----------------------------------------------------------------------------

def test_pool_set_list_remove(project):
    result = project.cli("pool", "set", "heavy", "3")
    assert result.code == 0 and "pool heavy: 3 slots" in result.out
    assert project.cli("pool", "set", "heavy", "2").code == 0  # changed, not added twice
    project.cli("pool", "set", "a.b-c_d", "1")
    listed = project.cli("pool", "list")
    assert listed.code == 0
    assert [line.split()[:2] for line in listed.out.splitlines()[1:]] == [["a.b-c_d", "1"], ["heavy", "2"]]
    shown = json.loads(project.cli("pool", "list", "--json").out)
    assert shown == [
        {"name": "a.b-c_d", "slots": 1, "defined": True, "in_use": 0, "waiting": 0, "holders": [], "waiters": []},
        {"name": "heavy", "slots": 2, "defined": True, "in_use": 0, "waiting": 0, "holders": [], "waiters": []},
    ]
    removed = project.cli("pool", "remove", "heavy")
    assert removed.code == 0 and "removed pool heavy" in removed.out
    assert [p["name"] for p in json.loads(project.cli("pool", "list", "--json").out)] == ["a.b-c_d"]


@pytest.mark.parametrize("argv, message", [
    (("set", "x", "0"), "invalid number of slots 0 (valid: a whole number from 1 to 1000)"),
    (("set", "x", "-1"), "invalid number of slots -1"),
    (("set", "x", "two"), "invalid number of slots 'two'"),
    (("set", "x", "1001"), "invalid number of slots 1001"),
    (("set", "../x", "2"), "invalid pool name '../x' (valid: 1-64 of A-Z a-z 0-9 _ . -, not . or ..)"),
    (("set", "a b", "2"), "invalid pool name 'a b'"),
    (("remove", "nope"), "no pool named 'nope' (defined pools: none)"),
])
def test_bad_pool_input_is_one_error_line(project, argv, message):
    result = project.cli("pool", *argv)
    assert result.code == 2
    assert result.err.startswith("error: " + message) and result.err.count("\n") == 1, result.err
    assert json.loads(project.cli("pool", "list", "--json").out) == []  # nothing half-written


def test_doctor_says_whether_flock_is_there():
    assert doctor.check_pools("/usr/bin/flock").status == "ok"
    missing = doctor.check_pools(None)
    assert missing.status == "warning" and "util-linux" in missing.fix


# -- across runs -------------------------------------------------------------------------

@pytest.mark.slow
def test_two_flows_sharing_a_one_slot_pool_never_overlap(project):
    lock = project.root / "own.lock"
    project.write_task("hold.sh", HOLD)
    project.write_flow({"name": "fa", "pool": "one", "max_parallel": 3, "tasks": [
        {"id": f"a{k}", "script": "hold.sh", "args": [str(lock), "0.15"]} for k in range(3)]})
    project.write_flow({"name": "fb", "max_parallel": 3, "tasks": [
        {"id": f"b{k}", "script": "hold.sh", "args": [str(lock), "0.15"], "pool": "one"} for k in range(2)]
        + [{"id": "free", "script": "hold.sh", "args": [str(project.root / "other.lock"), "0"]}]})
    procs = [start(project, "fa"), start(project, "fb")]
    for proc in procs:
        code, out = finish(proc)
        assert code == 0, out
    spans = pool_attempts(project, {"a0", "a1", "a2", "b0", "b1"})
    assert len(spans) == 5 and {s[3] for s in spans} == {"success"}
    assert overlaps(spans) == []
    assert "OVERLAP" not in lock.with_suffix(".lock.trace").read_text()


@pytest.mark.slow
def test_three_slots_let_three_run_at_once_and_never_four(project):
    barrier = project.root / "barrier"
    barrier.mkdir()
    assert project.cli("pool", "set", "trio", "3").code == 0
    project.write_task("meet.sh", BARRIER)
    for name in ("x", "y"):
        project.write_flow({"name": name, "pool": "trio", "max_parallel": 4, "tasks": [
            {"id": f"{name}{k}", "script": "meet.sh", "args": [str(barrier), "3"]} for k in range(2)]})
    procs = [start(project, "x"), start(project, "y")]
    for proc in procs:
        code, out = finish(proc)
        assert code == 0, out  # each task met two others at the barrier: three ran at once
    spans = pool_attempts(project)
    assert len(spans) == 4
    assert most_at_once(spans) == 3


@pytest.mark.slow
def test_a_waiting_task_is_shown_its_timeout_counts_from_its_start_and_a_cancel_stops_its_wait(project):
    """A cancel stops a waiting task, and a running one, whose slot then goes to the next."""
    gate = project.root / "gate"
    project.write_task("gate.sh", GATE)
    project.write_task("quick.sh", "exit 0\n")
    project.write_flow({"name": "holder", "tasks": [
        {"id": "h", "script": "gate.sh", "pool": "one", "args": [str(project.root / "h-started"), str(gate)]}]})
    project.write_flow({"name": "waiter", "tasks": [
        {"id": "w", "script": "quick.sh", "pool": "one", "timeout": 1}]})
    project.write_flow({"name": "quitter", "tasks": [{"id": "q", "script": "quick.sh", "pool": "one"}]})
    holder = start(project, "holder")
    try:
        wait_for(lambda: (project.root / "h-started").exists(), "the holder's task", WAIT)
        waiter = start(project, "waiter")  # run 2
        wait_for(lambda: (latest(project, 2, "w") or latest(project, 1, "h")).reason == WAITING + "one",
                 "run 2 to wait", WAIT)
        quitter = start(project, "quitter")  # run 3
        wait_for(lambda: (latest(project, 3, "q") or latest(project, 1, "h")).reason == WAITING + "one",
                 "run 3 to wait", WAIT)
        shown = project.cli("runs", "show", "2")
        assert "waiting for a slot of pool one" in shown.out
        [pool] = json.loads(project.cli("pool", "list", "--json").out)
        assert (pool["name"], pool["slots"], pool["defined"], pool["in_use"], pool["waiting"]) == ("one", 1, False, 1, 2)
        assert [(u["run_id"], u["task_id"]) for u in pool["holders"]] == [(1, "h")]
        assert sorted((u["run_id"], u["task_id"]) for u in pool["waiters"]) == [(2, "w"), (3, "q")]
        cancelled = project.cli("runs", "cancel", "3")
        assert cancelled.code == 0, cancelled.err
        code, out = finish(quitter)
        assert code == 5, out
        q = latest(project, 3, "q")
        assert (q.state, q.started_at) == ("cancelled", None)
        assert "waited for a slot of pool one" in q.reason
        # Longer than w's timeout in the wait: it must not count.
        created = latest(project, 2, "w").created_at.timestamp()
        wait_for(lambda: time.time() > created + 1.5, "w to wait past its timeout", WAIT)
        assert latest(project, 2, "w").state == "pending"
        # A cancelled holder's task is stopped, its end recorded, and only then its slot freed.
        stopped = project.cli("runs", "cancel", "1")
        assert stopped.code == 0, stopped.err
        code, out = finish(holder)
        assert code == 5, out
    finally:
        gate.touch()
    code, out = finish(waiter)
    assert code == 0, out
    h, w = latest(project, 1, "h"), latest(project, 2, "w")
    assert (h.state, h.reason, w.state, w.reason) == ("cancelled", "run cancelled", "success", None)
    assert w.started_at >= h.ended_at  # started when it took the slot, after the holder's end


@pytest.mark.slow
def test_kill_9_loop_two_flows_one_slot_never_two_at_once_never_blocked(project):
    """Kill one of two runs sharing a one-slot pool at a random moment, again and again.
    Its tasks' slots are the kernel's: never two holders, never a dead one."""
    lock = project.root / "own.lock"
    project.write_task("hold.sh", HOLD)
    for name in ("k1", "k2"):
        project.write_flow({"name": name, "pool": "one", "max_parallel": 2, "tasks": [
            {"id": f"{name}{k}", "script": "hold.sh", "args": [str(lock), "0.1"]} for k in range(2)]})
    rng = random.Random(16)
    deadline = time.monotonic() + 14
    rounds = kills = 0
    while time.monotonic() < deadline and rounds < 10:
        rounds += 1
        procs = [start(project, "k1"), start(project, "k2")]
        victim = rng.choice(procs)
        time.sleep(rng.uniform(0.05, 0.9))  # the moment of the kill, at random: not a wait for anything
        if victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)
            kills += 1
        for proc in procs:
            proc.communicate(timeout=WAIT)
    assert kills >= 3, kills
    project.write_flow({"name": "last", "tasks": [
        {"id": "z", "script": "hold.sh", "args": [str(lock), "0"], "pool": "one"}]})
    code, out = finish(start(project, "last"))  # it reconciles what the kills left, then runs
    assert code == 0, out  # the pool is not blocked
    assert project.sh("runs", "list").code == 0  # the last orphans marked interrupted
    spans = pool_attempts(project)
    assert overlaps(spans) == [], overlaps(spans)
    trace = lock.with_suffix(".lock.trace").read_text()
    assert "OVERLAP" not in trace
    print(f"pool kill loop: {rounds} rounds, {kills} kills, {len(spans)} attempts started, none overlapped")


def test_a_pool_script_is_shellcheck_clean(tmp_path):
    checker = shutil.which("shellcheck")
    if checker is None:
        pytest.skip("shellcheck is not installed")
    flow = flowmod.validate({"name": "f", "pool": "big", "tasks": [
        {"id": "a", "script": "a.sh", "timeout": 2, "retries": 1}, {"id": "b", "script": "b.py", "pool": None}]})
    spec = script.RunSpec(run_id=1, run_uid="u", trigger="manual", params={}, max_parallel=2, python="python3",
                          mark="/m.py", db="/d/featherflow.db", tasks_dir="/t", run_dir="/r",
                          pools={"big": 2}, pool_dir="/d/pools")
    path = tmp_path / "run.sh"
    text = script.render(flow, spec)
    assert script.pools_engine() in text and text.endswith(script.engine())
    path.write_text(text)
    for checked in ([str(path)], ["-s", "bash", str(script.POOLS_PATH)]):  # the script; the file alone
        found = subprocess.run([checker, "--norc", *checked], capture_output=True, text=True)
        assert found.returncode == 0, found.stdout


@pytest.mark.slow
def test_a_pool_task_retries_times_out_and_resumes_like_any_other(project):
    project.write_task("flaky.sh", 'if [ ! -e "$1" ]; then touch "$1"; exit 3; fi\n')
    project.write_task("slow.sh", "exec sleep 316.16\n")
    project.write_task("quick.sh", "exit 0\n")
    project.write_flow({"name": "rt", "pool": "one", "max_parallel": 3, "tasks": [
        {"id": "flaky", "script": "flaky.sh", "args": [str(project.root / "flaked")], "retries": 1},
        {"id": "slow", "script": "slow.sh", "timeout": 0.5},
        {"id": "after", "script": "quick.sh", "depends_on": ["slow"]},
    ]})
    code, out = finish(start(project, "rt"))
    assert code == 1, out
    app = project.app()
    try:
        attempts = {(a.task_id, a.attempt): a for a in app.store.runs.attempts(1)}
    finally:
        app.close()
    assert (attempts[("flaky", 1)].state, attempts[("flaky", 2)].state) == ("failed", "success")
    assert (attempts[("slow", 1)].state, attempts[("slow", 1)].reason) == ("failed", "timeout after 0.5s")
    assert attempts[("after", 1)].state == "upstream_failed"
    assert overlaps(pool_attempts(project, {"flaky", "slow"})) == []
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    assert "sleep 316.16" not in processes  # the timeout killed it, although its subshell is no group leader
    project.write_task("slow.sh", "exit 0\n")
    resumed = project.sh("runs", "resume", "1")
    assert resumed.code == 0, resumed.out + resumed.err
    assert (latest(project, 1, "slow").attempt, latest(project, 1, "slow").state) == (2, "success")
    assert latest(project, 1, "after").state == "success"


def test_the_dashboard_shows_why_a_task_waits(project, store):
    from featherflow.dashboard.keys import ViewState
    from featherflow.dashboard.poller import Poller
    from featherflow.dashboard.screen import render
    from featherflow.store import db as dbmod
    from featherflow.store.readonly import Reader

    snapshot = json.dumps({"name": "f", "pool": "gpu", "tasks": [{"id": "train", "script": "t.sh"}]})
    run = fake_run(store, tasks=["train"], snapshot=snapshot, **this_process())
    assert mark.call([str(project.db), str(run.id), f"train:1:waiting::{WAITING}gpu"], states) == 0
    reader = Reader(dbmod.open_read_only(project.db))
    try:
        now = store_now().replace(tzinfo=None)
        snap = Poller(reader, "db").poll(ViewState(view="run", run_id=run.id), now)
        lines = render(snap, ViewState(view="run", run_id=run.id), 120, 24, now)
    finally:
        reader.close()
    [line] = [line for line in lines if "train" in line]
    assert "pending" in line and "waiting for a slot of pool gpu" in line


def test_a_flow_with_a_pool_refuses_to_run_without_flock(project, monkeypatch):
    from featherflow.engine import launch
    from featherflow.errors import UsageError

    project.write_task("t.sh", "exit 0\n")
    project.write_flow({"name": "f", "pool": "heavy", "tasks": [{"id": "t", "script": "t.sh"}]})
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    app = project.app()
    try:
        with pytest.raises(UsageError, match=r"names pool\(s\) heavy.*`flock`, which is not on PATH"):
            launch.prepare(app.config, app.store, "f", {})
        assert app.store.runs.list_runs() == []  # refused before any run exists
    finally:
        app.close()


# -- with run_if, cleanup, outputs and the log cap ------------------------------------------

@pytest.mark.slow
def test_a_pool_tasks_outputs_reach_its_downstream_task_and_bad_ones_fail_it(project, tmp_path):
    """The holder of the slot records the success with its outputs (_mark --outputs)."""
    got = tmp_path / "got"
    project.write_task("make.sh", 'printf "KEY=it\'s $1\\n" >>"$FEATHERFLOW_OUTPUT_FILE"\n')
    project.write_task("bad.sh", 'printf "no equals sign\\n" >>"$FEATHERFLOW_OUTPUT_FILE"\n')
    project.write_task("use.sh", 'printf "%s" "$2" >"$1"\n')
    project.write_flow({"name": "out", "pool": "one", "tasks": [
        {"id": "make", "script": "make.sh", "args": ["$(x)"]},
        {"id": "use", "script": "use.sh", "pool": None, "depends_on": ["make"],
         "args": [str(got), "{{ tasks.make.outputs.KEY }}"]},
    ]})
    code, out = finish(start(project, "out"))
    assert code == 0, out
    assert got.read_text() == "it's $(x)"
    make = latest(project, 1, "make")
    assert (make.state, make.outputs) == ("success", {"KEY": "it's $(x)"})
    project.write_flow({"name": "bad", "tasks": [{"id": "bad", "script": "bad.sh", "pool": "one"}]})
    code, out = finish(start(project, "bad"))
    assert code == 1, out
    bad = latest(project, 2, "bad")
    assert (bad.state, bad.outputs) == ("failed", None)
    assert "KEY=VALUE" in bad.reason, bad.reason


@pytest.mark.slow
def test_a_capped_pool_tasks_log_is_compacted_to_head_marker_and_tail(project):
    cap = 64 * 1024
    project.write_task("big.sh", 'echo "first line"\nyes "0123456789" | head -c 2000000\necho "the last line"\n')
    project.write_flow({"name": "big", "max_log_bytes": cap, "tasks": [
        {"id": "big", "script": "big.sh", "pool": "one"}]})
    code, out = finish(start(project, "big"))
    assert code == 0, out
    [log] = project.output.glob("runs/*/logs/big.1.log")
    data = log.read_bytes()
    printed = b"first line\n" + (b"0123456789\n" * 200000)[:2000000] + b"the last line\n"
    marker = re.compile(rb"\[featherflow: (\d+) bytes cut here; max_log_bytes=(\d+)\]\n")
    [found] = list(marker.finditer(data))
    head, tail = data[:found.start()], data[found.end():]
    assert head.startswith(b"first line\n") and printed.startswith(head)
    assert tail.endswith(b"the last line\n") and printed.endswith(tail)
    assert int(found.group(1)) == len(printed) - len(head) - len(tail) and int(found.group(2)) == cap
    assert len(head) + len(tail) <= cap


@pytest.mark.slow
def test_a_cancel_while_a_pool_task_waits_still_runs_a_cleanup_task_of_that_pool(project):
    """The waiting task is cancelled; the cleanup task, in the same pool, waits its turn and runs."""
    gate = project.root / "gate"
    project.write_task("gate.sh", GATE)
    project.write_task("note.sh", 'echo "$FEATHERFLOW_RUN_STATE" >"$1"\n')
    project.write_flow({"name": "holder", "tasks": [
        {"id": "h", "script": "gate.sh", "pool": "one", "args": [str(project.root / "h-started"), str(gate)]}]})
    project.write_flow({"name": "swept", "pool": "one", "tasks": [
        {"id": "w", "script": "note.sh", "args": [str(project.root / "w-ran")]},
        {"id": "c", "script": "note.sh", "cleanup": True, "args": [str(project.root / "c-ran")]}]})
    holder = start(project, "holder")
    try:
        wait_for(lambda: (project.root / "h-started").exists(), "the holder's task", WAIT)
        swept = start(project, "swept")  # run 2
        wait_for(lambda: (latest(project, 2, "w") or latest(project, 1, "h")).reason == WAITING + "one",
                 "run 2 to wait", WAIT)
        # `runs cancel` waits for the cleanup task (up to its bound), so it runs beside the test.
        canceller = subprocess.Popen([sys.executable, "-m", "featherflow", *project.args(), "runs", "cancel", "2"],
                                     cwd=project.root, env=project.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (latest(project, 2, "c") or latest(project, 1, "h")).reason == WAITING + "one",
                 "the cleanup task to wait for the slot", WAIT)
        assert latest(project, 2, "w").state == "cancelled"
    finally:
        gate.touch()
    code, out = finish(canceller)
    assert code == 0, out
    code, out = finish(holder)
    assert code == 0, out
    code, out = finish(swept)
    assert code == 5, out
    w, c = latest(project, 2, "w"), latest(project, 2, "c")
    assert (w.state, w.started_at, c.state) == ("cancelled", None, "success")
    assert not (project.root / "w-ran").exists()
    assert (project.root / "c-ran").read_text() == "cancelled\n"
    assert c.started_at >= latest(project, 1, "h").ended_at
