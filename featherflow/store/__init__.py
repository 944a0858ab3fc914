"""Everything that touches SQLite: opening and migrating the file, the models, and the
queries and transactions on runs, attempts, schedules and slots. Other layers get
plain records (records.py), never a peewee row.

`Store` is one database: `store.runs` (runs and attempts) and `store.schedules`
(schedules, slots, the scheduler's row) and `store.outbox` (notification channels,
events and deliveries), `store.backfills` (backfills and their slots), `store.rules` (the retention
policy) and `store.pools` (pools and who uses them), composed over one connection. The schedules' and the outbox's
queries are imported when first used: `featherflow run` needs neither (some 10 ms).
Importing the package (for records.py, quick.py) loads no peewee: a Store's queries do.
"""


class Store:
    def __init__(self, db):
        from featherflow.store.runs import RunStore  # lazy: peewee (see above)

        self.db = db  # a peewee SqliteDatabase
        self.runs = RunStore(db)
        self._schedules = self._outbox = self._backfills = self._rules = self._pools = None

    @property
    def schedules(self):
        if self._schedules is None:
            from featherflow.store.schedules import ScheduleStore  # lazy: not on a run's path

            self._schedules = ScheduleStore(self.db, self.runs)
        return self._schedules

    @property
    def outbox(self):
        if self._outbox is None:
            from featherflow.store.outbox import OutboxStore  # lazy: not on a run's path

            self._outbox = OutboxStore(self.db)
        return self._outbox

    @property
    def backfills(self):
        if self._backfills is None:
            from featherflow.store.backfills import BackfillStore  # lazy: not on a run's path

            self._backfills = BackfillStore(self.db, self.runs)
        return self._backfills

    @property
    def rules(self):
        """The retention policy (store/retention.py applies it)."""
        if self._rules is None:
            from featherflow.store.rules import RuleStore  # lazy: not on a run's path

            self._rules = RuleStore(self.db)
        return self._rules

    @property
    def pools(self):
        if self._pools is None:
            from featherflow.store.pools import PoolStore  # lazy: read once per run with a pool (launch)

            self._pools = PoolStore(self.db)
        return self._pools

    def close(self) -> None:
        self.db.close()

    def compact(self, vacuum: bool = True) -> None:
        """Give space back after deletions: checkpoint the WAL; VACUUM when a quarter is free
        (unless not `vacuum`: the free pages are then reused by the rows written next)."""
        pages = self.db.execute_sql("PRAGMA page_count").fetchone()[0]
        free = self.db.execute_sql("PRAGMA freelist_count").fetchone()[0]
        if vacuum and pages and free * 4 >= pages:
            self.db.execute_sql("VACUUM")
        self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
