"""What each receiver is sent: a webhook's body and headers per format, an email, a ping's URL.

Pure and standard library only, so every format is tested by parsing it back, with no
receiver at all. The payload (a dict, the contract the outbox builds) is only read here.
"""

import json
import re
from email.header import Header
from email.message import EmailMessage
from email.utils import formatdate
from typing import Dict, List, Optional, Tuple
from urllib.parse import quote, urlsplit, urlunsplit

from featherflow.text import escape

FORMATS = ("json", "slack", "discord", "ntfy")
# Slack cuts a message's text at 3,000 characters in a section, Discord refuses more than
# 2,000 in `content`; ntfy turns a message over 4,096 bytes into an attachment. A margin
# under each so that our own cut, with its ellipsis, is what the reader sees.
LIMITS = {"slack": 2900, "discord": 1900, "ntfy": 3500}
WARNING_EVENTS = {"failed", "interrupted", "missed"}
GOOD_EVENTS = {"succeeded", "recovered"}
NTFY_TAGS = {"started": "arrow_forward", "cancelled": "no_entry_sign", "scheduler": "alarm_clock",
             "heartbeat": "heartbeat", "test": "test_tube"}
PING_SUFFIX = {"started": "/start", "succeeded": "", "recovered": "", "heartbeat": "", "test": "",
               "failed": "/fail", "interrupted": "/fail", "cancelled": "/fail"}


def _one_line(value) -> str:
    """A header's value: no line break or control character can start a header of its own."""
    return escape("" if value is None else str(value), keep="")


def _event(payload: dict) -> str:
    return str(payload.get("event") or payload.get("state") or "")


def _task_head(task: dict) -> str:
    head = f"{task.get('task_id')} (attempt {task.get('attempt')}, exit {task.get('exit_code')})"
    reason = task.get("reason")
    return f"{head}: {_one_line(reason)}" if reason else head


def _tail_lines(task: dict) -> List[str]:
    return [escape(line, keep="\t") for line in task.get("log_tail") or []]


def _last_lines(lines: List[str], room: int) -> List[str]:
    """The end of a log that fits in `room` characters: the last lines say why it failed."""
    kept, used = [], 0
    for line in reversed(lines):
        if used + len(line) + 1 > room:
            break
        kept.append(line)
        used += len(line) + 1
    return kept[::-1]


def message(payload: dict, limit: int, fence: str = "```") -> str:
    """The summary, then each failed task with the end of its log in a code block, in `limit`
    characters: every task keeps its head line, the tails share what room is left."""
    summary = _one_line(payload.get("summary"))
    tasks = payload.get("failed_tasks") or []
    heads = [_task_head(task) for task in tasks]
    fixed = len(summary) + sum(len(h) + 2 * len(fence) + 4 for h in heads)
    room = max(0, limit - fixed) // max(1, len(tasks))
    parts = [summary]
    for head, task in zip(heads, tasks):
        tail = _last_lines(_tail_lines(task), room)
        parts.append(head + (f"\n{fence}\n" + "\n".join(tail) + f"\n{fence}" if tail else ""))
    text = "\n".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ntfy_title(payload: dict) -> str:
    """ntfy reads RFC 2047 encoded headers; http.client can send only latin-1 ones."""
    title = _one_line(payload.get("summary"))[:250] or f"featherflow {_event(payload)}"
    return title if title.isascii() else Header(title, "utf-8").encode()


def body(fmt: str, payload: dict) -> Tuple[bytes, Dict[str, str]]:
    """The HTTP body and the headers a webhook of format `fmt` sends (json|slack|discord|ntfy)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (valid: {', '.join(FORMATS)})")
    headers = {"Idempotency-Key": _one_line(payload.get("key"))}
    if fmt == "ntfy":
        event = _event(payload)
        tags = ("warning" if event in WARNING_EVENTS else "white_check_mark" if event in GOOD_EVENTS
                else NTFY_TAGS.get(event, "information_source"))
        headers.update({"Content-Type": "text/plain; charset=utf-8", "Title": _ntfy_title(payload),
                        "Tags": tags, "Priority": "4" if event in ("failed", "interrupted") else "3"})
        return message(payload, LIMITS["ntfy"]).encode("utf-8"), headers
    headers["Content-Type"] = "application/json"
    if fmt == "json":
        document = payload
    elif fmt == "slack":
        document = {"text": message(payload, LIMITS["slack"])}
    else:
        document = {"content": message(payload, LIMITS["discord"])}
    # default=str: a datetime left in the payload is sent as text, not a TypeError at 03:00.
    return json.dumps(document, ensure_ascii=False, default=str).encode("utf-8"), headers


def message_id(key) -> str:
    """`<run-uid.failed@featherflow>`: the same event gives the same id, so a mail client
    (or a list server) can drop the copy sent again after a crash."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", ".", str(key or "")).strip(".") or "event"
    return f"<{safe}@featherflow>"


def _mail_text(payload: dict) -> str:
    lines = [_one_line(payload.get("summary")), ""]
    for label, key in (("flow", "flow"), ("run", "run_id"), ("run uid", "run_uid"), ("state", "state"),
                       ("reason", "reason"), ("trigger", "trigger"), ("schedule", "schedule"),
                       ("slot", "scheduled_at"), ("started", "started_at"), ("ended", "ended_at"),
                       ("duration", "duration_seconds"), ("host", "host")):
        if payload.get(key) is not None:
            lines.append(f"{label + ':':<10} {_one_line(payload.get(key))}")
    for task in payload.get("failed_tasks") or []:
        lines += ["", _task_head(task)]
        lines += ["    " + line for line in _tail_lines(task)]
    if payload.get("command"):
        lines += ["", f"To look further: {_one_line(payload['command'])}"]
    document = json.dumps(payload, ensure_ascii=False, indent=2, sort_keys=True, default=str)
    lines += ["", "-- the event as JSON --", document]
    return "\n".join(lines) + "\n"


def email(payload: dict, sender: str, to: str) -> EmailMessage:
    """The notification as a plain-text mail: what happened, the logs' ends, then the JSON."""
    msg = EmailMessage()
    msg["Subject"] = _one_line(payload.get("summary")) or f"featherflow {_event(payload)}"
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id(payload.get("key"))
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    msg["X-Featherflow-Event"] = _one_line(_event(payload))
    text = _mail_text(payload)
    # 8-bit bodies need a server that says 8BITMIME; quoted-printable goes through any.
    msg.set_content(text, cte="7bit" if text.isascii() and max(map(len, text.splitlines())) < 900
                    else "quoted-printable")
    return msg


def ping_url(url: str, kind: str, run_uid: Optional[str]) -> Optional[str]:
    """healthchecks.io's URL for an event: URL/start, URL, URL/fail (None: not pinged), with
    `?rid=` the run so that the service pairs a start with its end."""
    if kind not in PING_SUFFIX:
        return None
    parts = urlsplit(url.rstrip("/"))
    query = parts.query
    if run_uid:
        query = (query + "&" if query else "") + "rid=" + quote(str(run_uid), safe="")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + PING_SUFFIX[kind], query, ""))
