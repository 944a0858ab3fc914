"""The scheduler: cron slots and the firing policy (pure), the daemon, and managing both
from outside it. `from featherflow import scheduler; scheduler.get_scheduler(...)` is the
original tool's Python API (compat.py) and keeps working."""

__all__ = ["get_scheduler"]


def __getattr__(name):
    # Lazy, so that the dashboard's `from featherflow.scheduler.slots import ...` loads the
    # cron math only, not the daemon, the engine and the store behind get_scheduler.
    if name == "get_scheduler":
        from featherflow.scheduler.compat import get_scheduler

        return get_scheduler
    raise AttributeError(name)
