"""The transports: run a command, POST a webhook, ping a URL, send a mail; one `send`.

Standard library only. A receiver that is down, slow or refusing is the normal case for a
notifier, not an error: `send` returns (delivered, the receiver's answer as one short line)
and never raises for it, so the outbox records the answer and tries again later. Nothing
here touches the database; the caller sends outside any transaction.
"""

import http.client
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from featherflow import __version__
from featherflow.notify import formats
from featherflow.text import escape

ANSWER_MAX = 500
BODY_SHOWN = 200
BODY_READ = 4096  # of a receiver's answer: enough for its first 200 characters
OUTPUT_KEPT = 64 * 1024  # of a command's output: its last line is what we keep
TIMEOUTS = {"command": 30, "webhook": 10, "ping": 10, "email": 20}
SMTP_PORTS = {"none": 25, "starttls": 587, "ssl": 465}
NOT_PINGED = "not sent: ping channels send started/succeeded/failed only"
# The environment a command channel gets: variable name <- payload key.
COMMAND_ENV = {"FEATHERFLOW_FLOW_NAME": "flow", "FEATHERFLOW_RUN_ID": "run_id", "FEATHERFLOW_RUN_UID": "run_uid",
               "FEATHERFLOW_RUN_STATE": "state", "FEATHERFLOW_SCHEDULE": "schedule",
               "FEATHERFLOW_SCHEDULED_AT": "scheduled_at", "FEATHERFLOW_SUMMARY": "summary",
               "FEATHERFLOW_IDEMPOTENCY_KEY": "key"}


def answer(text) -> str:
    """One line of at most 500 characters, every control character escaped: a receiver's
    answer is shown in `notify log` and on a terminal, so it must not act on either."""
    line = escape(str(text).strip(), keep="")
    return line if len(line) <= ANSWER_MAX else line[: ANSWER_MAX - 1] + "…"


@contextmanager
def _pipes_answer_epipe():
    """SIGPIPE ignored while sending, as Python has it by default: a process that reset it
    (before an exec that failed, say) would otherwise die when a command does not read its
    stdin or a receiver closes its socket. Only the main thread may change a handler."""
    sigpipe = getattr(signal, "SIGPIPE", None)
    if sigpipe is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(sigpipe, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(sigpipe, old)


def send(kind: str, target: str, options: dict, payload: dict, event: str,
         environ: Mapping[str, str] = os.environ) -> Tuple[bool, str]:
    """Deliver `payload` to one channel: (delivered, the receiver's answer)."""
    with _pipes_answer_epipe():
        return _send(kind, target, options or {}, payload, event, environ)


def _send(kind: str, target: str, options: dict, payload: dict, event: str,
          environ: Mapping[str, str]) -> Tuple[bool, str]:
    try:
        if kind == "command":
            delivered, said = _command(target, options, payload, event, environ)
        elif kind == "webhook":
            data, headers = formats.body(options.get("format") or "json", payload)
            delivered, said = _http(target, data, headers, options, environ, _timeout(options, "webhook"))
        elif kind == "ping":
            url = formats.ping_url(target, event, payload.get("run_uid"))
            if url is None:
                return True, NOT_PINGED
            data = str(payload.get("summary") or event).encode("utf-8")
            headers = {"Content-Type": "text/plain; charset=utf-8",
                       "Idempotency-Key": answer(payload.get("key") or "")}
            delivered, said = _http(url, data, headers, options, environ, _timeout(options, "ping"))
        elif kind == "email":
            delivered, said = _email(target, options, payload, environ)
        else:
            delivered, said = False, f"unknown channel kind {kind!r} (valid: command, webhook, ping, email)"
    except ValueError as error:  # a bad format, header or address: the channel's own mistake
        delivered, said = False, str(error)
    return delivered, answer(said)


def _timeout(options: dict, kind: str) -> float:
    try:
        value = float(options.get("timeout") or TIMEOUTS[kind])
    except (TypeError, ValueError):
        value = TIMEOUTS[kind]
    return value if value > 0 else TIMEOUTS[kind]


def _seconds(value: float) -> str:
    return f"{value:g}s"


# -- command -----------------------------------------------------------------------------

def command_environment(payload: dict, event: str, environ: Mapping[str, str]) -> Dict[str, str]:
    env = dict(environ)
    env["FEATHERFLOW_EVENT"] = event
    for name, key in COMMAND_ENV.items():
        value = payload.get(key)
        env[name] = "" if value is None else str(value).replace("\0", "")  # exec refuses a NUL
    return env


def _last_line(output: bytes) -> str:
    lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _command(target: str, options: dict, payload: dict, event: str,
             environ: Mapping[str, str]) -> Tuple[bool, str]:
    timeout = _timeout(options, "command")
    stdin = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
    try:
        # Its own session: on a timeout the whole group goes, the shell's children too.
        child = subprocess.Popen(["/bin/sh", "-c", target], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, env=command_environment(payload, event, environ),
                                 start_new_session=True)
    except OSError as error:
        return False, f"cannot start /bin/sh: {error.strerror or error}"
    try:
        output, _ = child.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        return False, f"timed out after {_seconds(timeout)}"
    last = _last_line(output[-OUTPUT_KEPT:])
    return child.returncode == 0, f"exit {child.returncode}" + (f": {last}" if last else "")


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except OSError:
        pass  # gone already
    try:
        child.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        # A grandchild that left the group still holds the pipe: stop reading, reap the shell.
        for stream in (child.stdin, child.stdout):
            if stream:
                stream.close()
        child.wait()


# -- HTTP --------------------------------------------------------------------------------

class _SameScheme(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the scheme we started with: never from https down to
    http (the body would travel in clear), never to ftp or file."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() != urlsplit(req.full_url).scheme.lower():
            return None  # urllib then raises the 3xx as an HTTPError: not delivered
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _proxies(url: str, environ: Mapping[str, str]) -> Dict[str, str]:
    """The proxies of `environ` (not of os.environ: the caller's environment is the one asked)."""
    found = {}
    for scheme in ("http", "https", "no"):
        value = environ.get(f"{scheme}_proxy") or environ.get(f"{scheme.upper()}_PROXY")
        if value:
            found[scheme] = value
    host = urlsplit(url).hostname or ""
    if "no" in found and urllib.request.proxy_bypass_environment(host, found):
        return {}
    found.pop("no", None)
    return found


def _http(url: str, data: bytes, headers: Dict[str, str], options: dict, environ: Mapping[str, str],
          timeout: float) -> Tuple[bool, str]:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        return False, f"refused: {scheme or 'no'} scheme (valid: http, https)"
    sent = {"User-Agent": f"featherflow/{__version__}", **headers}
    for name, value in (options.get("headers") or {}).items():
        sent[str(name)] = str(value)
    request = urllib.request.Request(url, data=data, headers=sent, method="POST")
    handlers = [urllib.request.ProxyHandler(_proxies(url, environ)), _SameScheme]
    if scheme == "https":  # loading the CA certificates costs ~40 ms: only when they are used
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context()))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            code, text = response.status, response.read(BODY_READ)
    except urllib.error.HTTPError as error:
        try:
            text = error.read(BODY_READ)
        except OSError:
            text = b""
        return False, f"HTTP {error.code} {_shown(text) or error.reason}"
    except urllib.error.URLError as error:
        return False, _why(error.reason, timeout)
    except (OSError, ValueError, http.client.HTTPException) as error:
        return False, _why(error, timeout)
    return 200 <= code < 300, f"HTTP {code} {_shown(text)}".rstrip()


def _shown(text: bytes) -> str:
    return text.decode("utf-8", "replace")[:BODY_SHOWN].strip()


def _why(error, timeout: float) -> str:
    """A network failure in a few words: what a person fixing the receiver needs first."""
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f"timed out after {_seconds(timeout)}"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host: {error.strerror or error}"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {getattr(error, 'reason', None) or error}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


# -- email -------------------------------------------------------------------------------

def _password(options: dict, environ: Mapping[str, str]) -> Tuple[Optional[str], str]:
    """(the SMTP password, "") or (None, why not). Read at send time: never stored."""
    name, path = options.get("smtp_password_env"), options.get("smtp_password_file")
    if name:
        value = environ.get(name)
        return (value, "") if value is not None else (None, f"password variable {name} is not set")
    if path:
        try:
            lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            return None, f"password file {path} cannot be read: {getattr(error, 'strerror', None) or error}"
        return (lines[0].strip() if lines else ""), ""
    return None, "smtp_user is set but neither smtp_password_env nor smtp_password_file"


def _email(to: str, options: dict, payload: dict, environ: Mapping[str, str]) -> Tuple[bool, str]:
    user = options.get("smtp_user")
    security = options.get("smtp_security") or ("starttls" if user else "none")
    if security not in SMTP_PORTS:
        return False, f"unknown smtp_security {security!r} (valid: none, starttls, ssl)"
    host = options.get("smtp_host") or "localhost"
    port = int(options.get("smtp_port") or SMTP_PORTS[security])
    timeout = _timeout(options, "email")
    password = None
    if user:
        password, why = _password(options, environ)
        if password is None:
            return False, why
    sender = options.get("email_from") or f"featherflow@{socket.gethostname()}"
    msg = formats.email(payload, sender, to)
    data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    try:
        delivered, said = _smtp(host, port, security, timeout, user, password, sender, to, data)
    except smtplib.SMTPAuthenticationError as error:
        delivered, said = False, f"login refused: {error.smtp_code} {_text(error.smtp_error)}"
    except smtplib.SMTPResponseException as error:
        delivered, said = False, f"{error.smtp_code} {_text(error.smtp_error)}"
    except smtplib.SMTPException as error:
        delivered, said = False, str(error) or type(error).__name__
    except (OSError, ValueError) as error:
        delivered, said = False, _why(error, timeout)
    if password:  # a server that echoes what it was sent must not put it in our log
        said = said.replace(password, "***")
    return delivered, said


def _text(reply) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _smtp(host: str, port: int, security: str, timeout: float, user: Optional[str], password: Optional[str],
          sender: str, to: str, data: bytes) -> Tuple[bool, str]:
    context = ssl.create_default_context()
    if security == "ssl":
        server = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    else:
        server = smtplib.SMTP(host, port, timeout=timeout)
    try:
        server.ehlo()
        if security == "starttls":
            server.starttls(context=context)  # raises when the server offers no STARTTLS
            server.ehlo()
        if user:
            server.login(user, password or "")
        # mail/rcpt/data one by one, not sendmail(): the reply to the data is the answer.
        code, reply = server.mail(sender)
        if code != 250:
            return False, f"{code} {_text(reply)} (to MAIL FROM)"
        code, reply = server.rcpt(to)
        if code not in (250, 251):
            return False, f"{code} {_text(reply)} (to RCPT TO {to})"
        code, reply = server.data(data)
        return code == 250, f"{code} {_text(reply)}"
    finally:
        try:
            server.quit()
        except (smtplib.SMTPException, OSError):
            server.close()
