"""What the benchmarks share: how to call the installed `featherflow`, the
environment the timed commands run in, and timing one command.

The benchmarks run as `python bench/NAME.py`, so this folder is on sys.path.
"""

import os
import subprocess
import sys
import time
from pathlib import Path


def console_script() -> list:
    """The installed `featherflow` next to this interpreter, else `python -m featherflow`."""
    found = Path(sys.executable).parent / "featherflow"
    return [str(found)] if found.exists() else [sys.executable, "-m", "featherflow"]


def child_env(base: Path) -> dict:
    """The environment of the commands timed: a private FEATHERFLOW_HOME, and
    bytecode caching on (into the temp dir), as after a normal install; with
    PYTHONDONTWRITEBYTECODE set, every `featherflow` start would compile its modules."""
    env = {k: v for k, v in os.environ.items() if k not in ("FEATHERFLOW_DB", "PYTHONDONTWRITEBYTECODE")}
    env["FEATHERFLOW_HOME"] = str(base / "home")
    env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    return env


def timed(argv, env=None, cwd=None) -> float:
    """Wall seconds of one command; the benchmark stops if it failed."""
    start = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=env, cwd=cwd)
    took = time.perf_counter() - start
    if done.returncode != 0:
        name = Path(sys.argv[0]).stem
        sys.exit(f"{name}: {' '.join(argv)} exited {done.returncode}: "
                 f"{done.stderr.decode(errors='replace').strip()[-2000:]}")
    return took
