"""The read-only terminal dashboard: poll the database, draw a screen, follow the keys."""
