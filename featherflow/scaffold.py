"""`featherflow init`: scaffold a project folder with a sample flow, tasks and a README.

The templates live here as strings, so a plain `pip install .` carries them and
there is no package data to forget. A file that already exists is never touched:
each one is created with O_EXCL, so even a file (or a symlink) that appears
between the check and the write is left alone and reported as skipped. What
init creates gets its mode whatever the umask: dirs 0755, files 0644, scripts 0755.
"""

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

from featherflow.errors import UsageError

SAMPLE_FLOW = "sample"
DIR_MODE = 0o755  # the project dir, flows/ and tasks/


@dataclass
class InitReport:
    """What `init` did: paths relative to the project dir, in creation order."""

    directory: Path
    created: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


def init(directory: Path) -> InitReport:
    """Create DIR (if needed), flows/, tasks/ and the sample files; never overwrite.

    Raises UsageError when DIR, flows/ or tasks/ exists and is not a directory,
    or when a file cannot be written.
    """
    directory = Path(directory)
    report = InitReport(directory)
    folders = (directory, directory / "flows", directory / "tasks")
    for folder in folders:  # all checked before anything is created
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"init: {folder} exists and is not a directory (give a new or existing folder)")
    for folder in folders:
        try:
            _make_dir(folder)
        except OSError as exc:
            raise UsageError(f"init: cannot create {folder}: {exc.strerror}") from None
    for relative, text, mode in files(_project_title(directory)):
        path = directory / relative
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            report.skipped.append(relative)
            continue
        except OSError as exc:
            raise UsageError(f"init: cannot create {path}: {exc.strerror}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(fd, mode)  # the mode asked for, whatever the umask
            f.write(text)
        report.created.append(relative)
    return report


def _make_dir(folder: Path) -> None:
    """Create `folder` and missing parents 0755 whatever the umask (under umask 000 a 0777
    tasks/ lets any local user swap a script the scheduler runs). Each is made 0700 first
    and opened up after, so no one else can write in it meanwhile. An existing folder is
    left as it is (`featherflow doctor` warns when others can write in it)."""
    if folder.is_dir():
        return
    if not folder.parent.is_dir() and folder.parent != folder:
        _make_dir(folder.parent)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        if folder.is_dir():  # made meanwhile by someone else: not ours to change
            return
        raise
    os.chmod(folder, DIR_MODE)


def loose_paths(flows_dir: Path, tasks_dir: Path, limit: int = 10000) -> List[Tuple[str, int]]:
    """(path, mode) of the project's dirs, flows and task scripts that others can write
    (group or world write bit): such a user can change what a run, or the scheduler, runs.
    Symlinks are judged by what they point to; at most `limit` entries are looked at."""
    found, seen = [], 0
    for top in (flows_dir, tasks_dir):
        if not top.is_dir():
            continue
        for root, dirs, names in os.walk(top):
            dirs.sort()
            for name in [""] + sorted(names):
                path = os.path.join(root, name) if name else root
                seen += 1
                if seen > limit:
                    return found
                try:
                    mode = stat.S_IMODE(os.stat(path).st_mode)
                except OSError:
                    continue
                if mode & 0o022:
                    found.append((path, mode))
    return found


def files(title: str) -> List[Tuple[str, str, int]]:
    """(path relative to the project, text, mode) of every file `init` writes."""
    return [
        ("flows/sample.json", _FLOW, 0o644),
        ("tasks/greet.sh", _GREET_SH, 0o755),
        ("tasks/report.py", _REPORT_PY, 0o755),
        ("README.md", _README.replace("{title}", title), 0o644),
    ]


def _project_title(directory: Path) -> str:
    name = Path(os.path.abspath(directory)).name
    return name or "featherflow project"


_FLOW = """\
{
  "name": "sample",
  "description": "A shell task writes a greeting, a Python task turns it into a report",
  "version": "1",
  "params": {"name": "world", "repeat": 2},
  "tasks": [
    {
      "id": "greet",
      "script": "greet.sh",
      "description": "write a greeting into the run's TMP_DIR",
      "args": ["{{ params.name }}"]
    },
    {
      "id": "report",
      "script": "report.py",
      "description": "read the greeting and keep a report in the output dir",
      "depends_on": ["greet"],
      "args": {"repeat": "{{ params.repeat }}", "title": "Report of {{ flow }} run {{ run_id }}"},
      "retries": 1,
      "retry_delay": 5,
      "timeout": 60
    }
  ]
}
"""

_GREET_SH = """\
#!/usr/bin/env bash
# A shell task. The flow runs it as `bash greet.sh NAME`, where NAME comes from
# "args": ["{{ params.name }}"]: the run's param `name` (default in the flow,
# change it with: featherflow run sample --params '{"name": "Pi"}').
#
# Featherflow sets, for every task:
#   TMP_DIR                   the run's private temp dir, shared by all its tasks and
#                             removed when the run ends: hand files to later tasks here
#   FEATHERFLOW_RUN_ID        the run id (featherflow runs show ID)
#   FEATHERFLOW_TASK_ID       this task's id ("greet")
#   FEATHERFLOW_ATTEMPT       1, then 2, 3... when the task is retried
#   FEATHERFLOW_PARAMS        every param of the run, as a JSON object
#   FEATHERFLOW_OUTPUT_DIR    results that must outlive the run go here
#   FEATHERFLOW_SCHEDULED_AT  the slot time of a scheduled run (UTC), empty when run by hand
# Exit 0 means success; any other exit code fails the attempt. Output goes to the log
# (featherflow runs logs RUN_ID greet).
#
# To try it alone: TMP_DIR=$(mktemp -d) bash tasks/greet.sh you
set -euo pipefail

name=${1:?usage: greet.sh NAME}
echo "run ${FEATHERFLOW_RUN_ID:-(by hand)}, task ${FEATHERFLOW_TASK_ID:-greet}, attempt ${FEATHERFLOW_ATTEMPT:-1}"
echo "params: ${FEATHERFLOW_PARAMS:-none}"
if [[ -n ${FEATHERFLOW_SCHEDULED_AT:-} ]]; then
  echo "scheduled for $FEATHERFLOW_SCHEDULED_AT"
fi
printf 'Hello, %s!\\n' "$name" >"$TMP_DIR/greeting.txt"
echo "wrote $TMP_DIR/greeting.txt"
"""

_REPORT_PY = '''\
"""A Python task: read the greeting from TMP_DIR, keep a report in the output dir.

The flow passes "args": {"repeat": "{{ params.repeat }}", "title": "..."}, which
arrive as --repeat=2 --title=... . parse_known_args ignores options this script
does not know, so a flow can pass more without breaking it.

Featherflow sets, for every task:
  TMP_DIR                   the run's private temp dir, shared by its tasks, removed
                            when the run ends
  FEATHERFLOW_RUN_ID        the run id
  FEATHERFLOW_TASK_ID       this task's id ("report")
  FEATHERFLOW_ATTEMPT       1, then 2, 3... when the task is retried
  FEATHERFLOW_PARAMS        every param of the run, as a JSON object
  FEATHERFLOW_OUTPUT_DIR    results that must outlive the run go here
  FEATHERFLOW_SCHEDULED_AT  the slot time of a scheduled run (UTC), empty when run by hand
Exit 0 means success; an exception or sys.exit(1) fails the attempt (this task
has "retries": 1, so it gets one more try 5 seconds later).
"""
import argparse
import json
import os
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeat", type=int, default=1, help="how many times to repeat the greeting")
parser.add_argument("--title", default="Report", help="the first line of the report")
args, _unknown = parser.parse_known_args()

tmp = Path(os.environ.get("TMP_DIR", "."))
greeting_file = tmp / "greeting.txt"
if not greeting_file.exists():
    sys.exit(f"error: {greeting_file} not found (the greet task writes it)")
greeting = greeting_file.read_text(encoding="utf-8").strip()
params = json.loads(os.environ.get("FEATHERFLOW_PARAMS") or "{}")
when = os.environ.get("FEATHERFLOW_SCHEDULED_AT") or "now (started by hand)"

lines = [
    args.title,
    f"task {os.environ.get('FEATHERFLOW_TASK_ID', 'report')}, "
    f"attempt {os.environ.get('FEATHERFLOW_ATTEMPT', '1')}, scheduled for {when}",
    f"params: {json.dumps(params, sort_keys=True)}",
    "",
] + [greeting] * args.repeat

out_dir = Path(os.environ.get("FEATHERFLOW_OUTPUT_DIR", "featherflow_output")) / "sample"
out_dir.mkdir(parents=True, exist_ok=True)
report = out_dir / "report.txt"
report.write_text("\\n".join(lines) + "\\n", encoding="utf-8")
print("\\n".join(lines))
print(f"written to {report}")
'''

_README = """\
# {title}

A Featherflow project, made by `featherflow init`.

| file | what it is |
| --- | --- |
| `flows/sample.json` | the flow `sample`: `greet`, then `report` |
| `tasks/greet.sh` | a shell task: writes a greeting into the run's `TMP_DIR` |
| `tasks/report.py` | a Python task: reads it, writes `featherflow_output/sample/report.txt` |

Run every command below from this folder: Featherflow looks for `./flows` and `./tasks`, and
writes scripts, logs and results under `./featherflow_output`. The history of runs is kept in
`~/.featherflow/featherflow.db` (set `FEATHERFLOW_HOME` or `--config-dir` to keep it elsewhere).

## Check and run

```sh
featherflow validate                                  # every problem, named by its JSON path
featherflow run sample                                # exit 0 when every task succeeded
featherflow run sample --params '{"name": "Pi", "repeat": 3}'
featherflow runs list                                 # the history
featherflow runs logs 1                               # what the tasks of run 1 printed
cat featherflow_output/sample/report.txt
```

## Schedule it

```sh
featherflow schedule add sample --interval daily --at 03:00
featherflow schedule list                             # next fire time
featherflow scheduler start                           # leave it running (or install it with systemd)
```

## Write your own

A flow is `flows/<name>.json`; its `name` must match the file name. A task is any script in
`tasks/`: `.py` runs with the Python that runs Featherflow, `.sh` with bash, anything else
must be executable. A task succeeds when it exits 0. It receives its `args` on the command
line (`{"repeat": 2}` becomes `--repeat=2`; use `parse_known_args` in Python) and these
environment variables:

| variable | value |
| --- | --- |
| `TMP_DIR` | the run's private temp dir, shared by its tasks, removed when the run ends |
| `FEATHERFLOW_RUN_ID` | the run id |
| `FEATHERFLOW_TASK_ID` | the task id |
| `FEATHERFLOW_ATTEMPT` | the attempt number, from 1 |
| `FEATHERFLOW_PARAMS` | the run's params as JSON |
| `FEATHERFLOW_OUTPUT_DIR` | where results that must outlive the run go |
| `FEATHERFLOW_SCHEDULED_AT` | the slot time of a scheduled run (UTC), empty when run by hand |
| `FEATHERFLOW_FLOW_NAME`, `FEATHERFLOW_TRIGGER`, `FEATHERFLOW_RUN_UID` | the flow, `manual`, `schedule` or `backfill`, a unique id |

`featherflow --help` and `featherflow COMMAND --help` list everything else.
"""
