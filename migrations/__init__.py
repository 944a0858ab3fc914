"""Numbered schema migrations, installed as `featherflow.migrations`.

Each `NNNN_name.py` has `up(db)`, run once inside the IMMEDIATE transaction
that also sets `PRAGMA user_version = NNNN`. A released migration is never
edited: a change to the schema is a new file.
"""
