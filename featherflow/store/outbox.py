"""The notification outbox's part of the store: channels, events, deliveries and their tries.

An event is written by the transaction of the change it reports (states.record_event);
here it is fanned out into one delivery per channel that wants it, a delivery is
claimed under the write lock before it is sent, and each try is recorded after. No
transaction here sends anything: the caller sends between `claim` and `record_try`.
"""

import json
from datetime import datetime, timedelta
from typing import Callable, Dict, List, Optional, Sequence

from peewee import SqliteDatabase

from featherflow import clock, states
from featherflow.errors import ConflictError, UsageError
from featherflow.store.models import Channel as ChannelModel, Delivery as DeliveryModel, DeliveryTry
from featherflow.store.models import Event as EventModel, FlowRun
from featherflow.store.records import Channel, Delivery, Event, as_channel, as_delivery, as_event

PENDING, SENDING, SENT, FAILED, SUPPRESSED = "pending", "sending", "sent", "failed", "suppressed"
DELIVERY_STATES = (PENDING, SENDING, SENT, FAILED, SUPPRESSED)
# A claim whose process is alive but has held it this long is hung (every transport has a
# timeout well under it): the row is claimed again.
STALE_CLAIM = timedelta(minutes=10)


class OutboxStore:
    def __init__(self, db: SqliteDatabase):
        self.db = db

    # -- channels --

    def add_channel(self, spec: Dict, now: datetime) -> Channel:
        stamp = clock.to_text(now)
        with self.db.atomic("IMMEDIATE"):
            if ChannelModel.select().where(ChannelModel.name == spec["name"]).exists():
                raise ConflictError(f"channel {spec['name']!r} exists already "
                                    "(remove it first with `featherflow notify remove`)")
            ChannelModel.insert(
                name=spec["name"], kind=spec["kind"], target=spec["target"],
                options=json.dumps(spec.get("options", {}), sort_keys=True),
                events=",".join(spec["events"]), flows=json.dumps(spec.get("flows", [])),
                schedules=json.dumps(spec.get("schedules", [])), repeat_seconds=spec["repeat_seconds"],
                every=bool(spec.get("every")), enabled=True, created_at=stamp, updated_at=stamp).execute()
        return self.get_channel(spec["name"])

    def get_channel(self, name: str) -> Channel:
        row = ChannelModel.select().where(ChannelModel.name == name).dicts().first()
        if row is None:
            known = ", ".join(c.name for c in self.list_channels()) or "none; add one with `featherflow notify add`"
            raise UsageError(f"no notification channel {name!r} (channels: {known})")
        return as_channel(row)

    def channel_by_id(self, channel_id: int) -> Optional[Channel]:
        row = ChannelModel.select().where(ChannelModel.id == channel_id).dicts().first()
        return as_channel(row) if row else None

    def list_channels(self) -> List[Channel]:
        return [as_channel(r) for r in ChannelModel.select().order_by(ChannelModel.name).dicts()]

    def remove_channel(self, name: str) -> Channel:
        channel = self.get_channel(name)
        with self.db.atomic("IMMEDIATE"):
            ChannelModel.delete().where(ChannelModel.id == channel.id).execute()
        return channel

    def set_channel_enabled(self, name: str, enabled: bool, now: datetime) -> Channel:
        channel = self.get_channel(name)
        with self.db.atomic("IMMEDIATE"):
            ChannelModel.update(enabled=enabled, updated_at=clock.to_text(now)).where(
                ChannelModel.id == channel.id).execute()
        return self.get_channel(name)

    # -- events --

    def record_event(self, kind: str, now: datetime, schedule_id: Optional[int] = None,
                     slot_at: Optional[datetime] = None, detail: Optional[Dict] = None) -> Optional[int]:
        """An event of its own (the scheduler's heartbeat), in a transaction of its own."""
        with self.db.atomic("IMMEDIATE"):
            return states.record_event(self.db.cursor(), kind, clock.to_text(now), schedule_id=schedule_id,
                                       slot_at=clock.to_text(slot_at) if slot_at else None,
                                       detail=json.dumps(detail or {}, sort_keys=True))

    def unfanned(self, limit: int = 100) -> List[Event]:
        query = (EventModel.select().where(EventModel.fanned_at.is_null()).order_by(EventModel.id).limit(limit))
        return [as_event(r) for r in query.dicts()]

    def fan_out(self, event_id: int, plan: Callable[[], Sequence[Dict]], now: datetime) -> bool:
        """Turn an event into the deliveries `plan()` decides (called under the write lock, so
        storm control sees every delivery before it), once: False when another process did."""
        stamp = clock.to_text(now)
        with self.db.atomic("IMMEDIATE"):
            taken = EventModel.update(fanned_at=stamp).where(
                EventModel.id == event_id, EventModel.fanned_at.is_null()).execute()
            if not taken:
                return False
            for d in plan():
                DeliveryModel.insert(
                    event=event_id, channel=d["channel_id"], kind=d["kind"], group_key=d["group_key"],
                    state=d["state"], payload=json.dumps(d["payload"], sort_keys=True, ensure_ascii=False),
                    key=d["key"], next_try_at=stamp,
                    # the event's own time: storm control and the retry window count from it
                    created_at=clock.to_text(d["created_at"]) if d.get("created_at") else stamp).execute()
        return True

    def last_alert(self, channel_id: int, group_key: str, kind: str,
                   after: Optional[datetime]) -> Optional[datetime]:
        """When `channel` was last told (not suppressed) of `kind` for the group, after `after`."""
        query = DeliveryModel.select(DeliveryModel.created_at).where(
            DeliveryModel.channel == channel_id, DeliveryModel.group_key == group_key,
            DeliveryModel.kind == kind, DeliveryModel.state != SUPPRESSED)
        if after is not None:
            query = query.where(DeliveryModel.created_at > clock.to_text(after))
        row = query.order_by(DeliveryModel.id.desc()).first()
        return clock.from_text(row.created_at) if row else None

    def suppressed_since(self, channel_id: int, group_key: str, kind: str, after: datetime) -> int:
        return DeliveryModel.select().where(
            DeliveryModel.channel == channel_id, DeliveryModel.group_key == group_key,
            DeliveryModel.kind == kind, DeliveryModel.state == SUPPRESSED,
            DeliveryModel.created_at >= clock.to_text(after)).count()

    def last_success_at(self, flow_name: str, schedule_id: Optional[int], before_run: int) -> Optional[datetime]:
        value = FlowRun.select(FlowRun.ended_at).where(
            FlowRun.flow_name == flow_name, FlowRun.schedule == schedule_id if schedule_id else FlowRun.schedule.is_null(),
            FlowRun.state == states.SUCCESS, FlowRun.id < before_run).order_by(FlowRun.id.desc()).first()
        return clock.from_text(value.ended_at) if value else None

    def previous_finished_state(self, flow_name: str, schedule_id: Optional[int], before_run: int) -> Optional[str]:
        """The state of the group's latest finished run before `before_run` (cancelled ones aside)."""
        row = FlowRun.select(FlowRun.state).where(
            FlowRun.flow_name == flow_name, FlowRun.schedule == schedule_id if schedule_id else FlowRun.schedule.is_null(),
            FlowRun.id < before_run,
            FlowRun.state.in_([states.SUCCESS, states.FAILED, states.INTERRUPTED])).order_by(FlowRun.id.desc()).first()
        return row.state if row else None

    def last_heartbeat(self, channel_id: int) -> Optional[datetime]:
        row = EventModel.select(EventModel.created_at).where(
            EventModel.kind == "heartbeat", EventModel.detail == json.dumps({"channel": channel_id})
        ).order_by(EventModel.id.desc()).first()
        return clock.from_text(row.created_at) if row else None

    # -- deliveries --

    def claim(self, pid: int, pid_start: Optional[int], boot_id: Optional[str], now: datetime,
              alive: Callable[[int, Optional[int], Optional[str]], bool]) -> Optional[Delivery]:
        """Take the next due delivery under the write lock: a pending one whose time has come, or
        one claimed by a process that is gone (or hung past STALE_CLAIM)."""
        stamp = clock.to_text(now)
        stale = clock.to_text(now - STALE_CLAIM)
        with self.db.atomic("IMMEDIATE"):
            rows = (DeliveryModel.select().where(
                ((DeliveryModel.state == PENDING) & (DeliveryModel.next_try_at <= stamp))
                | (DeliveryModel.state == SENDING)).order_by(DeliveryModel.id).limit(100))
            for row in rows:
                if row.state == SENDING and row.claimed_at is not None and clock.to_text(
                        clock.from_text(row.claimed_at)) > stale and alive(row.claimed_by, row.claim_start, row.claim_boot):
                    continue
                DeliveryModel.update(state=SENDING, claimed_by=pid, claim_start=pid_start,
                                     claim_boot=boot_id, claimed_at=stamp).where(DeliveryModel.id == row.id).execute()
                return self.delivery(row.id)
        return None

    def record_try(self, delivery_id: int, ok: bool, answer: str, now: datetime,
                   retry_at: Optional[datetime]) -> None:
        """One try's outcome: sent; or pending again at `retry_at`; or, with no retry left, failed."""
        stamp = clock.to_text(now)
        state = SENT if ok else (PENDING if retry_at is not None else FAILED)
        with self.db.atomic("IMMEDIATE"):
            DeliveryTry.insert(delivery=delivery_id, at=stamp, ok=ok, answer=answer).execute()
            updates = {DeliveryModel.state: state, DeliveryModel.answer: answer,
                       DeliveryModel.tries: DeliveryModel.tries + 1, DeliveryModel.claimed_by: None}
            if ok:
                updates[DeliveryModel.sent_at] = stamp
            elif retry_at is not None:
                updates[DeliveryModel.next_try_at] = clock.to_text(retry_at)
            DeliveryModel.update(updates).where(DeliveryModel.id == delivery_id).execute()

    def delivery(self, delivery_id: int) -> Delivery:
        return self.deliveries(ids=[delivery_id])[0]

    def deliveries(self, channel: Optional[str] = None, state: Optional[str] = None,
                   ids: Optional[Sequence[int]] = None, limit: Optional[int] = None) -> List[Delivery]:
        """Newest first, each with its channel's name."""
        query = (DeliveryModel.select(DeliveryModel, ChannelModel.name.alias("channel_name"))
                 .join(ChannelModel, on=(DeliveryModel.channel == ChannelModel.id)))
        if channel is not None:
            query = query.where(ChannelModel.name == channel)
        if state is not None:
            query = query.where(DeliveryModel.state == state)
        if ids is not None:
            query = query.where(DeliveryModel.id.in_(list(ids)))
        query = query.order_by(DeliveryModel.id.desc())
        if limit:
            query = query.limit(limit)
        return [as_delivery(row, row.pop("channel_name")) for row in query.dicts()]

    def tries(self, delivery_id: int) -> List[Dict]:
        return [{"at": clock.from_text(r["at"]), "ok": bool(r["ok"]), "answer": r["answer"]}
                for r in DeliveryTry.select().where(DeliveryTry.delivery == delivery_id)
                .order_by(DeliveryTry.id).dicts()]

    def counts(self) -> Dict[str, int]:
        """Deliveries by state, and events not yet fanned out (as `unfanned`)."""
        found = {s: 0 for s in DELIVERY_STATES}
        for state, count in self.db.execute_sql("SELECT state, COUNT(*) FROM delivery GROUP BY state"):
            found[state] = count
        found["unfanned"] = EventModel.select().where(EventModel.fanned_at.is_null()).count()
        return found

    def has_due(self, now: datetime) -> bool:
        """Anything for a deliverer to do now (a cheap check before starting one)."""
        if EventModel.select().where(EventModel.fanned_at.is_null()).exists():
            return True
        return DeliveryModel.select().where(
            ((DeliveryModel.state == PENDING) & (DeliveryModel.next_try_at <= clock.to_text(now)))
            | (DeliveryModel.state == SENDING)).exists()

    def prune_events(self, before: datetime) -> int:
        """Delete run-less events (missed, scheduler, heartbeat) older than `before` whose
        deliveries are all over; a run's events go with the run (ON DELETE CASCADE)."""
        open_events = DeliveryModel.select(DeliveryModel.event).where(
            DeliveryModel.state.in_([PENDING, SENDING]))
        with self.db.atomic("IMMEDIATE"):
            return EventModel.delete().where(
                EventModel.run.is_null(), EventModel.created_at < clock.to_text(before),
                EventModel.fanned_at.is_null(False), EventModel.id.not_in(open_events)).execute()
