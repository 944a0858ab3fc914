"""Managing channels and reading the outbox: what `featherflow notify ...` calls.

A channel's JSON never holds a password (none is stored): only where one is read.
"""

from datetime import datetime
from typing import Dict, List, Tuple

from featherflow import clock, text
from featherflow.notify import channels, payload as payloads
from featherflow.notify.deliver import Deliverer


def add(store, now: datetime, **fields) -> object:
    return store.outbox.add_channel(channels.build(**fields), now)


def channel_json(channel) -> Dict:
    return {"name": channel.name, "kind": channel.kind, "target": channel.target, "options": channel.options,
            "events": channel.events, "flows": channel.flows, "schedules": channel.schedules,
            "repeat_seconds": channel.repeat_seconds, "every": channel.every, "enabled": channel.enabled,
            "created_at": clock.iso(channel.created_at), "updated_at": clock.iso(channel.updated_at)}


def channel_lines(channel) -> List[str]:
    opts = dict(channel.options)
    lines = [f"channel {channel.name}: {channel.kind} {channel.target}" + ("" if channel.enabled else " (disabled)"),
             f"  events:   {', '.join(channel.events)}",
             f"  flows:    {', '.join(channel.flows) or 'all'}",
             f"  schedules: {', '.join(channel.schedules) or 'all'}",
             "  repeat:   " + ("every event" if channel.every else
                               f"first failure, then at most every {text.duration(channel.repeat_seconds)}")]
    for key in sorted(opts):
        value = opts[key]
        if key == "headers":
            value = ", ".join(f"{k}: ..." for k in value)  # header values may hold tokens
        lines.append(f"  {key}: {value}")
    return lines


def table(store) -> List[str]:
    rows = store.outbox.list_channels()
    if not rows:
        return ["no notification channels yet (add one with `featherflow notify add NAME --webhook URL`)"]
    width = max(len(c.name) for c in rows)
    return [f"{c.name.ljust(width)}  {c.kind:<7}  {'on ' if c.enabled else 'off'}  {','.join(c.events)}  "
            f"{text.clean(c.target)}" for c in rows]


def delivery_json(store, d, tries: bool = False) -> Dict:
    doc = {"id": d.id, "channel": d.channel, "event": d.kind, "state": d.state, "key": d.key,
           "flow": d.payload.get("flow"), "run_id": d.payload.get("run_id"), "summary": d.payload.get("summary"),
           "tries": d.tries, "answer": d.answer, "created_at": clock.iso(d.created_at),
           "next_try_at": clock.iso(d.next_try_at) if d.state == "pending" else None,
           "sent_at": clock.iso(d.sent_at)}
    if tries:
        doc["each_try"] = [{"at": clock.iso(t["at"]), "ok": t["ok"], "answer": t["answer"]}
                           for t in store.outbox.tries(d.id)]
    return doc


def log_lines(deliveries) -> List[str]:
    if not deliveries:
        return ["no notifications yet"]
    out = []
    for d in deliveries:
        when = text.local(d.sent_at or d.created_at)
        out.append(f"{d.id:>5}  {when}  {d.state:<10} {d.channel}  {d.kind:<11} tries {d.tries}  "
                   f"{text.clean(d.payload.get('summary') or '')}")
        if d.answer:
            out.append(f"       answer: {text.clean(d.answer)}")
    return out


def test(store, name: str, send, now: datetime) -> Tuple[bool, str]:
    """Send a clearly marked test event to channel `name` now (not through the outbox)."""
    channel = store.outbox.get_channel(name)
    doc = payloads.test_payload(payloads.hostname(), now)
    return send(channel.kind, channel.target, channel.options, doc, "test")


def flush(store, send, budget: float = 300.0) -> Dict[str, int]:
    return Deliverer(store, send).flush(budget)

