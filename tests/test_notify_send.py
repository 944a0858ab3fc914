"""Notification transports against real receivers on 127.0.0.1: an HTTP server in a thread,
shell commands, an aiosmtpd SMTP server with and without AUTH; and every format parsed back.

A receiver that fails (refused, HTTP 500, exit 1, a hang) must give (False, why), never raise.
"""

import email
import email.policy
import json
import os
import socket
import threading
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from featherflow.notify import formats
from featherflow.notify.send import NOT_PINGED, answer, send
from helpers import alive, wait_for

PASSWORD = "s3cret-Pa55-word"
# The AUTH server here runs without TLS on purpose (no certificate on a test machine).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


def sample(event="failed", **changes) -> dict:
    """The payload contract the outbox builds (issue 14), as a plain dict."""
    payload = {
        "event": event, "flow": "nightly", "run_id": 42, "run_uid": "0f3a9c2e", "state": "failed",
        "reason": "task failed", "trigger": "schedule", "schedule": "nightly-3am",
        "scheduled_at": "2026-12-02T03:00:00Z", "started_at": "2026-12-02T03:00:01Z",
        "ended_at": "2026-12-02T03:00:12Z", "duration_seconds": 11.2,
        "failed_tasks": [{"task_id": "transform_a", "attempt": 2, "exit_code": 7, "reason": "exit 7",
                          "log_tail": ["reading input", "naïve row 12: bad value \\x1b[31m", "giving up"]}],
        "host": "pi4", "command": "featherflow runs show 42", "key": f"0f3a9c2e:{event}",
        "summary": f"nightly {event} on pi4 at 03:00:12: transform_a exit 7", "test": False,
    }
    payload.update(changes)
    return payload


# -- an HTTP receiver --------------------------------------------------------------------

class Receiver:
    """Records every request; answers `status` with `reply`, after `delay` seconds."""

    def __init__(self):
        self.requests, self.status, self.reply, self.delay, self.location = [], 200, b"ok", 0.0, None
        self.closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                receiver.requests.append({"method": self.command, "path": parts.path, "query": parse_qs(parts.query),
                                          "headers": dict(self.headers), "body": self.rfile.read(length)})
                if receiver.delay:
                    receiver.closing.wait(receiver.delay)  # hangs: the client must give up first
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", str(len(receiver.reply)))
                self.end_headers()
                self.wfile.write(receiver.reply)

            do_GET = do_POST = _handle

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def sigpipe_ignored():
    """As Python has it by default. An earlier test of a failed exec (launch resets SIGPIPE
    before its exec) may leave it at SIG_DFL in this process, and then a receiver's thread
    answering a client that gave up would kill pytest."""
    import signal

    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGPIPE, old)


@pytest.fixture
def http():
    receiver = Receiver()
    yield receiver
    receiver.close()


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on return: nothing listens there


# -- webhook -----------------------------------------------------------------------------

def test_a_json_webhook_posts_the_payload_with_its_idempotency_key_and_headers(http):
    payload = sample()
    delivered, said = send("webhook", http.url + "/hook", {"headers": {"X-Token": "abc"}}, payload, "failed",
                           environ={})
    assert (delivered, said) == (True, "HTTP 200 ok")
    [request] = http.requests
    assert request["method"] == "POST" and request["path"] == "/hook"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Idempotency-Key"] == "0f3a9c2e:failed"
    assert request["headers"]["X-Token"] == "abc"
    assert json.loads(request["body"].decode("utf-8")) == payload
    assert "naïve".encode("utf-8") in request["body"]  # ensure_ascii=False


def test_an_http_500_is_not_delivered_and_says_what_the_receiver_answered(http):
    http.status, http.reply = 500, b"database is down\n\x1b[2J" + b"x" * 600
    delivered, said = send("webhook", http.url, {}, sample(), "failed", environ={})
    assert not delivered
    assert said.startswith("HTTP 500 database is down")
    assert "\x1b" not in said and "\\x1b" in said and len(said) <= 500


def test_a_4xx_is_not_delivered(http):
    http.status, http.reply = 404, b"no such hook"
    assert send("webhook", http.url, {}, sample(), "failed", environ={}) == (False, "HTTP 404 no such hook")


def test_a_refused_connection_is_an_answer_not_an_exception():
    url = f"http://127.0.0.1:{refused_port()}/hook"
    assert send("webhook", url, {}, sample(), "failed", environ={}) == (False, "connection refused")


def test_a_receiver_that_hangs_past_the_timeout_is_given_up(http):
    http.delay = 3
    assert send("webhook", http.url, {"timeout": 0.5}, sample(), "failed", environ={}) == \
        (False, "timed out after 0.5s")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://x", "no-scheme"])
def test_only_http_and_https_are_sent_to(url):
    delivered, said = send("webhook", url, {}, sample(), "failed", environ={})
    assert not delivered and said.startswith("refused:")


def test_https_to_a_server_that_speaks_no_tls_is_a_tls_answer(http):
    delivered, said = send("webhook", http.url.replace("http:", "https:"), {"timeout": 5}, sample(), "failed",
                           environ={})
    assert not delivered and said.startswith("TLS:")


def test_a_redirect_to_another_scheme_is_not_followed(http):
    http.status, http.location = 302, "ftp://127.0.0.1/elsewhere"
    delivered, said = send("webhook", http.url, {}, sample(), "failed", environ={})
    assert not delivered and said.startswith("HTTP 302")
    assert len(http.requests) == 1


def test_a_proxy_in_the_given_environment_is_bypassed_for_no_proxy_hosts(http):
    environ = {"http_proxy": f"http://127.0.0.1:{refused_port()}", "no_proxy": "127.0.0.1"}
    assert send("webhook", http.url, {}, sample(), "failed", environ=environ) == (True, "HTTP 200 ok")
    del environ["no_proxy"]
    assert send("webhook", http.url, {}, sample(), "failed", environ=environ) == (False, "connection refused")


def test_a_204_is_delivered_and_a_datetime_left_in_the_payload_is_sent_as_text(http):
    from datetime import datetime, timezone

    http.status, http.reply = 204, b""
    payload = sample(ended_at=datetime(2026, 12, 2, 3, 0, 12, tzinfo=timezone.utc))
    assert send("webhook", http.url, {}, payload, "failed", environ={}) == (True, "HTTP 204")
    assert json.loads(http.requests[0]["body"])["ended_at"] == "2026-12-02 03:00:12+00:00"


def test_a_header_with_a_line_break_is_not_sent(http):
    delivered, said = send("webhook", http.url, {"headers": {"X-A": "1\r\nX-B: 2"}}, sample(), "failed", environ={})
    assert not delivered and http.requests == []


def test_an_unknown_format_is_not_delivered(http):
    delivered, said = send("webhook", http.url, {"format": "teams"}, sample(), "failed", environ={})
    assert not delivered and "unknown format 'teams'" in said and http.requests == []


# -- formats, parsed back ----------------------------------------------------------------

def test_slack_text_has_the_summary_and_the_log_tail_in_a_code_block(http):
    assert send("webhook", http.url, {"format": "slack"}, sample(), "failed", environ={})[0]
    [request] = http.requests
    assert request["headers"]["Idempotency-Key"] == "0f3a9c2e:failed"
    text = json.loads(request["body"])["text"]
    assert text.startswith("nightly failed on pi4 at 03:00:12: transform_a exit 7\n")
    assert "transform_a (attempt 2, exit 7): exit 7\n```\nreading input\n" in text
    assert text.endswith("giving up\n```")


def test_discord_content_is_cut_under_2000_characters_keeping_the_end_of_the_log():
    tail = [f"line {i:05d} " + "y" * 60 for i in range(500)]
    payload = sample(failed_tasks=[{"task_id": "a", "attempt": 1, "exit_code": 1, "reason": None, "log_tail": tail}])
    data, headers = formats.body("discord", payload)
    content = json.loads(data)["content"]
    assert len(content) < 2000 and content.startswith("nightly failed")
    assert "line 00499" in content and "line 00000" not in content and content.endswith("```")
    slack = json.loads(formats.body("slack", payload)[0])["text"]
    assert 2000 < len(slack) < 3000


def test_many_failed_tasks_each_keep_their_head_line():
    tasks = [{"task_id": f"t{i}", "attempt": 1, "exit_code": i, "reason": None, "log_tail": ["z" * 300] * 20}
             for i in range(8)]
    content = json.loads(formats.body("discord", sample(failed_tasks=tasks))[0])["content"]
    assert len(content) < 2000
    assert all(f"t{i} (attempt 1, exit {i})" in content for i in range(8))


@pytest.mark.parametrize("event, tags, priority", [
    ("failed", "warning", "4"), ("interrupted", "warning", "4"), ("missed", "warning", "3"),
    ("succeeded", "white_check_mark", "3"), ("recovered", "white_check_mark", "3"), ("started", "arrow_forward", "3"),
])
def test_ntfy_sends_plain_text_with_title_tags_and_priority(http, event, tags, priority):
    assert send("webhook", http.url + "/featherflow", {"format": "ntfy"}, sample(event), event, environ={})[0]
    [request] = http.requests
    headers = request["headers"]
    assert (headers["Tags"], headers["Priority"]) == (tags, priority)
    assert headers["Title"] == f"nightly {event} on pi4 at 03:00:12: transform_a exit 7"
    assert headers["Idempotency-Key"] == f"0f3a9c2e:{event}"
    assert headers["Content-Type"].startswith("text/plain")
    text = request["body"].decode("utf-8")
    assert text.startswith(f"nightly {event} on pi4") and "giving up" in text


def test_an_ntfy_title_that_is_not_ascii_is_rfc2047_encoded_and_a_newline_cannot_add_a_header(http):
    payload = sample(summary="nächtlich failed\r\nX-Evil: 1")
    assert send("webhook", http.url, {"format": "ntfy"}, payload, "failed", environ={})[0]
    headers = http.requests[0]["headers"]
    assert "X-Evil" not in headers
    assert str(make_header(decode_header(headers["Title"]))) == "nächtlich failed\\x0d\\x0aX-Evil: 1"


# -- ping --------------------------------------------------------------------------------

def test_ping_urls_follow_healthchecks():
    assert formats.ping_url("https://hc-ping.com/abc/", "started", "u1") == "https://hc-ping.com/abc/start?rid=u1"
    assert formats.ping_url("https://hc-ping.com/abc", "succeeded", None) == "https://hc-ping.com/abc"
    assert formats.ping_url("https://hc-ping.com/abc", "cancelled", "u 1") == "https://hc-ping.com/abc/fail?rid=u%201"
    assert formats.ping_url("https://hc-ping.com/abc", "missed", "u1") is None


def test_a_ping_channel_pings_start_success_and_fail_with_the_run_id(http):
    for event in ("started", "succeeded", "failed", "interrupted", "heartbeat"):
        assert send("ping", http.url + "/ping/abc/", {}, sample(event), event, environ={}) == (True, "HTTP 200 ok")
    assert [r["path"] for r in http.requests] == ["/ping/abc/start", "/ping/abc", "/ping/abc/fail",
                                                 "/ping/abc/fail", "/ping/abc"]
    assert all(r["query"] == {"rid": ["0f3a9c2e"]} for r in http.requests)
    assert {r["method"] for r in http.requests} == {"POST"}
    assert http.requests[2]["body"].decode() == "nightly failed on pi4 at 03:00:12: transform_a exit 7"


def test_a_ping_channel_sends_nothing_for_other_events(http):
    assert send("ping", http.url, {}, sample("missed"), "missed", environ={}) == (True, NOT_PINGED)
    assert http.requests == []


def test_a_ping_to_a_dead_service_is_not_delivered():
    url = f"http://127.0.0.1:{refused_port()}/abc"
    assert send("ping", url, {}, sample("started"), "started", environ={}) == (False, "connection refused")


# -- command -----------------------------------------------------------------------------

def test_a_command_gets_the_payload_on_stdin_and_the_event_in_its_environment(tmp_path):
    out = tmp_path / "got"
    script = f'cat > "{out}.json"; env | grep ^FEATHERFLOW_ | sort > "{out}.env"; echo first; echo received'
    payload = sample(schedule=None)
    delivered, said = send("command", script, {}, payload, "failed", environ={"PATH": os.environ["PATH"], "KEEP": "1"})
    assert (delivered, said) == (True, "exit 0: received")
    assert json.loads((tmp_path / "got.json").read_text("utf-8")) == payload
    env = dict(line.split("=", 1) for line in (tmp_path / "got.env").read_text().splitlines())
    assert env == {
        "FEATHERFLOW_EVENT": "failed", "FEATHERFLOW_FLOW_NAME": "nightly", "FEATHERFLOW_RUN_ID": "42",
        "FEATHERFLOW_RUN_UID": "0f3a9c2e", "FEATHERFLOW_RUN_STATE": "failed", "FEATHERFLOW_SCHEDULE": "",
        "FEATHERFLOW_SCHEDULED_AT": "2026-12-02T03:00:00Z",
        "FEATHERFLOW_SUMMARY": "nightly failed on pi4 at 03:00:12: transform_a exit 7",
        "FEATHERFLOW_IDEMPOTENCY_KEY": "0f3a9c2e:failed",
    }


def test_a_command_that_fails_is_not_delivered_and_its_last_line_is_the_answer():
    assert send("command", "echo trying; echo 'no route to pager' >&2; exit 7", {}, sample(), "failed",
                environ={}) == (False, "exit 7: no route to pager")
    assert send("command", "exit 1", {}, sample(), "failed", environ={}) == (False, "exit 1")


def test_a_command_that_is_not_found_is_not_delivered():
    delivered, said = send("command", "no-such-notifier-xyz --now", {}, sample(), "failed", environ={"PATH": "/bin"})
    assert not delivered and said.startswith("exit 127:") and "not found" in said


def test_a_command_that_does_not_read_its_stdin_is_still_delivered():
    payload = sample(failed_tasks=[{"task_id": "a", "attempt": 1, "exit_code": 1, "reason": None,
                                    "log_tail": ["w" * 1000] * 500}])  # more than a pipe holds
    assert send("command", "true", {}, payload, "failed", environ={}) == (True, "exit 0")


def test_a_command_that_does_not_read_its_stdin_does_not_kill_a_process_with_sigpipe_default():
    """launch.exec_script resets SIGPIPE before its exec; if the exec fails, the process lives on."""
    import signal

    payload = sample(failed_tasks=[{"task_id": "a", "attempt": 1, "exit_code": 1, "reason": None,
                                    "log_tail": ["w" * 1000] * 500}])
    old = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        assert send("command", "exec 0<&-; sleep 0.2", {}, payload, "failed", environ={"PATH": "/bin:/usr/bin"}) \
            == (True, "exit 0")
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL  # put back as it was
    finally:
        signal.signal(signal.SIGPIPE, old)


def test_a_command_that_hangs_is_killed_with_its_children_after_the_timeout(tmp_path):
    pids = tmp_path / "pids"
    script = f'sleep 60 & echo $$ $! > "{pids}"; wait'
    assert send("command", script, {"timeout": 1}, sample(), "failed", environ={"PATH": os.environ["PATH"]}) == \
        (False, "timed out after 1s")
    shell, child = map(int, pids.read_text().split())
    wait_for(lambda: not alive(shell) and not alive(child), "the shell and its sleep to be killed", timeout=10)


# -- email -------------------------------------------------------------------------------

class Inbox:
    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK queued as 7E1A"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"pi" and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


def free_port() -> int:
    return refused_port()


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.port = controller.port
    yield inbox
    controller.stop()


@pytest.fixture
def smtp_auth():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                            auth_required=True, auth_require_tls=False)
    controller.start()
    inbox.port = controller.port
    yield inbox
    controller.stop()


def parsed(envelope):
    return email.message_from_bytes(envelope.original_content, policy=email.policy.default)


def test_an_email_goes_through_a_local_smtp_server(smtp):
    options = {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "email_from": "ff@pi4.lan"}
    delivered, said = send("email", "ops@example.org", options, sample(), "failed", environ={})
    assert (delivered, said) == (True, "250 OK queued as 7E1A")
    [envelope] = smtp.envelopes
    assert envelope.mail_from == "ff@pi4.lan" and envelope.rcpt_tos == ["ops@example.org"]
    msg = parsed(envelope)
    assert msg["Subject"] == "nightly failed on pi4 at 03:00:12: transform_a exit 7"
    assert msg["Message-ID"] == "<0f3a9c2e.failed@featherflow>"
    assert msg["Auto-Submitted"] == "auto-generated"
    text = msg.get_content().replace("\r\n", "\n")
    assert "transform_a (attempt 2, exit 7): exit 7" in text and "naïve row 12" in text
    assert "To look further: featherflow runs show 42" in text
    assert json.loads(text.split("-- the event as JSON --\n", 1)[1]) == sample()


def test_an_email_with_auth_logs_in_with_the_password_from_the_environment(smtp_auth):
    options = {"smtp_host": "127.0.0.1", "smtp_port": smtp_auth.port, "smtp_user": "pi", "smtp_security": "none",
               "smtp_password_env": "SMTP_PASS"}
    assert send("email", "ops@example.org", options, sample(), "failed", environ={"SMTP_PASS": PASSWORD}) == \
        (True, "250 OK queued as 7E1A")
    assert len(smtp_auth.envelopes) == 1


def test_an_email_with_auth_reads_the_password_file_first_line(smtp_auth, tmp_path):
    secret = tmp_path / "smtp.pass"
    secret.write_text(f"  {PASSWORD}  \nsecond line\n")
    options = {"smtp_host": "127.0.0.1", "smtp_port": smtp_auth.port, "smtp_user": "pi", "smtp_security": "none",
               "smtp_password_file": str(secret)}
    assert send("email", "ops@example.org", options, sample(), "failed", environ={})[0]


def test_a_wrong_password_is_refused_and_never_appears_in_the_answer(smtp_auth):
    options = {"smtp_host": "127.0.0.1", "smtp_port": smtp_auth.port, "smtp_user": "pi", "smtp_security": "none",
               "smtp_password_env": "SMTP_PASS"}
    wrong = PASSWORD + "-wrong"
    delivered, said = send("email", "ops@example.org", options, sample(), "failed", environ={"SMTP_PASS": wrong})
    assert not delivered and said.startswith("login refused: 535")
    assert PASSWORD not in said and smtp_auth.envelopes == []
    options["smtp_user"] = None  # no login at all: the server requires one
    delivered, said = send("email", "ops@example.org", options, sample(), "failed", environ={})
    assert not delivered and said.startswith("530") and smtp_auth.envelopes == []


def test_a_missing_password_variable_or_file_is_not_delivered(smtp_auth, tmp_path):
    options = {"smtp_host": "127.0.0.1", "smtp_port": smtp_auth.port, "smtp_user": "pi", "smtp_security": "none",
               "smtp_password_env": "SMTP_PASS"}
    assert send("email", "a@b.c", options, sample(), "failed", environ={}) == \
        (False, "password variable SMTP_PASS is not set")
    del options["smtp_password_env"]
    options["smtp_password_file"] = str(tmp_path / "nope")
    delivered, said = send("email", "a@b.c", options, sample(), "failed", environ={})
    assert not delivered and said == f"password file {tmp_path / 'nope'} cannot be read: No such file or directory"
    del options["smtp_password_file"]
    assert not send("email", "a@b.c", options, sample(), "failed", environ={})[0]
    assert smtp_auth.envelopes == []


def test_starttls_against_a_server_without_it_is_not_delivered_and_the_password_is_not_sent(smtp):
    options = {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "smtp_user": "pi",
               "smtp_password_env": "SMTP_PASS"}  # starttls by default with a user
    delivered, said = send("email", "a@b.c", options, sample(), "failed", environ={"SMTP_PASS": PASSWORD})
    assert not delivered and "STARTTLS" in said and PASSWORD not in said
    assert smtp.envelopes == []


def test_ssl_against_a_plain_server_and_a_refused_port_are_not_delivered(smtp):
    options = {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "smtp_security": "ssl", "timeout": 5}
    delivered, said = send("email", "a@b.c", options, sample(), "failed", environ={})
    assert not delivered and said.startswith("TLS:")
    options = {"smtp_host": "127.0.0.1", "smtp_port": refused_port()}
    assert send("email", "a@b.c", options, sample(), "failed", environ={}) == (False, "connection refused")


def test_a_recipient_with_a_line_break_is_refused(smtp):
    options = {"smtp_host": "127.0.0.1", "smtp_port": smtp.port}
    delivered, said = send("email", "a@b.c\r\nBcc: x@y.z", options, sample(), "failed", environ={})
    assert not delivered and smtp.envelopes == []


# -- the answer --------------------------------------------------------------------------

def test_an_answer_is_one_escaped_line_of_at_most_500_characters():
    assert answer("a\nb\x1b[0m") == "a\\x0ab\\x1b[0m"
    assert len(answer("x" * 2000)) == 500


def test_an_unknown_kind_is_not_delivered():
    delivered, said = send("pager", "x", {}, sample(), "failed", environ={})
    assert not delivered and "unknown channel kind 'pager'" in said
