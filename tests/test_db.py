"""The database: migrated schema matches the models, pragmas, refusals, permissions.

The SQLite file is the single source of truth, so a schema drifting from the
models, a newer file silently altered, or a world-readable file are all bugs
that would only show up on a user's machine.
"""

import json
import sqlite3
import stat
from pathlib import Path

import pytest
from peewee import IntegrityError, SqliteDatabase

from featherflow import errors, states
from featherflow.store import db as dbmod
from featherflow.errors import DatabaseError
from featherflow.store.models import MODELS, TaskAttempt
from featherflow.store.records import NewRun
from helpers import umask_022


def affinity(declared: str) -> str:
    """SQLite's column affinity rules (https://sqlite.org/datatype3.html, 3.1)."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if any(s in t for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def columns(conn, table):
    """{column: (affinity, notnull, pk)}; NOT NULL is implied for a primary key."""
    rows = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    return {name: (affinity(type_), bool(notnull) or bool(pk), bool(pk))
            for _cid, name, type_, notnull, _default, pk in rows}


def foreign_keys(conn, table):
    rows = conn.execute(f'PRAGMA foreign_key_list("{table}")').fetchall()
    return {(r[3], r[2], r[4], r[6]) for r in rows}  # (from, table, to, on_delete)


def unique_columns(conn, table):
    found = set()
    for row in conn.execute(f'PRAGMA index_list("{table}")').fetchall():
        name, unique = row[1], row[2]
        if unique:
            cols = tuple(r[2] for r in conn.execute(f'PRAGMA index_info("{name}")').fetchall())
            found.add(cols)
    return found


def index_leads(conn, table):
    """The first column of every index on the table."""
    leads = set()
    for row in conn.execute(f'PRAGMA index_list("{table}")').fetchall():
        info = conn.execute(f'PRAGMA index_info("{row[1]}")').fetchall()
        leads.add(min(info)[2])
    return leads


@pytest.fixture
def migrated(tmp_path):
    path = tmp_path / "home" / "featherflow.db"
    database = dbmod.open_database(path, path.parent)
    yield path, database
    database.close()


@pytest.fixture
def from_models():
    """The schema peewee itself would create from the models, as a reference."""
    ref = SqliteDatabase(":memory:")
    with ref.bind_ctx(MODELS, bind_refs=False, bind_backrefs=False):
        ref.create_tables(MODELS)
        yield ref.connection()
    ref.close()


def test_migrated_schema_matches_the_models(migrated, from_models):
    path, _ = migrated
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        assert tables == {m._meta.table_name for m in MODELS}
        for model in MODELS:
            table = model._meta.table_name
            assert columns(conn, table) == columns(from_models, table), table
            assert set(columns(conn, table)) == {f.column_name for f in model._meta.sorted_fields}
            assert foreign_keys(conn, table) == foreign_keys(from_models, table), table
            for f in model._meta.sorted_fields:
                if f.unique:
                    assert (f.column_name,) in unique_columns(conn, table), (table, f.name)
                if f.index and not f.unique:
                    assert f.column_name in index_leads(conn, table), (table, f.name)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == states.SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_schema_version_matches_the_migrations(migrated):
    _, database = migrated
    assert dbmod.schema_version(database) == states.SCHEMA_VERSION == len(dbmod.migration_modules())
    assert dbmod.apply_migrations(database, migrated[0]) == states.SCHEMA_VERSION  # idempotent


def test_pragmas_in_effect_on_a_connection(migrated):
    _, database = migrated

    def pragma(name):
        return database.execute_sql(f"PRAGMA {name}").fetchone()[0]

    assert pragma("journal_mode") == "wal"
    assert pragma("synchronous") == 2  # FULL
    assert pragma("foreign_keys") == 1
    assert pragma("busy_timeout") >= 5000
    with pytest.raises(IntegrityError):  # foreign keys are enforced, not just declared
        with database.atomic("IMMEDIATE"):
            TaskAttempt.create(run=12345, task_id="a", attempt=1, state="pending",
                               created_at="2026-01-01 00:00:00")


def test_reopening_an_up_to_date_database_does_not_change_it(tmp_path):
    path = tmp_path / "home" / "featherflow.db"
    dbmod.open_database(path, path.parent).close()
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    again = dbmod.open_database(path, path.parent)
    assert dbmod.schema_version(again) == states.SCHEMA_VERSION
    again.close()
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime


def _newer_database(path: Path) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("INSERT INTO future VALUES (1)")
    conn.execute(f"PRAGMA user_version = {states.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    return path.read_bytes()


def test_newer_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "featherflow.db"
    before = _newer_database(path)
    newer = states.SCHEMA_VERSION + 1
    with pytest.raises(DatabaseError, match=rf"schema version {newer}, newer than this Featherflow understands"):
        dbmod.open_database(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["featherflow.db"]


def test_newer_database_through_the_cli_exits_4_untouched(project):
    project.write_task("a.sh", "echo\n")
    project.write_flow({"name": "f", "tasks": [{"id": "a", "script": "a.sh"}]})
    project.home.mkdir(mode=0o700)
    before = _newer_database(project.db)
    result = project.cli("run", "f", "--dry-run")
    assert result.code == errors.EXIT_DATABASE == 4
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "newer" in lines[0]
    assert "Traceback" not in result.err
    assert project.db.read_bytes() == before


def test_file_that_is_not_sqlite_is_refused_and_left_untouched(project):
    project.home.mkdir(mode=0o700)
    content = b"my notes, not a database\n" * 50
    project.db.write_bytes(content)
    with pytest.raises(DatabaseError, match="not a SQLite database"):
        dbmod.open_database(project.db, project.home)
    assert project.db.read_bytes() == content
    project.write_task("a.sh", "echo\n")
    project.write_flow({"name": "f", "tasks": [{"id": "a", "script": "a.sh"}]})
    result = project.cli("run", "f", "--dry-run")
    assert result.code == 4 and result.err.startswith("error: ") and "Traceback" not in result.err
    assert project.db.read_bytes() == content
    assert sorted(p.name for p in project.home.iterdir()) == ["featherflow.db"]


def test_failed_migration_leaves_the_database_at_its_old_version(tmp_path, monkeypatch):
    _, initial = dbmod.migration_modules()[0]
    monkeypatch.setattr(initial, "STATEMENTS", initial.STATEMENTS + ["CREATE TABLE schedule (x)"])
    path = tmp_path / "featherflow.db"
    with pytest.raises(DatabaseError):
        dbmod.open_database(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] == 0
    finally:
        conn.close()
    monkeypatch.undo()
    dbmod.open_database(path).close()  # the next open migrates cleanly


def test_migration_2_adds_history_indexes_to_a_v1_database_and_since_is_exact(tmp_path, monkeypatch):
    """A version-1 database with runs is migrated on open; `since` then walks the index, exactly."""
    from datetime import datetime

    from featherflow.store import Store

    path = tmp_path / "featherflow.db"
    monkeypatch.setattr(dbmod, "migration_modules", lambda real=dbmod.migration_modules: real()[:1])
    monkeypatch.setattr(states, "SCHEMA_VERSION", 1)
    dbmod.open_database(path).close()
    # Run ids and creation times out of step (a clock set back between runs 2 and 3).
    created = {1: "2026-03-01 10:00:00.000000", 2: "2026-03-05 10:00:00.000000",
               3: "2026-02-01 10:00:00.000000", 4: "2026-03-04 10:00:00.000000"}
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO flow_run (id, uid, flow_name, state, trigger, params, snapshot, flows_dir, tasks_dir, "
        "output_dir, max_parallel, created_at) VALUES (?, ?, 'f', 'success', 'manual', '{}', '{}', '/f', '/t', "
        "'/o', 1, ?)", [(n, f"uid{n}", stamp) for n, stamp in created.items()])
    conn.commit()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    monkeypatch.undo()

    database = dbmod.open_database(path)
    try:
        assert dbmod.schema_version(database) == states.SCHEMA_VERSION >= 2
        for name, columns in (("flow_run_created", ["created_at"]),
                              ("flow_run_flow_state", ["flow_name", "state", "id"])):
            assert [row[2] for row in database.execute_sql(f"PRAGMA index_info({name})").fetchall()] == columns
        assert database.execute_sql("SELECT COUNT(*) FROM flow_run").fetchone()[0] == 4  # rows kept
        store = Store(database)
        assert [r.id for r in store.runs.list_runs(since=datetime(2026, 3, 1, 10))] == [4, 2, 1]
        assert [r.id for r in store.runs.list_runs(since=datetime(2026, 3, 2), limit=1)] == [4]
        assert [r.id for r in store.runs.list_runs(since=datetime(2026, 1, 1))] == [4, 3, 2, 1]
        assert store.runs.list_runs(since=datetime(2026, 4, 1)) == []
        assert [r.id for r in store.runs.list_runs(flow="f", state="success", since=datetime(2026, 3, 2))] == [4, 2]
        plan = " ".join(row[-1] for row in database.execute_sql(
            "EXPLAIN QUERY PLAN SELECT MIN(id) FROM flow_run INDEXED BY flow_run_created WHERE created_at >= ?",
            ["2026-03-01"]).fetchall())
        assert "flow_run_created" in plan
    finally:
        database.close()


@pytest.mark.parametrize("old_version", [1, 2])
def test_migration_3_moves_snapshots_out_of_flow_run_keeping_every_row(tmp_path, monkeypatch, old_version):
    """Runs, attempts, slots and snapshots of an older database survive; ids are never reused."""
    from featherflow.store import Store

    path = tmp_path / "featherflow.db"
    monkeypatch.setattr(dbmod, "migration_modules", lambda real=dbmod.migration_modules: real()[:old_version])
    monkeypatch.setattr(states, "SCHEMA_VERSION", old_version)
    dbmod.open_database(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("INSERT INTO schedule (id, name, flow_name, cron, tz, flows_dir, tasks_dir, output_dir, "
                 "created_at, updated_at) VALUES (1, 's', 'f', '* * * * *', 'UTC', '/f', '/t', '/o', 'x', 'x')")
    conn.executemany(
        "INSERT INTO flow_run (id, uid, flow_name, state, trigger, params, snapshot, flows_dir, tasks_dir, "
        "output_dir, max_parallel, schedule_id, created_at) VALUES (?, ?, 'f', 'failed', 'manual', '{\"p\": 1}', ?, "
        "'/f', '/t', '/o', 2, 1, '2026-03-01 10:00:00.000000')",
        [(n, f"uid{n}", json.dumps({"name": "f", "n": n, "tasks": [{"id": "a"}]})) for n in (1, 2, 3)])
    conn.executemany("INSERT INTO task_attempt (run_id, task_id, attempt, state, created_at) "
                     "VALUES (?, 'a', 1, 'failed', 'x')", [(1,), (2,), (3,)])
    conn.execute("INSERT INTO schedule_slot (schedule_id, slot_at, state, run_id, created_at) "
                 "VALUES (1, 'x', 'fired', 2, 'x')")
    conn.execute("DELETE FROM flow_run WHERE id = 3")  # the newest run pruned: id 3 is never given again
    conn.commit()
    conn.close()
    monkeypatch.undo()

    database = dbmod.open_database(path)
    try:
        assert dbmod.schema_version(database) == states.SCHEMA_VERSION >= 3
        cols = [r[1] for r in database.execute_sql("PRAGMA table_info(flow_run)").fetchall()]
        assert "snapshot" not in cols
        assert database.execute_sql("SELECT run_id, snapshot FROM run_snapshot ORDER BY run_id").fetchall() == [
            (n, json.dumps({"name": "f", "n": n, "tasks": [{"id": "a"}]})) for n in (1, 2)]
        assert database.execute_sql("SELECT run_id FROM task_attempt ORDER BY run_id").fetchall() == [(1,), (2,)]
        assert database.execute_sql("SELECT run_id FROM schedule_slot").fetchall() == [(2,)]
        assert database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1  # back on
        assert database.execute_sql("PRAGMA integrity_check").fetchone()[0] == "ok"
        for name in ("flow_run_flow_name", "flow_run_state", "flow_run_schedule", "flow_run_created",
                     "flow_run_flow_state"):
            assert database.execute_sql(f"PRAGMA index_info({name})").fetchall(), name
        store = Store(database)
        run = store.runs.get_run(2)
        assert json.loads(run.snapshot)["n"] == 2 and run.params == {"p": 1} and run.schedule_id == 1
        assert run.failed_tasks == ["a"]
        assert [r.snapshot for r in store.runs.list_runs()] == [None, None]  # lists never read them
        new = store.runs.create_run(NewRun("f", ["a"], '{"name": "f"}', {}, "manual", "/f", "/t", "/o", 1))
        assert new.id == 4 and new.snapshot == '{"name": "f"}'
        assert store.runs.delete_runs([1]) == 1
        assert database.execute_sql("SELECT run_id FROM run_snapshot ORDER BY run_id").fetchall() == [(2,), (4,)]
    finally:
        database.close()


def test_updates_of_a_run_never_rewrite_its_snapshot(tmp_path):
    """The hot path (_mark's state changes) writes the run's row only: WAL growth stays small."""
    from featherflow import mark
    from featherflow.store import Store

    path = tmp_path / "featherflow.db"
    database = dbmod.open_database(path)
    store = Store(database)
    run = store.runs.create_run(NewRun("f", ["a"], json.dumps({"description": "d" * 900_000}), {}, "manual",
                           "/f", "/t", "/o", 1))
    database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = Path(f"{path}-wal")
    assert mark.call([str(path), str(run.id), "--run", "running", "a:1:running"], states) == 0
    assert mark.call([str(path), str(run.id), "--run", "success", "a:1:success:0"], states) == 0
    assert wal.stat().st_size < 100_000  # the 900 KB snapshot was never written again
    assert len(store.runs.get_run(run.id).snapshot) > 900_000
    database.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_config_dir_0700_and_database_0600_under_umask_022(tmp_path):
    with umask_022():
        home = tmp_path / "deep" / "home"
        path = home / "featherflow.db"
        database = dbmod.open_database(path, home)
        try:
            # A write so that SQLite creates its -wal and -shm files too.
            with database.atomic("IMMEDIATE"):
                database.execute_sql("PRAGMA user_version")
            assert mode(home) == 0o700
            assert mode(path) == 0o600
            for extra in home.glob("featherflow.db-*"):
                assert mode(extra) & 0o077 == 0, extra
        finally:
            database.close()


def test_existing_loose_permissions_are_tightened(tmp_path):
    with umask_022():
        home = tmp_path / "home"
        home.mkdir(mode=0o755)
        path = home / "featherflow.db"
        dbmod.open_database(path, home).close()
        path.chmod(0o644)
        dbmod.open_database(path, home).close()
        assert mode(home) == 0o700
        assert mode(path) == 0o600


def test_cli_creates_the_private_config_dir(project):
    with umask_022():
        project.write_task("a.sh", "echo\n")
        project.write_flow({"name": "f", "tasks": [{"id": "a", "script": "a.sh"}]})
        result = project.cli("run", "f", "--dry-run")
        assert result.code == 0, result.err
        assert mode(project.home) == 0o700
        assert mode(project.db) == 0o600



FIRST_OPEN = """\
import sys, time
from pathlib import Path
from featherflow.store import db as dbmod
from featherflow.errors import DatabaseError

db_path, folder, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(folder / f"up-{me}").touch()
while not (folder / "go").exists():  # released together, once every process is imported
    time.sleep(0.0005)
try:
    dbmod.open_database(db_path).close()
except DatabaseError as exc:
    print(exc, file=sys.stderr)
    sys.exit(4)
"""


def test_simultaneous_first_opens_of_a_new_database_all_succeed(tmp_path):
    """Eight processes released at one instant on a database that does not exist yet: each
    must see either the empty file or the migrated one, never a mix (the foreignness check
    once read the table count after another's migration and the version before it)."""
    import subprocess
    import sys
    import time

    rounds, width = 15, 8
    failures = []
    for round_ in range(rounds):
        folder = tmp_path / f"r{round_}"
        folder.mkdir()
        children = [subprocess.Popen([sys.executable, "-c", FIRST_OPEN, str(folder / "ff.db"), str(folder), str(n)],
                                     stderr=subprocess.PIPE, text=True) for n in range(width)]
        deadline = time.monotonic() + 60
        while len(list(folder.glob("up-*"))) < width and time.monotonic() < deadline:
            time.sleep(0.005)
        (folder / "go").touch()
        for child in children:
            _, err = child.communicate(timeout=120)
            if child.returncode:
                failures.append((round_, child.returncode, err.strip()))
        con = sqlite3.connect(str(folder / "ff.db"))
        try:
            assert con.execute("PRAGMA user_version").fetchone()[0] == states.SCHEMA_VERSION
        finally:
            con.close()
    assert failures == []
