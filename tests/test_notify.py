"""Notifications end to end: channels from the CLI, the outbox written with the state
change it reports, delivery by the run's end, by a command, by `notify flush` and the
daemon, storm control, retries, kill -9 of the deliverer, missed slots and downtime.

Receivers are real (a command that writes what it got, an HTTP server on 127.0.0.1);
where a decision depends on time, the time is passed in.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from featherflow import clock, states
from featherflow.notify import deliver, send
from featherflow.notify.deliver import Deliverer
from featherflow.scheduler import admin as schedule_admin
from featherflow.scheduler import daemon as scheduler
from helpers import fake_run, wait_for

UTC = timezone.utc
T0 = datetime(2030, 1, 1, 3, 0, tzinfo=UTC)


def receiver(project, name="got"):
    """A command channel's target that appends each event (one JSON line) to a file."""
    path = project.root / f"{name}.jsonl"
    return path, f"cat >> '{path}'; echo >> '{path}'"


def received(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def add_failing_flow(project, name="nightly"):
    project.write_task("ok.sh", "echo fine\n")
    project.write_task("bad.sh", 'echo "step one"\nprintf "bad \\033[31m thing\\n" >&2\nexit "${FAIL_CODE:-7}"\n')
    project.write_flow({"name": name, "tasks": [{"id": "extract", "script": "ok.sh"},
                                                {"id": "transform_a", "script": "bad.sh", "depends_on": ["extract"]}]})


class Collect:
    """A transport that records what it was asked to send and answers as told."""

    def __init__(self, ok=True):
        self.calls, self.ok = [], ok

    def __call__(self, kind, target, options, payload, event):
        self.calls.append((event, payload))
        return (self.ok, "ok" if self.ok else "HTTP 500 down")


def deliveries(store, **kw):
    return store.outbox.deliveries(**kw)


# -- channels from the CLI --------------------------------------------------------------

def test_channels_add_list_show_disable_remove(project):
    assert project.cli("notify", "add", "team", "--webhook", "http://127.0.0.1:9/hook", "--format", "slack",
                       "--header", "Authorization: Bearer s3cret", "--flow", "nightly").code == 0
    listed = json.loads(project.cli("notify", "list", "--json").out)
    assert [c["name"] for c in listed] == ["team"]
    assert listed[0]["events"] == ["failed", "interrupted", "recovered", "missed"]
    assert listed[0]["options"]["format"] == "slack" and listed[0]["flows"] == ["nightly"]
    shown = project.cli("notify", "show", "team")
    assert "first failure, then at most every 6h" in shown.out
    assert "s3cret" not in shown.out  # header values may be tokens: not shown in text
    assert project.cli("notify", "disable", "team").code == 0
    assert json.loads(project.cli("notify", "show", "team", "--json").out)["enabled"] is False
    assert project.cli("notify", "enable", "team").code == 0
    assert project.cli("notify", "remove", "team").code == 0
    assert "no notification channels yet" in project.cli("notify", "list").out


@pytest.mark.parametrize("argv, needle", [
    (["add", "x", "--webhook", "ftp://host/x"], "not an http:// or https:// URL"),
    (["add", "x", "--command", "true", "--on", "failed,exploded"], "valid, comma-separated: started"),
    (["add", "x", "--command", "true", "--webhook", "http://h/"], "exactly one of --command"),
    (["add", "x"], "exactly one of --command"),
    (["add", "bad name", "--command", "true"], "channel name"),
    (["add", "x", "--email", "nobody"], "not an email address"),
    (["add", "x", "--email", "a@b.c", "--smtp-password-env", "P"], "a password needs --smtp-user"),
    (["add", "x", "--command", "true", "--format", "slack"], "--format is for --webhook"),
    (["add", "x", "--command", "true", "--repeat", "6 hours"], "not a period"),
    (["add", "x", "--webhook", "http://h/", "--header", "no colon"], "'Name: value'"),
    (["show", "nope"], "no notification channel 'nope'"),
    (["log", "--channel", "nope"], "no notification channel 'nope'"),
])
def test_bad_channel_input_is_one_error_line(project, argv, needle):
    result = project.cli("notify", *argv)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.err
    assert "Traceback" not in result.err


def test_the_same_name_twice_is_a_conflict(project):
    assert project.cli("notify", "add", "x", "--command", "true").code == 0
    result = project.cli("notify", "add", "x", "--command", "true")
    assert result.code == 3 and "exists already" in result.err


def test_notify_test_reports_what_the_receiver_answered(project):
    path, command = receiver(project)
    project.cli("notify", "add", "me", "--command", command + "; echo thanks")
    result = project.cli("notify", "test", "me")
    assert result.code == 0 and result.out.strip() == "delivered: exit 0: thanks"
    [doc] = received(path)
    assert doc["test"] is True and doc["event"] == "test" and "test notification" in doc["summary"]
    project.cli("notify", "add", "down", "--command", "echo refused >&2; exit 1")
    result = project.cli("notify", "test", "down")
    assert result.code == 1 and "not delivered: exit 1" in result.out


# -- the outbox ---------------------------------------------------------------------------

def test_no_channel_no_event_rows(project, store):
    fake_run(store, outcomes={"a": ["failed"]}, state=states.FAILED)
    assert store.db.execute_sql("SELECT COUNT(*) FROM event").fetchone()[0] == 0


def test_an_event_is_written_by_the_transaction_of_the_change(project, store):
    store.outbox.add_channel({"name": "c", "kind": "command", "target": "true", "events": ["failed"],
                              "repeat_seconds": 60.0}, clock.now())
    run = fake_run(store, outcomes={"a": ["failed"]}, state=states.FAILED)
    kinds = [row[0] for row in store.db.execute_sql("SELECT kind FROM event WHERE run_id = ? ORDER BY id",
                                                   (run.id,)).fetchall()]
    assert kinds == ["started", "failed"]


def test_a_failing_flow_notifies_once_then_recovers(project):
    """The README's promise, through real runs: the run's own end delivers (no daemon)."""
    add_failing_flow(project)
    path, command = receiver(project)
    project.cli("notify", "add", "me", "--command", command)
    assert project.sh("run", "nightly").code == 1
    wait_for(lambda: len(received(path)) == 1, "the failed notification")
    [doc] = received(path)
    assert doc["event"] == "failed" and doc["flow"] == "nightly" and doc["state"] == "failed"
    assert doc["key"].startswith(doc["run_uid"] + "/failed/")
    assert doc["command"] == f"featherflow runs show {doc['run_id']}"
    [task] = doc["failed_tasks"]
    assert task["task_id"] == "transform_a" and task["exit_code"] == 7 and task["attempt"] == 1
    assert task["log_tail"] == ["step one", "bad \\x1b[31m thing"]  # control characters escaped
    assert doc["summary"].startswith("nightly failed on ") and doc["summary"].endswith("transform_a exit 7")
    assert project.sh("run", "nightly").code == 1  # within the repeat period: no second alert
    app = project.app()
    wait_for(lambda: [d.state for d in app.store.outbox.deliveries()] == ["suppressed", "sent"], "the suppression")
    env = dict(project.env, FAIL_CODE="0")
    assert subprocess.run([sys.executable, "-m", "featherflow"] + project.args() + ["run", "nightly"],
                          env=env, capture_output=True).returncode == 0
    wait_for(lambda: len(received(path)) == 2, "the recovered notification")
    assert received(path)[1]["event"] == "recovered"
    # The receiver has it before the sender records the try: wait for the record too.
    wait_for(lambda: json.loads(project.cli("notify", "log", "--json").out)[0]["each_try"], "the recorded try")
    log = json.loads(project.cli("notify", "log", "--json").out)
    assert [d["event"] for d in log] == ["recovered", "failed", "failed"]
    assert log[0]["each_try"][0]["ok"] is True and log[0]["answer"] == "exit 0"
    app.close()


def test_storm_control_repeats_after_the_period_with_the_count(project, store):
    store.outbox.add_channel({"name": "c", "kind": "command", "target": "true", "events": ["failed", "recovered"],
                              "repeat_seconds": 3600.0}, T0 - timedelta(days=1))
    collect = Collect()
    d = Deliverer(store, collect, now=lambda: T0)

    def failing(at):
        run = fake_run(store, flow="nightly", state=states.RUNNING)
        store.runs.transition_run(run.id, states.FAILED, now=at)
        d.flush()

    failing(T0)
    for minutes in (10, 20, 30):
        failing(T0 + timedelta(minutes=minutes))
    failing(T0 + timedelta(minutes=70))  # past the period: alerts, with the count since the last alert
    sent = [(e, p["failures_since_last_alert"]) for e, p in collect.calls]
    assert sent == [("failed", 1), ("failed", 4)]
    assert "4 failures since the last alert" in collect.calls[1][1]["summary"]
    run = fake_run(store, flow="nightly", outcomes={"a": ["success"]}, state=states.RUNNING)
    store.runs.transition_run(run.id, states.SUCCESS, now=T0 + timedelta(minutes=80))
    d.flush()
    assert collect.calls[-1][0] == "recovered"
    failing(T0 + timedelta(minutes=90))  # a new streak after the success: alerts at once
    assert [e for e, _ in collect.calls] == ["failed", "failed", "recovered", "failed"]


def test_every_sends_each_failure(project, store):
    store.outbox.add_channel({"name": "c", "kind": "command", "target": "true", "events": ["failed"],
                              "repeat_seconds": 3600.0, "every": True}, T0 - timedelta(days=1))
    collect = Collect()
    for minute in range(3):
        run = fake_run(store, flow="f", state=states.RUNNING)
        store.runs.transition_run(run.id, states.FAILED, now=T0 + timedelta(minutes=minute))
    Deliverer(store, collect, now=lambda: T0).flush()
    assert len(collect.calls) == 3 and len({p["key"] for _, p in collect.calls}) == 3


def test_flow_and_schedule_filters(project, store):
    store.outbox.add_channel({"name": "only", "kind": "command", "target": "true", "events": ["failed"],
                              "repeat_seconds": 1.0, "flows": ["wanted"]}, T0 - timedelta(days=1))
    collect = Collect()
    for flow in ("other", "wanted"):
        run = fake_run(store, flow=flow, state=states.RUNNING)
        store.runs.transition_run(run.id, states.FAILED, now=T0)
    Deliverer(store, collect, now=lambda: T0).flush()
    assert [p["flow"] for _, p in collect.calls] == ["wanted"]


def test_a_channel_added_later_is_not_told_the_past(project, store):
    store.outbox.add_channel({"name": "a", "kind": "command", "target": "true", "events": ["failed"],
                              "repeat_seconds": 1.0}, T0 - timedelta(days=1))
    run = fake_run(store, state=states.RUNNING)
    store.runs.transition_run(run.id, states.FAILED, now=T0)
    store.outbox.add_channel({"name": "b", "kind": "command", "target": "true", "events": ["failed"],
                              "repeat_seconds": 1.0}, T0 + timedelta(hours=1))
    Deliverer(store, Collect(), now=lambda: T0 + timedelta(hours=1)).flush()
    assert [d.channel for d in deliveries(store)] == ["a"]


# -- a receiver that is down ----------------------------------------------------------------

def test_retries_with_backoff_then_failed_and_doctor_says_so(project, store):
    store.outbox.add_channel({"name": "down", "kind": "command", "target": "echo no >&2; exit 1",
                              "events": ["failed"], "repeat_seconds": 1.0}, T0 - timedelta(days=1))
    run = fake_run(store, state=states.RUNNING)
    store.runs.transition_run(run.id, states.FAILED, now=T0)
    clock_now = [T0]
    d = Deliverer(store, send.send, now=lambda: clock_now[0])
    d.flush()
    [row] = deliveries(store)
    assert row.state == "pending" and row.tries == 1 and row.answer == "exit 1: no"
    assert row.next_try_at == T0 + timedelta(seconds=30)
    d.flush()  # not due yet: nothing tried
    assert deliveries(store)[0].tries == 1
    waits = []
    while deliveries(store)[0].state == "pending":
        clock_now[0] = deliveries(store)[0].next_try_at
        waits.append(clock_now[0])
        d.flush()
    gaps = [(b - a).total_seconds() for a, b in zip([T0] + waits, waits)]
    assert gaps[:4] == [30, 60, 120, 240] and max(gaps) == deliver.RETRY_MAX
    [row] = deliveries(store)
    assert row.state == "failed" and (clock_now[0] - T0) <= deliver.GIVE_UP
    assert len(store.outbox.tries(row.id)) == row.tries == len(waits) + 1
    result = project.cli("doctor")
    assert "1 notification(s) could not be delivered; the last to 'down': exit 1: no" in result.out


def test_a_hung_receiver_never_slows_the_run(project):
    """The run's end only starts the delivery; a receiver that hangs is the deliverer's problem."""
    add_failing_flow(project)
    project.cli("notify", "add", "hang", "--command", "sleep 30", "--timeout", "1")
    started = time.monotonic()
    assert project.sh("run", "nightly").code == 1
    elapsed = time.monotonic() - started
    app = project.app()
    wait_for(lambda: [d.answer for d in app.store.outbox.deliveries()] == ["timed out after 1s"],
             "the timed-out try", timeout=30)
    assert elapsed < 10, elapsed  # not a speed figure: the run did not wait for the 30 s command
    app.close()


# -- abnormal ends -------------------------------------------------------------------------

def test_kill_9_of_a_run_is_told_as_interrupted_after_the_next_command(project):
    project.write_task("slow.sh", "sleep 60\n")
    project.write_flow({"name": "slow", "tasks": [{"id": "wait", "script": "slow.sh"}]})
    path, command = receiver(project)
    project.cli("notify", "add", "me", "--command", command)
    child = subprocess.Popen([sys.executable, "-m", "featherflow"] + project.args() + ["run", "slow"],
                             env=project.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    app = project.app()
    wait_for(lambda: app.store.runs.list_runs(state=states.RUNNING), "the run to start")
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert received(path) == []
    assert project.cli("runs", "list").code == 0  # finds the orphan, writes the event, starts delivery
    wait_for(lambda: received(path), "the interrupted notification")
    [doc] = received(path)
    assert doc["event"] == "interrupted" and doc["flow"] == "slow" and doc["state"] == "interrupted"
    app.close()


def test_kill_9_of_the_deliverer_loses_nothing(project, store):
    """50 rounds: a `notify flush` killed at a random moment; then one that finishes. Every
    event arrives; a repeat carries the key of the first; nothing is left pending or sending."""
    path = project.root / "keys.txt"
    target = f"python3 -c 'import json,sys; print(json.load(sys.stdin)[\"key\"])' >> '{path}'; sleep 0.05"
    store.outbox.add_channel({"name": "c", "kind": "command", "target": target, "events": ["failed"],
                              "repeat_seconds": 1.0, "every": True}, clock.now() - timedelta(days=1))
    expected = set()
    rnd = random.Random(14)
    argv = [sys.executable, "-m", "featherflow"] + project.args() + ["notify", "flush", "--quiet"]
    for _ in range(50):
        for _ in range(2):
            run = fake_run(store, state=states.RUNNING)
            store.runs.transition_run(run.id, states.FAILED)
            expected.add(run.uid)
        child = subprocess.Popen(argv, env=project.env, start_new_session=True)
        time.sleep(rnd.uniform(0.0, 0.4))  # the kill lands at a random moment of the flush
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert subprocess.run(argv, env=project.env).returncode == 0
    counts = store.outbox.counts()
    left = store.db.execute_sql("SELECT id, state, claimed_by, claim_start, claimed_at, tries FROM delivery "
                                "WHERE state != 'sent' LIMIT 5").fetchall()
    assert counts["pending"] == counts["sending"] == counts["unfanned"] == 0, (counts, left)
    assert counts["sent"] == len(expected)
    keys = path.read_text().split()
    assert {k.split("/")[0] for k in keys} == expected  # every event delivered
    sent_keys = {d.key for d in deliveries(store)}
    assert set(keys) == sent_keys  # a repeat is a key already sent, never a new one


# -- the scheduler's events ------------------------------------------------------------------

def test_a_skipped_slot_is_missed_and_downtime_is_told(project):
    project.write_task("ok.sh", "true\n")
    project.write_flow({"name": "tick", "tasks": [{"id": "a", "script": "ok.sh"}]})
    app = project.app()
    app.store.outbox.add_channel({"name": "c", "kind": "command", "target": "true",
                                  "events": ["missed", "scheduler"], "repeat_seconds": 1.0, "every": True},
                                 T0 - timedelta(days=30))
    schedule_admin.add_schedule(app.config, app.store, "tick", cron="0 3 * * *", tz="UTC", catchup="none",
                                now=T0 - timedelta(days=2, hours=1))
    kicks = []
    daemon = scheduler.Scheduler(app.config, app.store, launch=lambda run, resume: None, allow_root=True,
                                 deliver=lambda: kicks.append(1))
    daemon.acquire(T0 - timedelta(days=2, hours=1))
    daemon.tick(T0 - timedelta(days=2, hours=1))
    daemon.release(T0 - timedelta(days=2, hours=1), stopped=False)  # as if killed: no stop recorded
    again = scheduler.Scheduler(app.config, app.store, launch=lambda run, resume: None, allow_root=True,
                                deliver=lambda: kicks.append(2))
    again.acquire(T0 + timedelta(minutes=5))
    again.tick(T0 + timedelta(minutes=5))
    again.release(T0 + timedelta(minutes=5))
    assert 2 in kicks  # the tick that found due notifications started their delivery
    collect = Collect()
    Deliverer(app.store, collect, now=lambda: T0 + timedelta(minutes=5)).flush()
    kinds = [e for e, _ in collect.calls]
    assert kinds[0] == "scheduler" and "missed" in kinds
    detail = collect.calls[0][1]["detail"]
    assert detail["down_seconds"] == (2 * 86400 + 3900) and detail["missed_count"] == 3
    missed = [p for e, p in collect.calls if e == "missed"]
    assert missed and all(p["schedule"] == "tick" and p["reason"] for p in missed)
    assert "missed its" in missed[0]["summary"]
    app.close()


def test_heartbeats_for_ping_channels_are_due_every_period(project, store):
    store.outbox.add_channel({"name": "hb", "kind": "ping", "target": "http://127.0.0.1:9/x",
                              "events": ["heartbeat"], "options": {"heartbeat_seconds": 300.0},
                              "repeat_seconds": 1.0}, T0 - timedelta(days=1))
    assert deliver.heartbeats(store, T0) == 1
    assert deliver.heartbeats(store, T0 + timedelta(minutes=2)) == 0
    assert deliver.heartbeats(store, T0 + timedelta(minutes=5)) == 1
    collect = Collect()
    Deliverer(store, collect, now=lambda: T0).flush()
    assert [e for e, _ in collect.calls] == ["heartbeat", "heartbeat"]


# -- real receivers over HTTP ---------------------------------------------------------------

class Recorder(BaseHTTPRequestHandler):
    seen = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        Recorder.seen.append((self.path, dict(self.headers), self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_webhook_and_ping_channels_through_real_runs(project, http_server):
    add_failing_flow(project)
    project.cli("notify", "add", "hook", "--webhook", http_server + "/hook", "--header", "X-Token: t0k")
    project.cli("notify", "add", "hc", "--ping", http_server + "/ping/abc")
    assert project.sh("run", "nightly").code == 1
    env = dict(project.env, FAIL_CODE="0")
    subprocess.run([sys.executable, "-m", "featherflow"] + project.args() + ["run", "nightly"], env=env,
                   capture_output=True, check=True)
    app = project.app()
    wait_for(lambda: len([d for d in app.store.outbox.deliveries() if d.state == "sent"]) == 6
             and len(Recorder.seen) == 6, "every delivery")
    pings = sorted((p for p in Recorder.seen if p[0].startswith("/ping/")), key=lambda p: p[0].count("/fail"))
    paths = [p.split("?")[0] for p, _, _ in Recorder.seen if p.startswith("/ping/")]
    assert sorted(paths) == sorted(["/ping/abc/start", "/ping/abc/fail", "/ping/abc/start", "/ping/abc"])
    assert all("rid=" in p for p, _, _ in pings)
    hooks = [(h, json.loads(b)) for p, h, b in Recorder.seen if p == "/hook"]
    assert [doc["event"] for _, doc in hooks] == ["failed", "recovered"]
    assert all(h["X-Token"] == "t0k" and h["Idempotency-Key"] == doc["key"] for h, doc in hooks)
    # the ping order of each run: start before its end
    by_run = {}
    for d in sorted(app.store.outbox.deliveries(channel="hc"), key=lambda d: d.id):
        by_run.setdefault(d.payload["run_id"], []).append(d.kind)
    assert list(by_run.values()) == [["started", "failed"], ["started", "recovered"]]
    app.close()


def test_the_smtp_password_is_never_stored_or_shown(project):
    secret = "pa55-never-stored"
    env_name = "FF_TEST_SMTP_PASSWORD"
    os.environ[env_name] = secret
    try:
        assert project.cli("notify", "add", "mail", "--email", "ops@example.org", "--smtp-host", "127.0.0.1",
                           "--smtp-port", "9", "--smtp-user", "ops", "--smtp-password-env", env_name).code == 0
        shown = project.cli("notify", "show", "mail", "--json").out + project.cli("notify", "list", "--json").out
        assert env_name in shown and secret not in shown
        result = project.cli("notify", "test", "mail")
        assert result.code == 1 and secret not in result.out + result.err
    finally:
        del os.environ[env_name]
    data = b"".join(p.read_bytes() for p in project.home.iterdir() if p.name.startswith("featherflow.db"))
    assert secret.encode() not in data


def test_prune_removes_delivered_rows_with_their_runs(project, store):
    now = clock.now()  # `runs prune` counts ages from the real clock
    store.outbox.add_channel({"name": "c", "kind": "command", "target": "true", "events": ["failed"],
                              "repeat_seconds": 1.0, "every": True}, now - timedelta(days=100))
    run = fake_run(store, state=states.RUNNING)
    store.runs.transition_run(run.id, states.FAILED, now=now - timedelta(days=60))
    Deliverer(store, Collect(), now=lambda: now - timedelta(days=60)).flush()
    assert len(deliveries(store)) == 1
    assert project.cli("runs", "prune", "--older-than", "30d").code == 0
    assert deliveries(store) == [] and store.db.execute_sql("SELECT COUNT(*) FROM event").fetchone()[0] == 0


def test_the_python_api_manages_channels_and_flushes(project, tmp_path):
    from featherflow.api import Featherflow

    app = Featherflow(project.flows, project.tasks, project.output, config_dir=project.home, env={})
    path, command = receiver(project)
    app.add_channel("me", "command", command, events="failed", every=True)
    assert [c.name for c in app.channels()] == ["me"]
    run = fake_run(app.store, state=states.RUNNING)
    app.store.runs.transition_run(run.id, states.FAILED)
    assert app.flush_notifications()["sent"] == 1
    assert received(path)[0]["run_id"] == run.id
    app.remove_channel("me")
    assert app.channels() == []
    app.close()


def test_the_daemons_tick_delivers_through_a_child_of_its_own(project):
    path, command = receiver(project)
    app = project.app()
    app.store.outbox.add_channel({"name": "me", "kind": "command", "target": command, "events": ["failed"],
                                  "repeat_seconds": 1.0}, clock.now() - timedelta(days=1))
    run = fake_run(app.store, state=states.RUNNING)
    app.store.runs.transition_run(run.id, states.FAILED)
    daemon = scheduler.Scheduler(app.config, app.store, launch=lambda run, resume: None, allow_root=True)
    daemon.acquire(clock.now())
    try:
        daemon.tick(clock.now())
        wait_for(lambda: received(path), "the daemon's delivery")
        assert received(path)[0]["run_id"] == run.id
        daemon.tick(clock.now())  # the first child may still run: never two at once
    finally:
        daemon.release(clock.now())
        if daemon._flusher is not None:
            daemon._flusher.wait(timeout=30)
    app.close()


def test_one_flush_fans_out_every_event_however_many(project, store):
    """More events than one batch (100): a flush leaves none behind."""
    store.outbox.add_channel({"name": "c", "kind": "command", "target": "true", "events": ["failed"],
                              "repeat_seconds": 1.0, "every": True}, T0 - timedelta(days=1))
    for minute in range(70):  # 140 events: each run's start and its failure
        run = fake_run(store, state=states.RUNNING)
        store.runs.transition_run(run.id, states.FAILED, now=T0 + timedelta(minutes=minute))
    collect = Collect()
    done = Deliverer(store, collect, now=lambda: T0 + timedelta(hours=2)).flush()
    assert done["events"] == 140 and done["sent"] == 70 and store.outbox.counts()["unfanned"] == 0
