"""The scheduler: cron slots and the firing policy (pure), the daemon, and managing both
from outside it. `from featherflow import scheduler; scheduler.get_scheduler(...)` is the
original tool's Python API (compat.py) and keeps working."""

import sys

__all__ = ["get_scheduler", "import_daemon"]


def import_daemon():
    """(control, daemon), imported for the process that becomes the daemon (`scheduler
    start`): peewee's hashlib without OpenSSL's libcrypto (see lean.py), when this Python
    has the builtin hashes; the `notify flush` children that send are processes of their own."""
    from featherflow import lean

    blocked = ("_hashlib",) if "hashlib" not in sys.modules and lean.hashlib_builtins() else ()
    with lean.without(*blocked):
        from featherflow.scheduler import control, daemon
    return control, daemon


def __getattr__(name):
    # Lazy, so that the dashboard's `from featherflow.scheduler.slots import ...` loads the
    # cron math only, not the daemon, the engine and the store behind get_scheduler.
    if name == "get_scheduler":
        from featherflow.scheduler.compat import get_scheduler

        return get_scheduler
    raise AttributeError(name)
