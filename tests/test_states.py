"""The run/attempt state machine, explored by hypothesis over a real migrated database.

Rules drive the same functions the CLI and `_mark` use (states.apply_run /
apply_attempt through the store, store.runs.resume, reconcile.reconcile); a plain
Python model says what the database must hold after each step. A "kill" makes
a run's recorded process not ours any more (another start time, another boot
id, no pid), exactly what reconcile sees after a crash; live runs carry this
test process's real identity.
"""

import os
import shutil
import tempfile
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from featherflow import proc, states
from featherflow.engine import reconcile
from featherflow.api import Featherflow
from featherflow.states import IllegalTransition
from featherflow.store.records import NewRun
from helpers import fake_run, set_process

ME = os.getpid()
ALIVE = dict(pid=ME, pid_start=proc.start_time(ME), boot_id=proc.boot_id())
DEAD = {
    "reused pid": dict(pid=ME, pid_start=(proc.start_time(ME) or 0) + 7, boot_id=proc.boot_id()),
    "rebooted": dict(pid=ME, pid_start=proc.start_time(ME), boot_id="not-this-boot"),
    "no pid": dict(pid=None, pid_start=None, boot_id=None),
}
OPEN_RUN = (states.QUEUED, states.RUNNING)
# The legal moves, written out here so that a change to the tables in states.py is noticed.
# failed and interrupted runs go on only through a resume (store.runs.resume).
LEGAL_RUN = {
    "queued": {"running", "failed", "cancelled", "interrupted"},
    "running": {"success", "failed", "cancelled", "interrupted"},
}
LEGAL_ATTEMPT = {
    "pending": {"running", "upstream_failed", "skipped", "cancelled"},
    "running": {"success", "failed", "cancelled", "interrupted"},
}
BOGUS = "exploded"
COVERAGE = {}  # action -> steps, over every example (printed with -s)


def dump(store):
    """Every row of both tables, every column: 'changes nothing' means equal dumps."""
    runs = store.db.execute_sql("SELECT * FROM flow_run ORDER BY id").fetchall()
    attempts = store.db.execute_sql("SELECT * FROM task_attempt ORDER BY id").fetchall()
    return runs, attempts


class Runs(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # On tmpfs when there is one: the logic is under test here, not fsync.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="ff-states-", dir=shm)
        self.app = Featherflow(os.path.join(self.dir, "flows"), os.path.join(self.dir, "tasks"),
                               os.path.join(self.dir, "out"), config_dir=os.path.join(self.dir, "home"), env={})
        self.store = self.app.store
        # The model: run id -> {"state", "alive", "tasks": {task: [attempt states]}}
        self.model = {}
        self.before = dump(self.store)
        self.resumed = None  # the run the last step resumed, if any
        self.done = {}  # action -> how many times it ran (coverage, see the test below)

    def teardown(self):
        for action, count in self.done.items():
            COVERAGE[action] = COVERAGE.get(action, 0) + count
        self.app.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------

    def runs_in(self, *wanted):
        return sorted(r for r, m in self.model.items() if m["state"] in wanted)

    def attempts_in(self, wanted, run_states=(states.RUNNING,)):
        """(run, task, number) whose latest attempt is in `wanted`, in runs in `run_states`."""
        return [(r, t, len(tries)) for r, m in sorted(self.model.items()) if m["state"] in run_states
                for t, tries in sorted(m["tasks"].items()) if tries[-1] in wanted]

    def snapshot(self):
        return {r: (m["state"], {t: list(a) for t, a in m["tasks"].items()}) for r, m in self.model.items()}

    def unchanged(self, call):
        """`call` must raise IllegalTransition and leave every row as it was."""
        before = dump(self.store)
        with pytest.raises(IllegalTransition):
            call()
        assert dump(self.store) == before

    # -- actions ---------------------------------------------------------------
    # One rule picks among the actions possible in the current state, so every
    # step does something (per-rule preconditions leave most draws unusable).

    def start(self, data):
        ids = [f"t{i}" for i in range(data.draw(st.integers(1, 3), label="tasks"))]
        run = self.store.runs.create_run(NewRun("flow", ids, "{}", {}, "manual", self.dir, self.dir,
                                    os.path.join(self.dir, "out"), 1, **ALIVE))
        assert run.state == states.QUEUED
        self.model[run.id] = {"state": states.QUEUED, "alive": True,
                              "tasks": {t: [states.PENDING] for t in ids}}

    def begin(self, data):
        run = data.draw(st.sampled_from(self.runs_in(states.QUEUED)), label="run")
        assert self.store.runs.transition_run(run, states.RUNNING) == states.QUEUED
        self.model[run]["state"] = states.RUNNING

    def attempt_starts(self, data):
        run, task, n = data.draw(st.sampled_from(self.attempts_in((states.PENDING,))), label="attempt")
        assert self.store.runs.transition_attempt(run, task, n, states.RUNNING) == states.PENDING
        self.model[run]["tasks"][task][-1] = states.RUNNING

    def attempt_ends(self, data):
        run, task, n = data.draw(st.sampled_from(self.attempts_in((states.RUNNING,))), label="attempt")
        outcome = data.draw(st.sampled_from([states.SUCCESS, states.FAILED]), label="outcome")
        code = data.draw(st.integers(0, 255), label="exit code")
        assert self.store.runs.transition_attempt(run, task, n, outcome, exit_code=code, reason="r") == states.RUNNING
        self.model[run]["tasks"][task][-1] = outcome

    def upstream_fails(self, data):
        run, task, n = data.draw(st.sampled_from(self.attempts_in((states.PENDING,))), label="attempt")
        self.store.runs.transition_attempt(run, task, n, states.UPSTREAM_FAILED, reason="upstream x failed")
        self.model[run]["tasks"][task][-1] = states.UPSTREAM_FAILED

    def retry(self, data):
        """A failed attempt with retries left is followed by attempt n+1 (a running one fails first)."""
        choices = self.attempts_in((states.FAILED, states.RUNNING))
        run, task, n = data.draw(st.sampled_from(choices), label="attempt")
        if self.model[run]["tasks"][task][-1] == states.RUNNING:
            self.store.runs.transition_attempt(run, task, n, states.FAILED, exit_code=1, reason="exit code 1")
            self.model[run]["tasks"][task][-1] = states.FAILED
        first = data.draw(st.sampled_from([states.PENDING, states.RUNNING]), label="first state")
        self.unchanged(lambda: self.store.runs.transition_attempt(run, task, n + 2, first))  # out of order
        self.store.runs.transition_attempt(run, task, n + 1, first)
        self.model[run]["tasks"][task].append(first)

    def succeeds(self, data):
        """As the script does: a run succeeds once every task is done."""
        run = data.draw(st.sampled_from(self.finished_runs()), label="run")
        self.store.runs.transition_run(run, states.SUCCESS)
        self.model[run]["state"] = states.SUCCESS

    def fails(self, data):
        run = data.draw(st.sampled_from(self.runs_in(states.RUNNING)), label="run")
        self.store.runs.transition_run(run, states.FAILED, reason="1 task(s) failed")
        self.model[run]["state"] = states.FAILED
        for tries in self.model[run]["tasks"].values():
            if tries[-1] == states.RUNNING:
                tries[-1] = states.FAILED

    def kill(self, data):
        """The run's process dies: its recorded identity no longer matches a live process."""
        run = data.draw(st.sampled_from(self.runs_in(*OPEN_RUN)), label="run")
        how = data.draw(st.sampled_from(sorted(DEAD)), label="how")
        set_process(self.store, run, **DEAD[how])
        self.model[run]["alive"] = False

    def reconcile(self, data):
        done = reconcile.reconcile(self.store)
        expected = [r for r in self.runs_in(*OPEN_RUN) if not self.model[r]["alive"]]
        assert sorted(r for r, _ in done) == expected
        for run in expected:
            self.model[run]["state"] = states.INTERRUPTED
            for tries in self.model[run]["tasks"].values():
                if tries[-1] == states.RUNNING:
                    tries[-1] = states.INTERRUPTED
        # No attempt is `running` unless its run's process lives.
        for run_id, task_id, number in self.store.db.execute_sql(
                "SELECT run_id, task_id, attempt FROM task_attempt WHERE state = 'running'").fetchall():
            run = self.store.runs.get_run(run_id)
            assert proc.is_alive(run.pid, run.pid_start, run.boot_id), (run_id, task_id, number)
        assert reconcile.reconcile(self.store) == []  # a second pass finds nothing more

    def resume(self, data):
        run = data.draw(st.sampled_from(self.runs_in(*states.RESUMABLE)), label="run")
        tasks = self.model[run]["tasks"]
        rerun = [t for t, tries in sorted(tasks.items()) if tries[-1] != states.SUCCESS]
        numbers = self.store.runs.resume(run, rerun, **ALIVE)
        for task in rerun:
            if tasks[task][-1] != states.PENDING:  # a pending attempt never started: reused
                tasks[task].append(states.PENDING)
            assert numbers[task] == len(tasks[task])
        self.model[run].update(state=states.RUNNING, alive=True)
        self.resumed = run

    def cancel(self, data):
        run = data.draw(st.sampled_from(self.runs_in(*OPEN_RUN)), label="run")
        self.store.runs.transition_run(run, states.CANCELLED, reason="cancelled by `runs cancel`")
        self.model[run]["state"] = states.CANCELLED
        for tries in self.model[run]["tasks"].values():
            if tries[-1] in (states.RUNNING, states.PENDING):
                tries[-1] = states.CANCELLED

    # -- what must be refused, and what must be harmless -----------------------

    def illegal_moves(self, data):
        """Every move the tables do not allow is refused, for every run and attempt, and
        changes nothing. So are attempts that cannot exist: number 0, a gap, a task the
        run does not have, a new attempt in a finished state, and any new attempt in a
        run that is not running."""
        calls = []
        for run, m in sorted(self.model.items()):
            for to in list(states.RUN_STATES) + [BOGUS]:
                if to != m["state"] and to not in LEGAL_RUN.get(m["state"], ()):
                    calls.append(lambda run=run, to=to: self.store.runs.transition_run(run, to))
            calls.append(lambda run=run: self.store.runs.transition_attempt(run, "no-such-task", 1, states.PENDING))
            for task, tries in sorted(m["tasks"].items()):
                for n, old in enumerate(tries, 1):
                    for to in list(states.ATTEMPT_STATES) + [BOGUS]:
                        if to != old and to not in LEGAL_ATTEMPT.get(old, ()):
                            calls.append(lambda a=(run, task, n, to): self.store.runs.transition_attempt(*a))
                nxt = len(tries) + 1
                for number, to in ((0, states.PENDING), (nxt + 1, states.PENDING), (nxt, states.SUCCESS)):
                    calls.append(lambda a=(run, task, number, to): self.store.runs.transition_attempt(*a))
                if m["state"] != states.RUNNING:
                    calls.append(lambda a=(run, task, nxt, states.PENDING): self.store.runs.transition_attempt(*a))
        before = dump(self.store)
        for call in calls:
            with pytest.raises(IllegalTransition):
                call()
        assert dump(self.store) == before

    def repeat(self, data):
        """Doing again what was done (a crash between doing and recording) is harmless."""
        run = data.draw(st.sampled_from(sorted(self.model)), label="run")
        task = data.draw(st.sampled_from(sorted(self.model[run]["tasks"])), label="task")
        tries = self.model[run]["tasks"][task]
        n = data.draw(st.integers(1, len(tries)), label="attempt")
        before = dump(self.store)
        state = self.model[run]["state"]
        assert self.store.runs.transition_run(run, state) == state
        assert self.store.runs.transition_attempt(run, task, n, tries[n - 1], exit_code=99, reason="again") == tries[n - 1]
        assert dump(self.store) == before

    def finished_runs(self):
        return [r for r in self.runs_in(states.RUNNING)
                if all(a[-1] in states.ATTEMPT_FINISHED for a in self.model[r]["tasks"].values())]

    ACTIONS = {
        "retry": lambda self: self.attempts_in((states.FAILED, states.RUNNING)),
        "resume": lambda self: self.runs_in(*states.RESUMABLE),
        "attempt_ends": lambda self: self.attempts_in((states.RUNNING,)),
        "attempt_starts": lambda self: self.attempts_in((states.PENDING,)),
        "kill": lambda self: self.runs_in(*OPEN_RUN),
        "reconcile": lambda self: True,
        "succeeds": lambda self: self.finished_runs(),
        "fails": lambda self: self.runs_in(states.RUNNING),
        "cancel": lambda self: self.runs_in(*OPEN_RUN),
        "upstream_fails": lambda self: self.attempts_in((states.PENDING,)),
        "begin": lambda self: self.runs_in(states.QUEUED),
        "repeat": lambda self: self.model,
        "illegal_moves": lambda self: self.model,
        "start": lambda self: len(self.model) < 4,
    }

    WEIGHTS = {"retry": 2, "resume": 2, "succeeds": 3, "attempt_ends": 3}  # rarer states get more turns

    @rule(data=st.data())
    def step(self, data):
        possible = [name for name, enabled in self.ACTIONS.items() if enabled(self)
                    for _ in range(self.WEIGHTS.get(name, 1))]
        action = data.draw(st.sampled_from(possible), label="action")
        self.done[action] = self.done.get(action, 0) + 1
        getattr(self, action)(data)

    # -- invariants ------------------------------------------------------------

    @invariant()
    def database_matches_the_model(self):
        runs = dict(self.store.db.execute_sql("SELECT id, state FROM flow_run").fetchall())
        assert runs == {r: m["state"] for r, m in self.model.items()}
        got = {}
        for run_id, task_id, number, state in self.store.db.execute_sql(
                "SELECT run_id, task_id, attempt, state FROM task_attempt ORDER BY run_id, task_id, attempt"):
            got.setdefault(run_id, {}).setdefault(task_id, []).append((number, state))
        assert got == {r: {t: list(enumerate(tries, 1)) for t, tries in m["tasks"].items()}
                       for r, m in self.model.items()}

    @invariant()
    def attempt_numbers_strictly_increase(self):
        rows = self.store.db.execute_sql(
            "SELECT run_id, task_id, attempt, created_at FROM task_attempt ORDER BY run_id, task_id, id").fetchall()
        last = {}
        for run_id, task_id, number, created in rows:
            previous = last.get((run_id, task_id))
            if previous is None:
                assert number == 1
            else:
                assert number == previous[0] + 1 and created >= previous[1]
            last[(run_id, task_id)] = (number, created)

    @invariant()
    def running_attempts_only_in_running_runs(self):
        for run_id, m in self.model.items():
            if m["state"] != states.RUNNING:
                assert all(tries[-1] != states.RUNNING for tries in m["tasks"].values()), run_id

    @invariant()
    def finished_things_never_change_except_through_resume(self):
        now = dump(self.store)
        runs_before = {row[0]: row for row in self.before[0]}
        state_col = [c.name for c in self.store.db.get_columns("flow_run")].index("state")
        for row in now[0]:
            old = runs_before.get(row[0])
            if old is not None and old[state_col] in states.RUN_FINISHED and row[0] != self.resumed:
                assert row == old, (old, row)
        attempts_before = {row[0]: row for row in self.before[1]}
        a_state = [c.name for c in self.store.db.get_columns("task_attempt")].index("state")
        for row in now[1]:
            old = attempts_before.get(row[0])
            if old is not None and old[a_state] in states.ATTEMPT_FINISHED:
                assert row == old, (old, row)
        self.before = now
        self.resumed = None


Runs.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
test_state_machine = Runs.TestCase


def test_the_machine_reached_the_moves_that_matter():
    """Runs after test_state_machine (file order): kills, reconciles, resumes, retries,
    cancels, refused and repeated moves all happened (the rest is printed with -s)."""
    if not COVERAGE:
        pytest.skip("test_state_machine did not run in this session")
    print("\nstate machine steps: " + " ".join(f"{k}={v}" for k, v in sorted(COVERAGE.items())))
    core = {"start", "begin", "attempt_starts", "retry", "kill", "reconcile", "resume", "cancel",
            "repeat", "illegal_moves"}
    assert core <= set(COVERAGE), sorted(core - set(COVERAGE))


# -- holes the machine found in states.py, closed there ----------------------------

def test_an_attempt_cannot_start_in_a_run_that_is_over(store):
    run = fake_run(store, **ALIVE).id
    store.runs.interrupt(run, states.RUNNING, "killed")
    with pytest.raises(IllegalTransition):
        store.runs.transition_attempt(run, "a", 1, states.RUNNING)


def test_a_run_cannot_succeed_with_attempts_still_open(store):
    run = fake_run(store, tasks=["a"], **ALIVE).id
    store.runs.transition_attempt(run, "a", 1, states.RUNNING)
    with pytest.raises(IllegalTransition, match="'a' is still open"):
        store.runs.transition_run(run, states.SUCCESS)
    assert store.runs.get_run(run).state == states.RUNNING
    store.runs.transition_attempt(run, "a", 1, states.SUCCESS, exit_code=0)
    store.runs.transition_run(run, states.SUCCESS)
    assert store.runs.get_run(run).state == states.SUCCESS


def test_a_new_attempt_needs_the_previous_one_finished(store):
    run = fake_run(store, **ALIVE).id
    store.runs.transition_attempt(run, "a", 1, states.RUNNING)
    with pytest.raises(IllegalTransition, match="attempt 1 is running"):
        store.runs.transition_attempt(run, "a", 2, states.RUNNING)
    store.runs.transition_attempt(run, "a", 1, states.FAILED, exit_code=1)
    store.runs.transition_attempt(run, "a", 2, states.RUNNING)
    assert [a.state for a in store.runs.attempts(run) if a.task_id == "a"] == [states.FAILED, states.RUNNING]


def test_every_store_write_takes_its_time_as_now(store):
    """No write reads the clock when the caller has a time: the run's start, an attempt's
    start and end, and an interruption are stamped with the `now` passed in."""
    utc = timezone.utc
    t0, t1, t2 = (datetime(2031, 5, 1, 3, m, tzinfo=utc) for m in (0, 1, 2))
    run = fake_run(store, tasks=("a", "b"), state=states.QUEUED)
    store.runs.transition_run(run.id, states.RUNNING, now=t0)
    store.runs.transition_attempt(run.id, "a", 1, states.RUNNING, now=t1)
    store.runs.transition_attempt(run.id, "a", 1, states.SUCCESS, exit_code=0, now=t2)
    assert store.runs.interrupt(run.id, states.RUNNING, "gone", now=t2)
    after = store.runs.get_run(run.id)
    a = store.runs.latest_attempts(run.id)["a"]
    assert (after.started_at, after.ended_at, a.started_at, a.ended_at) == (t0, t2, t1, t2)
