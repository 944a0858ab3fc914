"""Where a run's files are: its directory under the output dir, and each attempt's log.

Pure path arithmetic on a run record (its id, uid and output dir), shared by the
engine that writes there, the retention that deletes there and the screens that read
there.
"""

from pathlib import Path


def run_dir(run) -> Path:
    """`<output>/runs/<id>-<uid prefix>`: found by run id, and never shared by two
    databases that write to the same output dir."""
    return Path(run.output_dir) / "runs" / f"{run.id}-{run.uid[:8]}"


def log_path(run, task_id: str, attempt: int) -> Path:
    return run_dir(run) / "logs" / f"{task_id}.{attempt}.log"
