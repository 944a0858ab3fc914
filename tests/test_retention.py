"""The retention policy: its rules (`retention set/show/clear`), `runs prune --policy`, and
the scheduler's daily pass, driven through tick(now) with the time passed in (no sleep).

Runs are made with helpers.fake_run (their times are the wall clock's); every `now` here
is counted from the newest end among them, so "older than 30 days" is exact.
"""

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from featherflow import paths, states
from featherflow.scheduler import daemon as scheduler
from featherflow.scheduler import housekeeping
from featherflow.store import db as dbmod
from featherflow.store import retention, rules
from helpers import fake_run, this_process

DAY = timedelta(days=1)


def with_files(run, size=1000):
    directory = paths.run_dir(run)
    (directory / "logs").mkdir(parents=True)
    (directory / "run.sh").write_text("FF_DB=elsewhere\n")
    (directory / "logs" / "a.1.log").write_text("x" * size)
    return directory


def finished(store, project, flow, count, state=states.SUCCESS):
    made = []
    for _ in range(count):
        run = fake_run(store, flow, outcomes={"a": ["success" if state == states.SUCCESS else "failed"]},
                       state=state, output=project.output)
        with_files(run)
        made.append(run)
    return made


def newest_end(store):
    return max(r.ended_at for r in store.runs.list_runs(limit=None) if r.ended_at)


def ids(store, flow=None):
    return sorted(r.id for r in store.runs.list_runs(flow=flow, limit=None))


class NoLaunch:
    def __call__(self, run, resume):
        return None


def ticker(project):
    app = project.app()
    return app, scheduler.Scheduler(app.config, app.store, launch=NoLaunch(), deliver=lambda: None)


# -- the default, and upgrades ------------------------------------------------------------------

def test_a_new_database_gets_the_default_rule(store):
    rule = store.rules.rules()[rules.GLOBAL]
    assert rule.active and rule.older_than == timedelta(days=30) and rule.keep_last == 100
    assert rules.describe(rule) == "older than 30d, keeping the newest 100 per flow"
    assert store.rules.last_applied() is None


def test_an_upgraded_database_with_history_keeps_everything_by_itself(tmp_path, monkeypatch):
    """A database that already had runs gets no rule: nothing is deleted that was not before."""
    from featherflow.store import Store

    path = tmp_path / "featherflow.db"
    real = dbmod.migration_modules()
    before = next(i for i, (_, m) in enumerate(real) if m.__name__.endswith("_retention"))
    monkeypatch.setattr(dbmod, "migration_modules", lambda: real[:before])
    monkeypatch.setattr(states, "SCHEMA_VERSION", before)
    dbmod.open_database(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO flow_run (uid, flow_name, state, trigger, params, flows_dir, tasks_dir, output_dir, "
                 "max_parallel, created_at) VALUES ('u1', 'f', 'success', 'manual', '{}', '/f', '/t', '/o', 1, "
                 "'2020-01-01 00:00:00.000000')")
    conn.commit()
    conn.close()
    monkeypatch.undo()

    store = Store(dbmod.open_database(path))
    try:
        assert dbmod.schema_version(store.db) == states.SCHEMA_VERSION
        assert store.rules.rules() == {}
        assert housekeeping.daily_retention(store, path, datetime(2030, 1, 1, tzinfo=timezone.utc)).runs == []
        assert ids(store) == [1]
    finally:
        store.close()


# -- which runs a rule lets go --------------------------------------------------------------------

def test_both_limits_must_agree_and_live_runs_are_never_chosen(project, store):
    old = finished(store, project, "alpha", 4)
    failed = finished(store, project, "alpha", 1, states.FAILED)
    live = fake_run(store, "alpha", outcomes={"a": ["running"]}, output=project.output, **this_process())
    queued = fake_run(store, "alpha", state=states.QUEUED, output=project.output, **this_process())
    now = newest_end(store)
    rule = rules.Rule(rules.GLOBAL, timedelta(days=30), 3)
    # Within 30 days nothing goes, failed or not.
    assert store.rules.candidates("alpha", rule, now + 29 * DAY) == []
    # Past them, all but the newest 3 (the live and the queued one count among the 3).
    chosen = store.rules.candidates("alpha", rule, now + 31 * DAY)
    assert [r.id for r in chosen] == [r.id for r in old + failed][:-1]
    only_age = store.rules.candidates("alpha", rules.Rule(rules.GLOBAL, timedelta(days=30), None), now + 31 * DAY)
    assert [r.id for r in only_age] == [r.id for r in old + failed]
    only_count = store.rules.candidates("alpha", rules.Rule(rules.GLOBAL, None, 2), now)
    assert [r.id for r in only_count] == [r.id for r in old + failed]
    assert live.id not in [r.id for r in only_count] and queued.id not in [r.id for r in only_count]
    assert store.rules.candidates("alpha", rules.Rule(rules.GLOBAL, None, 100), now + 400 * DAY) == []
    assert store.rules.candidates("alpha", rules.Rule(rules.GLOBAL, timedelta(days=1), 0, enabled=False),
                                  now + 400 * DAY) == []


def test_a_flow_rule_replaces_the_global_one_and_off_exempts(project, store):
    finished(store, project, "alpha", 3)
    finished(store, project, "beta", 3)
    gamma = finished(store, project, "gamma", 3)
    now = newest_end(store) + 2 * DAY
    retention.set_policy(store, now, None, timedelta(days=1), None)        # global: older than a day
    retention.set_policy(store, now, "beta", None, 2)                      # beta: newest 2, whatever age
    retention.set_policy(store, now, "gamma", None, None, off=True)        # gamma: never
    report = retention.apply_policy(store, project.db, now)
    assert ids(store, "alpha") == []
    assert len(ids(store, "beta")) == 2
    assert ids(store, "gamma") == [r.id for r in gamma]
    assert len(report.runs) == 4
    assert store.rules.clear_rule("gamma")
    retention.apply_policy(store, project.db, now)
    assert ids(store, "gamma") == []  # the global rule applies to it again


def test_set_policy_refuses_what_means_nothing(store, project):
    from featherflow.errors import UsageError

    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for kwargs in ({}, {"off": True, "keep_last": 3}, {"keep_last": -1}, {"older_than": timedelta(0)}):
        with pytest.raises(UsageError):
            retention.set_policy(store, now, None, kwargs.get("older_than"), kwargs.get("keep_last"),
                                 kwargs.get("off", False))


# -- the daemon's daily pass ----------------------------------------------------------------------

def test_the_daemon_prunes_what_the_policy_says_once_a_day(project):
    app, daemon = ticker(project)
    store = app.store
    try:
        old = finished(store, project, "alpha", 5)
        kept_beta = finished(store, project, "beta", 2)
        live = fake_run(store, "alpha", outcomes={"a": ["running"]}, output=project.output, **this_process())
        with_files(live)
        t = newest_end(store) + 31 * DAY
        retention.set_policy(store, t, None, timedelta(days=30), 2)
        retention.set_policy(store, t, "beta", None, None, off=True)
        doomed = [paths.run_dir(r) for r in old[:-1]]  # the newest 2 of alpha: the live run and old[-1]

        report = daemon.tick(t)
        assert report.pruned == 4
        assert ids(store) == sorted([old[-1].id, live.id] + [r.id for r in kept_beta])
        assert not any(d.exists() for d in doomed)  # rows and directories together
        assert paths.run_dir(old[-1]).is_dir() and paths.run_dir(live).is_dir()
        applied = store.rules.last_applied()
        assert applied.at == t and applied.runs == 4 and applied.bytes > 0

        # More old history appears (a finished run, made past the window): not before a day has passed,
        # even by a daemon started again.
        store.rules.set_rule(rules.GLOBAL, timedelta(days=30), 0, True, t)
        assert daemon.tick(t + timedelta(hours=23)).pruned == 0
        again = scheduler.Scheduler(app.config, store, launch=NoLaunch(), deliver=lambda: None)
        assert again.tick(t + timedelta(hours=23, minutes=59)).pruned == 0
        assert old[-1].id in ids(store)
        assert again.tick(t + DAY).pruned == 1
        assert ids(store) == sorted([live.id] + [r.id for r in kept_beta])
        assert not paths.run_dir(old[-1]).exists()
        assert store.rules.last_applied().at == t + DAY
    finally:
        app.close()


def test_off_deletes_nothing(project):
    app, daemon = ticker(project)
    try:
        made = finished(app.store, project, "alpha", 3)
        t = newest_end(app.store) + 400 * DAY
        retention.set_policy(app.store, t, None, None, None, off=True)
        assert daemon.tick(t).pruned == 0
        assert ids(app.store) == [r.id for r in made]
        assert all(paths.run_dir(r).is_dir() for r in made)
        assert app.store.rules.last_applied().at == t  # it ran, and found nothing to do
    finally:
        app.close()


def test_a_clock_set_back_does_not_stop_the_daily_pass(store):
    t = datetime(2030, 1, 2, tzinfo=timezone.utc)
    store.rules.record_applied(t, 0, 0)
    assert not housekeeping.retention_due(store, t + timedelta(hours=1))
    assert housekeeping.retention_due(store, t - timedelta(hours=1))
    assert housekeeping.retention_due(store, t + DAY)


def test_run_less_events_go_after_the_longest_age_once_delivered(project, store):
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    from featherflow import clock

    for age in (40, 10):  # two `missed` events, delivered (no delivery left open)
        stamp = clock.to_text(now - age * DAY)
        store.db.execute_sql("INSERT INTO event (kind, detail, created_at, fanned_at) VALUES ('missed', '{}', ?, ?)",
                             [stamp, stamp])
    retention.set_policy(store, now, None, timedelta(days=30), None)
    retention.set_policy(store, now, "slow", timedelta(days=60), None)
    retention.apply_policy(store, project.db, now)
    assert store.db.execute_sql("SELECT COUNT(*) FROM event").fetchone()[0] == 2  # 60 days: both young enough
    store.rules.clear_rule("slow")
    retention.apply_policy(store, project.db, now)
    assert store.db.execute_sql("SELECT COUNT(*) FROM event").fetchone()[0] == 1


# -- the commands ---------------------------------------------------------------------------------

def test_retention_commands(project):
    shown = project.cli("retention", "show")
    assert shown.code == 0 and shown.out.splitlines()[0] == "global: older than 30d, keeping the newest 100 per flow"
    assert "last applied: never" in shown.out

    result = project.cli("retention", "set", "--older-than", "7d", "--keep-last", "10")
    assert result.code == 0 and result.out == "global rule: delete finished runs older than 7d, keeping the newest " \
                                               "10 per flow\n"
    assert project.cli("retention", "set", "--flow", "etl", "--keep-last", "5").out == \
        "rule of flow etl: delete finished runs beyond the newest 5 of the flow\n"
    assert project.cli("retention", "set", "--flow", "noisy", "--off").out == "rule of flow noisy: off\n"
    data = json.loads(project.cli("retention", "show", "--json").out)
    assert data["last_applied"] is None
    assert [(r["scope"], r["flow"], r["enabled"], r["older_than_seconds"], r["keep_last"]) for r in data["rules"]] == [
        ("global", None, True, 7 * 86400, 10), ("flow", "etl", True, None, 5), ("flow", "noisy", False, None, None)]
    lines = project.cli("retention", "show").out.splitlines()
    assert lines[:3] == ["global: older than 7d, keeping the newest 10 per flow",
                         "flow etl: beyond the newest 5 of the flow", "flow noisy: off"]

    for bad, words in ((["set"], "--older-than AGE"), (["set", "--off", "--keep-last", "1"], "--off"),
                       (["set", "--older-than", "7 days"], "--older-than"), (["set", "--keep-last", "-2"], "--keep-last")):
        result = project.cli("retention", *bad)
        assert result.code == 2 and words in result.err and result.err.startswith("error: "), (bad, result.err)

    assert project.cli("retention", "clear", "--flow", "etl").out.startswith("removed the rule of flow etl")
    assert project.cli("retention", "clear", "--flow", "etl").out == "no rule of flow etl to remove\n"
    assert project.cli("retention", "clear").out.startswith("removed the global rule")
    assert project.cli("retention", "show").out.startswith("global: off (no global rule")


def test_runs_prune_policy(project):
    app = project.app()
    made = finished(app.store, project, "alpha", 4)
    app.close()
    assert project.cli("retention", "set", "--keep-last", "1").code == 0
    dry = project.cli("runs", "prune", "--policy", "--dry-run")
    assert dry.code == 0 and dry.out.startswith("would delete 3 run(s), 3 attempt(s), ")
    result = project.cli("runs", "prune", "--policy")
    assert result.code == 0 and result.out.startswith("deleted 3 run(s)")
    assert not any(paths.run_dir(r).exists() for r in made[:-1]) and paths.run_dir(made[-1]).is_dir()
    mixed = project.cli("runs", "prune", "--policy", "--keep-last", "3")
    assert mixed.code == 2 and "--policy" in mixed.err


# -- doctor ---------------------------------------------------------------------------------------

def test_doctor_reports_space_against_the_policy():
    from featherflow import doctor
    from featherflow.host import OK, WARNING

    now = datetime(2030, 1, 31, tzinfo=timezone.utc)
    policy = {rules.GLOBAL: rules.Rule(rules.GLOBAL, timedelta(days=30), 100),
              "etl": rules.Rule("etl", None, 5)}
    history = {"runs": 340, "oldest": now - 12 * DAY, "rules": policy, "applied": now - timedelta(hours=3)}
    finding = doctor.check_retention(history, 120_000_000, 340, 3_100_000, 200_000, now)
    assert finding.status == OK
    assert finding.detail == ("logs 120.0 MB in 340 run dir(s); database 3.1 MB (+ WAL 0.2 MB) for 340 run(s), "
                              "the oldest 12d00h old; policy: older than 30d, keeping the newest 100 per flow "
                              "(+ 1 flow rule(s)); last applied 3h00m ago")
    # No policy: fine while small, a warning once the history is large.
    bare = dict(history, rules={}, applied=None)
    assert doctor.check_retention(bare, 1000, 1, 1000, 0, now).status == OK
    large = doctor.check_retention(dict(bare, runs=50_000), 1000, 1, 1000, 0, now)
    assert large.status == WARNING and "retention set" in large.fix and "policy: off" in large.detail
    assert doctor.check_retention(bare, 300 << 20, 1, 1000, 0, now).status == WARNING
    # A policy that has not run while runs older than it allows pile up: no scheduler applies it.
    stale = dict(history, oldest=now - 40 * DAY, applied=None)
    overdue = doctor.check_retention(stale, 1000, 1, 1000, 0, now)
    assert overdue.status == WARNING and "runs prune --policy" in overdue.fix
    assert doctor.check_retention(dict(stale, oldest=now - 20 * DAY), 1000, 1, 1000, 0, now).status == OK


def test_doctor_shows_the_retention_line(project):
    app = project.app()
    finished(app.store, project, "alpha", 2)
    app.close()
    data = json.loads(project.cli("doctor", "--json").out)
    found = next(f for f in data["findings"] if f["name"] == "retention")
    assert found["status"] == "ok", found
    assert "in 2 run dir(s)" in found["detail"] and "for 2 run(s)" in found["detail"]
    assert "policy: older than 30d, keeping the newest 100 per flow; last applied never" in found["detail"]
