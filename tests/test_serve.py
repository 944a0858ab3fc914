"""`featherflow serve`: a real server on 127.0.0.1 (port 0, in a thread) over a real database.

Every page and JSON document; the JSON is the CLI's `--json`; /healthz and the
scheduler's heartbeat; the bind and token rules; traversal attempts answered 404
without opening anything; hostile names and log lines escaped; and a real browser
(headless Chromium) rendering the home and run pages at phone width.
"""

import http.client
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from featherflow import clock, paths, proc, states
from featherflow.dashboard.keys import ViewState
from featherflow.dashboard.poller import Poller
from featherflow.errors import UsageError
from featherflow.store.readonly import Reader
from featherflow.web import auth, server as web
from helpers import fake_run, wait_for

SECRET = "top-secret-content-never-served"
HOSTILE = "<script>alert(1)</script>"


class Served:
    """A running server and a client that sends paths exactly as given (no normalising)."""

    def __init__(self, srv):
        self.srv = srv
        self.port = srv.server_address[1]

    def get(self, path, headers=None, method="GET"):
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            con.request(method, path, headers=headers or {})
            resp = con.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read().decode("utf-8", "replace")
        finally:
            con.close()

    def json(self, path, **kw):
        status, _, body = self.get(path, **kw)
        return status, json.loads(body)


@pytest.fixture
def start(project):
    """start(token=None, now=..., alive=...) -> Served; every server is shut down after the test."""
    running = []

    def _start(token=None, now=clock.now, alive=proc.is_alive):
        srv = web.Server(("127.0.0.1", 0), web.Site(project.db, alive=alive), token, now=now)
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        running.append(srv)
        return Served(srv)

    yield _start
    for srv in running:
        srv.shutdown()
        srv.server_close()
        srv.site.close()


def write_log(run, task_id, attempt, text):
    path = paths.log_path(run, task_id, attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def history(project, store):
    """A flow file (so the CLI can add a schedule), a succeeded and a failed run with logs."""
    project.write_task("ok.sh", "#!/bin/sh\necho ok\n")
    project.write_flow({"name": "etl", "tasks": [{"id": "extract", "script": "ok.sh"},
                                                 {"id": "load", "script": "ok.sh", "depends_on": ["extract"]}]})
    ok = fake_run(store, "etl", ["extract", "load"], outcomes={"extract": ["success"], "load": ["success"]},
                  depends_on={"load": ["extract"]}, state=states.SUCCESS, output=project.output)
    bad = fake_run(store, "etl", ["extract", "load"], outcomes={"extract": ["failed", "failed"], "load": ["upstream_failed"]},
                   depends_on={"load": ["extract"]}, state=states.FAILED, output=project.output)
    write_log(ok, "extract", 1, "extracted 10 rows\n")
    write_log(bad, "extract", 1, "first try\n")
    write_log(bad, "extract", 2, "".join(f"line {i}\n" for i in range(500)) + "boom: disk on fire\n")
    assert project.cli("schedule", "add", "etl", "--interval", "daily", "--at", "03:00", "--tz", "UTC").code == 0
    return ok, bad


# -- every page and document ------------------------------------------------------------

def test_every_page_answers_with_its_facts_and_the_security_headers(start, history):
    ok, bad = history
    s = start()
    pages = {
        "/": ["Scheduler", "Recent failures", "boom: disk on fire", f'href="/runs/{bad.id}"', "etl", "in "],
        "/runs": [f'href="/runs/{ok.id}"', f'href="/runs/{bad.id}"', "failed: extract"],
        f"/runs/{bad.id}": ["extract", "load", "upstream_failed", "exit code 3", f"/runs/{bad.id}/logs/extract/2"],
        f"/runs/{bad.id}/logs/extract/2": ["boom: disk on fire", f"/runs/{bad.id}/logs/extract/2/raw"],
        "/schedules/etl": ["0 3 * * *", "Recent slots", "catchup=latest"],
    }
    for path, wanted in pages.items():
        status, headers, body = s.get(path)
        assert status == 200, (path, body)
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        for text in wanted:
            assert text in body, (path, text)
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "http://" not in body.replace(f"http://127.0.0.1:{s.port}", "") and "https://" not in body, \
            "nothing is fetched from elsewhere"
        assert 'style="' not in body and "<script" not in body and " on" + "click" not in body
    status, headers, body = s.get(f"/runs/{bad.id}/logs/extract/2/raw")
    assert status == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body == paths.log_path(bad, "extract", 2).read_text()
    status, headers, body = s.get("/static/style.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css") and "@media" in body
    # the home page and an unfinished page refresh themselves; a finished run's page need not
    assert '<meta http-equiv="refresh"' in s.get("/")[2]
    assert '<meta http-equiv="refresh"' not in s.get(f"/runs/{ok.id}")[2]


def test_a_log_page_shows_only_the_tail_of_a_big_log_and_links_the_whole_file(start, history, project):
    _, bad = history
    write_log(bad, "extract", 2, "".join(f"row {i:06d}\n" for i in range(100_000)))
    body = start().get(f"/runs/{bad.id}/logs/extract/2")[2]
    assert "row 099999" in body and "row 000000" not in body and "whole file" in body
    assert body.count("\nrow ") < 300


def test_the_json_documents_are_the_clis(start, history, project):
    ok, bad = history
    s = start()
    assert s.json("/api/runs")[1] == json.loads(project.cli("runs", "list", "--json").out)
    assert s.json("/api/runs?limit=1")[1] == json.loads(project.cli("runs", "list", "--json", "--limit", "1").out)
    for run in (ok, bad):
        assert s.json(f"/api/runs/{run.id}")[1] == json.loads(project.cli("runs", "show", run.id, "--json").out)
    assert s.json("/api/schedules")[1] == json.loads(project.cli("schedule", "list", "--json").out)
    assert s.json(f"/api/runs?before={bad.id}")[1] == json.loads(project.cli("runs", "list", "--json").out)[1:]
    assert s.json("/api/runs/999")[0] == 404
    assert s.json("/api/runs?limit=0")[0] == 400 and s.json("/api/runs?limit=x")[0] == 400


def test_the_page_and_the_dashboard_show_the_same_runs_from_one_snapshot(start, history, project):
    snap = Poller(Reader.open(project.db), str(project.db)).poll(ViewState(), clock.now())
    body = start().get("/")[2]
    recent = body[body.index('id="recent"'):]
    rows = re.findall(r'<a href="/runs/(\d+)">\d+</a></td><td data-label="flow">([^<]*)</td>'
                      r'<td data-label="state"><span class="st st-(\w+)">', recent)
    assert rows == [(str(r.id), r.flow_name, r.state) for r in snap.recent] and rows


# -- health --------------------------------------------------------------------------------

def test_healthz_is_503_while_the_scheduler_is_down_and_200_with_a_fresh_heartbeat(start, history, project):
    app = project.app()  # a connection of its own: the fixture's saw the database before the CLI wrote
    store = app.store
    down = start()
    assert down.json("/healthz") == (503, {"healthy": False, "reason": "scheduler never started, and 1 "
                                           "schedule(s) are enabled: none will fire"})
    home = down.get("/")[2]
    assert '<p class="health bad">PROBLEM: scheduler never started' in home and "fix: featherflow scheduler start" in home
    t0 = clock.now()
    me = os.getpid()
    store.schedules.scheduler_started(me, proc.start_time(me), proc.boot_id(), t0, is_alive=lambda row: False)
    fresh = start(now=lambda: t0 + timedelta(seconds=30))
    status, doc = fresh.json("/healthz")
    assert status == 200 and doc["healthy"] and "heartbeat 30s ago" in doc["reason"]
    assert '<p class="health ok">ok: scheduler running (pid' in fresh.get("/")[2]
    stale = start(now=lambda: t0 + timedelta(seconds=states.HEARTBEAT_STALE + 60))
    status, doc = stale.json("/healthz")
    assert status == 503 and "hung" in doc["reason"]
    gone = start(now=lambda: t0 + timedelta(seconds=30), alive=lambda *a: False)
    assert gone.json("/healthz")[0] == 503
    store.schedules.scheduler_stopped(me, t0 + timedelta(seconds=40))
    assert fresh.json("/healthz")[0] == 503
    app.close()


def test_healthz_is_503_when_the_database_cannot_be_read(start, history, project):
    s = start()
    project.db.chmod(0)  # root reads it anyway: then break the file instead
    try:
        if os.geteuid() == 0:
            project.db.chmod(0o600)
            with open(project.db, "r+b") as f:
                f.write(b"not a database at all, not at all")
        status, doc = s.json("/healthz")
    finally:
        project.db.chmod(0o600)
    assert status == 503 and not doc["healthy"]


# -- who may ask ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_binding_beyond_loopback_is_refused_without_a_token(project, store, host):
    with pytest.raises(UsageError, match="needs a token"):
        web.open_server(project.db, host, 0, None)
    done = project.cli("serve", "--bind", host, "--port", "0")
    assert done.code == 2 and "needs a token" in done.err and "--new-token" in done.err


def test_with_a_token_other_binds_open_and_every_request_needs_it(project, store, start):
    srv = web.open_server(project.db, "0.0.0.0", 0, "t" * 32)
    srv.server_close()
    srv.site.close()
    s = start(token="t" * 32)
    for path in ("/", "/api/runs", "/healthz", "/static/style.css", "/runs/1", "/nowhere"):
        status, headers, _ = s.get(path)
        assert status in (401, 404) and (status == 401 or path == "/nowhere"), path
        if status == 401:
            assert headers["WWW-Authenticate"].startswith("Bearer")
    assert s.get("/", {"Authorization": "Bearer " + "t" * 31 + "u"})[0] == 401
    assert s.get("/", {"Authorization": "Bearer " + "t" * 32})[0] == 200
    assert s.get("/", {"Cookie": "featherflow_token=" + "x" * 32})[0] == 401
    assert s.get("/login?token=wrong")[0] == 401
    status, headers, _ = s.get("/login?token=" + "t" * 32)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert s.get("/", {"Cookie": cookie.split(";")[0]})[0] == 200


def test_new_token_writes_a_private_file_and_serve_reads_it(project):
    done = project.cli("serve", "--new-token")
    path = project.home / "serve.token"
    assert done.code == 0 and str(path) in done.out
    token = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 32
    assert f"/login?token={token}" in done.out
    assert auth.read_token(path) == token
    assert project.cli("serve", "--new-token").code == 0 and path.read_text().strip() != token  # replaced
    path.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        auth.read_token(path)


def test_only_get_and_head_are_answered(start, history):
    s = start()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = s.get("/api/runs", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, _, body = s.get("/", method="HEAD")
    assert status == 200 and body == ""


def test_without_a_token_only_loopback_host_names_are_answered(start, history):
    s = start()
    assert s.get("/", {"Host": "evil.example:8787"})[0] == 403  # DNS rebinding
    assert s.get("/", {"Host": "localhost:8787"})[0] == 200


# -- traversal -----------------------------------------------------------------------------

def test_traversal_attempts_are_404_and_nothing_outside_is_opened(start, history, project, tmp_path, monkeypatch):
    ok, _ = history
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it to read would block the request: a hang is a failure too
    log_dir = paths.log_path(ok, "load", 1).parent
    os.symlink(secret, log_dir / "load.1.log")  # a symlink in the log dir, pointing outside
    extract = paths.log_path(ok, "extract", 1)
    extract.unlink()
    os.symlink(fifo, extract)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    s = start()
    rid = ok.id
    attempts = [
        "/logs/../../etc/passwd", "/../../etc/passwd", f"/runs/{rid}/logs/../../../../etc/passwd",
        f"/runs/{rid}/logs/%2e%2e/1", f"/runs/{rid}/logs/%2e%2e%2f%2e%2e%2fetc%2fpasswd/1",
        f"/runs/{rid}/logs/%252e%252e%252fetc/1", f"/runs/{rid}/logs/..%2f..%2fsecret/1/raw",
        f"/runs/{rid}/logs/extract/1/../../../../etc/passwd", "/static/../../etc/passwd",
        f"/runs/{rid}/logs/load/1", f"/runs/{rid}/logs/load/1/raw",  # the symlink to the secret
        f"/runs/{rid}/logs/extract/1", f"/runs/{rid}/logs/extract/1/raw",  # the symlink to the fifo
        f"/runs/{rid}/logs/extract/9", "/runs/-1/logs/extract/1", "/runs/1e3", "/schedules/..", "/schedules/%2e%2e",
        "/runs/99999999999999999999999",
    ]
    for path in attempts:
        status, _, body = s.get(path)
        assert status == 404, path
        assert SECRET not in body and "root:" not in body, path
    assert not [p for p in opened if p in (str(secret), str(fifo)) or "passwd" in p
                or p.startswith(str(log_dir))], opened


def test_a_fifo_or_device_in_place_of_a_log_is_404(start, history, tmp_path):
    ok, _ = history
    path = paths.log_path(ok, "load", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    assert start().get(f"/runs/{ok.id}/logs/load/1/raw")[0] == 404


# -- hostile text --------------------------------------------------------------------------

def test_hostile_flow_and_task_names_and_log_lines_are_escaped(start, store, project):
    evil_task = 'x"><img src=x onerror=alert(1)>'
    run = fake_run(store, HOSTILE, ["a", evil_task], outcomes={"a": ["failed"], evil_task: ["failed"]},
                   state=states.FAILED, output=project.output)
    write_log(run, "a", 1, f"{HOSTILE}\n<iframe src=//evil>\n")
    s = start()
    for path in ("/", "/runs", f"/runs/{run.id}", f"/runs/{run.id}/logs/a/1"):
        body = s.get(path)[2]
        assert "<script>" not in body and "<img" not in body and "<iframe" not in body, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in s.get(f"/runs/{run.id}")[2]
    assert "&lt;iframe src=//evil&gt;" in s.get(f"/runs/{run.id}/logs/a/1")[2]
    assert "x&quot;&gt;&lt;img" in s.get(f"/runs/{run.id}")[2]
    assert s.json(f"/api/runs/{run.id}")[1]["flow"] == HOSTILE  # JSON carries it as data


# -- the command and its unit --------------------------------------------------------------

@pytest.mark.slow
def test_serve_command_serves_until_sigterm(project, history):
    proc_ = subprocess.Popen([sys.executable, "-m", "featherflow"] + project.args() + ["serve", "--port", "0"],
                             cwd=project.root, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        line = proc_.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line + proc_.stderr.read()
        port = int(line.split(":")[2].split("/")[0])
        con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        con.request("GET", "/api/runs")
        assert con.getresponse().status == 200
        con.close()
    finally:
        proc_.send_signal(signal.SIGTERM)
        assert proc_.wait(timeout=20) == 0


def test_print_unit_is_a_systemd_unit_of_its_own(project):
    done = project.cli("serve", "--print-unit", "--bind", "0.0.0.0", "--port", "9000")
    assert done.code == 0
    unit = done.out
    assert "[Service]" in unit and "[Install]" in unit and "WantedBy=multi-user.target" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert " serve --bind 0.0.0.0 --port 9000 --token-file " in exec_start
    assert f"--db {project.db}" in exec_start and "ProtectSystem=strict" in unit
    assert f"ReadWritePaths={project.home}" in unit and "NoNewPrivileges=yes" in unit
    assert "WantedBy=default.target" in project.cli("serve", "--print-unit", "--user").out


# -- a real browser ------------------------------------------------------------------------

def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return found


@pytest.mark.slow
def test_headless_chromium_renders_the_home_and_run_pages_at_phone_width(start, history, tmp_path):
    browser = chromium()
    _, bad = history
    s = start()
    base = f"http://127.0.0.1:{s.port}"
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    env = dict(os.environ, HOME=str(tmp_path))

    def dom(path):
        done = subprocess.run(argv + ["--dump-dom", base + path], capture_output=True, text=True, timeout=120,
                              env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    run_dom = dom(f"/runs/{bad.id}")
    assert '<span class="st st-failed">failed</span>' in run_dom
    rows = run_dom.count('<td data-label="task">')
    assert rows == 3, run_dom  # extract twice (two attempts), load once
    assert 'data-label="state"><span class="st st-upstream_failed">' in run_dom
    home_dom = dom("/")
    assert 'id="failures"' in home_dom and "boom: disk on fire" in home_dom
    shot = tmp_path / "home.png"
    done = subprocess.run(argv + ["--hide-scrollbars", "--window-size=360,800", f"--screenshot={shot}", base + "/"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (360, 800)
    keep = os.environ.get("FEATHERFLOW_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "serve-home-360.png")


def test_the_token_of_a_login_never_reaches_the_log(start, store, caplog):
    s = start(token="s" * 32)
    with caplog.at_level("INFO", logger="featherflow.web.server"):
        assert s.get("/login?token=" + "s" * 32)[0] == 303
        assert s.get("/login?token=wrong-guess&x=1")[0] == 401
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/login?token=***" in text and "s" * 32 not in text and "wrong-guess" not in text


def test_idle_connections_beyond_the_limit_are_closed_not_queued(project, store):
    import socket

    srv = web.Server(("127.0.0.1", 0), web.Site(project.db), None, max_clients=2)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    idle = [socket.create_connection(srv.server_address, timeout=10) for _ in range(2)]
    try:
        wait_for(lambda: srv.slots._value == 0, "both slots taken by the idle clients")
        extra = socket.create_connection(srv.server_address, timeout=10)
        assert extra.recv(1) == b""  # closed at once
        extra.close()
    finally:
        for sock in idle:
            sock.close()
        wait_for(lambda: srv.slots._value == 2, "the slots given back")
        s = Served(srv)
        assert s.get("/healthz")[0] == 503  # answers again
        srv.shutdown()
        srv.server_close()
        srv.site.close()


@pytest.mark.parametrize("bad", ["70000", "-1", "http"])
def test_a_bad_port_is_a_usage_error(project, bad):
    done = project.cli("serve", "--port", bad)
    assert done.code == 2 and "valid: 0 to 65535" in done.err


def test_a_port_in_use_is_refused_with_exit_2(project, store):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        done = project.cli("serve", "--port", busy.getsockname()[1])
    finally:
        busy.close()
    assert done.code == 2 and "cannot listen on 127.0.0.1:" in done.err


def test_without_a_database_serve_says_so_with_exit_4(project):
    done = project.cli("serve", "--port", "0")
    assert done.code == 4 and "no database" in done.err


def test_a_logs_dir_that_is_a_symlink_out_of_its_run_is_404(start, store, project, tmp_path):
    run = fake_run(store, "etl", ["a"], outcomes={"a": ["failed"]}, state=states.FAILED, output=project.output)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.1.log").write_text(SECRET)
    logs = paths.log_path(run, "a", 1).parent
    logs.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, logs)
    s = start()
    for path in (f"/runs/{run.id}/logs/a/1", f"/runs/{run.id}/logs/a/1/raw"):
        status, _, body = s.get(path)
        assert status == 404 and SECRET not in body, path
    assert SECRET not in s.get("/")[2]  # nor in the recent failures' lines


def test_pools_and_backfills_are_shown_where_the_database_has_them(start, history, project):
    s = start()
    assert 'id="pool"' not in s.get("/")[2] and 'id="backfill"' not in s.get("/")[2]
    import sqlite3

    con = sqlite3.connect(project.db)
    with con:  # the pool table (migration 0007_pools) is there, empty until a pool is set
        con.execute("INSERT INTO pool (name, slots, created_at, updated_at) "
                    "VALUES (?, 2, '2026-01-01 00:00:00', '2026-01-01 00:00:00')", (HOSTILE,))
    con.close()
    body = s.get("/")[2]
    assert 'id="pool"' in body and "<h2>Pools</h2>" in body and "&lt;script&gt;" in body and "<script>" not in body
    assert 'id="backfill"' not in body  # the table exists, but holds no backfill


def test_a_backfill_is_shown_with_its_schedule_and_progress(start, history, project):
    s = start()
    assert 'id="backfill"' not in s.get("/")[2]  # the table exists, but holds no backfill
    now = clock.now()
    app = project.app()  # the models are bound to the newest connection: not the `store` fixture's
    schedule = app.store.schedules.get_schedule("etl")
    app.store.backfills.create(schedule.id, now - timedelta(days=2), now, "none", 1, False,
                               [(now - timedelta(days=1), "run", None, None), (now, "leave", None, "has a run")], now)
    app.close()
    body = s.get("/")[2]  # the slot left alone is done: 1 of 2
    assert 'id="backfill"' in body and 'href="/schedules/etl"' in body and "1/2" in body
    assert s.json("/api/schedules")[1][0]["backfills"][0]["progress"]["done"] == 1
