"""Peewee models, one per table. Queries live in store.py, schema in migrations/."""

from peewee import (
    AutoField, BooleanField, CharField, DateTimeField, FloatField, ForeignKeyField, IntegerField,
    Model, TextField,
)


class BaseModel(Model):
    class Meta:
        database = None  # bound by db.open_database
        legacy_table_names = False


class Schedule(BaseModel):
    id = AutoField()
    name = CharField(unique=True)
    flow_name = CharField()
    cron = CharField()
    tz = CharField()
    params = TextField(default="{}")
    catchup = CharField(default="latest")
    overlap = CharField(default="skip")
    on_interrupt = CharField(default="resume")
    enabled = BooleanField(default=True)
    description = TextField(default="")
    flows_dir = TextField()
    tasks_dir = TextField()
    output_dir = TextField()
    created_at = DateTimeField()
    updated_at = DateTimeField()


class FlowRun(BaseModel):
    id = AutoField()
    uid = CharField(unique=True)
    flow_name = CharField(index=True)
    state = CharField()
    trigger = CharField()
    params = TextField()
    flows_dir = TextField()
    tasks_dir = TextField()
    output_dir = TextField()
    max_parallel = IntegerField()
    schedule = ForeignKeyField(Schedule, null=True, on_delete="SET NULL", column_name="schedule_id")
    scheduled_at = DateTimeField(null=True)
    created_at = DateTimeField(index=True)  # migration 0002: runs list --since
    started_at = DateTimeField(null=True)
    ended_at = DateTimeField(null=True)
    pid = IntegerField(null=True)
    pid_start = IntegerField(null=True)
    boot_id = CharField(null=True)
    reason = TextField(null=True)
    resumes = IntegerField(default=0)
    auto_resumed = BooleanField(default=False)

    class Meta:
        indexes = ((("flow_name", "state", "id"), False),)  # migration 0002: runs list --flow F --state S


class RunSnapshot(BaseModel):
    """The flow definition a run runs (migration 0003: apart from flow_run, so that
    the updates of every state change never rewrite it)."""
    run = ForeignKeyField(FlowRun, primary_key=True, index=False, on_delete="CASCADE", column_name="run_id")
    snapshot = TextField()


class TaskAttempt(BaseModel):
    id = AutoField()
    run = ForeignKeyField(FlowRun, on_delete="CASCADE", column_name="run_id")
    task_id = CharField()
    attempt = IntegerField()
    state = CharField()
    created_at = DateTimeField()
    started_at = DateTimeField(null=True)
    ended_at = DateTimeField(null=True)
    exit_code = IntegerField(null=True)
    reason = TextField(null=True)
    outputs = TextField(null=True)  # migration 0006: JSON {KEY: VALUE} of a successful attempt


class ScheduleSlot(BaseModel):
    id = AutoField()
    schedule = ForeignKeyField(Schedule, on_delete="CASCADE", column_name="schedule_id")
    slot_at = DateTimeField()
    state = CharField()
    reason = TextField(null=True)
    run = ForeignKeyField(FlowRun, null=True, on_delete="SET NULL", column_name="run_id")
    created_at = DateTimeField()


class SchedulerState(BaseModel):
    id = IntegerField(primary_key=True)
    pid = IntegerField()
    pid_start = IntegerField(null=True)
    boot_id = CharField(null=True)
    started_at = DateTimeField()
    heartbeat_at = DateTimeField()
    stopped_at = DateTimeField(null=True)

    class Meta:
        table_name = "scheduler"


class Channel(BaseModel):
    """A notification channel (migration 0004): where to send, and which events."""
    id = AutoField()
    name = CharField(unique=True)
    kind = CharField()
    target = TextField()
    options = TextField(default="{}")
    events = TextField()
    flows = TextField(default="[]")
    schedules = TextField(default="[]")
    repeat_seconds = FloatField()
    every = BooleanField(default=False)
    enabled = BooleanField(default=True)
    created_at = DateTimeField()
    updated_at = DateTimeField()


class Event(BaseModel):
    id = AutoField()
    kind = CharField()
    run = ForeignKeyField(FlowRun, null=True, on_delete="CASCADE", column_name="run_id", index=False)
    schedule = ForeignKeyField(Schedule, null=True, on_delete="SET NULL", column_name="schedule_id",
                               index=False)
    slot_at = DateTimeField(null=True)
    detail = TextField(default="{}")
    created_at = DateTimeField()
    fanned_at = DateTimeField(null=True)


class Delivery(BaseModel):
    id = AutoField()
    event = ForeignKeyField(Event, on_delete="CASCADE", column_name="event_id", index=False)
    channel = ForeignKeyField(Channel, on_delete="CASCADE", column_name="channel_id", index=False)
    kind = CharField()
    group_key = CharField()
    state = CharField()
    payload = TextField()
    key = CharField()
    tries = IntegerField(default=0)
    next_try_at = DateTimeField()
    claimed_by = IntegerField(null=True)
    claim_start = IntegerField(null=True)
    claim_boot = CharField(null=True)
    claimed_at = DateTimeField(null=True)
    answer = TextField(null=True)
    created_at = DateTimeField()
    sent_at = DateTimeField(null=True)


class DeliveryTry(BaseModel):
    id = AutoField()
    delivery = ForeignKeyField(Delivery, on_delete="CASCADE", column_name="delivery_id", index=False)
    at = DateTimeField()
    ok = BooleanField()
    answer = TextField()

    class Meta:
        table_name = "delivery_try"


class Backfill(BaseModel):
    """A backfill of a schedule's slots over a range (migration 0005_backfill)."""
    id = AutoField()
    schedule = ForeignKeyField(Schedule, on_delete="CASCADE", column_name="schedule_id")
    range_from = DateTimeField()
    range_to = DateTimeField()
    reprocess = CharField()
    max_runs = IntegerField()
    reverse = BooleanField(default=False)
    state = CharField()
    reason = TextField(null=True)
    created_at = DateTimeField()
    updated_at = DateTimeField()
    ended_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("state", "id"), False),)


class BackfillSlot(BaseModel):
    id = AutoField()
    backfill = ForeignKeyField(Backfill, on_delete="CASCADE", column_name="backfill_id", index=False)
    slot_at = DateTimeField()
    action = CharField()
    state = CharField()
    run = ForeignKeyField(FlowRun, null=True, on_delete="SET NULL", column_name="run_id")
    resumes = IntegerField(null=True)
    launcher_pid = IntegerField(null=True)
    launcher_start = IntegerField(null=True)
    launcher_boot = CharField(null=True)
    tries = IntegerField(default=0)
    outcome = TextField(null=True)
    reason = TextField(null=True)

    class Meta:
        table_name = "backfill_slot"
        indexes = ((("backfill", "slot_at"), True),)


class RetentionRule(BaseModel):
    """A retention rule (migration 0007): `*` for the global one, else a flow's own."""
    scope = CharField(primary_key=True)
    older_than_seconds = IntegerField(null=True)
    keep_last = IntegerField(null=True)
    enabled = BooleanField(default=True)
    updated_at = DateTimeField()

    class Meta:
        table_name = "retention_rule"


class RetentionApplied(BaseModel):
    id = IntegerField(primary_key=True)
    at = DateTimeField()
    runs = IntegerField(default=0)
    bytes = IntegerField(default=0)

    class Meta:
        table_name = "retention_applied"


class Pool(BaseModel):
    """A named limit across runs (migration 0008_pools): how many of its tasks run at once."""
    id = AutoField()
    name = CharField(unique=True)
    slots = IntegerField()
    created_at = DateTimeField()
    updated_at = DateTimeField()


MODELS = [Schedule, FlowRun, RunSnapshot, TaskAttempt, ScheduleSlot, SchedulerState,
          Channel, Event, Delivery, DeliveryTry, Backfill, BackfillSlot, RetentionRule, RetentionApplied, Pool]
