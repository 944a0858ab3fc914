"""`run_if` and cleanup tasks: each rule end to end with the run's final state, cleanup
after success, failure, timeout and cancel, a resume with a cleanup task, and the rule
where a person reads a flow (graph, runs show, the dashboard's detail)."""

import json
import signal
import subprocess
import sys

import pytest

from featherflow import errors, flow as flowmod, states
from featherflow.errors import ValidationError
from helpers import wait_for

REPORT = 'echo "$FEATHERFLOW_TASK_ID ${FEATHERFLOW_RUN_STATE:-} [${FEATHERFLOW_FAILED_TASKS:-}]" >>"$1"\n'


def runs(project):
    app = project.app()
    try:
        found = app.store.runs.list_runs()
        return [(run, app.store.runs.attempts(run.id)) for run in found]
    finally:
        app.close()


def last_run(project):
    run, attempts = runs(project)[0]
    latest = {}
    for attempt in attempts:  # ordered by task, attempt
        latest[attempt.task_id] = attempt
    return run, latest


def setup(project, tmp_path):
    out = tmp_path / "report.txt"
    project.write_task("ok.sh", REPORT)
    project.write_task("bad.sh", REPORT + "exit 3\n")
    return out


def test_each_rule_decides_its_task_and_no_attempt_stays_pending(project, tmp_path):
    """One failed and one succeeded root; below them every rule, and rules below skipped
    tasks. The run is failed (a failed task fails the run, whatever ran after it)."""
    out = setup(project, tmp_path)
    a = [str(out)]
    project.write_flow({"name": "f", "max_parallel": 4, "tasks": [
        {"id": "bad", "script": "bad.sh", "args": a},
        {"id": "good", "script": "ok.sh", "args": a},
        {"id": "s_bad", "script": "ok.sh", "args": a, "depends_on": ["bad"]},
        {"id": "s_bad_child", "script": "ok.sh", "args": a, "depends_on": ["s_bad"]},
        {"id": "done", "script": "ok.sh", "args": a, "depends_on": ["bad", "good"], "run_if": "all_done"},
        {"id": "done_below", "script": "ok.sh", "args": a, "depends_on": ["s_bad"], "run_if": "all_done"},
        {"id": "any_bad", "script": "ok.sh", "args": a, "depends_on": ["bad", "good"], "run_if": "any_failed"},
        {"id": "any_good", "script": "ok.sh", "args": a, "depends_on": ["good"], "run_if": "any_failed"},
        {"id": "none_bad", "script": "ok.sh", "args": a, "depends_on": ["bad"], "run_if": "none_failed"},
        {"id": "none_skip", "script": "ok.sh", "args": a, "depends_on": ["any_good", "good"],
         "run_if": "none_failed"},
        {"id": "all_skip", "script": "ok.sh", "args": a, "depends_on": ["any_good"]},
        {"id": "all_skip_child", "script": "ok.sh", "args": a, "depends_on": ["all_skip"]},
    ]})
    result = project.sh("run", "f")
    assert result.code == 1, result.out + result.err
    run, latest = last_run(project)
    assert (run.state, run.reason) == ("failed", "1 task(s) failed")
    got = {task: (a.state, a.reason) for task, a in latest.items()}
    assert got == {
        "bad": ("failed", "exit code 3"),
        "good": ("success", None),
        "s_bad": ("upstream_failed", "upstream bad failed"),
        "s_bad_child": ("upstream_failed", "upstream bad failed"),
        "done": ("success", None),
        "done_below": ("success", None),  # all_done: an upstream_failed dependency has ended too
        "any_bad": ("success", None),
        "any_good": ("skipped", "no dependency failed (run_if any_failed)"),
        "none_bad": ("upstream_failed", "upstream bad failed"),
        "none_skip": ("success", None),  # none_failed: a skipped dependency is fine
        "all_skip": ("skipped", "upstream any_good was skipped (run_if all_success)"),
        "all_skip_child": ("skipped", "upstream all_skip was skipped (run_if all_success)"),
    }
    assert all(a.state in states.ATTEMPT_FINISHED for a in latest.values())
    ran = {line.split()[0] for line in out.read_text().splitlines()}
    assert ran == {t for t, (state, _) in got.items() if state in ("success", "failed")}


def test_a_run_whose_work_succeeded_is_a_success_with_its_any_failed_task_skipped(project, tmp_path):
    setup(project, tmp_path)
    project.write_flow({"name": "f", "tasks": [
        {"id": "a", "script": "ok.sh", "args": [str(tmp_path / "r")]},
        {"id": "alert", "script": "ok.sh", "args": [str(tmp_path / "r")], "depends_on": ["a"],
         "run_if": "any_failed"},
    ]})
    result = project.sh("run", "f")
    assert result.code == 0, result.out + result.err
    run, latest = last_run(project)
    assert run.state == "success" and latest["alert"].state == "skipped"
    assert "skip    alert (no dependency failed (run_if any_failed))" in result.out


@pytest.mark.parametrize("task, message", [
    ({"id": "x", "script": "ok.sh", "run_if": "all_done"}, "needs depends_on"),
    ({"id": "x", "script": "ok.sh", "depends_on": ["r"], "run_if": "sometimes"},
     "unknown rule 'sometimes' (valid: all_success, all_done, any_failed, none_failed)"),
    ({"id": "x", "script": "ok.sh", "depends_on": ["r"], "run_if": "all_done", "cleanup": True},
     "leave out run_if"),
    ({"id": "x", "script": "ok.sh", "cleanup": "yes"}, "must be true or false"),
    ({"id": "x", "script": "ok.sh", "depends_on": ["r"], "run_if": 1}, "must be a string"),
])
def test_rules_are_validated(task, message):
    with pytest.raises(ValidationError) as caught:
        flowmod.validate({"name": "f", "tasks": [{"id": "r", "script": "ok.sh"}, task]})
    assert message in str(caught.value), str(caught.value)
    assert "tasks[1]." in str(caught.value)


def cleanup_flow(project, tmp_path, work_script, cleanup_script="ok.sh", timeout=None):
    out = setup(project, tmp_path)
    work = {"id": "work", "script": work_script, "args": [str(out)]}
    if timeout:
        work["timeout"] = timeout
    project.write_flow({"name": "f", "tasks": [
        work,
        {"id": "after", "script": "ok.sh", "args": [str(out)], "depends_on": ["work"]},
        {"id": "clean", "script": cleanup_script, "args": [str(out)], "depends_on": ["work"], "cleanup": True},
        {"id": "last", "script": "ok.sh", "args": [str(out)], "cleanup": True},  # no deps: at the end
    ]})
    return out


@pytest.mark.parametrize("work, cleanup, code, state, reason, seen", [
    ("ok.sh", "ok.sh", 0, "success", None, "success []"),
    ("bad.sh", "ok.sh", 1, "failed", "1 task(s) failed", "failed [work]"),
    ("ok.sh", "bad.sh", 1, "failed", "cleanup task(s) failed: clean", "success []"),
    ("bad.sh", "bad.sh", 1, "failed", "1 task(s) failed", "failed [work]"),
])
def test_cleanup_runs_whatever_happened_and_its_outcome_fails_only_a_good_run(
        project, tmp_path, work, cleanup, code, state, reason, seen):
    out = cleanup_flow(project, tmp_path, work, cleanup)
    result = project.sh("run", "f")
    assert result.code == code, result.out + result.err
    run, latest = last_run(project)
    assert (run.state, run.reason) == (state, reason)
    lines = dict(line.split(" ", 1) for line in out.read_text().splitlines())
    assert lines["clean"] == seen and lines["last"] == seen
    # `last` (no dependencies) ran after every task that is not a cleanup task
    assert latest["last"].started_at >= max(latest[t].ended_at for t in ("work", "after") if latest[t].ended_at)


def test_cleanup_runs_after_a_timeout(project, tmp_path):
    project.write_task("hang.sh", "sleep 30\n")
    out = cleanup_flow(project, tmp_path, "hang.sh", timeout=0.3)
    result = project.sh("run", "f")
    assert result.code == 1, result.out + result.err
    run, latest = last_run(project)
    assert run.state == "failed"
    assert (latest["work"].state, latest["work"].reason) == ("failed", "timeout after 0.3s")
    assert latest["clean"].state == latest["last"].state == "success"
    assert "clean failed [work]" in out.read_text()


@pytest.mark.slow
def test_cancel_runs_the_cleanup_tasks_and_the_run_stays_cancelled(project, tmp_path):
    """SIGTERM stops the work; the cleanup tasks then run (a cleanup below another one
    after it) and see `cancelled`; what had not started is cancelled; the run is cancelled."""
    started = tmp_path / "started"
    project.write_task("hang.sh", f"touch {started}\nsleep 30\n")
    out = cleanup_flow(project, tmp_path, "hang.sh")
    flow = json.loads((project.flows / "f.json").read_text())
    flow["tasks"].append({"id": "clean2", "script": "ok.sh", "args": [str(out)], "depends_on": ["clean"],
                          "cleanup": True})
    project.write_flow(flow)
    proc = subprocess.Popen([sys.executable, "-m", "featherflow"] + project.args() + ["run", "f"],
                            cwd=project.root, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: started.exists() or proc.poll() is not None, "the task to start")
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == errors.EXIT_CANCELLED, stdout
    run, latest = last_run(project)
    assert run.state == "cancelled", stdout
    assert latest["work"].state == "cancelled" and latest["after"].state == "cancelled"
    assert {t: latest[t].state for t in ("clean", "clean2", "last")} == dict.fromkeys(
        ("clean", "clean2", "last"), "success")
    assert latest["clean2"].started_at >= latest["clean"].ended_at
    assert out.read_text().splitlines().count("clean cancelled []") == 1


def test_resume_runs_the_cleanup_tasks_again_after_the_rerun_tasks(project, tmp_path):
    flag = tmp_path / "fixed"
    out = setup(project, tmp_path)
    project.write_task("flaky.sh", REPORT + f"test -e {flag}\n")
    project.write_flow({"name": "f", "tasks": [
        {"id": "kept", "script": "ok.sh", "args": [str(out)]},
        {"id": "flaky", "script": "flaky.sh", "args": [str(out)], "depends_on": ["kept"]},
        {"id": "clean", "script": "ok.sh", "args": [str(out)], "depends_on": ["kept"], "cleanup": True},
    ]})
    assert project.sh("run", "f").code == 1
    flag.touch()
    result = project.sh("runs", "resume", "1")
    assert result.code == 0, result.out + result.err
    run, _ = last_run(project)
    attempts = {(a.task_id, a.attempt): a for a in runs(project)[0][1]}
    assert run.state == "success"
    assert set(attempts) == {("kept", 1), ("flaky", 1), ("flaky", 2), ("clean", 1), ("clean", 2)}
    assert attempts[("clean", 2)].started_at >= attempts[("flaky", 2)].ended_at
    assert out.read_text().splitlines()[-1] == "clean success []"


def test_the_graph_and_runs_show_name_each_rule(project, tmp_path):
    setup(project, tmp_path)
    project.write_flow({"name": "f", "tasks": [
        {"id": "a", "script": "ok.sh", "args": [str(tmp_path / "r")]},
        {"id": "alert", "script": "ok.sh", "args": [str(tmp_path / "r")], "depends_on": ["a"],
         "run_if": "any_failed"},
        {"id": "tidy", "script": "ok.sh", "args": [str(tmp_path / "r")], "cleanup": True},
    ]})
    text = project.cli("graph", "f")
    assert text.code == 0 and "● alert  [any_failed]" in text.out and "[cleanup after every task]" in text.out
    dot = project.cli("graph", "f", "--format", "dot").out
    assert '"alert" [label="alert\\n(any_failed)", style=dashed];' in dot
    assert 't1["alert (any_failed)"]' in project.cli("graph", "f", "--format", "mermaid").out
    assert project.sh("run", "f").code == 0
    shown = project.cli("runs", "show", "1").out
    assert "alert  rule: any_failed" in shown and "tidy   rule: cleanup" in shown
    assert shown.index("tidy") > shown.index("alert")  # a cleanup without dependencies is listed last
    tasks = {t["id"]: t for t in json.loads(project.cli("runs", "show", "1", "--json").out)["tasks"]}
    assert (tasks["a"]["rule"], tasks["alert"]["rule"], tasks["tidy"]["rule"]) == ("all_success", "any_failed",
                                                                                    "cleanup")
    assert tasks["alert"]["state"] == "skipped"


def test_the_dashboard_detail_shows_the_rule_and_counts_skipped_as_done(project, tmp_path):
    from featherflow.dashboard import poller

    setup(project, tmp_path)
    project.write_flow({"name": "f", "tasks": [
        {"id": "a", "script": "ok.sh", "args": [str(tmp_path / "r")]},
        {"id": "alert", "script": "ok.sh", "args": [str(tmp_path / "r")], "depends_on": ["a"],
         "run_if": "any_failed"},
    ]})
    assert project.sh("run", "f").code == 0
    app = project.app()
    try:
        run = app.store.runs.get_run(1)
        attempts = app.store.runs.attempts(1)
    finally:
        app.close()
    detail = poller._detail(run, attempts, lambda row, latest: latest)
    assert [(t.task_id, t.state, t.rule) for t in detail.tasks] == [("a", "success", ""),
                                                                    ("alert", "skipped", "any_failed")]
    assert poller._COUNT_OF[states.SKIPPED] == poller.DONE


@pytest.mark.slow
def test_a_second_signal_stops_the_cleanup_tasks(project, tmp_path):
    """The bound on a cancel's cleanup, besides its own timeout: a second SIGTERM stops it."""
    work_started, clean_started = tmp_path / "work", tmp_path / "clean"
    project.write_task("hang.sh", 'touch "$1"\nsleep 30\n')
    project.write_flow({"name": "f", "tasks": [
        {"id": "work", "script": "hang.sh", "args": [str(work_started)]},
        {"id": "clean", "script": "hang.sh", "args": [str(clean_started)], "cleanup": True}]})
    proc = subprocess.Popen([sys.executable, "-m", "featherflow"] + project.args() + ["run", "f"],
                            cwd=project.root, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: work_started.exists() or proc.poll() is not None, "the work to start")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: clean_started.exists() or proc.poll() is not None, "the cleanup to start")
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == errors.EXIT_CANCELLED, stdout
    run, latest = last_run(project)
    assert run.state == "cancelled", stdout
    assert (latest["work"].state, latest["clean"].state) == ("cancelled", "cancelled")
    assert "stopping 1 cleanup task(s)" in stdout
