"""What the kernel refuses to exec, checked before a run exists.

Linux refuses an exec (E2BIG, "Argument list too long") when one argument or
environment string is over MAX_ARG_STRLEN (131072 bytes with its NUL; an
environment string is NAME=value), or when all of them together are over
ARG_MAX (sysconf SC_ARG_MAX, a quarter of the stack limit: usually 2 MiB).
The script exports FEATHERFLOW_PARAMS (the params as JSON) to every command it
runs, `mkdir` and `_mark` included, so one param too big for it stops the run
before it can record anything. The strings checked here are the ones the
script passes, after substitution (script.task_argv / task_env).
"""

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from featherflow import flow as flowmod
from featherflow.engine import script
from featherflow.errors import ValidationError

MAX_ARG_STRLEN = 131072  # bytes, NUL included: 32 pages, fixed in the kernel
MARGIN = 16 * 1024  # bytes for what the script adds: run dir paths, TMP_DIR, bash's PWD, _, SHLVL
# The widest values the built-in placeholders take: a 19-digit run id, a scheduled time.
_WIDEST = {"run_id": 2 ** 63 - 1, "scheduled_at": "2026-01-01T00:00:00.000000Z"}


def arg_max() -> int:
    """The kernel's bound on argv + environment of one exec."""
    try:
        value = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError, AttributeError):
        value = -1
    return value if value > 0 else 2 * 1024 * 1024


def _size(text: str) -> int:
    """Bytes the kernel copies for one string: UTF-8 and its NUL."""
    return len(text.encode("utf-8", "surrogateescape")) + 1


def _environ_size(environ: Mapping[str, str]) -> int:
    return sum(_size(f"{k}={v}") + 8 for k, v in environ.items())  # + its pointer


def problems(flow: flowmod.Flow, params: Dict, tasks_dir: str = "",
             params_source: str = "params", environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Every string or task command that an exec would refuse, each naming its JSON path.

    `params`: the params the run gets (defaults merged with --params);
    `params_source` names them in messages. `environ`: what the run inherits
    (default: this process's environment), counted against ARG_MAX.
    """
    environ = os.environ if environ is None else environ
    errors: List[str] = []
    limit = f"limit: {MAX_ARG_STRLEN - 1} bytes for one argument or environment string, the kernel's MAX_ARG_STRLEN"
    contract = "FEATHERFLOW_PARAMS=" + json.dumps(params, sort_keys=True, ensure_ascii=False)
    if _size(contract) > MAX_ARG_STRLEN:
        biggest = max(params, key=lambda k: len(json.dumps(params[k], ensure_ascii=False)))
        errors.append(
            f"{params_source}: FEATHERFLOW_PARAMS (the params as JSON, in the environment of every "
            f"command of the run) would be {_size(contract) - 1} bytes, the largest being "
            f"{params_source}.{biggest} ({limit})")
    spec = script.RunSpec(
        run_id=_WIDEST["run_id"], run_uid="0" * 32, trigger="schedule", params=params, max_parallel=1,
        python=sys.executable, mark="", db="", tasks_dir=tasks_dir, run_dir="",
        scheduled_at=_WIDEST["scheduled_at"])
    inherited = _environ_size(environ) + _size(contract) + 8 + MARGIN
    bound = arg_max()
    for i, task in enumerate(flow.tasks):
        path = f"tasks[{i}]"
        sized = []  # (json path, size) of each string the task's exec gets
        if isinstance(task.args, dict):
            for key in task.args:
                words = script.task_argv(replace(task, args={key: task.args[key]}), spec, flow.name)
                sized += [(f"{path}.args.{key}", _size(w)) for w in words]
        else:
            words = script.task_argv(task, spec, flow.name)
            sized += [(f"{path}.args[{j}]", _size(w)) for j, w in enumerate(words)]
        env = script.task_env(task, spec, flow.name)
        sized += [(f"{path}.env.{name}", _size(f"{name}={value}")) for name, value in env.items()]
        for where, size in sized:
            if size > MAX_ARG_STRLEN:
                kind = "NAME=value" if ".env." in where else "the argument"
                errors.append(f"{where}: {kind} would be {size - 1} bytes after substitution of "
                              f"params ({limit})")
        command = [spec.python, "-u", f"{tasks_dir}/{task.script}", "setsid", "-w", "env"]
        total = inherited + sum(size + 8 for _, size in sized) + sum(_size(w) + 8 for w in command)
        if total > bound:
            errors.append(
                f"{path}: its arguments and environment would come to {total} bytes, the inherited "
                f"environment included (limit: {bound} bytes for one command, the kernel's ARG_MAX)")
    return errors


def check(flow: flowmod.Flow, params: Dict, tasks_dir: str = "", params_source: str = "params",
          source: Optional[str] = None) -> None:
    """Raise ValidationError listing `problems`, if there are any."""
    found = problems(flow, params, tasks_dir, params_source)
    if found:
        raise ValidationError(found, source)


def load_flow(flows_dir: Path, name: str, tasks_dir: Path) -> flowmod.Flow:
    """Load and validate a flow, its default params included: a task the kernel would
    refuse to start makes the flow invalid (what `list`, `validate` and `run` all see)."""
    flow = flowmod.load(flows_dir, name, tasks_dir)
    check(flow, flow.params, str(tasks_dir), source=str(flowmod.flow_path(flows_dir, flow.name)))
    return flow
