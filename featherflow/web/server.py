"""The HTTP side of `featherflow serve`: routes, headers, and the threaded server.

GET and HEAD only; every other method is 405. A route matches the raw (still
percent-encoded) path: ids are integers, names match the flow file's patterns, so an
encoded `..` or `/` never reaches site.py. Every answer carries a strict
Content-Security-Policy and no-sniff, no-frame, no-referrer headers.
"""

import json
import logging
import os
import re
import signal
import socket
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import parse_qs, urlsplit

from featherflow import clock
from featherflow.errors import UsageError
from featherflow.web import auth, pages
from featherflow.web.site import API_RUNS, API_RUNS_MAX, RUNS_PAGE, NotFound, Site, depends_of, judge, open_log, \
    order_of, tail

log = logging.getLogger(__name__)

HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a /login?token= URL never leaves in a Referer
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
RUN = r"(\d{1,18})"
TASK = r"([A-Za-z0-9_-]{1,64})"  # flow.ID_RE
NAME = r"([A-Za-z0-9][A-Za-z0-9_.-]{0,127})"  # flow.NAME_RE
ROUTES = [(re.compile(pattern + r"\Z"), name) for pattern, name in (
    (r"/", "home"), (r"/runs", "history"), (rf"/runs/{RUN}", "run"),
    (rf"/runs/{RUN}/logs/{TASK}/(\d{{1,9}})", "log"), (rf"/runs/{RUN}/logs/{TASK}/(\d{{1,9}})/raw", "raw"),
    (rf"/schedules/{NAME}", "schedule"), (r"/api/runs", "api_runs"), (rf"/api/runs/{RUN}", "api_run"),
    (r"/api/schedules", "api_schedules"), (r"/healthz", "healthz"), (r"/login", "login"),
    (r"/static/style\.css", "css"))]
LOOPBACK_HOSTS = re.compile(r"(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])(:\d{1,5})?\Z")
CHUNK = 64 * 1024
SECRET_IN_URL = re.compile(r"(token=)[^&\s\"]*")  # a /login URL in the log keeps its token out
MAX_CLIENTS = 16  # requests answered at once; more are closed at once, not queued on threads


def stylesheet() -> bytes:
    return resources.files("featherflow.web").joinpath("static/style.css").read_bytes()


class BadRequest(UsageError):
    """Answered 400: a query parameter that is not what the route takes."""


def _number(query, name: str, default: Optional[int], low: int, high: int) -> Optional[int]:
    values = query.get(name)
    if not values:
        return default
    if len(values) > 1 or not re.fullmatch(r"\d{1,18}", values[0]) or not low <= int(values[0]) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(values[0])


class Handler(BaseHTTPRequestHandler):
    server_version = "featherflow"
    sys_version = ""
    timeout = 30  # a client that stops sending frees its thread

    # -- plumbing ------------------------------------------------------------------

    def log_message(self, fmt, *args):  # to the logger, not stderr: the library never prints
        log.info("%s %s", self.address_string(), SECRET_IN_URL.sub(r"\1***", fmt % args))

    def _send(self, status: int, body: bytes, kind: str, extra=None) -> None:
        self.send_response(status)
        for key, value in {**HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, status: int, text: str, extra=None) -> None:
        self._send(status, text.encode("utf-8"), "text/html; charset=utf-8", extra)

    def _json(self, status: int, data) -> None:
        self._send(status, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
                   "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        if self.path.startswith("/api/") or self.path.startswith("/healthz"):
            self._json(status, {"error": message})
        else:
            self._html(status, pages.error_page(status, message, self.server.now()))

    def _refuse_method(self):
        self._send(405, b"method not allowed: this server only reads\n", "text/plain; charset=utf-8",
                   {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        try:
            self._route()
        except NotFound:
            self._error(404, "not found")
        except BadRequest as exc:
            self._error(400, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # one bad request must not take the server down, nor show a traceback
            log.exception("while answering %s", self.path)
            try:
                self._error(500, "internal error (see the server's log)")
            except OSError:
                pass
        finally:
            self.server.site.done()

    # -- routing -------------------------------------------------------------------

    def _route(self) -> None:
        parts = urlsplit(self.path)
        token = self.server.token
        if not token and not LOOPBACK_HOSTS.match(self.headers.get("Host", "")):
            # Without a token only this machine may ask: a page of another site that had
            # its name resolve to 127.0.0.1 (DNS rebinding) sends its own Host.
            return self._error(403, "this server answers only to localhost (configure a token to open it wider)")
        for pattern, name in ROUTES:
            match = pattern.match(parts.path)
            if match:
                break
        else:
            raise NotFound(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        if name == "login":
            return self._login(query)
        if not auth.allowed(token, self.headers.get("Authorization"), self.headers.get("Cookie")):
            return self._send(401, b"a token is needed: open /login?token=TOKEN or send Authorization: Bearer\n",
                              "text/plain; charset=utf-8", {"WWW-Authenticate": 'Bearer realm="featherflow"'})
        getattr(self, f"page_{name}")(query, *match.groups())

    def _login(self, query) -> None:
        given = (query.get("token") or [None])[0]
        if not self.server.token:
            return self._send(303, b"", "text/plain", {"Location": "/"})
        if not auth.same(given, self.server.token):
            return self._html(401, pages.login_page(self.server.now()))
        self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": auth.login_cookie(self.server.token)})

    # -- pages ---------------------------------------------------------------------

    def page_home(self, query) -> None:
        site, now = self.server.site, self.server.now()
        snap = site.snapshot(now)
        self._html(200, pages.home(snap, judge(snap, now), site.failures(snap), site.extras(), now))

    def page_history(self, query) -> None:
        site, now = self.server.site, self.server.now()
        before = _number(query, "before", None, 1, 10 ** 18)
        self._html(200, pages.history_page(site.history(before), now, before, RUNS_PAGE))

    def page_run(self, query, run_id) -> None:
        site, now = self.server.site, self.server.now()
        run, attempts = site.run_record(int(run_id))
        snap = site.snapshot(now, int(run_id))
        self._html(200, pages.run_page(snap, run, attempts, order_of(run), depends_of(run), now))

    def page_log(self, query, run_id, task_id, attempt) -> None:
        now = self.server.now()
        run, mine, path = self.server.site.attempt_log(int(run_id), task_id, int(attempt))
        try:
            lines, skipped, size = tail(path)
            error = None
        except NotFound:
            lines, skipped, size, error = (), 0, 0, f"no log yet: attempt {mine.attempt} is {mine.state}"
        self._html(200, pages.log_page(run, mine, lines, skipped, size, error, now))

    def page_raw(self, query, run_id, task_id, attempt) -> None:
        _, _, path = self.server.site.attempt_log(int(run_id), task_id, int(attempt))
        fd, size = open_log(path)
        with os.fdopen(fd, "rb") as f:
            self.send_response(200)
            for key, value in HEADERS.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            left = size
            while left > 0 and self.command != "HEAD":
                chunk = f.read(min(CHUNK, left))
                if not chunk:  # truncated meanwhile: the client sees a short answer, not a hang
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def page_schedule(self, query, name) -> None:
        now = self.server.now()
        schedule, next_at, slots = self.server.site.schedule(name, now)
        self._html(200, pages.schedule_page(schedule, next_at, slots, now))

    def page_css(self, query) -> None:
        self._send(200, self.server.css, "text/css; charset=utf-8")

    # -- JSON ----------------------------------------------------------------------

    def page_api_runs(self, query) -> None:
        limit = _number(query, "limit", API_RUNS, 1, API_RUNS_MAX)
        before = _number(query, "before", None, 1, 10 ** 18)
        self._json(200, self.server.site.runs_document(self.server.now(), limit, before))

    def page_api_run(self, query, run_id) -> None:
        self._json(200, self.server.site.run_document(int(run_id), self.server.now()))

    def page_api_schedules(self, query) -> None:
        self._json(200, self.server.site.schedules_document(self.server.now()))

    def page_healthz(self, query) -> None:
        now = self.server.now()
        health = judge(self.server.site.snapshot(now), now)
        self._json(200 if health.ok else 503, {"healthy": health.ok, "reason": health.reason})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, site: Site, token: Optional[str], now: Callable[[], datetime] = clock.now,
                 max_clients: int = MAX_CLIENTS):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.site, self.token, self.now = site, token, now
        self.css = stylesheet()
        self.slots = threading.BoundedSemaphore(max_clients)
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        """A thread per request, but at most `max_clients` at once: a flood of idle
        connections cannot pile up threads (each waits up to Handler.timeout)."""
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def open_server(db_path: Path, host: str, port: int, token: Optional[str], **site_options) -> Server:
    """Check the bind (no token: loopback only), open the database read-only, bind the port."""
    auth.check_bind(host, token)
    site = Site(db_path, **site_options)
    try:
        return Server((host, port), site, token)
    except OSError as exc:
        site.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}; valid: a free port, "
                         "an address of this machine)") from None


def serve(db_path: Path, host: str, port: int, token: Optional[str],
          on_ready: Callable[[Server], None] = lambda server: None) -> int:
    """Serve until SIGTERM, SIGINT or SIGHUP; the handlers only set a flag."""
    server = open_server(db_path, host, port, token)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    worker = threading.Thread(target=server.serve_forever, name="featherflow-serve", daemon=True)
    try:
        worker.start()
        on_ready(server)
        while not stop.wait(3600):
            pass
    finally:
        server.shutdown()
        server.server_close()
        server.site.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
