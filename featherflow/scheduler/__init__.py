"""The scheduler: cron slots and the firing policy (pure), the daemon, and managing both
from outside it. `from featherflow import scheduler; scheduler.get_scheduler(...)` is the
original tool's Python API and keeps working."""

from featherflow.scheduler.daemon import get_scheduler

__all__ = ["get_scheduler"]
