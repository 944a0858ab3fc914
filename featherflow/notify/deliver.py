"""Delivery from the outbox: fan events out to channels, claim, send, record.

Whoever runs this (the scheduler daemon, the run's own `_mark` once the run ended,
`featherflow notify flush`, any command that wrote an event) does the same thing,
and any number may run at once: an event is fanned out once (under the write
lock), a delivery is claimed under the write lock before it is sent and recorded
after. A process killed between sending and recording leaves its claim; once the
claimer is gone, the row is claimed again and sent again with the same
idempotency key, so a receiver can drop the repeat. At least once; never lost.

Retries (documented in the README): a failed try is tried again after 30 s, then
1, 2, 4 ... minutes, at most 30 minutes apart, for 24 hours after the event (a
heartbeat only until the next one is due); after that the delivery is `failed`
and `doctor` reports it.

Storm control: a channel without `every` is told of a flow's (or schedule's)
first failure, then at most once per `repeat_seconds` with the count of failures
since the last alert, then `recovered` when the flow succeeds again. The same for
`missed` slots of one schedule. Every other event is sent each time.
"""

import logging
import os
import time
from datetime import datetime, timedelta
from typing import Callable, Dict, List, Optional

from featherflow import clock, proc, states
from featherflow.notify import payload as payloads
from featherflow.store.outbox import PENDING, SUPPRESSED

log = logging.getLogger(__name__)

RETRY_FIRST = 30.0
RETRY_MAX = 1800.0
GIVE_UP = timedelta(hours=24)


def retry_at(tries: int, created_at: datetime, now: datetime, give_up: timedelta = GIVE_UP) -> Optional[datetime]:
    """When to try again after `tries` failed tries; None when the time to retry is over."""
    delay = min(RETRY_MAX, RETRY_FIRST * 2 ** max(0, tries - 1))
    moment = now + timedelta(seconds=delay)
    return None if moment - created_at > give_up else moment


def wants(channel, kind: str, doc: Dict, event) -> bool:
    if kind not in channel.events:
        return False
    if kind == "heartbeat":
        return event.detail.get("channel") == channel.id
    if channel.flows and doc.get("flow") not in channel.flows:
        return False
    if channel.schedules and doc.get("schedule") not in channel.schedules:
        return False
    return True


class Deliverer:
    """One process's delivery pass over the outbox of `store` (see the module's docstring)."""

    def __init__(self, store, send: Callable, now: Callable[[], datetime] = clock.now,
                 host: Optional[str] = None, pid: Optional[int] = None):
        self.store = store
        self.send = send
        self.now = now
        self.host = host or payloads.hostname()
        self.pid = pid or os.getpid()
        start, boot = proc.identity(self.pid)
        self.identity = (start, boot)

    # -- fan-out --

    def base(self, event) -> Optional[Dict]:
        """The event's payload before the channel's view of it (None: its run is gone)."""
        store = self.store
        if event.run_id is not None:
            try:
                run = store.runs.get_run(event.run_id)
            except Exception:  # pruned between the event and now: nothing left to tell
                return None
            name = self._schedule_name(run.schedule_id)
            doc = payloads.for_run(event.kind, run, store.runs.latest_attempts(run.id), name, self.host)
            doc["schedule_id"] = run.schedule_id
            doc["backfill_id"] = store.backfills.backfill_of_run(run.id)  # null unless a backfill ran it
            return doc
        doc = payloads.for_schedule(event.kind, self._schedule_name(event.schedule_id), event.slot_at,
                                    event.detail, self.host)
        doc["schedule_id"] = event.schedule_id
        doc["backfill_id"] = None
        return doc

    def _schedule_name(self, schedule_id: Optional[int]) -> Optional[str]:
        if schedule_id is None:
            return None
        try:
            return self.store.schedules.get_schedule(schedule_id).name
        except Exception:
            return None

    def plan(self, event, doc: Optional[Dict]) -> List[Dict]:
        """The event's deliveries, decided inside the fan-out transaction (storm control reads
        the deliveries before it, which that lock orders)."""
        if doc is None:
            return []
        outbox = self.store.outbox
        kind = event.kind
        schedule_id = doc.pop("schedule_id", None)
        group = f"run:{doc['flow']}/{schedule_id or '-'}" if event.run_id else (
            f"schedule:{schedule_id}" if kind == "missed" else kind)
        recovered = (kind == "succeeded" and outbox.previous_finished_state(doc["flow"], schedule_id, event.run_id)
                     in (states.FAILED, states.INTERRUPTED))
        planned = []
        for channel in outbox.list_channels():
            if not channel.enabled or channel.created_at > event.created_at:
                continue  # a channel added later is not told the past
            view = "recovered" if recovered and "recovered" in channel.events else kind
            if not wants(channel, view, doc, event):
                continue
            state, count = PENDING, 1
            if not channel.every and view in ("failed", "missed"):
                reset = (outbox.last_success_at(doc["flow"], schedule_id, event.run_id)
                         if view == "failed" else None)
                last = outbox.last_alert(channel.id, group, view, reset)
                if last is not None and (event.created_at - last).total_seconds() < channel.repeat_seconds:
                    state = SUPPRESSED
                elif last is not None:
                    count = outbox.suppressed_since(channel.id, group, view, last) + 1
            body = dict(doc, event=view, failures_since_last_alert=count if view in ("failed", "missed") else 0)
            body["key"] = f"{doc.get('run_uid') or 'featherflow'}/{view}/{event.id}"
            body["summary"] = payloads.summary(body)
            planned.append({"channel_id": channel.id, "kind": view, "group_key": group, "state": state,
                            "payload": body, "key": body["key"], "created_at": event.created_at})
        return planned

    def fan_out(self, budget: float = 300.0) -> int:
        """Every event not yet fanned out, a batch at a time, oldest first."""
        count, give_up = 0, time.monotonic() + budget
        while time.monotonic() < give_up:
            batch = self.store.outbox.unfanned()
            if not batch:
                break
            for event in batch:
                doc = self.base(event)  # reads logs: outside the transaction
                if self.store.outbox.fan_out(event.id, lambda: self.plan(event, doc), self.now()):
                    count += 1
        return count

    # -- sending --

    def flush(self, budget: float = 300.0) -> Dict[str, int]:
        """Fan out, then send every due delivery; stops after `budget` seconds of work."""
        done = {"events": self.fan_out(budget), "sent": 0, "retry": 0, "failed": 0}
        give_up = time.monotonic() + budget
        while time.monotonic() < give_up:
            delivery = self.store.outbox.claim(self.pid, *self.identity, self.now(), proc.is_alive)
            if delivery is None:
                break
            done[self.deliver(delivery)] += 1
        return done

    def deliver(self, delivery) -> str:
        channel = self.store.outbox.channel_by_id(delivery.channel_id)
        if channel is None or not channel.enabled:
            ok, answer = False, "not sent: the channel is disabled"
        else:
            try:
                ok, answer = self.send(channel.kind, channel.target, channel.options, delivery.payload, delivery.kind)
            except Exception as exc:  # a transport's bug must not stop the others
                log.exception("channel %s: sending failed", channel.name)
                ok, answer = False, f"error: {exc}"
        now = self.now()
        give_up = GIVE_UP
        if delivery.kind == "heartbeat" and channel is not None:
            give_up = timedelta(seconds=channel.options.get("heartbeat_seconds", 300.0))
        again = None if ok else retry_at(delivery.tries + 1, delivery.created_at, now, give_up)
        self.store.outbox.record_try(delivery.id, ok, answer, now, again)
        if not ok:
            log.warning("channel %s: %s (%s)", getattr(channel, "name", delivery.channel_id), answer,
                        "will retry" if again else "gave up")
        return "sent" if ok else ("retry" if again else "failed")


def heartbeats(store, now: datetime) -> int:
    """Write a heartbeat event for each channel that wants one and is due (the daemon's tick)."""
    written = 0
    for channel in store.outbox.list_channels():
        if not channel.enabled or "heartbeat" not in channel.events:
            continue
        every = channel.options.get("heartbeat_seconds", 300.0)
        last = store.outbox.last_heartbeat(channel.id)
        if last is None or (now - last).total_seconds() >= every - 1:
            store.outbox.record_event("heartbeat", now, detail={"channel": channel.id})
            written += 1
    return written

