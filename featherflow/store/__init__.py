"""Everything that touches SQLite: opening and migrating the file, the models, and the
queries and transactions on runs, attempts, schedules and slots. Other layers get
plain records (records.py), never a peewee row."""
