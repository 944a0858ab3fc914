"""What a notification channel is made of, checked before it is stored (pure).

A channel is one receiver (a command, a webhook, an email address, a ping URL), the
events it wants, optional flow and schedule filters, and its storm control. A password
is never part of it: only the name of the environment variable or file to read it from.
"""

import re
from typing import Dict, List, Optional, Sequence

from featherflow.errors import UsageError

KINDS = ("command", "webhook", "email", "ping")
EVENTS = ("started", "succeeded", "failed", "interrupted", "recovered", "missed", "cancelled",
          "scheduler", "heartbeat")
DEFAULT_EVENTS = ("failed", "interrupted", "recovered", "missed")
# A ping channel is a dead man's switch: start, success and failure of every run.
PING_EVENTS = ("started", "succeeded", "recovered", "failed", "interrupted", "cancelled")
FORMATS = ("json", "slack", "discord", "ntfy")
SECURITY = ("none", "starttls", "ssl")
DEFAULT_REPEAT = 6 * 3600.0
DEFAULT_HEARTBEAT = 300.0
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HEADER = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):\s*(.*)$")
EMAIL = re.compile(r"^[^@\s,<>]+@[^@\s,<>]+$")
AGE = re.compile(r"^(\d+)([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_period(text: str, what: str) -> float:
    """`90s`, `15m`, `6h`, `1d`, `2w` -> seconds."""
    match = AGE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"{what} {text!r}: not a period (valid: a whole number > 0 and a unit "
                         "s, m, h, d or w, e.g. 6h)")
    return float(int(match.group(1)) * UNITS[match.group(2)])


def parse_events(text: Optional[str], kind: str) -> List[str]:
    if text is None:
        return list(PING_EVENTS if kind == "ping" else DEFAULT_EVENTS)
    events = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in events if e not in EVENTS]
    if unknown or not events:
        raise UsageError(f"--on {text!r}: unknown event {', '.join(map(repr, unknown)) or '(none given)'} "
                         f"(valid, comma-separated: {', '.join(EVENTS)})")
    return list(dict.fromkeys(events))


def build(name: str, kind: str, target: str, events: Optional[str] = None,
          flows: Sequence[str] = (), schedules: Sequence[str] = (), repeat: Optional[str] = None,
          every: bool = False, fmt: Optional[str] = None, headers: Sequence[str] = (),
          timeout: Optional[float] = None, heartbeat: Optional[str] = None,
          smtp: Optional[Dict] = None) -> Dict:
    """The stored form of a channel; UsageError naming the field and what is valid."""
    if not NAME.match(name or ""):
        raise UsageError(f"channel name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit")
    if kind not in KINDS:
        raise UsageError(f"channel kind {kind!r} (valid: {', '.join(KINDS)})")
    target = (target or "").strip()
    options: Dict = {}
    if kind in ("webhook", "ping"):
        if not re.match(r"^https?://[^\s/]+", target):
            raise UsageError(f"--{kind} {target!r}: not an http:// or https:// URL")
    if kind == "command" and not target:
        raise UsageError("--command: give the command to run, e.g. --command 'logger -t featherflow'")
    if kind == "email" and not EMAIL.match(target):
        raise UsageError(f"--email {target!r}: not an email address like you@example.org")
    if fmt is not None:
        if kind != "webhook":
            raise UsageError("--format is for --webhook channels only")
        if fmt not in FORMATS:
            raise UsageError(f"--format {fmt!r} (valid: {', '.join(FORMATS)})")
        options["format"] = fmt
    elif kind == "webhook":
        options["format"] = "json"
    if headers:
        if kind not in ("webhook", "ping"):
            raise UsageError("--header is for --webhook and --ping channels only")
        parsed = {}
        for header in headers:
            match = HEADER.match(header)
            if not match or "\n" in header or "\r" in header:
                raise UsageError(f"--header {header!r}: write it as 'Name: value'")
            parsed[match.group(1)] = match.group(2)
        options["headers"] = parsed
    if timeout is not None:
        options["timeout"] = float(timeout)
    smtp = {k: v for k, v in (smtp or {}).items() if v is not None}
    if smtp and kind != "email":
        raise UsageError("--smtp-* and --email-from are for --email channels only")
    if smtp.get("smtp_security", "none") not in SECURITY:
        raise UsageError(f"--smtp-security {smtp['smtp_security']!r} (valid: {', '.join(SECURITY)})")
    if "smtp_password_env" in smtp and "smtp_password_file" in smtp:
        raise UsageError("give --smtp-password-env or --smtp-password-file, not both")
    if ("smtp_password_env" in smtp or "smtp_password_file" in smtp) and "smtp_user" not in smtp:
        raise UsageError("a password needs --smtp-user")
    if "email_from" in smtp and not EMAIL.match(smtp["email_from"]):
        raise UsageError(f"--email-from {smtp['email_from']!r}: not an email address")
    options.update(smtp)
    chosen = parse_events(events, kind)
    if "heartbeat" in chosen:
        options["heartbeat_seconds"] = parse_period(heartbeat, "--heartbeat") if heartbeat else DEFAULT_HEARTBEAT
    elif heartbeat:
        raise UsageError("--heartbeat needs 'heartbeat' among the --on events")
    return {"name": name, "kind": kind, "target": target, "options": options, "events": chosen,
            "flows": list(dict.fromkeys(flows)), "schedules": list(dict.fromkeys(schedules)),
            "repeat_seconds": parse_period(repeat, "--repeat") if repeat else DEFAULT_REPEAT,
            "every": bool(every)}
