"""Task outputs: the KEY=VALUE pairs a successful attempt wrote to $FEATHERFLOW_OUTPUT_FILE.

- task_attempt.outputs: a JSON object of text values, set by `_mark` in the same
  transaction that records the attempt's success; NULL when the attempt wrote none.
  Kept with the attempt (not in a file of the run dir), so that `runs resume` gives the
  re-run tasks the outputs of the kept ones even after the run's files are gone.
"""

STATEMENTS = [
    "ALTER TABLE task_attempt ADD COLUMN outputs TEXT",
]


def up(db):
    for statement in STATEMENTS:
        db.execute_sql(statement)
