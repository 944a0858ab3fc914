"""Where things live: dirs, database path, and the FEATHERFLOW_* environment.

This is the only module that reads the environment; every path is made
absolute here, once, so a run or schedule records where it really came from.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from featherflow import logcap
from featherflow.errors import UsageError

DB_NAME = "featherflow.db"


@dataclass(frozen=True)
class Config:
    flows_dir: Path
    tasks_dir: Path
    output_dir: Path
    config_dir: Path
    db_path: Path
    log_dir: Path
    max_log_text: str = ""  # FEATHERFLOW_MAX_LOG_BYTES as given: read by max_log_bytes, when a run starts

    @property
    def max_log_bytes(self) -> int:
        """The cap on one attempt's log when its flow sets none (0: no cap; unset: 10 MiB).
        A bad value fails the commands that start runs, not every command."""
        text = self.max_log_text.strip()
        if not text:
            return logcap.DEFAULT_MAX_LOG_BYTES
        value = 0 if text.lower() in ("null", "none") else logcap.parse_size(text)
        if value is None:
            raise UsageError(f"FEATHERFLOW_MAX_LOG_BYTES={self.max_log_text!r} is not a log cap "
                             f"(valid: {logcap.SIZE_HELP})")
        return value


def resolve(
    flows_dir: Optional[str] = None,
    tasks_dir: Optional[str] = None,
    output_dir: Optional[str] = None,
    config_dir: Optional[str] = None,
    db: Optional[str] = None,
    log_dir: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
) -> Config:
    """Resolve every location to an absolute path (arguments beat environment)."""
    env = os.environ if env is None else env
    base = Path(cwd or os.getcwd())

    def absolute(value: str) -> Path:
        return Path(os.path.normpath(base / Path(value).expanduser()))

    home = config_dir or env.get("FEATHERFLOW_HOME") or "~/.featherflow"
    conf = absolute(home)
    return Config(
        flows_dir=absolute(flows_dir or "flows"),
        tasks_dir=absolute(tasks_dir or "tasks"),
        output_dir=absolute(output_dir or "featherflow_output"),
        config_dir=conf,
        db_path=absolute(db or env.get("FEATHERFLOW_DB") or str(conf / DB_NAME)),
        log_dir=absolute(log_dir) if log_dir else conf / "logs",
        max_log_text=env.get("FEATHERFLOW_MAX_LOG_BYTES", ""),
    )


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)


def scheduler_env(env: Optional[Mapping[str, str]] = None) -> dict:
    """What the scheduler takes from the environment: the zone ($TZ), the user behind sudo
    ($SUDO_USER, for `scheduler install`), and FEATHERFLOW_FAULT, a test-only hook naming a
    point of the fire path where the daemon kills itself (fault-injection tests)."""
    env = os.environ if env is None else env
    return {"tz": env.get("TZ") or None, "sudo_user": env.get("SUDO_USER") or None,
            "fault": env.get("FEATHERFLOW_FAULT") or None}
