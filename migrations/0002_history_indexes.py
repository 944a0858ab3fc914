"""Indexes that keep `runs list` fast on a long history (100,000 runs and more).

- flow_run_created: a `--since` window holding fewer runs than the limit made
  the newest-first walk read the whole flow_run table (every run's snapshot:
  ~140 MB at 100,000 runs, seconds with a cold cache) looking for more.
  Store.list_runs now finds the window's lowest run id in this index and
  walks only from there.
- flow_run_flow_state: `--flow F --state S` walked the state index and read
  each run to check its flow: the whole table for a flow rarely run.

IF NOT EXISTS: a database whose version was set back by hand migrates again.
Figures: bench/bench_history.py.
"""

STATEMENTS = [
    "CREATE INDEX IF NOT EXISTS flow_run_created ON flow_run (created_at)",
    "CREATE INDEX IF NOT EXISTS flow_run_flow_state ON flow_run (flow_name, state, id)",
]


def up(db):
    for statement in STATEMENTS:
        db.execute_sql(statement)
