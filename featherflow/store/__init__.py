"""Everything that touches SQLite: opening and migrating the file, the models, and the
queries and transactions on runs, attempts, schedules and slots. Other layers get
plain records (records.py), never a peewee row.

`Store` is one database: `store.runs` (runs and attempts) and `store.schedules`
(schedules, slots, the scheduler's row), `store.outbox` (notification channels,
events and deliveries), `store.backfills` (backfills and their slots) and `store.pools`
(pools and who uses them), composed over one connection.
"""

from peewee import SqliteDatabase

from featherflow.store.backfills import BackfillStore
from featherflow.store.outbox import OutboxStore
from featherflow.store.pools import PoolStore
from featherflow.store.runs import RunStore
from featherflow.store.schedules import ScheduleStore


class Store:
    def __init__(self, db: SqliteDatabase):
        self.db = db
        self.runs = RunStore(db)
        self.schedules = ScheduleStore(db, self.runs)
        self.outbox = OutboxStore(db)
        self.backfills = BackfillStore(db, self.runs)
        self.pools = PoolStore(db)

    def close(self) -> None:
        self.db.close()

    def compact(self) -> None:
        """Give space back after deletions: checkpoint the WAL; VACUUM when a quarter is free."""
        pages = self.db.execute_sql("PRAGMA page_count").fetchone()[0]
        free = self.db.execute_sql("PRAGMA freelist_count").fetchone()[0]
        if pages and free * 4 >= pages:
            self.db.execute_sql("VACUUM")
        self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
