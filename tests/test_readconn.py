"""store/readconn.py: the screens' peewee-free read-only connection (execute_sql, atomic,
close; one connection per thread) and its refusals, the same as db.open_read_only's."""

import sqlite3
import threading

import pytest

from featherflow import states
from featherflow.errors import DatabaseError
from featherflow.store import db as dbmod
from featherflow.store.readconn import ReadOnlyConnection, open_plain


@pytest.fixture
def path(tmp_path):
    path = tmp_path / "ff.db"
    dbmod.open_database(path).close()  # a current, migrated database in WAL mode
    writer = sqlite3.connect(str(path), isolation_level=None)
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.execute("INSERT INTO t VALUES (1)")
    writer.close()
    return path


def test_open_read_only_without_models_is_the_plain_connection(path):
    db = dbmod.open_read_only(path)
    try:
        assert isinstance(db, ReadOnlyConnection)
        assert db.execute_sql("PRAGMA user_version").fetchall() == [(states.SCHEMA_VERSION,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.execute_sql("INSERT INTO t VALUES (2)")
    finally:
        db.close()
    bound = dbmod.open_read_only(path, bind_models=True)  # the peewee path, for Store
    assert not isinstance(bound, ReadOnlyConnection)
    bound.close()


def test_a_transaction_is_one_snapshot_nested_ones_join_it_and_an_error_ends_it(path):
    db = open_plain(path)
    writer = sqlite3.connect(str(path), isolation_level=None)
    with db.atomic():
        assert db.execute_sql("SELECT COUNT(*) FROM t").fetchone() == (1,)
        writer.execute("INSERT INTO t VALUES (2)")  # a reader never blocks a writer (WAL)
        with db.atomic():
            assert db.execute_sql("SELECT COUNT(*) FROM t").fetchone() == (1,)  # same snapshot
        assert db.execute_sql("SELECT COUNT(*) FROM t").fetchone() == (1,)
    assert db.execute_sql("SELECT COUNT(*) FROM t").fetchone() == (2,)
    with pytest.raises(ZeroDivisionError):
        with db.atomic():
            db.execute_sql("SELECT 1").fetchall()
            1 / 0
    with db.atomic():  # the failed one was rolled back: a new one begins
        assert db.execute_sql("SELECT COUNT(*) FROM t").fetchone() == (2,)
    writer.close()
    db.close()


def test_each_thread_has_its_own_connection_and_closes_only_its_own(path):
    db = open_plain(path)
    main = db._connection()
    seen = []

    def other():
        seen.append(db._connection())
        db.execute_sql("SELECT 1").fetchall()
        db.close()
        seen.append(getattr(db._local, "con", None))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen[0] is not main and seen[1] is None
    assert db.execute_sql("SELECT x FROM t").fetchall() == [(1,)]  # the main thread's still works
    db.close()
    assert db.execute_sql("SELECT x FROM t").fetchall() == [(1,)]  # and reopens after a close
    db.close()


def test_it_refuses_what_open_read_only_refuses_and_creates_nothing(tmp_path):
    with pytest.raises(DatabaseError, match="no database at"):
        open_plain(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite at all")
    with pytest.raises(DatabaseError, match="not a SQLite database"):
        open_plain(junk)
    newer = tmp_path / "newer.db"
    con = sqlite3.connect(str(newer))
    con.execute(f"PRAGMA user_version = {states.SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(DatabaseError, match="newer than this Featherflow"):
        open_plain(newer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.db", "newer.db"]  # no -wal, no -shm
